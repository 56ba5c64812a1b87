//! Transport keys of one session: in-place ChaCha20-Poly1305 (ring) and the replay window.

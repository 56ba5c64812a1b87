//! The Noise IK handshake (snow) and mac1.

//! upmt-policy (placeholder).

//! upmt-proto (placeholder).

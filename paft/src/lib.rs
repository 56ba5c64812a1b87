//! upmt-paft (placeholder).

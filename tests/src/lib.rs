//! upmt lab (placeholder).

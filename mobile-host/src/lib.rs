//! upmt mobile host (placeholder).

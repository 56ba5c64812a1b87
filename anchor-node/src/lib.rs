//! upmt anchor node (placeholder).

//! Target-independent items cubecl-cuda reads.
pub mod lowered_features;

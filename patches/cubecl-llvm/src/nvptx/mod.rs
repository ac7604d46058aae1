//! NVPTX-target items cubecl-cuda reads.
pub mod ptx_version;

//! Narrowing a device's advertised features to what the LLVM backend lowers.
//!
//! cubecl-cuda calls [`restrict_features`] only when its LLVM backend is selected. This build
//! has no LLVM backend (every LLVM-path compile is an error, see the crate root), so there is
//! nothing it could lower and the properties are left as the CUDA C++ path reports them: a
//! narrowing here would only hide features from a backend that cannot run either way.

use cubecl_ir::DeviceProperties;

/// The GPU target features are narrowed for. Only the one cubecl-cuda names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuTarget {
    Nvptx,
}

/// Leaves `props` as they are: see the module documentation.
pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {}

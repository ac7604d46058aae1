//! Backend choice. The model code is device-generic; only this file names backends, and a
//! backend that was not compiled in is a clear error rather than a silent fallback.

use burn::tensor::Device;

/// The backends a run can use (`--device` of the `phi` tool: `cpu`, `ndarray`, `cuda`, `wgpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// burn's `flex` CPU backend (default build).
    #[default]
    Cpu,
    /// burn's deprecated `ndarray` CPU backend (cargo feature `ndarray`), for comparison.
    Ndarray,
    /// NVIDIA GPU 0 (cargo feature `cuda`).
    Cuda,
    /// wgpu: Vulkan/Metal/DX12 (cargo feature `wgpu`).
    Wgpu,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Backend::Cpu),
            "ndarray" => Ok(Backend::Ndarray),
            "cuda" => Ok(Backend::Cuda),
            "wgpu" => Ok(Backend::Wgpu),
            _ => Err(format!("`{s}`: expected cpu, ndarray, cuda or wgpu")),
        }
    }
}

impl Backend {
    /// The burn device, or an error naming the cargo feature a backend needs.
    pub fn device(self) -> Result<Device, String> {
        match self {
            Backend::Cpu => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Backend::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Ok(Device::cuda(0)),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Ok(Device::wgpu(Default::default())),
            #[allow(unreachable_patterns)]
            other => Err(format!(
                "--device {other:?} needs the `{}` cargo feature: rebuild with `--features {0}`",
                format!("{other:?}").to_lowercase()
            )),
        }
    }
}

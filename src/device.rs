//! Backend choice. The model code is device-generic; only this file names backends, and a
//! backend that was not compiled in is a clear error rather than a silent fallback.

use burn::tensor::Device;

/// `--device` values of the `phi` tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// burn's `flex` CPU backend (default build).
    Cpu,
    /// burn's deprecated `ndarray` CPU backend (cargo feature `ndarray`), for comparison.
    Ndarray,
    /// NVIDIA GPU 0 (cargo feature `cuda`).
    Cuda,
    /// wgpu: Vulkan/Metal/DX12 (cargo feature `wgpu`).
    Wgpu,
}

impl DeviceArg {
    pub fn device(self) -> Result<Device, String> {
        match self {
            DeviceArg::Cpu => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            DeviceArg::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "cuda")]
            DeviceArg::Cuda => Ok(Device::cuda(0)),
            #[cfg(feature = "wgpu")]
            DeviceArg::Wgpu => Ok(Device::wgpu(Default::default())),
            #[allow(unreachable_patterns)]
            other => Err(format!(
                "--device {other:?} needs the `{}` cargo feature: rebuild with `--features {0}`",
                format!("{other:?}").to_lowercase()
            )),
        }
    }
}

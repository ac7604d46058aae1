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

/// The name `--device` takes (`cpu`, `ndarray`, `cuda`, `wgpu`).
impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Cpu => "cpu",
            Backend::Ndarray => "ndarray",
            Backend::Cuda => "cuda",
            Backend::Wgpu => "wgpu",
        })
    }
}

impl Backend {
    /// The burn device, or an error naming the cargo feature a backend needs.
    pub fn device(self) -> Result<Device, String> {
        self.device_at(0)
    }

    /// The backend's device `index` (the GPU of that number on the machine, for a process of a
    /// data-parallel run: its local rank); the CPU backends and wgpu have one device and ignore
    /// it.
    pub fn device_at(self, index: usize) -> Result<Device, String> {
        let _ = index;
        match self {
            Backend::Cpu => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Backend::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Ok(Device::cuda(index)),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Ok(Device::wgpu(Default::default())),
            #[allow(unreachable_patterns)]
            // The cargo features are named as the backends are.
            other => Err(format!("the {other} backend needs the `{other}` cargo feature: rebuild with `--features {other}`")),
        }
    }
}

/// The accelerator `device` runs on, as it names itself (`NVIDIA H100 80GB HBM3`); `None` for
/// the CPU backends (flex, ndarray), which report no identity. An autodiff device answers for
/// the device it wraps.
pub fn accelerator_name(device: &Device) -> Option<String> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    {
        device.identity().map(|identity| identity.name)
    }
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        // Only burn's cubecl backends have an identity, and none is compiled in.
        let _ = device;
        None
    }
}

/// Whether `device` computes in host memory (the CPU backends): training there is bounded by
/// the machine's RAM.
pub fn is_host(device: &Device) -> bool {
    accelerator_name(device).is_none()
}

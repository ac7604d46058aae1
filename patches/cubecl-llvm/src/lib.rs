//! phi's offline stand-in for `cubecl-llvm` 0.11.3 (see `Cargo.toml` for why it exists).
//!
//! cubecl-cuda names these items whichever backend it runs:
//! - [`nvptx::ptx_version::PtxVersion`], read at device set-up (driver version → PTX version)
//!   and in the kernel-cache namespace;
//! - [`shared::lowered_features`], called only when the LLVM backend is selected;
//! - [`PlironCompiler`] and its options and artifacts, constructed only for the LLVM backend.
//!
//! With cubecl-cuda's `cpp` feature the default backend is CUDA C++ through NVRTC, so the last
//! two are never reached; if something selects the LLVM backend anyway, compiling a kernel
//! returns a [`CompilationError`] that says what to do instead of panicking or miscompiling.

pub mod nvptx;
pub mod shared;

use cubecl_environment::backtrace::BackTrace;
use cubecl_ir::nvidia::SmArch;
use cubecl_runtime::compiler::{CompilationError, Compiler};
use cubecl_runtime::kernel::KernelDefinition;
use nvptx::ptx_version::PtxVersion;

/// What the message of every LLVM-path error says.
pub const NO_LLVM: &str = "this build of cubecl-cuda has no LLVM backend: phi replaces \
cubecl-llvm with an offline stand-in (patches/cubecl-llvm) so that CUDA builds without \
internet. Kernels compile through NVRTC (cubecl-cuda's `cpp` feature, which phi's `cuda` \
feature enables). To use the upstream LLVM backend, remove the [patch.crates-io] entry for \
cubecl-llvm from the workspace Cargo.toml and build with internet access";

/// The target a [`PlironCompiler`] lowers for. Only the variants cubecl-cuda names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LlvmTarget {
    #[default]
    Cpu,
    Nvptx,
}

/// The LLVM compiler handle cubecl-cuda builds when its LLVM backend is selected. Compiling
/// with it is an error (there is no LLVM here); building it is not, so a runtime can be set up.
#[derive(Clone, Debug, Default)]
pub struct PlironCompiler {
    pub target: LlvmTarget,
}

/// Options of the LLVM path, with the fields cubecl-cuda fills in.
#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    /// AMDGPU architecture upstream; never set by the CUDA runtime.
    pub arch: Option<String>,
    pub sm_arch: Option<SmArch>,
    pub ptx_version: Option<PtxVersion>,
    pub grid_constants: bool,
}

/// A compiled NVPTX module, as the CUDA runtime's LLVM path would load it.
#[derive(Clone, Debug, Default)]
pub struct NvptxModule {
    /// NUL-terminated PTX.
    pub ptx: Vec<core::ffi::c_char>,
    pub entrypoint: String,
    /// IR, for logging and cache keys.
    pub ir: String,
    /// Dynamic shared memory per launch, in bytes.
    pub shared_memory_size: usize,
    /// Buffer access modes in binding order.
    pub io: Vec<cubecl_ir::attributes::BufferIOAttr>,
}

/// What the LLVM compiler produces. Upstream also has a CPU JIT variant; cubecl-cuda matches
/// on `NvptxCode` with a catch-all arm, which `Unavailable` keeps meaningful.
#[derive(Clone, Debug)]
pub enum PlironArtifact {
    NvptxCode(NvptxModule),
    Unavailable,
}

impl core::fmt::Display for PlironArtifact {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PlironArtifact::NvptxCode(module) => f.write_str(&module.ir),
            PlironArtifact::Unavailable => f.write_str("<no LLVM backend in this build>"),
        }
    }
}

/// The error every LLVM-path compile returns.
fn llvm_unavailable() -> CompilationError {
    CompilationError::Generic { reason: NO_LLVM.to_string(), backtrace: BackTrace::capture() }
}

impl Compiler for PlironCompiler {
    type Representation = PlironArtifact;
    type CompilationOptions = PlironOptions;

    fn compile(
        &mut self,
        _kernel: KernelDefinition,
        _options: &Self::CompilationOptions,
    ) -> Result<Self::Representation, CompilationError> {
        Err(llvm_unavailable())
    }

    fn extension(&self) -> &'static str {
        "ll"
    }

    fn lang_tag(&self) -> &'static str {
        "llvm"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_llvm_path_error_says_what_to_do() {
        // `compile` returns exactly this (a KernelDefinition is too heavy to build by hand in
        // a test, and `compile` does not look at it).
        let message = llvm_unavailable().to_string();
        assert!(message.contains("NVRTC") && message.contains("[patch.crates-io]"), "{message}");
        assert_eq!(PlironCompiler { target: LlvmTarget::Nvptx }.lang_tag(), "llvm");
    }
}

//! Which PTX ISA version a CUDA driver loads.

use core::fmt;

/// A PTX ISA version, written as LLVM's NVPTX target feature spells it (`ptx87` is 8.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PtxVersion(u32);

/// The first CUDA release (as `cuDriverGetVersion` reports it: 12.8 is 12080) that loads each
/// PTX ISA version, newest first — NVIDIA's PTX ISA release notes. A driver between two rows
/// gets the older row's version; 9.3 is the newest the upstream LLVM backend emits.
const FIRST_DRIVER: [(i32, u32); 24] = [
    (13030, 93), (13020, 92), (13010, 91), (13000, 90),
    (12090, 88), (12080, 87), (12050, 85), (12040, 84), (12030, 83), (12020, 82), (12010, 81), (12000, 80),
    (11080, 78), (11070, 77), (11060, 76), (11050, 75), (11040, 74), (11030, 73), (11020, 72), (11010, 71), (11000, 70),
    (10020, 65), (10010, 64), (10000, 63),
];

impl PtxVersion {
    /// The newest PTX version a driver of CUDA `driver` loads; `None` before CUDA 10.0.
    pub fn for_driver(driver: i32) -> Option<Self> {
        FIRST_DRIVER.iter().find(|(first, _)| driver >= *first).map(|&(_, ptx)| PtxVersion(ptx))
    }

    /// The LLVM target feature selecting this version, e.g. `+ptx87`.
    pub fn target_feature(self) -> std::ffi::CString {
        std::ffi::CString::new(format!("+{self}")).expect("no NUL in a version")
    }
}

impl fmt::Display for PtxVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ptx{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_map_to_the_newest_ptx_they_load() {
        assert_eq!(PtxVersion::for_driver(13000), Some(PtxVersion(90))); // the H100/H200 machines
        assert_eq!(PtxVersion::for_driver(12060), Some(PtxVersion(85))); // 12.6 stays at 8.5
        assert_eq!(PtxVersion::for_driver(12080), Some(PtxVersion(87)));
        assert_eq!(PtxVersion::for_driver(14000), Some(PtxVersion(93)));
        assert_eq!(PtxVersion::for_driver(9020), None);
        assert_eq!(PtxVersion(87).to_string(), "ptx87");
        assert_eq!(PtxVersion(90).target_feature().as_bytes(), b"+ptx90");
        // Newest first, strictly, so `find` returns the newest row a driver reaches.
        assert!(FIRST_DRIVER.windows(2).all(|w| w[0].0 > w[1].0 && w[0].1 > w[1].1));
    }
}

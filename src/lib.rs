pub use phi_core as core;

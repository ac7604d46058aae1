//! phi-train

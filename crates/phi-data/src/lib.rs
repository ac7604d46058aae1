//! phi-data

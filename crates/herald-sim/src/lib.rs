//! herald-sim

//! herald-bus

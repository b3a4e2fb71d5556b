//! Tooling around Herald, not on its delivery path: `herald demo` (the
//! showcase workload and its report) and `herald bench` (load, measure, and
//! judge lost and duplicated from what the simulated vendors received).
//! Both drive Herald from the outside, over its HTTP API, as a user would.

pub mod bench;
pub mod demo;

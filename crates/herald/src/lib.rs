//! Herald, the binary's library: config and wiring (`app`), the HTTP API,
//! the delivery engine, templates, telemetry, and the tooling around them
//! (`tooling`: the demo and the bench). Integration tests start it
//! in-process through `app::Running`.

pub mod api;
pub mod app;
pub mod config;
pub mod console;
pub mod dlq;
pub mod engine;
pub mod progress;
pub mod recipients;
pub mod render;
pub mod suppressions;
pub mod telemetry;
pub mod tooling;

//! Herald, the binary's library: CLI commands, config, the HTTP API, the
//! delivery engine, templates, telemetry and the demo. Integration tests
//! start it in-process through `app::Running`.

pub mod api;
pub mod app;
pub mod config;
pub mod demo;
pub mod dlq;
pub mod engine;
pub mod render;
pub mod telemetry;

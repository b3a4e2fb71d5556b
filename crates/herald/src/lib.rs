//! Herald, the binary's library: CLI commands, config, the HTTP API, the
//! delivery engine, templates, telemetry, the demo and the bench. Integration tests
//! start it in-process through `app::Running`.

pub mod api;
pub mod app;
pub mod bench;
pub mod config;
pub mod demo;
pub mod dlq;
pub mod engine;
pub mod progress;
pub mod render;
pub mod telemetry;

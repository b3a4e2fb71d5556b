//! Herald's durable state. `sqlite` is the embedded default; PostgreSQL
//! joins it behind the same `herald_core::store::Store` trait.

pub mod sqlite;

pub use sqlite::{SqliteOptions, SqliteStore};

//! Herald's durable state, behind `herald_core::store::Store`: `sqlite` is
//! the embedded default, `postgres` the store of a fleet. Both take writes
//! through group-commit writers (`writes`) and read rows into the same views
//! (`rows`).

mod rows;
mod writes;

pub mod postgres;
pub mod sqlite;

pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use writes::{COMMIT_OPERATIONS, COMMIT_SECONDS, WRITE_SECONDS};

//! Herald's durable state, behind the roles of `herald_core::store`:
//! `sqlite` is the embedded default, `postgres` the store of a fleet, and
//! `memory` an in-memory store for tests. The two databases share one
//! implementation of the roles (`db`): writes are typed operations (`ops`)
//! queued for group-commit writers (`writes`), applied in each backend's
//! own SQL; reads are written once (`reads`) and turned into views by
//! shared code (`rows`).

mod db;
mod ops;
mod reads;
mod rows;
mod writes;

pub mod memory;
pub mod postgres;
pub mod sqlite;

pub use db::Db;
pub use memory::MemoryStore;
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use writes::{COMMIT_OPERATIONS, COMMIT_SECONDS, WRITE_SECONDS};

//! Herald's integration tests: the real server on port 0, a real SQLite file,
//! real HTTP, and the vendor simulator standing in for the vendors.

mod alerts;
mod api;
mod apns;
mod bench;
mod callbacks;
mod cancel;
mod chat;
mod cli;
mod cluster;
mod connections;
mod console;
mod crash;
mod credentials;
mod delivery;
mod faults;
mod fleet;
mod fuzz;
mod hostile;
mod idempotency;
mod outage;
mod priority;
mod receipts;
mod recipients;
mod resilience;
mod restart;
mod ses;
mod smtp;
mod suppressions;
mod traces;
mod utils;

//! latchkey: keeps physical access (smart locks, access groups, key cabinets, mechanical keys) in step
//! with who works here, and measures how long every revocation took.
//!
//! Modules follow the flow: sources -> identity -> policy -> plan -> store (outbox) -> dispatch ->
//! connectors -> vendor, with audit and telemetry alongside. See DESIGN.md in the shared notes.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod access_requests;
pub mod api;
pub mod app;
pub mod audit;
pub mod batch;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connectors;
pub mod dispatch;
pub mod door_migration;
pub mod drift;
pub mod engine;
pub mod identity;
pub mod jobs;
pub mod leases;
pub mod live_policy;
pub mod memory;
pub mod model;
pub mod naming;
pub mod operators;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod reviews;
pub mod sources;
pub mod store;
pub mod suspension;
pub mod telemetry;
pub mod visitors;

/// The vendor simulators (crate `latchkey-sim`), under the name they had when they lived here, in
/// a build with the `sim` feature; the daemon alone (`--no-default-features`) has none.
#[cfg(feature = "sim")]
pub use latchkey_sim as sim;

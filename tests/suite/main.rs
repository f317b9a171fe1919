//! The integration suite: one test binary, one module per area of the flow. One binary links the
//! library once instead of once per area, and `cargo test --test suite AREA::` runs one area.
//! Tracing is process-wide, so its test (`tests/traces.rs`) is a binary of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod architecture;
mod audit;
mod audit_forward;
mod batch;
mod cabinet;
mod cli;
mod flow;
mod keys;
mod ldap;
mod metrics;
mod operator;
mod outbox;
mod resilience;
mod reviews;
mod scim;
mod store;
mod vendors;

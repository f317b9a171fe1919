//! The outbox under load and under crashes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[test]
fn placeholder() {}

//! One file per command (or command group). Read commands print a table or, with
//! `--output json`, one JSON document whose schema is in docs/schemas/ (see `cli::output`).

pub mod access;
pub mod apply;
pub mod approve;
pub mod audit;
pub mod check;
pub mod completions;
#[cfg(feature = "sim")]
pub mod demo;
pub mod drift;
pub mod drill;
pub mod keys;
pub mod migrate;
pub mod operators;
pub mod plan;
pub mod redrive;
pub mod report;
pub mod request;
pub mod review;
pub mod run;
#[cfg(feature = "sim")]
pub mod sim;
pub mod status;
pub mod suspend;
pub mod who_has;

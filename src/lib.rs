//! usage-aggregator: prices AI-agent usage events, rolls them up per execution and emits
//! debits. The rating core ([`CORE_MODULES`]) has no I/O; the pipeline, sink and HTTP modules
//! wrap it.

// Command output goes through `writeln!(stdout, ..)?` so that a closed pipe (`| head`) is an
// error the command ends on quietly; `println!` panics there (exit 101).
#![deny(clippy::print_stdout)]

pub mod alerts;
pub mod app;
// The benchmark prints progress lines of a long run; not meant for a pipe.
#[allow(clippy::print_stdout)]
pub mod bench;
pub mod catalog;
pub mod catalog_feed;
pub mod config;
pub mod credits;
pub mod debit;
pub mod event;
pub mod feed;
pub mod follow;
pub mod health;
pub mod history;
pub mod http;
pub mod kafka;
pub mod kafka_errors;
pub mod keys;
pub mod ledger;
pub mod loadgen;
pub mod logging;
pub mod marker;
pub mod metrics;
pub mod money;
pub mod offline;
pub mod pipeline;
pub mod plans;
pub mod plans_feed;
pub mod preflight;
pub mod rating;
pub mod rejection;
pub mod replay;
pub mod report;
pub mod rerate;
pub mod rollup;
pub mod sink;
pub mod stage;
pub mod trace;

/// The rating core: decode, price, roll up, money, outputs. Every decision is a function of
/// its inputs: no I/O, no clock, no randomness, no import of a shell module. Not a comment
/// but a rule: `tests/core_is_pure.rs` reads these modules' sources and fails on any of it.
pub const CORE_MODULES: [&str; 10] = [
    "catalog",
    "debit",
    "event",
    "money",
    "plans",
    "rating",
    "rejection",
    "rerate",
    "rollup",
    "trace",
];

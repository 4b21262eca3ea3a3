//! usage-aggregator: prices AI-agent usage events, rolls them up per execution and emits
//! debits. The rating core (event, catalog, rating, rollup, money) has no I/O; the pipeline,
//! sink and HTTP modules wrap it.

pub mod catalog;
pub mod debit;
pub mod event;
pub mod money;
pub mod offline;
pub mod rating;
pub mod rejection;
pub mod rollup;

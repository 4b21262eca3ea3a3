//! The ClickHouse tables the sink writes: one [`Table`] impl each (name, id, source topic,
//! row, parse), and [`lanes`], the list the sink loop runs over.
//!
//! Adding a table: a row type and parse function (`rows.rs`, or the feature's own module), an
//! `impl Table` here, its name in the `tables!` list, and a migration in
//! `deploy/clickhouse/` listed in `migrate::MIGRATIONS`.

use super::ledger_rows::LedgerRow;
use super::line_scan;
use super::rows::{self, DeadLetterRow, DebitRow, RowError, Source, TransactionRow};
use super::table::{Lane, Table, TableLane};
use crate::config::TopicsConfig;

/// `usage_transactions`: one row per priced line, from `priced_usage`.
pub struct Transactions;

impl Table for Transactions {
    type Row = TransactionRow;
    const NAME: &'static str = "usage_transactions";
    /// `PricedLine::line_id`: event ids are scoped by account and execution.
    const ID_SQL: &'static str = "concat(account_id, '\\n', execution_id, '\\n', event_id)";
    fn topic(topics: &TopicsConfig) -> &str {
        &topics.priced_usage
    }
    fn parse(payload: &[u8], src: Source) -> Result<(String, TransactionRow), RowError> {
        line_scan::transaction_row(payload, src)
    }
}

/// `debits`: one row per debit, from `debits`.
pub struct Debits;

impl Table for Debits {
    type Row = DebitRow;
    const NAME: &'static str = "debits";
    const ID_SQL: &'static str = "debit_id";
    fn topic(topics: &TopicsConfig) -> &str {
        &topics.debits
    }
    fn parse(payload: &[u8], src: Source) -> Result<(String, DebitRow), RowError> {
        rows::debit_row(payload, src)
    }
}

/// `dead_letters`: one row per dead letter, from `dead_letter`. A row it refuses is only
/// logged and counted: dead-lettering it would loop it back onto its own topic.
pub struct DeadLetters;

impl Table for DeadLetters {
    type Row = DeadLetterRow;
    const NAME: &'static str = "dead_letters";
    const ID_SQL: &'static str = "dead_letter_id";
    const DEAD_LETTER_REFUSED: bool = false;
    fn topic(topics: &TopicsConfig) -> &str {
        &topics.dead_letter
    }
    fn parse(payload: &[u8], src: Source) -> Result<(String, DeadLetterRow), RowError> {
        rows::dead_letter_row(payload, src)
    }
}

/// `ledger`: one row per credits-ledger entry, from `balances` (`crate::sink::ledger_rows`).
pub struct Ledger;

impl Table for Ledger {
    type Row = LedgerRow;
    const NAME: &'static str = "ledger";
    const ID_SQL: &'static str = "entry_id";
    fn topic(topics: &TopicsConfig) -> &str {
        &topics.balances
    }
    fn parse(payload: &[u8], src: Source) -> Result<(String, LedgerRow), RowError> {
        super::ledger_rows::ledger_row(payload, src)
    }
}

/// The tables, in the order they are flushed: [`NAMES`] and [`lanes`] from one list.
macro_rules! tables {
    ($($table:ty),+ $(,)?) => {
        /// Every table's name (metric labels are created from it at start).
        pub const NAMES: &[&str] = &[$(<$table as Table>::NAME),+];

        /// One lane per table.
        pub fn lanes(topics: &TopicsConfig) -> Vec<Box<dyn Lane>> {
            vec![$(Box::new(TableLane::<$table>::new(topics))),+]
        }
    };
}

tables!(Transactions, Debits, DeadLetters, Ledger);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_its_own_name_and_topic_and_is_listed_once() {
        let topics = crate::config::Config::default().topics;
        let lanes = lanes(&topics);
        let names: Vec<&str> = lanes.iter().map(|l| l.name()).collect();
        assert_eq!(names, NAMES);
        let mut topics_seen: Vec<&str> = lanes.iter().map(|l| l.topic()).collect();
        topics_seen.sort_unstable();
        topics_seen.dedup();
        assert_eq!(topics_seen.len(), lanes.len(), "one table per topic");
        // Each table is created by a migration.
        for name in NAMES {
            let created = format!("CREATE TABLE IF NOT EXISTS {{db}}.{name}\n");
            assert!(
                super::super::migrate::MIGRATIONS
                    .iter()
                    .any(|(_, _, sql)| sql.contains(&created)),
                "no migration creates {name}"
            );
        }
    }
}

-- Credits ledger, format 2 (issue 27): grant terms, the funding of every entry and the open
-- grants after it. Runs on 18.16 and current LTS: plain ALTER ... ADD COLUMN (the runner
-- treats an "already exists" from an interrupted earlier run as done). Rows written before
-- read the defaults: empty funding, no open grants. Queries: docs/analytics.md ("Credits ledger").
-- category / priority / expires_at: the grant a grant or expiry entry is about ('' / NULL otherwise)
ALTER TABLE {db}.ledger
    ADD COLUMN category String AFTER description;

ALTER TABLE {db}.ledger
    ADD COLUMN priority Nullable(UInt8) AFTER category;

ALTER TABLE {db}.ledger
    ADD COLUMN expires_at Nullable(DateTime) AFTER priority;

-- funded_*: parallel arrays, what paid for the entry in draw-down order (negative amounts;
-- grant '' with category 'overdraft' for usage past the last grant), or where a grant's
-- credits went (the overdraft repaid, then the grant). arraySum-free: the amounts of a row
-- add up to credit - debit.
ALTER TABLE {db}.ledger
    ADD COLUMN funded_grants Array(String) AFTER balance_after;

ALTER TABLE {db}.ledger
    ADD COLUMN funded_categories Array(String) AFTER funded_grants;

ALTER TABLE {db}.ledger
    ADD COLUMN funded_amounts Array(Decimal(38, 18)) AFTER funded_categories;

-- overdraft and open_*: the account after the entry (credits used past the last grant; the
-- open grants in draw-down order with what is left of each). The last row of an account is
-- its current state: liability per account and category reads it (docs/analytics.md).
ALTER TABLE {db}.ledger
    ADD COLUMN overdraft Decimal(38, 18) AFTER funded_amounts;

ALTER TABLE {db}.ledger
    ADD COLUMN open_grants Array(String) AFTER overdraft;

ALTER TABLE {db}.ledger
    ADD COLUMN open_categories Array(String) AFTER open_grants;

ALTER TABLE {db}.ledger
    ADD COLUMN open_priorities Array(UInt8) AFTER open_categories;

ALTER TABLE {db}.ledger
    ADD COLUMN open_expires Array(Nullable(DateTime)) AFTER open_priorities;

ALTER TABLE {db}.ledger
    ADD COLUMN open_remaining Array(Decimal(38, 18)) AFTER open_expires;

-- Tiers, plans and corrections (issue 28). Runs on 18.16 and current LTS: plain ALTER ...
-- ADD COLUMN (an "already exists" from an interrupted run counts as done). Old rows read the
-- DEFAULT expressions: no tier, the default plan, no correction.
-- tier: the tier of the price version that priced the call ('' when the version has none)
ALTER TABLE {db}.usage_transactions
    ADD COLUMN tier String AFTER price_version;

-- plan, plan_version: the account's plan at occurred_at ('' version: the built-in default)
ALTER TABLE {db}.usage_transactions
    ADD COLUMN plan String DEFAULT 'default' AFTER tier;

ALTER TABLE {db}.usage_transactions
    ADD COLUMN plan_version String AFTER plan;

-- plan_rule: the rule that changed the price ('asset_id:...', 'vendor:...'), '' when none
ALTER TABLE {db}.usage_transactions
    ADD COLUMN plan_rule String AFTER plan_version;

-- discount_percent: the rule's discount, 0 when none (cost is after it, unit_credits before)
ALTER TABLE {db}.usage_transactions
    ADD COLUMN discount_percent Decimal(38, 12) AFTER plan_rule;

ALTER TABLE {db}.debits
    ADD COLUMN plan String DEFAULT 'default' AFTER execution_id;

ALTER TABLE {db}.debits
    ADD COLUMN plan_version String AFTER plan;

-- breakdown_price_versions: parallel to breakdown_assets (one entry per asset and version)
ALTER TABLE {db}.debits
    ADD COLUMN breakdown_price_versions Array(String) AFTER breakdown_costs;

-- A correction debit (kind 'correction'): its correction id, reason and the debits it
-- corrects. sum(total) per execution_id is the corrected amount
ALTER TABLE {db}.debits
    ADD COLUMN correction_id String AFTER breakdown_price_versions;

ALTER TABLE {db}.debits
    ADD COLUMN correction_reason String AFTER correction_id;

ALTER TABLE {db}.debits
    ADD COLUMN corrects Array(String) AFTER correction_reason;

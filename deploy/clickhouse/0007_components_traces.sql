-- Markup as its own line, and what an execution trace needs of a call (issue 22). Runs on
-- 18.16 and current LTS (plain ADD COLUMN, as migration 3).
-- debits: the vendor price of the model calls and of the tool calls (tools and
-- integrations), so that models + tools + markup = total on every row and a sum by
-- component equals the sum of totals (docs/analytics.md, How amounts add up). Rows written
-- before this migration read 0 in both: their vendor split is only in usage_transactions
ALTER TABLE {db}.debits
    ADD COLUMN models Decimal(38, 18) AFTER subtotal;

ALTER TABLE {db}.debits
    ADD COLUMN tools Decimal(38, 18) AFTER models;

-- usage_transactions: the call's type (model_call or tool_call: the event type, which the
-- asset type does not always say) and the sub-second part of occurred_at (DateTime keeps
-- seconds; 18.16 has no DateTime64). Older rows read the asset type's usual call type and 0
ALTER TABLE {db}.usage_transactions
    ADD COLUMN kind String DEFAULT if(asset_type = 'model', 'model_call', 'tool_call') AFTER event_id;

ALTER TABLE {db}.usage_transactions
    ADD COLUMN occurred_at_nanos UInt32 AFTER occurred_at;

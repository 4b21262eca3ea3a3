-- Contract v1.1 and model aliases (issue 16). Runs on 18.16 and current LTS: plain ALTER ...
-- ADD COLUMN (18.16 has no IF NOT EXISTS there; the runner treats an "already exists" from an
-- interrupted earlier run as done). Old rows read the DEFAULT expressions, so they stay right.
-- asset_name_sent: the name the event was sent with (an alias, or asset_id itself)
ALTER TABLE {db}.usage_transactions
    ADD COLUMN asset_name_sent String DEFAULT asset_id AFTER asset_id;

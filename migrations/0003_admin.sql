-- What the admin page needs: deductions that an admin explicitly let go below zero are recorded
-- as such, and accounts can be listed by balance or by last activity.

ALTER TABLE token_transactions ADD COLUMN allow_negative BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE token_transactions ADD CONSTRAINT token_transactions_allow_negative_check
    CHECK (NOT allow_negative OR transaction_type = 'deduction');

CREATE INDEX accounts_balance_idx ON accounts (balance DESC, user_id DESC);
CREATE INDEX accounts_updated_at_idx ON accounts (updated_at DESC, user_id DESC);
-- Prefix search on user ids, whatever the database's collation.
CREATE INDEX accounts_user_id_pattern_idx ON accounts (user_id text_pattern_ops);

-- The journal as one relation: every row of the three journal tables with the same columns,
-- details of other kinds NULL. Reads (history, lookup by id, verify, replays, reversal caps) use
-- it instead of each writing its own three-table UNION ALL.
--
-- A plain view of a UNION ALL: PostgreSQL flattens it into an append of the three tables, pushes
-- `account_id = …`, `entry_seq < …` and `id = ANY(…)` down into each branch, and merges the
-- branches' index scans for `ORDER BY entry_seq DESC LIMIT n`, so a history page still reads at
-- most n rows of each table through its (account_id, entry_seq) index.
--
-- `kind` holds the names of the domain's EntryKind (src/domain/mod.rs).
CREATE VIEW journal AS
SELECT id, account_id, entry_seq, transaction_type AS kind, token_amount, balance_after, created_at,
       created_by, reason, source, stripe_subscription_id, stripe_invoice_id, amount_paid_cents,
       currency, stripe_payment_intent_id, stripe_checkout_session_id, pack, reverses_transaction_id,
       stripe_reference, allow_negative,
       NULL::timestamptz AS period_start, NULL::timestamptz AS period_end,
       NULL::text AS model, NULL::bigint AS input_tokens, NULL::bigint AS output_tokens,
       NULL::text AS feature
  FROM token_transactions
UNION ALL
SELECT id, account_id, entry_seq, 'drip'::text, token_amount, balance_after, created_at, created_by,
       NULL::text, NULL::text, stripe_subscription_id, stripe_invoice_id, NULL::bigint, NULL::text,
       NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::boolean,
       period_start, period_end, NULL::text, NULL::bigint, NULL::bigint, NULL::text
  FROM token_drips
UNION ALL
SELECT id, account_id, entry_seq, 'usage'::text, token_amount, balance_after, created_at, created_by,
       NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text,
       NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::boolean,
       NULL::timestamptz, NULL::timestamptz, model, input_tokens, output_tokens, feature
  FROM token_usage;

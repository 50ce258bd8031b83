-- WEBHOOK MIGRATION: the Stripe adapter's own tables (stripe_events, stripe_customers,
-- stripe_subscriptions) only. From here on the ledger's migrations and the webhook's are separate
-- files; a ledger migration never touches these tables, and this file touches nothing else.
--
-- Every outcome the adapter records is one of a known list, held by a named constraint so a write
-- of anything else fails loudly (and can be mapped by name). The list is `EventOutcome::ALL` in
-- src/webhook/outcome.rs, one line each there saying its HTTP status and when it is recorded; a
-- unit test there parses this file and checks that the two lists are equal. A new outcome needs a
-- new migration that drops and re-adds this constraint, and a new variant.
ALTER TABLE stripe_events ADD CONSTRAINT stripe_events_outcome_known CHECK (outcome IN (
    'credited',
    'replayed',
    'ignored',
    'awaiting_payment',
    'recorded',
    'reversed',
    'already_reversed',
    'unmatched_reversal',
    'user_unknown',
    'ledger_unavailable',
    'store_unavailable',
    'unknown_price',
    'malformed',
    'failed'
));

-- Two more acknowledged outcomes of the Stripe webhook, for its safety settings:
-- `ignored_other_mode` (a live event at a test-mode endpoint, or the reverse: never credited) and
-- `ignored_unknown_product` (a paid checkout for something the catalog does not sell, with
-- `--stripe-unknown-products ignore`). The list is src/webhook/outcome.rs's EventOutcome::ALL.
ALTER TABLE stripe_events DROP CONSTRAINT stripe_events_outcome_known;
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
    'failed',
    'ignored_other_mode',
    'ignored_unknown_product'
));

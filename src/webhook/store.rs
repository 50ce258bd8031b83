//! The webhook adapter's own tables: processed events, customer → user and subscription → user
//! mappings, and reversals waiting for their purchase. (The ledger's tables are never touched
//! from here: every balance change goes through the ledger's gRPC API.)

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::outcome::EventOutcome;

/// A refund or dispute that arrived before its purchase was credited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub kind: ClaimKind,
    /// The charge (refund) or dispute id.
    pub reference: String,
    /// Refund: cumulative refunded amount; dispute: disputed amount.
    pub amount_cents: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    Refund,
    Dispute,
}

impl ClaimKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimKind::Refund => "refund",
            ClaimKind::Dispute => "dispute",
        }
    }
}

/// What the adapter did with one event, as written to `stripe_events`.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub event_id: String,
    pub event_type: String,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub outcome: EventOutcome,
    pub detail: String,
    pub user_id: Option<String>,
    pub transaction_id: Option<String>,
    pub payment_intent: Option<String>,
    pub claim: Option<Claim>,
}

/// A subscription as the adapter knows it.
#[derive(Debug, Clone)]
pub struct KnownSubscription {
    pub user_id: Option<String>,
    pub ended_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct WebhookStore {
    pool: PgPool,
}

impl WebhookStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The hosted webhook's own lane: a pool of at most `connections_max` connections to the
    /// ledger's database, opened lazily with the ledger pool's settings (and following it to
    /// another host when a multi-host URL fails over).
    ///
    /// Why a pool of its own, rather than ledger calls made outside the lock transaction: the
    /// payment intent's lock must span those calls to stay correct. Released between the read of
    /// the share already reversed and `Reverse`, two refund steps of one charge could both top
    /// up from the same total (clawing back twice); released between a refund finding no
    /// purchase and parking itself, the purchase could be credited and look for waiting claims
    /// in that gap, and the refund would stay parked forever (a lost claim). So the lock stays
    /// where it is, and what changes is whose connection holds it: taken from the ledger's pool,
    /// enough concurrent reversals held every connection while their own ledger calls, and every
    /// writer and reader of the ledger, waited for one (`UNAVAILABLE` for all of them at the
    /// acquire timeout). From this pool, the webhook holds at most `connections_max` connections,
    /// none of the ledger's; its ledger calls borrow the ledger's connections only for their own
    /// duration, as any client's do. At the limit, further deliveries wait for one of these
    /// connections (up to the acquire timeout, then 503 `store_unavailable` and Stripe retries).
    pub fn lane(store: &crate::store::Store, connections_max: u32) -> Self {
        let pool = store.side_pool(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(connections_max)
                .acquire_timeout(store.pool().options().get_acquire_timeout()),
            "token-ledger-webhook",
        );
        Self { pool }
    }

    /// Closes the store's pool (the lane's, when it has one of its own).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn customer_user(&self, customer: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT user_id FROM stripe_customers WHERE customer_id = $1")
            .bind(customer)
            .fetch_optional(&self.pool)
            .await
    }

    /// The first mapping of a customer wins; a checkout that names another user for the same
    /// customer is logged, not obeyed.
    pub async fn link_customer(&self, customer: &str, user_id: &str) -> Result<(), sqlx::Error> {
        let existing: Option<String> = sqlx::query_scalar(
            "INSERT INTO stripe_customers (customer_id, user_id) VALUES ($1, $2) \
             ON CONFLICT (customer_id) DO UPDATE SET customer_id = EXCLUDED.customer_id \
             RETURNING user_id",
        )
        .bind(customer)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(existing) = existing.filter(|u| u != user_id) {
            tracing::warn!(customer, existing_user = %existing, new_user = user_id, "Stripe customer already belongs to another user; keeping the first");
        }
        Ok(())
    }

    pub async fn subscription(&self, id: &str) -> Result<Option<KnownSubscription>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT user_id, ended_at FROM stripe_subscriptions WHERE subscription_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(KnownSubscription {
                user_id: r.try_get("user_id")?,
                ended_at: r.try_get("ended_at")?,
            })
        })
        .transpose()
    }

    pub async fn link_subscription(&self, id: &str, user_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO stripe_subscriptions (subscription_id, user_id) VALUES ($1, $2) \
             ON CONFLICT (subscription_id) DO UPDATE \
             SET user_id = COALESCE(stripe_subscriptions.user_id, EXCLUDED.user_id), updated_at = now()",
        )
        .bind(id)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    pub async fn end_subscription(
        &self,
        id: &str,
        ended_at: DateTime<Utc>,
        user_id: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO stripe_subscriptions (subscription_id, user_id, status, ended_at) \
             VALUES ($1, $2, 'ended', $3) \
             ON CONFLICT (subscription_id) DO UPDATE SET status = 'ended', \
             ended_at = LEAST(COALESCE(stripe_subscriptions.ended_at, EXCLUDED.ended_at), EXCLUDED.ended_at), \
             user_id = COALESCE(stripe_subscriptions.user_id, EXCLUDED.user_id), updated_at = now()",
        )
        .bind(id)
        .bind(user_id)
        .bind(ended_at)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Records (or updates, counting deliveries) what was done with an event.
    pub async fn record_event(&self, r: &EventRecord) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO stripe_events (event_id, event_type, livemode, outcome, first_outcome, detail, user_id, \
             transaction_id, payment_intent, claim_kind, claim_reference, claim_amount_cents, api_version) \
             VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (event_id) DO UPDATE SET outcome = EXCLUDED.outcome, detail = EXCLUDED.detail, \
             api_version = COALESCE(EXCLUDED.api_version, stripe_events.api_version), \
             user_id = COALESCE(EXCLUDED.user_id, stripe_events.user_id), \
             transaction_id = COALESCE(EXCLUDED.transaction_id, stripe_events.transaction_id), \
             payment_intent = COALESCE(EXCLUDED.payment_intent, stripe_events.payment_intent), \
             claim_kind = EXCLUDED.claim_kind, claim_reference = EXCLUDED.claim_reference, \
             claim_amount_cents = EXCLUDED.claim_amount_cents, \
             deliveries = stripe_events.deliveries + 1, last_seen_at = now()",
        )
        .bind(&r.event_id)
        .bind(&r.event_type)
        .bind(r.livemode)
        .bind(r.outcome.as_str())
        .bind(&r.detail)
        .bind(&r.user_id)
        .bind(&r.transaction_id)
        .bind(&r.payment_intent)
        .bind(r.claim.as_ref().map(|c| c.kind.as_str()))
        .bind(r.claim.as_ref().map(|c| c.reference.as_str()))
        .bind(r.claim.as_ref().map(|c| c.amount_cents))
        .bind(&r.api_version)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Parks a refund or dispute whose purchase is not credited yet, inside the transaction that
    /// holds the payment intent's lock, so a purchase credited right after cannot miss it. The
    /// delivery itself is counted by `record_event` afterwards. (`'unmatched_reversal'`, here and
    /// in `waiting_claims`, is `EventOutcome::UnmatchedReversal` written out, as the partial index
    /// `stripe_events_unmatched_idx` needs a literal to match its predicate.)
    pub async fn park_claim(
        tx: &mut Transaction<'static, Postgres>,
        r: &EventRecord,
    ) -> Result<(), sqlx::Error> {
        let Some(claim) = &r.claim else {
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO stripe_events (event_id, event_type, livemode, outcome, first_outcome, detail, \
             payment_intent, claim_kind, claim_reference, claim_amount_cents, deliveries, api_version) \
             VALUES ($1, $2, $3, 'unmatched_reversal', 'unmatched_reversal', $4, $5, $6, $7, $8, 0, $9) \
             ON CONFLICT (event_id) DO UPDATE SET outcome = 'unmatched_reversal', detail = EXCLUDED.detail, \
             payment_intent = EXCLUDED.payment_intent, claim_kind = EXCLUDED.claim_kind, \
             claim_reference = EXCLUDED.claim_reference, claim_amount_cents = EXCLUDED.claim_amount_cents",
        )
        .bind(&r.event_id)
        .bind(&r.event_type)
        .bind(r.livemode)
        .bind(&r.detail)
        .bind(&r.payment_intent)
        .bind(claim.kind.as_str())
        .bind(&claim.reference)
        .bind(claim.amount_cents)
        .bind(&r.api_version)
        .execute(&mut **tx)
        .await
        .map(|_| ())
    }

    /// Refunds and disputes of `payment_intent` still waiting for its purchase, read inside the
    /// transaction that holds its lock (see `lock_payment_intent`).
    pub async fn waiting_claims(
        lock: &mut Transaction<'static, Postgres>,
        payment_intent: &str,
    ) -> Result<Vec<(String, Claim)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT event_id, claim_kind, claim_reference, claim_amount_cents FROM stripe_events \
             WHERE outcome = 'unmatched_reversal' AND payment_intent = $1 ORDER BY first_seen_at",
        )
        .bind(payment_intent)
        .fetch_all(&mut **lock)
        .await?;
        let mut claims = Vec::new();
        for r in rows {
            let kind = match r.try_get::<Option<String>, _>("claim_kind")?.as_deref() {
                Some("refund") => ClaimKind::Refund,
                Some("dispute") => ClaimKind::Dispute,
                _ => continue,
            };
            claims.push((
                r.try_get("event_id")?,
                Claim {
                    kind,
                    reference: r
                        .try_get::<Option<String>, _>("claim_reference")?
                        .unwrap_or_default(),
                    amount_cents: r
                        .try_get::<Option<i64>, _>("claim_amount_cents")?
                        .unwrap_or_default(),
                },
            ));
        }
        Ok(claims)
    }

    /// Records what became of a waiting claim, in the transaction holding its payment intent's
    /// lock, so it commits (or not) with the reversals applied under that lock.
    pub async fn settle_claim(
        lock: &mut Transaction<'static, Postgres>,
        event_id: &str,
        outcome: EventOutcome,
        detail: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE stripe_events SET outcome = $2, detail = $3 WHERE event_id = $1")
            .bind(event_id)
            .bind(outcome.as_str())
            .bind(detail)
            .execute(&mut **lock)
            .await
            .map(|_| ())
    }

    /// Serialises every reversal of one payment intent (refund steps, disputes, retries) across
    /// concurrent deliveries and adapter processes: the lock is held until the returned
    /// transaction ends.
    ///
    /// The lock is held across ledger calls (reading the share already reversed, then `Reverse`;
    /// or finding no purchase, then parking the claim), so the transaction's connection is busy
    /// for as long as those calls take. Every other store call made while it is held goes
    /// through the same transaction (`park_claim`, `waiting_claims`, `settle_claim`): a request
    /// never waits for a second connection of this store's pool while holding one, so however
    /// small the pool (see `WebhookStore::lane`), the webhook cannot deadlock on it.
    pub async fn lock_payment_intent(
        &self,
        payment_intent: &str,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // A row lock on the payment intent's row (migration 0015), created on first use: a second
        // transaction inserting the same new row waits on the first's unique-index entry, then
        // locks the row. (An advisory lock did this before; CockroachDB has none, and Citus keeps
        // one on the node that takes it.)
        sqlx::query(
            "INSERT INTO stripe_reversal_locks (payment_intent) VALUES ($1) \
             ON CONFLICT (payment_intent) DO UPDATE SET locked_at = now()",
        )
        .bind(payment_intent)
        .execute(&mut *tx)
        .await?;
        Ok(tx)
    }
}

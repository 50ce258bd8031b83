//! From a verified Stripe event to ledger calls. Every call carries an idempotency key derived
//! from the Stripe object it pays for (never from the event id), so a retried delivery, a twin
//! event (checkout + first invoice) or a second adapter process is a replay, not a second credit.

use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, Utc};

use super::catalog::{Catalog, Expires, Product, ProductKind};
use super::event::{self, CheckoutSession, Envelope, Invoice};
use super::ledger_port::{answer, Answer, LedgerPort};
use super::outcome::{EventOutcome, Fail};
use super::store::{Claim, ClaimKind, EventRecord, WebhookStore};
use crate::pb;

/// The length of a drip cycle, used for the first cycle when it is credited from the checkout
/// session (which carries no billing period).
const DRIP_CYCLE_DAYS: i64 = 28;

/// What was done with an event, and the HTTP status Stripe gets.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub http_status: u16,
    pub record: EventRecord,
}

impl Outcome {
    /// An event acknowledged without acting on it.
    pub fn acknowledged(env: &Envelope, outcome: EventOutcome, detail: String) -> Self {
        Self {
            http_status: outcome.http_status(),
            record: EventRecord {
                event_id: env.id.clone(),
                event_type: env.event_type.clone(),
                livemode: env.livemode,
                api_version: env.api_version.clone(),
                outcome,
                detail,
                user_id: None,
                transaction_id: None,
                payment_intent: None,
                claim: None,
            },
        }
    }
}

/// The event-to-ledger mapping.
#[derive(Clone)]
pub struct Processor {
    ledger: Arc<dyn LedgerPort>,
    store: WebhookStore,
    catalog: Arc<Catalog>,
}

struct Done {
    outcome: EventOutcome,
    detail: String,
    user_id: Option<String>,
    transaction_id: Option<String>,
    payment_intent: Option<String>,
    claim: Option<Claim>,
}

impl Done {
    fn new(outcome: EventOutcome, detail: impl Into<String>) -> Self {
        assert!(
            outcome.is_acknowledged(),
            "{outcome} is a failure, not a handled event"
        );
        Self {
            outcome,
            detail: detail.into(),
            user_id: None,
            transaction_id: None,
            payment_intent: None,
            claim: None,
        }
    }
    /// The record of an event that was not handled (yet).
    fn unhandled(outcome: EventOutcome, detail: String) -> Self {
        Self {
            outcome,
            detail,
            user_id: None,
            transaction_id: None,
            payment_intent: None,
            claim: None,
        }
    }
    fn ignored(detail: impl Into<String>) -> Self {
        Self::new(EventOutcome::Ignored, detail)
    }
    fn credit(user_id: &str, transaction_id: String, replayed: bool, what: String) -> Self {
        let (outcome, verb) = if replayed {
            (EventOutcome::Replayed, "already credited")
        } else {
            (EventOutcome::Credited, "credited")
        };
        Self {
            user_id: Some(user_id.to_string()),
            transaction_id: Some(transaction_id),
            ..Self::new(outcome, format!("{verb}: {what}"))
        }
    }
}

/// The end of a first drip cycle that starts at `start` (a checkout's `created`, which is the
/// sender's to choose), or `None` when it does not fit an i64.
fn first_cycle_end(start: i64) -> Option<i64> {
    start.checked_add(ChronoDuration::days(DRIP_CYCLE_DAYS).num_seconds())
}

/// When the tokens of `product` paid for a period ending at `period_end` (unix seconds) expire;
/// `Ok(None)`: never. Computed from the event and the catalog alone, so a redelivery builds the
/// same request (the ledger's idempotency fingerprint includes the expiry).
fn expires_at(
    product: &Product,
    period_end: Option<i64>,
    what: &str,
) -> Result<Option<prost_types::Timestamp>, Fail> {
    let Expires::PeriodEnd { grace } = product.expires else {
        return Ok(None);
    };
    let Some(end) = period_end else {
        return Err(Fail::malformed(format!(
            "{what} has no period end, and catalog product {} expires at its period end",
            product.name
        )));
    };
    let Some(at) = end.checked_add(grace.num_seconds()) else {
        return Err(Fail::malformed(format!(
            "{what} ends at {end}: no timestamp holds that plus a grace of {} s",
            grace.num_seconds()
        )));
    };
    Ok(ts(at))
}

fn ts(secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    })
}

impl Processor {
    pub fn new(ledger: Arc<dyn LedgerPort>, store: WebhookStore, catalog: Arc<Catalog>) -> Self {
        Self {
            ledger: Arc::new(super::ledger_port::Timed(ledger)),
            store,
            catalog,
        }
    }

    pub fn store(&self) -> &WebhookStore {
        &self.store
    }

    /// Handles one verified event.
    pub async fn process(&self, env: &Envelope) -> Outcome {
        let result = match env.event_type.as_str() {
            "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
                self.checkout(env).await
            }
            // Stripe sends both for a paid invoice; they are twins (same keys), so either or
            // both may be enabled.
            "invoice.paid" | "invoice.payment_succeeded" => self.invoice_paid(env).await,
            "charge.refunded" => self.charge_refunded(env).await,
            "charge.dispute.created" => self.dispute_created(env).await,
            "customer.subscription.deleted" => self.subscription_deleted(env).await,
            other => {
                tracing::debug!(event_type = other, "event type not handled; acknowledged");
                Ok(Done::ignored(format!("event type {other} is not handled")))
            }
        };
        let done = match result {
            Ok(done) => done,
            Err(fail) => {
                let Fail { outcome, detail } = fail;
                match outcome.http_status() {
                    400 => {
                        tracing::error!(%outcome, %detail, "Stripe event rejected (400): Stripe will retry until this is fixed")
                    }
                    503 => {
                        tracing::warn!(%outcome, %detail, "Stripe event not handled yet (503): Stripe will retry")
                    }
                    status => tracing::error!(%outcome, %detail, status, "Stripe event failed"),
                }
                Done::unhandled(outcome, detail)
            }
        };
        Outcome {
            http_status: done.outcome.http_status(),
            record: EventRecord {
                event_id: env.id.clone(),
                event_type: env.event_type.clone(),
                livemode: env.livemode,
                api_version: env.api_version.clone(),
                outcome: done.outcome,
                detail: done.detail,
                user_id: done.user_id,
                transaction_id: done.transaction_id,
                payment_intent: done.payment_intent,
                claim: done.claim,
            },
        }
    }

    /// The user an object belongs to: its own hints, then what checkout taught us about its
    /// subscription or customer.
    async fn resolve_user(
        &self,
        hints: &[String],
        subscription: Option<&str>,
        customer: Option<&str>,
        what: &str,
    ) -> Result<String, Fail> {
        if let Some(user) = hints.first() {
            return Ok(user.clone());
        }
        if let Some(sub) = subscription {
            if let Some(user) = self.store.subscription(sub).await?.and_then(|s| s.user_id) {
                return Ok(user);
            }
        }
        if let Some(customer) = customer {
            if let Some(user) = self.store.customer_user(customer).await? {
                return Ok(user);
            }
        }
        Err(Fail::new(
            EventOutcome::UserUnknown,
            format!(
                "no user for {what}: no client_reference_id or metadata.user_id, and neither subscription {} nor customer {} has been seen at checkout yet",
                subscription.unwrap_or("-"),
                customer.unwrap_or("-")
            ),
        ))
    }

    async fn checkout(&self, env: &Envelope) -> Result<Done, Fail> {
        let session = event::checkout_session(&env.object).map_err(Fail::malformed)?;
        if session.status.as_deref().is_some_and(|s| s != "complete") {
            return Ok(Done::ignored(format!(
                "checkout session {} is not complete",
                session.id
            )));
        }
        let paid = matches!(
            session.payment_status.as_str(),
            "paid" | "no_payment_required"
        );
        match (session.mode.as_str(), paid) {
            ("payment", true) => self.purchase(&session).await,
            ("subscription", true) => self.subscription_checkout(&session).await,
            (_, false) if session.payment_status == "unpaid" => Ok(Done::new(
                EventOutcome::AwaitingPayment,
                format!(
                    "checkout session {} is unpaid (delayed payment method); credited on checkout.session.async_payment_succeeded",
                    session.id
                ),
            )),
            (mode, _) => Ok(Done::ignored(format!(
                "checkout session {} (mode {mode}, payment_status {}) credits nothing",
                session.id, session.payment_status
            ))),
        }
    }

    async fn link_checkout(&self, session: &CheckoutSession, user: &str) -> Result<(), Fail> {
        if let Some(customer) = &session.customer {
            self.store.link_customer(customer, user).await?;
        }
        if let Some(sub) = &session.subscription {
            self.store.link_subscription(sub, user).await?;
        }
        Ok(())
    }

    async fn purchase(&self, session: &CheckoutSession) -> Result<Done, Fail> {
        let Some(payment_intent) = session.payment_intent.clone() else {
            return Ok(Done::ignored(format!(
                "checkout session {} has no payment intent: nothing was charged",
                session.id
            )));
        };
        let product = self.pack_for(session)?;
        let user = self
            .resolve_user(
                &session.users,
                None,
                session.customer.as_deref(),
                &format!("checkout session {}", session.id),
            )
            .await?;
        self.link_checkout(session, &user).await?;
        let request = pb::RecordPurchaseRequest {
            user_id: user.clone(),
            tokens: product.tokens,
            idempotency_key: format!("stripe:purchase:{payment_intent}"),
            amount_paid_cents: session.amount_total.unwrap_or(0),
            currency: session
                .currency
                .clone()
                .unwrap_or_else(|| "usd".into())
                .to_lowercase(),
            stripe_payment_intent_id: payment_intent.clone(),
            stripe_checkout_session_id: session.id.clone(),
            pack: product.name.clone(),
            // A pack pays for no period: the catalog refuses any expiry but "never".
            expires_at: None,
            priority: product.priority,
        };
        let what = format!(
            "{} ({} tokens) for payment intent {payment_intent}",
            product.name, product.tokens
        );
        let mut done = self.credit_answer(
            &user,
            answer(self.ledger.record_purchase(request).await)?
                .map(|r| (r.transaction_id, r.replayed)),
            what,
        )?;
        self.settle_waiting_claims(&payment_intent).await?;
        done.payment_intent = Some(payment_intent);
        Ok(done)
    }

    /// The token pack a one-off checkout buys; any other product (or none) is a catalog gap.
    fn pack_for(&self, session: &CheckoutSession) -> Result<&Product, Fail> {
        let product = self
            .catalog
            .for_checkout(session, &[ProductKind::Pack])
            .ok_or_else(|| {
                Fail::unknown_price(format!(
                    "catalog gap: checkout session {} names no catalog product (metadata.pack/product/price_id/lookup_key: {:?})",
                    session.id, session.product_keys
                ))
            })?;
        if product.kind != ProductKind::Pack {
            return Err(Fail::unknown_price(format!(
                "catalog product {} is not a token pack, but checkout session {} is a one-off payment",
                product.name, session.id
            )));
        }
        Ok(product)
    }

    /// Claws back the refunds and disputes that arrived before the purchase of `payment_intent`
    /// was credited, under the payment intent's lock (a claim parks itself under the same lock,
    /// so none is missed). If that fails, the answer is 503: the redelivery replays the purchase
    /// and retries.
    async fn settle_waiting_claims(&self, payment_intent: &str) -> Result<(), Fail> {
        let mut lock = self.store.lock_payment_intent(payment_intent).await?;
        for (event_id, claim) in WebhookStore::waiting_claims(&mut lock, payment_intent).await? {
            let settled = self
                .apply_claim_locked(&mut lock, payment_intent, &claim, None)
                .await?;
            WebhookStore::settle_claim(&mut lock, &event_id, settled.outcome, &settled.detail)
                .await?;
            tracing::info!(%event_id, outcome = %settled.outcome, "applied a reversal that was waiting for its purchase");
        }
        lock.commit().await?;
        Ok(())
    }

    async fn subscription_checkout(&self, session: &CheckoutSession) -> Result<Done, Fail> {
        let Some(sub) = session.subscription.clone() else {
            return Ok(Done::ignored(format!(
                "subscription checkout {} has no subscription",
                session.id
            )));
        };
        let user = self
            .resolve_user(
                &session.users,
                Some(&sub),
                session.customer.as_deref(),
                &format!("checkout session {}", session.id),
            )
            .await?;
        self.link_checkout(session, &user).await?;
        let subscription_kinds = [ProductKind::Annual, ProductKind::Drip];
        let Some(product) = self.catalog.for_checkout(session, &subscription_kinds) else {
            let mut done = Done::new(
                EventOutcome::Recorded,
                format!("subscription {sub} belongs to {user}; its first invoice (invoice.paid) credits it"),
            );
            done.user_id = Some(user);
            return Ok(done);
        };
        match product.kind {
            ProductKind::Annual => match &session.invoice {
                // The session carries no period, so tokens that expire at the period's end wait
                // for the invoice, whose line has it (one grant either way: the key is the
                // invoice's).
                Some(_) if product.expires != Expires::Never => {
                    let mut done = Done::new(
                        EventOutcome::Recorded,
                        format!("subscription {sub} belongs to {user}; {} expires at its period end, which only its invoice (invoice.paid) carries, so that credits it", product.name),
                    );
                    done.user_id = Some(user);
                    Ok(done)
                }
                Some(invoice) => self.grant_annual(&user, product, &sub, invoice, None).await,
                None => {
                    let mut done = Done::new(
                        EventOutcome::Recorded,
                        format!("subscription {sub} belongs to {user}; the session names no invoice, so invoice.paid credits it"),
                    );
                    done.user_id = Some(user);
                    Ok(done)
                }
            },
            ProductKind::Drip => {
                // The session has no billing period: the cycle starts at checkout (and tokens
                // that expire at the period's end expire 28 days on; if the invoice twin credits
                // the cycle first, its line's period decides instead).
                let start = session.created.unwrap_or_else(|| Utc::now().timestamp());
                let Some(end) = first_cycle_end(start) else {
                    return Err(Fail::new(
                        EventOutcome::Malformed,
                        format!(
                            "checkout session {} was created at {start}: no cycle can start then",
                            session.id
                        ),
                    ));
                };
                self.drip(
                    &user,
                    product,
                    &sub,
                    session.invoice.as_deref(),
                    start,
                    end,
                    true,
                )
                .await
            }
            ProductKind::Pack => Err(Fail::unknown_price(format!(
                "catalog product {} is a token pack, but checkout session {} is a subscription",
                product.name, session.id
            ))),
        }
    }

    async fn grant_annual(
        &self,
        user: &str,
        product: &Product,
        sub: &str,
        invoice: &str,
        period_end: Option<i64>,
    ) -> Result<Done, Fail> {
        let expires_at = expires_at(product, period_end, &format!("invoice {invoice}"))?;
        let request = pb::GrantRequest {
            user_id: user.to_string(),
            tokens: product.tokens,
            idempotency_key: format!("stripe:annual:{invoice}"),
            source: pb::GrantSource::AnnualSubscription as i32,
            reason: format!("annual subscription {}", product.name),
            stripe_subscription_id: sub.to_string(),
            stripe_invoice_id: invoice.to_string(),
            expires_at,
            priority: product.priority,
        };
        let what = format!(
            "{} ({} tokens) for invoice {invoice}",
            product.name, product.tokens
        );
        self.credit_answer(
            user,
            answer(self.ledger.grant(request).await)?.map(|r| (r.transaction_id, r.replayed)),
            what,
        )
    }

    #[allow(clippy::too_many_arguments)]
    async fn drip(
        &self,
        user: &str,
        product: &Product,
        sub: &str,
        invoice: Option<&str>,
        period_start: i64,
        period_end: i64,
        first_cycle: bool,
    ) -> Result<Done, Fail> {
        if let Some(known) = self.store.subscription(sub).await? {
            let start = DateTime::from_timestamp(period_start, 0);
            if let (Some(ended), Some(start)) = (known.ended_at, start) {
                if start >= ended {
                    return Ok(Done::ignored(format!(
                        "subscription {sub} ended at {ended}: no more drips"
                    )));
                }
            }
        }
        // The first cycle has one key whichever event credits it (checkout or first invoice);
        // later cycles are keyed by their invoice.
        let idempotency_key = match (first_cycle, invoice) {
            (true, _) => format!("stripe:drip:{sub}:first"),
            (false, Some(invoice)) => format!("stripe:drip:{sub}:{invoice}"),
            (false, None) => format!("stripe:drip:{sub}:{period_start}"),
        };
        let expires_at = expires_at(
            product,
            Some(period_end),
            &format!("subscription {sub} cycle starting {period_start}"),
        )?;
        let request = pb::DripRequest {
            user_id: user.to_string(),
            tokens: product.tokens,
            idempotency_key,
            stripe_subscription_id: sub.to_string(),
            stripe_invoice_id: invoice.unwrap_or_default().to_string(),
            period_start: ts(period_start),
            period_end: ts(period_end),
            expires_at,
            priority: product.priority,
            rollover: product.rollover.map(|r| pb::Rollover {
                max_tokens: r.max_tokens,
                max_percent: r.max_percent,
            }),
        };
        let what = format!(
            "{} ({} tokens) for subscription {sub} cycle starting {period_start}",
            product.name, product.tokens
        );
        self.credit_answer(
            user,
            answer(self.ledger.drip(request).await)?.map(|r| (r.transaction_id, r.replayed)),
            what,
        )
    }

    fn credit_answer(
        &self,
        user: &str,
        answer: Answer<(String, bool)>,
        what: String,
    ) -> Result<Done, Fail> {
        match answer {
            Answer::Done((id, replayed)) => Ok(Done::credit(user, id, replayed, what)),
            Answer::AlreadyDone(msg) => {
                tracing::info!(%msg, "already credited by its twin event");
                Ok(Done {
                    user_id: Some(user.to_string()),
                    ..Done::new(
                        EventOutcome::Replayed,
                        format!("already credited ({what}): {msg}"),
                    )
                })
            }
            Answer::Refused(msg) => Err(Fail::failed(msg)),
            Answer::NotFound => Err(Fail::failed("ledger answered NOT_FOUND to a credit")),
        }
    }

    async fn invoice_paid(&self, env: &Envelope) -> Result<Done, Fail> {
        let inv: Invoice = event::invoice(&env.object).map_err(Fail::malformed)?;
        let first_cycle = match inv.billing_reason.as_str() {
            "subscription_create" => true,
            "subscription_cycle" => false,
            "subscription_update" => {
                return Ok(Done::ignored(format!(
                    "invoice {} is a proration (subscription_update): nothing to credit",
                    inv.id
                )))
            }
            other => {
                return Ok(Done::ignored(format!(
                    "invoice {} has billing_reason {other:?}: nothing to credit",
                    inv.id
                )))
            }
        };
        let Some(sub) = inv.subscription.clone() else {
            return Ok(Done::ignored(format!(
                "invoice {} has no subscription",
                inv.id
            )));
        };
        let Some((product, line)) = self.catalog.for_invoice(&inv) else {
            let prices: Vec<_> = inv
                .lines
                .iter()
                .filter(|l| !l.proration)
                .filter_map(|l| l.price_id.clone())
                .collect();
            return Err(Fail::unknown_price(format!(
                "catalog gap: invoice {} has no line with a catalog price (prices {prices:?}{})",
                inv.id,
                if inv.lines_has_more {
                    ", more lines not included"
                } else {
                    ""
                }
            )));
        };
        let user = self
            .resolve_user(
                &inv.users,
                Some(&sub),
                inv.customer.as_deref(),
                &format!("invoice {}", inv.id),
            )
            .await?;
        self.store.link_subscription(&sub, &user).await?;
        if let Some(customer) = &inv.customer {
            self.store.link_customer(customer, &user).await?;
        }
        match product.kind {
            ProductKind::Annual => {
                let period_end = line.and_then(|l| l.period_end);
                self.grant_annual(&user, product, &sub, &inv.id, period_end)
                    .await
            }
            ProductKind::Drip => {
                let (Some(start), Some(end)) = (
                    line.and_then(|l| l.period_start),
                    line.and_then(|l| l.period_end),
                ) else {
                    return Err(Fail::malformed(format!(
                        "invoice {} line has no period",
                        inv.id
                    )));
                };
                self.drip(&user, product, &sub, Some(&inv.id), start, end, first_cycle)
                    .await
            }
            ProductKind::Pack => Ok(Done::ignored(format!(
                "invoice {} is for token pack {}: packs are credited at checkout",
                inv.id, product.name
            ))),
        }
    }

    async fn charge_refunded(&self, env: &Envelope) -> Result<Done, Fail> {
        let charge = event::charge_refund(&env.object).map_err(Fail::malformed)?;
        let Some(pi) = charge.payment_intent.clone() else {
            return Ok(Done::ignored(format!(
                "charge {} has no payment intent: not a token pack",
                charge.charge_id
            )));
        };
        if charge.amount_refunded <= 0 {
            return Ok(Done::ignored(format!(
                "charge {} has nothing refunded",
                charge.charge_id
            )));
        }
        let claim = Claim {
            kind: ClaimKind::Refund,
            reference: charge.charge_id.clone(),
            amount_cents: charge.amount_refunded,
        };
        self.claim(env, pi, claim).await
    }

    async fn dispute_created(&self, env: &Envelope) -> Result<Done, Fail> {
        let dispute = event::dispute(&env.object).map_err(Fail::malformed)?;
        let Some(pi) = dispute.payment_intent.clone() else {
            return Ok(Done::ignored(format!(
                "dispute {} names no payment intent (charge {:?}): cannot find its purchase",
                dispute.id, dispute.charge_id
            )));
        };
        let claim = Claim {
            kind: ClaimKind::Dispute,
            reference: dispute.id.clone(),
            amount_cents: dispute.amount,
        };
        self.claim(env, pi, claim).await
    }

    /// Applies a refund or dispute, or parks it until its purchase is credited.
    async fn claim(&self, env: &Envelope, pi: String, claim: Claim) -> Result<Done, Fail> {
        // One claim per payment intent at a time: the share already reversed is read, then
        // topped up, with no other claim (or waiting-claim check) of the same purchase between.
        let mut lock = self.store.lock_payment_intent(&pi).await?;
        let mut done = self
            .apply_claim_locked(&mut lock, &pi, &claim, Some(env))
            .await?;
        lock.commit().await?;
        if done.outcome == EventOutcome::UnmatchedReversal {
            done.claim = Some(claim);
        }
        done.payment_intent = Some(pi);
        Ok(done)
    }

    /// Applies `claim` while the caller holds the payment intent's lock in `lock`. With `park`,
    /// a claim whose purchase is not credited yet is parked in the same transaction.
    async fn apply_claim_locked(
        &self,
        lock: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        pi: &str,
        claim: &Claim,
        park: Option<&Envelope>,
    ) -> Result<Done, Fail> {
        let lookup = pb::GetTransactionRequest {
            lookup: Some(pb::get_transaction_request::Lookup::StripePaymentIntentId(
                pi.to_string(),
            )),
        };
        let found = match answer(self.ledger.get_transaction(lookup).await)? {
            Answer::Done(found) => found,
            Answer::NotFound => return wait_for_purchase(lock, pi, claim, park).await,
            Answer::AlreadyDone(msg) | Answer::Refused(msg) => return Err(Fail::failed(msg)),
        };
        let purchase = found.transaction.unwrap_or_default();
        let due = reversal_due(&purchase, found.reversed_tokens, claim);
        let mut done = if due.tokens <= 0 {
            Done::new(
                EventOutcome::AlreadyReversed,
                format!(
                    "{} {}: {} of {} tokens already reversed",
                    claim.kind.as_str(),
                    claim.reference,
                    found.reversed_tokens,
                    purchase.token_amount
                ),
            )
        } else {
            self.reverse(&found.user_id, &purchase.id, claim, due)
                .await?
        };
        done.user_id = Some(found.user_id);
        Ok(done)
    }

    /// Claws back `due` of purchase `purchase_id` for `claim`.
    async fn reverse(
        &self,
        user_id: &str,
        purchase_id: &str,
        claim: &Claim,
        due: Reversal,
    ) -> Result<Done, Fail> {
        let request = pb::ReverseRequest {
            user_id: user_id.to_string(),
            tokens: due.tokens,
            idempotency_key: due.idempotency_key,
            original_transaction_id: purchase_id.to_string(),
            source: due.source as i32,
            reason: format!("stripe {} {}", claim.kind.as_str(), claim.reference),
            stripe_reference: claim.reference.clone(),
        };
        match answer(self.ledger.reverse(request).await)? {
            Answer::Done(r) => Ok(Done {
                transaction_id: Some(r.transaction_id),
                ..Done::new(
                    if r.replayed {
                        EventOutcome::Replayed
                    } else {
                        EventOutcome::Reversed
                    },
                    format!(
                        "{} {}: {} tokens of purchase {purchase_id} clawed back",
                        claim.kind.as_str(),
                        claim.reference,
                        due.tokens
                    ),
                )
            }),
            Answer::AlreadyDone(msg) | Answer::Refused(msg) => {
                Ok(Done::new(EventOutcome::AlreadyReversed, msg))
            }
            Answer::NotFound => Err(Fail::failed(format!("purchase {purchase_id} vanished"))),
        }
    }

    async fn subscription_deleted(&self, env: &Envelope) -> Result<Done, Fail> {
        let sub = event::ended_subscription(&env.object).map_err(Fail::malformed)?;
        let ended_at = sub
            .ended_at
            .and_then(|t| DateTime::from_timestamp(t, 0))
            .unwrap_or_else(Utc::now);
        self.store
            .end_subscription(&sub.id, ended_at, sub.users.first().map(String::as_str))
            .await?;
        let mut done = Done::new(
            EventOutcome::Recorded,
            format!("subscription {} ended at {ended_at}: no more drips", sub.id),
        );
        done.user_id = sub.users.first().cloned();
        Ok(done)
    }
}

/// No purchase is credited for `pi` yet: the claim waits for it. With `park` (the claim's own
/// delivery, not a purchase settling waiting claims), it is parked in `lock`'s transaction, so
/// the purchase, which looks for waiting claims under the same lock, cannot miss it.
async fn wait_for_purchase(
    lock: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    pi: &str,
    claim: &Claim,
    park: Option<&Envelope>,
) -> Result<Done, Fail> {
    tracing::warn!(
        payment_intent = pi,
        kind = claim.kind.as_str(),
        "no credited purchase for this payment intent yet; the reversal waits for it"
    );
    let detail = format!(
        "{} {}: no purchase credited for payment intent {pi} yet; clawed back when it is",
        claim.kind.as_str(),
        claim.reference
    );
    if let Some(env) = park {
        let record = EventRecord {
            event_id: env.id.clone(),
            event_type: env.event_type.clone(),
            livemode: env.livemode,
            api_version: env.api_version.clone(),
            outcome: EventOutcome::UnmatchedReversal,
            detail: detail.clone(),
            user_id: None,
            transaction_id: None,
            payment_intent: Some(pi.to_string()),
            claim: Some(claim.clone()),
        };
        WebhookStore::park_claim(lock, &record).await?;
    }
    Ok(Done::new(EventOutcome::UnmatchedReversal, detail))
}

/// What a refund or dispute still has to claw back of its purchase.
#[derive(Debug, PartialEq, Eq)]
struct Reversal {
    /// Zero or less: nothing left to reverse.
    tokens: i64,
    idempotency_key: String,
    source: pb::ReversalSource,
}

/// The claim's share of the purchase's tokens (its amount over the amount paid, all of it when
/// nothing was paid or the claim covers it all), less what is already reversed. A refund is
/// cumulative: it tops the reversals up to the refunded share, keyed by that cumulative amount.
/// A dispute claws back its share once, within what is left.
fn reversal_due(purchase: &pb::Transaction, reversed_tokens: i64, claim: &Claim) -> Reversal {
    let tokens = purchase.token_amount;
    let paid = match &purchase.details {
        Some(pb::transaction::Details::Purchase(p)) => p.amount_paid_cents,
        _ => 0,
    };
    let share = if paid <= 0 || claim.amount_cents >= paid {
        tokens
    } else {
        // i128: tokens × cents cannot overflow; the quotient is below `tokens`.
        (i128::from(tokens) * i128::from(claim.amount_cents) / i128::from(paid)) as i64
    };
    match claim.kind {
        ClaimKind::Refund => Reversal {
            tokens: share - reversed_tokens,
            idempotency_key: format!("stripe:refund:{}:{}", claim.reference, claim.amount_cents),
            source: pb::ReversalSource::Refund,
        },
        ClaimKind::Dispute => Reversal {
            tokens: share.min(tokens - reversed_tokens),
            idempotency_key: format!("stripe:dispute:{}", claim.reference),
            source: pb::ReversalSource::Dispute,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase(tokens: i64, paid_cents: i64) -> pb::Transaction {
        pb::Transaction {
            token_amount: tokens,
            details: Some(pb::transaction::Details::Purchase(pb::PurchaseDetails {
                amount_paid_cents: paid_cents,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn claim(kind: ClaimKind, amount_cents: i64) -> Claim {
        Claim {
            kind,
            reference: "ch_1".into(),
            amount_cents,
        }
    }

    #[test]
    fn a_refund_tops_the_reversals_up_to_its_cumulative_share() {
        let p = purchase(2_000_000, 9_900);
        let half = reversal_due(&p, 0, &claim(ClaimKind::Refund, 4_950));
        assert_eq!(
            (half.tokens, half.idempotency_key.as_str()),
            (1_000_000, "stripe:refund:ch_1:4950")
        );
        assert_eq!(
            reversal_due(&p, 1_000_000, &claim(ClaimKind::Refund, 9_900)).tokens,
            1_000_000
        );
        assert_eq!(
            reversal_due(&p, 2_000_000, &claim(ClaimKind::Refund, 4_950)).tokens,
            -1_000_000,
            "a late, smaller step reverses nothing"
        );
    }

    #[test]
    fn a_dispute_claws_back_its_share_within_what_is_left() {
        let p = purchase(2_000_000, 9_900);
        let due = reversal_due(&p, 1_500_000, &claim(ClaimKind::Dispute, 9_900));
        assert_eq!(
            (due.tokens, due.source),
            (500_000, pb::ReversalSource::Dispute)
        );
        assert_eq!(
            reversal_due(&purchase(2_000_000, 0), 0, &claim(ClaimKind::Dispute, 1)).tokens,
            2_000_000,
            "nothing paid: the whole purchase"
        );
    }

    fn product(expires: Expires) -> Product {
        Product {
            name: "plan".into(),
            kind: ProductKind::Drip,
            tokens: 375_000,
            price_ids: Vec::new(),
            lookup_keys: Vec::new(),
            amount_cents: None,
            expires,
            priority: 0,
            rollover: None,
        }
    }

    #[test]
    fn tokens_expire_at_their_period_end_plus_grace_or_never() {
        let day = ChronoDuration::days(1);
        let never = product(Expires::Never);
        assert_eq!(expires_at(&never, Some(100), "invoice in_1").unwrap(), None);
        assert_eq!(expires_at(&never, None, "invoice in_1").unwrap(), None);
        let graced = product(Expires::PeriodEnd { grace: day });
        assert_eq!(
            expires_at(&graced, Some(100), "invoice in_1").unwrap(),
            ts(100 + 86_400)
        );
        let no_period = expires_at(&graced, None, "invoice in_1").unwrap_err();
        assert_eq!(no_period.outcome, EventOutcome::Malformed);
        assert!(no_period.detail.contains("invoice in_1 has no period end"));
        let overflow = expires_at(&graced, Some(i64::MAX - 10), "invoice in_1").unwrap_err();
        assert_eq!(overflow.outcome, EventOutcome::Malformed);
    }

    #[test]
    fn a_first_cycle_from_any_checkout_time_ends_without_overflow() {
        assert_eq!(first_cycle_end(0), Some(DRIP_CYCLE_DAYS * 86_400));
        assert_eq!(first_cycle_end(i64::MAX), None);
        assert_eq!(
            first_cycle_end(i64::MAX - DRIP_CYCLE_DAYS * 86_400),
            Some(i64::MAX)
        );
        assert_eq!(
            first_cycle_end(i64::MIN),
            Some(i64::MIN + DRIP_CYCLE_DAYS * 86_400)
        );
    }
}

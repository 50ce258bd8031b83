//! From a verified Stripe event to ledger calls. Every call carries an idempotency key derived
//! from the Stripe object it pays for (never from the event id), so a retried delivery, a twin
//! event (checkout + first invoice) or a second adapter process is a replay, not a second credit.

use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use tonic::{Code, Status};

use super::catalog::{Catalog, Product, ProductKind};
use super::event::{self, CheckoutSession, Envelope, Invoice};
use super::ledger_port::LedgerPort;
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

/// Why an event could not be handled (yet).
#[derive(Debug)]
enum Fail {
    /// 400: a request Stripe should not send again unchanged (a catalog gap, a malformed object).
    Rejected(&'static str, String),
    /// 503: try again later (user not known yet, ledger or database unreachable).
    Retry(&'static str, String),
    /// 500: a bug or a misconfiguration; logged as an error, Stripe retries.
    Failed(String),
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        let refused_value = match &e {
            sqlx::Error::Database(db) => db.code().is_some_and(|c| is_refused_value(&c)),
            _ => false,
        };
        if refused_value {
            Fail::Rejected(
                "malformed",
                format!("the event holds a value the webhook database cannot store: {e}"),
            )
        } else {
            Fail::Retry("store_unavailable", format!("webhook database error: {e}"))
        }
    }
}

/// Whether a SQLSTATE says the database refused a value itself: class 22 (data exception: a
/// NUL, a timestamp out of range) or 54 (over a limit, such as an id too long for an index
/// entry). The value came from the event, so a retry would only send it again.
fn is_refused_value(sqlstate: &str) -> bool {
    sqlstate.starts_with("22") || sqlstate.starts_with("54")
}

/// A ledger call's answer, sorted by what the adapter does about it.
enum Answer<T> {
    Done(T),
    /// ALREADY_EXISTS: the same Stripe object was credited under the same key with other details
    /// (a twin event carrying slightly different data). Nothing more to do.
    AlreadyDone(String),
    /// FAILED_PRECONDITION.
    Refused(String),
    /// NOT_FOUND.
    NotFound,
}

fn answer<T>(result: Result<T, Status>) -> Result<Answer<T>, Fail> {
    match result {
        Ok(t) => Ok(Answer::Done(t)),
        Err(s) => match s.code() {
            Code::AlreadyExists => Ok(Answer::AlreadyDone(s.message().to_string())),
            Code::FailedPrecondition => Ok(Answer::Refused(s.message().to_string())),
            Code::NotFound => Ok(Answer::NotFound),
            // The event carries a value the ledger will never accept (an over-long user id, a
            // period outside the years a timestamp may hold): as sent, it can never be credited,
            // so retrying (a 5xx) would only repeat the refusal for days.
            Code::InvalidArgument => Err(Fail::Rejected(
                "malformed",
                format!("the ledger refused the event's values: {}", s.message()),
            )),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::ResourceExhausted => {
                Err(Fail::Retry("ledger_unavailable", format!("ledger unavailable: {:?} {}", s.code(), s.message())))
            }
            Code::Unauthenticated | Code::PermissionDenied => Err(Fail::Failed(format!(
                "the ledger refused the webhook's credentials ({:?}: {}); it needs an API key with the billing scope",
                s.code(),
                s.message()
            ))),
            _ => Err(Fail::Failed(format!("ledger answered {:?}: {}", s.code(), s.message()))),
        },
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
    outcome: &'static str,
    detail: String,
    user_id: Option<String>,
    transaction_id: Option<String>,
    payment_intent: Option<String>,
    claim: Option<Claim>,
}

impl Done {
    fn new(outcome: &'static str, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: detail.into(),
            user_id: None,
            transaction_id: None,
            payment_intent: None,
            claim: None,
        }
    }
    fn ignored(detail: impl Into<String>) -> Self {
        Self::new("ignored", detail)
    }
    fn credit(user_id: &str, transaction_id: String, replayed: bool, what: String) -> Self {
        let (outcome, verb) = if replayed {
            ("replayed", "already credited")
        } else {
            ("credited", "credited")
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

fn ts(secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    })
}

impl Processor {
    pub fn new(ledger: Arc<dyn LedgerPort>, store: WebhookStore, catalog: Arc<Catalog>) -> Self {
        Self {
            ledger,
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
        let (http_status, done) = match result {
            Ok(done) => (200, done),
            Err(Fail::Rejected(outcome, detail)) => {
                tracing::error!(%detail, "Stripe event rejected (400): Stripe will retry until this is fixed");
                (400, Done::new(outcome, detail))
            }
            Err(Fail::Retry(outcome, detail)) => {
                tracing::warn!(%detail, "Stripe event not handled yet (503): Stripe will retry");
                (503, Done::new(outcome, detail))
            }
            Err(Fail::Failed(detail)) => {
                tracing::error!(%detail, "Stripe event failed (500)");
                (500, Done::new("failed", detail))
            }
        };
        Outcome {
            http_status,
            record: EventRecord {
                event_id: env.id.clone(),
                event_type: env.event_type.clone(),
                livemode: env.livemode,
                outcome: done.outcome.to_string(),
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
        Err(Fail::Retry(
            "user_unknown",
            format!(
                "no user for {what}: no client_reference_id or metadata.user_id, and neither subscription {} nor customer {} has been seen at checkout yet",
                subscription.unwrap_or("-"),
                customer.unwrap_or("-")
            ),
        ))
    }

    fn product_from_keys(&self, keys: &[String]) -> Option<&Product> {
        keys.iter().find_map(|k| self.catalog.resolve(k))
    }

    async fn checkout(&self, env: &Envelope) -> Result<Done, Fail> {
        let session =
            event::checkout_session(&env.object).map_err(|e| Fail::Rejected("malformed", e))?;
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
                "awaiting_payment",
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
        let product = self
            .product_from_keys(&session.product_keys)
            .or_else(|| {
                // Only when the session names no product at all: a named but unknown one is a
                // catalog gap.
                session
                    .amount_subtotal
                    .or(session.amount_total)
                    .filter(|_| session.product_keys.is_empty())
                    .and_then(|a| self.catalog.resolve_by_amount(a, &[ProductKind::Pack]))
            })
            .ok_or_else(|| {
            Fail::Rejected(
                "unknown_price",
                format!(
                    "catalog gap: checkout session {} names no catalog product (metadata.pack/product/price_id/lookup_key: {:?})",
                    session.id, session.product_keys
                ),
            )
        })?;
        if product.kind != ProductKind::Pack {
            return Err(Fail::Rejected(
                "unknown_price",
                format!(
                    "catalog product {} is not a token pack, but checkout session {} is a one-off payment",
                    product.name, session.id
                ),
            ));
        }
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
        done.payment_intent = Some(payment_intent.clone());
        // Refunds or disputes that arrived before this purchase was credited are clawed back now,
        // under the payment intent's lock (a claim parks itself under the same lock, so none is
        // missed). If that fails, answer 503: the redelivery replays the purchase and retries.
        let mut lock = self.store.lock_payment_intent(&payment_intent).await?;
        for (event_id, claim) in self.store.waiting_claims(&payment_intent).await? {
            let settled = self
                .apply_claim_locked(&mut lock, &payment_intent, &claim, None)
                .await?;
            self.store
                .settle_claim(&event_id, settled.outcome, &settled.detail)
                .await?;
            tracing::info!(%event_id, outcome = settled.outcome, "applied a reversal that was waiting for its purchase");
        }
        lock.commit().await?;
        Ok(done)
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
        let Some(product) = self.product_from_keys(&session.product_keys).or_else(|| {
            session
                .amount_subtotal
                .or(session.amount_total)
                .filter(|_| session.product_keys.is_empty())
                .and_then(|a| self.catalog.resolve_by_amount(a, &subscription_kinds))
        }) else {
            let mut done = Done::new(
                "recorded",
                format!("subscription {sub} belongs to {user}; its first invoice (invoice.paid) credits it"),
            );
            done.user_id = Some(user);
            return Ok(done);
        };
        match product.kind {
            ProductKind::Annual => match &session.invoice {
                Some(invoice) => self.grant_annual(&user, product, &sub, invoice).await,
                None => {
                    let mut done = Done::new(
                        "recorded",
                        format!("subscription {sub} belongs to {user}; the session names no invoice, so invoice.paid credits it"),
                    );
                    done.user_id = Some(user);
                    Ok(done)
                }
            },
            ProductKind::Drip => {
                // The session has no billing period: the cycle starts at checkout.
                let start = session.created.unwrap_or_else(|| Utc::now().timestamp());
                let Some(end) = first_cycle_end(start) else {
                    return Err(Fail::Rejected(
                        "malformed",
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
            ProductKind::Pack => Err(Fail::Rejected(
                "unknown_price",
                format!(
                    "catalog product {} is a token pack, but checkout session {} is a subscription",
                    product.name, session.id
                ),
            )),
        }
    }

    async fn grant_annual(
        &self,
        user: &str,
        product: &Product,
        sub: &str,
        invoice: &str,
    ) -> Result<Done, Fail> {
        let request = pb::GrantRequest {
            user_id: user.to_string(),
            tokens: product.tokens,
            idempotency_key: format!("stripe:annual:{invoice}"),
            source: pb::GrantSource::AnnualSubscription as i32,
            reason: format!("annual subscription {}", product.name),
            stripe_subscription_id: sub.to_string(),
            stripe_invoice_id: invoice.to_string(),
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
        let request = pb::DripRequest {
            user_id: user.to_string(),
            tokens: product.tokens,
            idempotency_key,
            stripe_subscription_id: sub.to_string(),
            stripe_invoice_id: invoice.unwrap_or_default().to_string(),
            period_start: ts(period_start),
            period_end: ts(period_end),
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
                    ..Done::new("replayed", format!("already credited ({what}): {msg}"))
                })
            }
            Answer::Refused(msg) => Err(Fail::Failed(msg)),
            Answer::NotFound => Err(Fail::Failed("ledger answered NOT_FOUND to a credit".into())),
        }
    }

    async fn invoice_paid(&self, env: &Envelope) -> Result<Done, Fail> {
        let inv: Invoice =
            event::invoice(&env.object).map_err(|e| Fail::Rejected("malformed", e))?;
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
        let lines: Vec<_> = inv.lines.iter().filter(|l| !l.proration).collect();
        // A subscription invoice may also carry one-off items: its plan's line decides.
        let resolved: Vec<_> = lines
            .iter()
            .filter_map(|l| {
                [l.price_id.as_deref(), l.lookup_key.as_deref()]
                    .into_iter()
                    .flatten()
                    .find_map(|k| self.catalog.resolve(k))
                    .map(|p| (p, *l))
            })
            .collect();
        let matched = resolved
            .iter()
            .find(|(p, _)| p.kind != ProductKind::Pack)
            .or_else(|| resolved.first())
            .copied();
        let (product, line) = match matched {
            Some((p, l)) => (p, Some(l)),
            None => match self.product_from_keys(&inv.product_keys).or_else(|| {
                // Last resort: a subscription product with exactly this price.
                let kinds = [ProductKind::Annual, ProductKind::Drip];
                let names_a_price = inv
                    .lines
                    .iter()
                    .any(|l| l.price_id.is_some() || l.lookup_key.is_some());
                if names_a_price || !inv.product_keys.is_empty() {
                    return None;
                }
                lines
                    .first()
                    .and_then(|l| l.amount)
                    .or(inv.amount_paid)
                    .and_then(|a| self.catalog.resolve_by_amount(a, &kinds))
            }) {
                Some(p) => (p, lines.first().copied()),
                None => {
                    let prices: Vec<_> = lines.iter().filter_map(|l| l.price_id.clone()).collect();
                    return Err(Fail::Rejected(
                        "unknown_price",
                        format!("catalog gap: invoice {} has no line with a catalog price (prices {prices:?}{})", inv.id,
                            if inv.lines_has_more { ", more lines not included" } else { "" }),
                    ));
                }
            },
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
            ProductKind::Annual => self.grant_annual(&user, product, &sub, &inv.id).await,
            ProductKind::Drip => {
                let (Some(start), Some(end)) = (
                    line.and_then(|l| l.period_start),
                    line.and_then(|l| l.period_end),
                ) else {
                    return Err(Fail::Rejected(
                        "malformed",
                        format!("invoice {} line has no period", inv.id),
                    ));
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
        let charge =
            event::charge_refund(&env.object).map_err(|e| Fail::Rejected("malformed", e))?;
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
        let dispute = event::dispute(&env.object).map_err(|e| Fail::Rejected("malformed", e))?;
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
        if done.outcome == "unmatched_reversal" {
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
            Answer::NotFound => {
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
                        outcome: "unmatched_reversal".into(),
                        detail: detail.clone(),
                        payment_intent: Some(pi.to_string()),
                        claim: Some(claim.clone()),
                        ..EventRecord::default()
                    };
                    WebhookStore::park_claim(lock, &record).await?;
                }
                return Ok(Done::new("unmatched_reversal", detail));
            }
            Answer::AlreadyDone(msg) | Answer::Refused(msg) => return Err(Fail::Failed(msg)),
        };
        let purchase = found.transaction.unwrap_or_default();
        let tokens = purchase.token_amount;
        let paid = match &purchase.details {
            Some(pb::transaction::Details::Purchase(p)) => p.amount_paid_cents,
            _ => 0,
        };
        let share = |amount: i64| -> i64 {
            if paid <= 0 || amount >= paid {
                tokens
            } else {
                (i128::from(tokens) * i128::from(amount) / i128::from(paid)) as i64
            }
        };
        let (delta, key, source) = match claim.kind {
            // Cumulative: bring the purchase's reversed total up to the refunded share.
            ClaimKind::Refund => (
                share(claim.amount_cents) - found.reversed_tokens,
                format!("stripe:refund:{}:{}", claim.reference, claim.amount_cents),
                pb::ReversalSource::Refund,
            ),
            // One dispute claws back its share once, within what is left.
            ClaimKind::Dispute => (
                share(claim.amount_cents).min(tokens - found.reversed_tokens),
                format!("stripe:dispute:{}", claim.reference),
                pb::ReversalSource::Dispute,
            ),
        };
        let mut done = if delta <= 0 {
            Done::new(
                "already_reversed",
                format!(
                    "{} {}: {} of {tokens} tokens already reversed",
                    claim.kind.as_str(),
                    claim.reference,
                    found.reversed_tokens
                ),
            )
        } else {
            let request = pb::ReverseRequest {
                user_id: found.user_id.clone(),
                tokens: delta,
                idempotency_key: key,
                original_transaction_id: purchase.id.clone(),
                source: source as i32,
                reason: format!("stripe {} {}", claim.kind.as_str(), claim.reference),
                stripe_reference: claim.reference.clone(),
            };
            match answer(self.ledger.reverse(request).await)? {
                Answer::Done(r) => Done {
                    transaction_id: Some(r.transaction_id),
                    ..Done::new(
                        if r.replayed { "replayed" } else { "reversed" },
                        format!(
                            "{} {}: {delta} tokens of purchase {} clawed back",
                            claim.kind.as_str(),
                            claim.reference,
                            purchase.id
                        ),
                    )
                },
                Answer::AlreadyDone(msg) | Answer::Refused(msg) => {
                    Done::new("already_reversed", msg)
                }
                Answer::NotFound => {
                    return Err(Fail::Failed(format!("purchase {} vanished", purchase.id)))
                }
            }
        };
        done.user_id = Some(found.user_id);
        Ok(done)
    }

    async fn subscription_deleted(&self, env: &Envelope) -> Result<Done, Fail> {
        let sub =
            event::ended_subscription(&env.object).map_err(|e| Fail::Rejected("malformed", e))?;
        let ended_at = sub
            .ended_at
            .and_then(|t| DateTime::from_timestamp(t, 0))
            .unwrap_or_else(Utc::now);
        self.store
            .end_subscription(&sub.id, ended_at, sub.users.first().map(String::as_str))
            .await?;
        let mut done = Done::new(
            "recorded",
            format!("subscription {} ended at {ended_at}: no more drips", sub.id),
        );
        done.user_id = sub.users.first().cloned();
        Ok(done)
    }
}

impl<T> Answer<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Done(t) => Answer::Done(f(t)),
            Answer::AlreadyDone(m) => Answer::AlreadyDone(m),
            Answer::Refused(m) => Answer::Refused(m),
            Answer::NotFound => Answer::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_refusal_of_the_events_values_is_a_400_not_a_500() {
        match answer::<()>(Err(Status::invalid_argument("invalid user_id: too long"))) {
            Err(Fail::Rejected(outcome, _)) => assert_eq!(outcome, "malformed"),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a refusal read as an answer"),
        }
        assert!(matches!(
            answer::<()>(Err(Status::unavailable("down"))),
            Err(Fail::Retry(..))
        ));
    }

    #[test]
    fn only_a_value_the_database_refuses_is_a_400_and_every_other_database_error_a_503() {
        for refused in ["22021", "22008", "22001", "54000"] {
            assert!(is_refused_value(refused), "{refused}");
        }
        // Connection lost, serialization failure, shutting down, a unique violation (a race).
        for passing in ["08006", "40001", "57P01", "23505"] {
            assert!(!is_refused_value(passing), "{passing}");
        }
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

//! A model-based property test of credits with a lifecycle: random sequences of credits (grants,
//! purchases, drips, with and without expiry, at several priorities), usage, deductions,
//! Reserve / CommitHold / ReleaseHold / ExtendHold, reversals and clock advances, run against
//! the real server over gRPC and a small in-memory model written from the rules as README states
//! them. After every step the balance, held, available and every lot's remaining and held must
//! equal the model's; at the end of each case `verify` must pass.
//!
//! Time is the ledger's test clock, moved in steps of 1,000 s; every expiry the test asks for lies
//! 500 s off a step, so the few milliseconds the real clock moves during a case never decide
//! whether something has expired. `PROPTEST_CASES=1000` runs it longer.

mod common;

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{TestCaseError, TestRunner};
use tonic::transport::Channel;

use common::{admin, TestApp};
use token_ledger::pb;
use token_ledger::pb::ledger_service_client::LedgerServiceClient;

const STEP: i64 = 1_000;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credit {
    Grant,
    Purchase,
    Drip,
}

#[derive(Debug, Clone)]
enum Op {
    Credit {
        kind: Credit,
        tokens: i64,
        /// Steps from now to the expiry (plus half a step); `None`: never expires.
        expires: Option<i64>,
        priority: i32,
    },
    Usage(i64),
    Deduct(i64),
    Reserve {
        tokens: i64,
        ttl_steps: i64,
        cap: bool,
    },
    Commit {
        hold: Index,
        actual: i64,
    },
    Release(Index),
    Extend {
        hold: Index,
        add: i64,
        ttl_steps: Option<i64>,
    },
    Reverse {
        credit: Index,
        tokens: i64,
    },
    Advance(i64),
}

fn op() -> impl Strategy<Value = Op> {
    let credit = (
        prop_oneof![
            Just(Credit::Grant),
            Just(Credit::Purchase),
            Just(Credit::Drip)
        ],
        1i64..=500,
        prop::option::of(0i64..3),
        -1i32..=1,
    )
        .prop_map(|(kind, tokens, expires, priority)| Op::Credit {
            kind,
            tokens,
            expires,
            priority,
        });
    prop_oneof![
        4 => credit,
        3 => (1i64..=300).prop_map(Op::Usage),
        1 => (1i64..=300).prop_map(Op::Deduct),
        3 => (1i64..=400, 0i64..3, any::<bool>())
            .prop_map(|(tokens, ttl_steps, cap)| Op::Reserve { tokens, ttl_steps, cap }),
        2 => (any::<Index>(), 0i64..=500).prop_map(|(hold, actual)| Op::Commit { hold, actual }),
        1 => any::<Index>().prop_map(Op::Release),
        1 => (any::<Index>(), 0i64..=200, prop::option::of(0i64..3)).prop_map(
            |(hold, add, ttl_steps)| Op::Extend {
                hold,
                add,
                // ExtendHold needs a ttl or tokens.
                ttl_steps: if add == 0 { ttl_steps.or(Some(1)) } else { ttl_steps },
            }
        ),
        1 => (any::<Index>(), 1i64..=300).prop_map(|(credit, tokens)| Op::Reverse { credit, tokens }),
        2 => (1i64..=2).prop_map(Op::Advance),
    ]
}

// ------------------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone)]
struct MLot {
    id: String,
    granted: i64,
    remaining: i64,
    held: i64,
    /// Seconds from the case's start; exclusive.
    expires: Option<i64>,
    priority: i32,
    paid: bool,
    order: usize,
}

impl MLot {
    fn live(&self, now: i64) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
    fn unheld(&self) -> i64 {
        self.remaining - self.held
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HState {
    Active,
    Committed,
    Released,
    Expired { committed: bool },
}

#[derive(Debug, Clone)]
struct MHold {
    id: String,
    tokens: i64,
    /// (model time, order): holds placed or extended in one step of model time lapse in the
    /// order they were placed or extended (the service's clock moves a little between calls).
    expires: (i64, u64),
    earmarks: Vec<(usize, i64)>,
    state: HState,
}

#[derive(Debug, Default)]
struct Model {
    now: i64,
    lots: Vec<MLot>,
    debt: i64,
    holds: Vec<MHold>,
    /// Credits made: (transaction id, amount, reversed so far, lot index).
    credits: Vec<(String, i64, i64, usize)>,
    /// Orders hold expiries set within one step of model time.
    expiry_seq: u64,
}

impl Model {
    fn balance(&self) -> i64 {
        self.lots.iter().map(|l| l.remaining).sum::<i64>() - self.debt
    }
    fn held(&self) -> i64 {
        self.lots.iter().map(|l| l.held).sum()
    }
    fn available(&self) -> i64 {
        self.balance() - self.held()
    }
    /// Lot indexes in burn order.
    fn order(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.lots.len()).collect();
        idx.sort_by_key(|&i| {
            let l = &self.lots[i];
            (l.priority, l.expires.is_none(), l.expires, l.paid, l.order)
        });
        idx
    }
    fn next_expiry(&mut self, at: i64) -> (i64, u64) {
        self.expiry_seq += 1;
        (at, self.expiry_seq)
    }
    fn free(&mut self, h: usize) {
        for (lot, t) in self.holds[h].earmarks.clone() {
            self.lots[lot].held -= t;
        }
    }
    /// Lots expired by `at` keep only what holds hold.
    fn expire_due(&mut self, at: i64) {
        for l in &mut self.lots {
            if !l.live(at) {
                l.remaining = l.held;
            }
        }
    }
    /// Holds lapse one instant after another, each freeing its tokens when it lapses: they pay
    /// the debt from the lots live at that instant.
    fn settle(&mut self) {
        loop {
            let now = self.now;
            let next = (0..self.holds.len())
                .filter(|&h| {
                    self.holds[h].state == HState::Active && self.holds[h].expires.0 <= now
                })
                .min_by_key(|&h| self.holds[h].expires);
            let Some(h) = next else { break };
            self.holds[h].state = HState::Expired { committed: false };
            self.free(h);
            let at = self.holds[h].expires.0;
            self.finish_at(at);
        }
        self.finish();
    }
    fn debit(&mut self, tokens: i64, first: &[usize]) {
        let now = self.now;
        self.debit_at(tokens, first, now);
    }
    fn debit_at(&mut self, mut tokens: i64, first: &[usize], at: i64) {
        let mut order: Vec<usize> = first.to_vec();
        order.extend(self.order());
        for i in order {
            let l = &mut self.lots[i];
            if tokens == 0 || !l.live(at) {
                continue;
            }
            let take = tokens.min(l.unheld());
            l.remaining -= take;
            tokens -= take;
        }
        self.debt += tokens;
    }
    fn earmark(&mut self, mut tokens: i64) -> Vec<(usize, i64)> {
        let mut out = Vec::new();
        for i in self.order() {
            let now = self.now;
            let l = &mut self.lots[i];
            if tokens == 0 || !l.live(now) || l.unheld() == 0 {
                continue;
            }
            let take = tokens.min(l.unheld());
            l.held += take;
            tokens -= take;
            out.push((i, take));
        }
        out
    }
    /// What every write does after its own rule: expire what a freed hold left on an expired
    /// lot, then pay the debt from unheld tokens.
    fn finish(&mut self) {
        let now = self.now;
        self.finish_at(now);
    }
    fn finish_at(&mut self, at: i64) {
        self.expire_due(at);
        if self.debt > 0 {
            let debt = std::mem::take(&mut self.debt);
            self.debit_at(debt, &[], at);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Driving the server and the model side by side.

struct Case<'a> {
    app: &'a TestApp,
    c: LedgerServiceClient<Channel>,
    user: String,
    base: DateTime<Utc>,
    model: Model,
    step: usize,
}

fn ts(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_micros() as i32 * 1_000,
    })
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

/// `Ok(())` when the server and the model agree on whether the call succeeded.
fn agree<T>(
    what: &str,
    expected_ok: bool,
    got: &Result<T, tonic::Status>,
) -> Result<(), TestCaseError> {
    match got {
        Ok(_) if expected_ok => Ok(()),
        Err(status) if !expected_ok => {
            prop_assert!(
                matches!(
                    status.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::NotFound
                ),
                "{what}: refused with {status:?}"
            );
            Ok(())
        }
        Ok(_) => Err(TestCaseError::fail(format!(
            "{what}: the server accepted what the model refuses"
        ))),
        Err(status) => Err(TestCaseError::fail(format!(
            "{what}: the server refused what the model accepts: {status:?}"
        ))),
    }
}

impl Case<'_> {
    fn key(&mut self) -> String {
        self.step += 1;
        format!("{}-{}", self.user, self.step)
    }

    async fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.model.settle();
        match op.clone() {
            Op::Credit {
                kind,
                tokens,
                expires,
                priority,
            } => self.credit(kind, tokens, expires, priority).await?,
            Op::Usage(tokens) => {
                let req = pb::TrackUsageRequest {
                    user_id: self.user.clone(),
                    tokens,
                    idempotency_key: self.key(),
                    ..Default::default()
                };
                let got = self.c.track_usage(admin(req)).await;
                agree("usage", true, &got)?;
                self.model.debit(tokens, &[]);
            }
            Op::Deduct(tokens) => {
                let ok = self.model.available() >= tokens;
                let req = pb::DeductRequest {
                    user_id: self.user.clone(),
                    tokens,
                    idempotency_key: self.key(),
                    reason: "model".into(),
                    allow_negative: false,
                };
                let got = self.c.deduct(admin(req)).await;
                agree("deduct", ok, &got)?;
                if ok {
                    self.model.debit(tokens, &[]);
                }
            }
            Op::Reserve {
                tokens,
                ttl_steps,
                cap,
            } => self.reserve(tokens, ttl_steps, cap).await?,
            Op::Commit { hold, actual } => self.commit(hold, actual).await?,
            Op::Release(hold) => self.release(hold).await?,
            Op::Extend {
                hold,
                add,
                ttl_steps,
            } => self.extend(hold, add, ttl_steps).await?,
            Op::Reverse { credit, tokens } => self.reverse(credit, tokens).await?,
            Op::Advance(steps) => {
                self.app.advance(Duration::seconds(steps * STEP));
                self.model.now += steps * STEP;
                self.model.settle();
            }
        }
        self.model.finish();
        self.compare(op).await
    }

    async fn credit(
        &mut self,
        kind: Credit,
        tokens: i64,
        expires: Option<i64>,
        priority: i32,
    ) -> Result<(), TestCaseError> {
        let expires = expires.map(|k| self.model.now + k * STEP + STEP / 2);
        let expires_at = expires.and_then(|e| ts(self.base + Duration::seconds(e)));
        let key = self.key();
        let user_id = self.user.clone();
        let id = match kind {
            Credit::Grant => {
                let req = pb::GrantRequest {
                    user_id,
                    tokens,
                    idempotency_key: key,
                    source: pb::GrantSource::Admin as i32,
                    reason: "model".into(),
                    expires_at,
                    priority,
                    ..Default::default()
                };
                self.c
                    .grant(admin(req))
                    .await
                    .map(|r| r.into_inner().transaction_id)
            }
            Credit::Purchase => {
                let req = pb::RecordPurchaseRequest {
                    user_id,
                    tokens,
                    stripe_payment_intent_id: format!("pi_{key}"),
                    idempotency_key: key,
                    amount_paid_cents: 100,
                    currency: "usd".into(),
                    expires_at,
                    priority,
                    ..Default::default()
                };
                self.c
                    .record_purchase(admin(req))
                    .await
                    .map(|r| r.into_inner().transaction_id)
            }
            Credit::Drip => {
                let start = self.base + Duration::days(self.step as i64);
                let req = pb::DripRequest {
                    user_id,
                    tokens,
                    idempotency_key: key,
                    stripe_subscription_id: format!("sub_{}", self.user),
                    period_start: ts(start),
                    period_end: ts(start + Duration::days(28)),
                    expires_at,
                    priority,
                    ..Default::default()
                };
                self.c
                    .drip(admin(req))
                    .await
                    .map(|r| r.into_inner().transaction_id)
            }
        };
        agree("credit", true, &id)?;
        let id = id.unwrap_or_default();
        let m = &mut self.model;
        let paid_debt = m.debt.min(tokens);
        m.debt -= paid_debt;
        m.lots.push(MLot {
            id: id.clone(),
            granted: tokens,
            remaining: tokens - paid_debt,
            held: 0,
            expires,
            priority,
            paid: kind != Credit::Grant,
            order: m.lots.len(),
        });
        m.credits.push((id, tokens, 0, m.lots.len() - 1));
        Ok(())
    }

    async fn reserve(
        &mut self,
        tokens: i64,
        ttl_steps: i64,
        cap: bool,
    ) -> Result<(), TestCaseError> {
        let ttl = ttl_steps * STEP + STEP / 2;
        let available = self.model.available();
        let held = match cap {
            false if available >= tokens => Some(tokens),
            true if available >= 1 => Some(tokens.min(available)),
            _ => None,
        };
        let req = pb::ReserveRequest {
            user_id: self.user.clone(),
            tokens,
            idempotency_key: self.key(),
            ttl: secs(ttl),
            overage: if cap {
                pb::Overage::Cap
            } else {
                pb::Overage::Reject
            } as i32,
            ..Default::default()
        };
        let got = self.c.reserve(admin(req)).await;
        agree("reserve", held.is_some(), &got)?;
        if let (Some(held), Ok(r)) = (held, got) {
            let r = r.into_inner();
            prop_assert_eq!(r.held, held, "tokens held");
            let earmarks = self.model.earmark(held);
            let expires = self.model.next_expiry(self.model.now + ttl);
            self.model.holds.push(MHold {
                id: r.hold_id,
                tokens: held,
                expires,
                earmarks,
                state: HState::Active,
            });
        }
        Ok(())
    }

    fn pick(&self, hold: Index) -> Option<usize> {
        (!self.model.holds.is_empty()).then(|| hold.index(self.model.holds.len()))
    }

    async fn commit(&mut self, hold: Index, actual: i64) -> Result<(), TestCaseError> {
        let Some(h) = self.pick(hold) else {
            return Ok(());
        };
        let state = self.model.holds[h].state;
        let ok = matches!(state, HState::Active | HState::Expired { committed: false });
        let req = pb::CommitHoldRequest {
            hold_id: self.model.holds[h].id.clone(),
            tokens: actual,
            idempotency_key: self.key(),
            ..Default::default()
        };
        let got = self.c.commit_hold(admin(req)).await;
        agree("commit", ok, &got)?;
        if let Ok(r) = &got {
            prop_assert_eq!(
                r.get_ref().hold_expired,
                state != HState::Active,
                "hold_expired"
            );
        }
        if ok {
            if state == HState::Active {
                // The hold's own earmarks first (even on a lot that expired meanwhile), then
                // burn order.
                let earmarks = self.model.holds[h].earmarks.clone();
                self.model.free(h);
                self.model.holds[h].state = HState::Committed;
                let mut left = actual;
                for (lot, held) in earmarks {
                    let l = &mut self.model.lots[lot];
                    let take = left.min(held).min(l.unheld());
                    l.remaining -= take;
                    left -= take;
                }
                self.model.debit(left, &[]);
            } else {
                self.model.holds[h].state = HState::Expired { committed: true };
                self.model.debit(actual, &[]);
            }
        }
        Ok(())
    }

    async fn release(&mut self, hold: Index) -> Result<(), TestCaseError> {
        let Some(h) = self.pick(hold) else {
            return Ok(());
        };
        let req = pb::ReleaseHoldRequest {
            hold_id: self.model.holds[h].id.clone(),
        };
        let got = self.c.release_hold(admin(req)).await;
        agree("release", true, &got)?;
        if self.model.holds[h].state == HState::Active {
            self.model.free(h);
            self.model.holds[h].state = HState::Released;
        }
        Ok(())
    }

    async fn extend(
        &mut self,
        hold: Index,
        add: i64,
        ttl_steps: Option<i64>,
    ) -> Result<(), TestCaseError> {
        let Some(h) = self.pick(hold) else {
            return Ok(());
        };
        let ttl = ttl_steps.map(|s| s * STEP + STEP / 2);
        let ok = self.model.holds[h].state == HState::Active
            && (add == 0 || add <= self.model.available());
        let req = pb::ExtendHoldRequest {
            hold_id: self.model.holds[h].id.clone(),
            ttl: ttl.and_then(secs),
            add_tokens: add,
            idempotency_key: self.key(),
        };
        let got = self.c.extend_hold(admin(req)).await;
        agree("extend", ok, &got)?;
        if ok {
            let more = self.model.earmark(add);
            let now = self.model.now;
            let hold = &mut self.model.holds[h];
            for (lot, t) in more {
                match hold.earmarks.iter_mut().find(|(l, _)| *l == lot) {
                    Some((_, held)) => *held += t,
                    None => hold.earmarks.push((lot, t)),
                }
            }
            hold.tokens += add;
            if let Some(ttl) = ttl {
                self.model.expiry_seq += 1;
                let seq = self.model.expiry_seq;
                let hold = &mut self.model.holds[h];
                hold.expires = hold.expires.max((now + ttl, seq));
            }
        }
        Ok(())
    }

    async fn reverse(&mut self, credit: Index, tokens: i64) -> Result<(), TestCaseError> {
        if self.model.credits.is_empty() {
            return Ok(());
        }
        let c = credit.index(self.model.credits.len());
        let (id, amount, reversed, lot) = self.model.credits[c].clone();
        let ok = tokens <= amount - reversed;
        let req = pb::ReverseRequest {
            user_id: self.user.clone(),
            tokens,
            idempotency_key: self.key(),
            original_transaction_id: id,
            source: pb::ReversalSource::Admin as i32,
            reason: "model".into(),
            stripe_reference: String::new(),
        };
        let got = self.c.reverse(admin(req)).await;
        agree("reverse", ok, &got)?;
        if ok {
            self.model.credits[c].2 += tokens;
            let now = self.model.now;
            let l = &mut self.model.lots[lot];
            let own = if l.live(now) {
                tokens.min(l.unheld())
            } else {
                0
            };
            l.remaining -= own;
            self.model.debit(tokens - own, &[]);
        }
        Ok(())
    }

    async fn compare(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let b = self
            .c
            .get_balance(admin(pb::GetBalanceRequest {
                user_id: self.user.clone(),
                as_of: None,
            }))
            .await
            .map_err(|s| TestCaseError::fail(format!("GetBalance: {s:?}")))?
            .into_inner();
        let m = &self.model;
        prop_assert_eq!(
            (b.balance, b.held, b.available),
            (m.balance(), m.held(), m.available()),
            "(balance, held, available) after {:?}",
            op
        );
        let lots = self
            .c
            .list_lots(admin(pb::ListLotsRequest {
                user_id: self.user.clone(),
                include_spent: true,
            }))
            .await
            .map_err(|s| TestCaseError::fail(format!("ListLots: {s:?}")))?
            .into_inner()
            .lots;
        let server: HashMap<String, (i64, i64, i64)> = lots
            .into_iter()
            .map(|l| (l.lot_id, (l.granted, l.remaining, l.held)))
            .collect();
        let model: HashMap<String, (i64, i64, i64)> = m
            .lots
            .iter()
            .map(|l| (l.id.clone(), (l.granted, l.remaining, l.held)))
            .collect();
        prop_assert_eq!(
            server,
            model,
            "lots (granted, remaining, held) after {:?}",
            op
        );
        Ok(())
    }
}

#[test]
fn the_service_agrees_with_the_model_of_lots_and_holds() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(TestApp::spawn());
    let mut runner = TestRunner::new(ProptestConfig {
        cases: cases(),
        source_file: Some(file!()),
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
        rt.block_on(async {
            let mut case = Case {
                app: &app,
                c: app.client().await,
                user: format!("model-{}", run_tag()),
                base: app.store.clock().now(),
                model: Model::default(),
                step: 0,
            };
            for op in &ops {
                case.apply(op).await?;
            }
            let report = app.store.verify().await.unwrap();
            prop_assert!(
                report.discrepancies.is_empty(),
                "verify: {:?}",
                report.discrepancies
            );
            Ok(())
        })
    });
    rt.block_on(async move { drop(app) });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

/// A tag per case run, so shrinking reruns never meet a user of an earlier attempt.
fn run_tag() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}", N.fetch_add(1, Ordering::Relaxed))
}

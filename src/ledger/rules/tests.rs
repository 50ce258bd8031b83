//! The rules without a database: each test builds the state the store would have loaded, runs
//! `evaluate`, and checks every answer and every staged change.

use chrono::TimeZone;

use super::*;
use crate::domain::build::{CallInput, Common, Deduction, Drip, Grant, Purchase, Reversal, Usage};
use crate::domain::{Actor, GrantSource, ReversalSource, TOKENS_MAX};

fn common(user: &str, tokens: i64, key: &str) -> Common {
    Common {
        user_id: user.into(),
        tokens,
        idempotency_key: key.into(),
    }
}

fn actor() -> Actor {
    Actor::new("key:test")
}

fn grant(user: &str, tokens: i64, key: &str) -> WriteCommand {
    Grant {
        common: common(user, tokens, key),
        source: Some(GrantSource::Admin),
        reason: "r".into(),
        stripe_subscription_id: String::new(),
        stripe_invoice_id: String::new(),
    }
    .build(actor())
    .unwrap()
}

fn usage(user: &str, tokens: i64, key: &str) -> WriteCommand {
    Usage {
        common: common(user, tokens, key),
        call: CallInput {
            model: "m".into(),
            input_tokens: 1,
            output_tokens: 1,
            ..Default::default()
        },
    }
    .build(actor())
    .unwrap()
}

fn deduct(user: &str, tokens: i64, key: &str) -> WriteCommand {
    Deduction {
        common: common(user, tokens, key),
        reason: "r".into(),
        allow_negative: false,
    }
    .build(actor())
    .unwrap()
}

fn purchase(user: &str, tokens: i64, key: &str, pi: &str) -> WriteCommand {
    Purchase {
        common: common(user, tokens, key),
        amount_paid_cents: 9_900,
        currency: "usd".into(),
        stripe_payment_intent_id: pi.into(),
        stripe_checkout_session_id: String::new(),
        pack: String::new(),
    }
    .build(actor())
    .unwrap()
}

fn drip(user: &str, tokens: i64, key: &str, day: u32) -> WriteCommand {
    let start = Utc.with_ymd_and_hms(2026, 1, day, 0, 0, 0).unwrap();
    Drip {
        common: common(user, tokens, key),
        stripe_subscription_id: "sub_1".into(),
        stripe_invoice_id: String::new(),
        period_start: Some(start),
        period_end: Some(start + chrono::Duration::days(28)),
    }
    .build(actor())
    .unwrap()
}

fn reverse(user: &str, tokens: i64, key: &str, original: i64) -> WriteCommand {
    Reversal {
        common: common(user, tokens, key),
        original_transaction_id: original.to_string(),
        source: Some(ReversalSource::Refund),
        reason: "refund".into(),
        stripe_reference: String::new(),
    }
    .build(actor())
    .unwrap()
}

/// The state the store would load for `writes` on an empty ledger: every key claimed (journal
/// ids from 100 in key order), every account new.
fn fresh_state(writes: &[WriteCommand]) -> BatchState {
    let mut state = BatchState {
        fingerprints: writes.iter().map(WriteCommand::fingerprint).collect(),
        holds_per_account_max: crate::domain::HOLDS_PER_ACCOUNT_DEFAULT,
        ..BatchState::default()
    };
    for cmd in writes {
        let next_id = 100 + state.keys.len() as i64;
        state
            .keys
            .entry(cmd.idempotency_key.as_str().to_string())
            .or_insert(KeyState::Claimed {
                entry_id: EntryId(next_id),
                stored: cmd.fingerprint(),
            });
        let next_account = 1 + state.accounts.len() as i64;
        state
            .accounts
            .entry(cmd.user_id.as_str().to_string())
            .or_insert(LockedAccount {
                account_id: next_account,
                balance: 0,
                totals: Totals::default(),
                last_seq: 0,
                created: true,
                ..Default::default()
            });
    }
    state
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
}

/// `ok <balance>`, `replay <balance>` or the error's gRPC-ish name: short enough to compare a
/// whole batch in one assertion.
fn summary(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Ok(r) if r.replayed => format!("replay {}", r.balance),
            Ok(r) => format!("ok {}", r.balance),
            Err(LedgerError::InsufficientBalance { .. }) => "insufficient".into(),
            Err(LedgerError::IdempotencyConflict { .. }) => "key-conflict".into(),
            Err(LedgerError::BusinessKeyConflict { .. }) => "business-conflict".into(),
            Err(LedgerError::ReversalExceedsOriginal { reversible, .. }) => {
                format!("exceeds {reversible}")
            }
            Err(LedgerError::NotReversible(_)) => "not-reversible".into(),
            Err(LedgerError::NotFound(_)) => "not-found".into(),
            Err(LedgerError::AmountOverflow { what }) => format!("overflow {what}"),
            Err(other) => format!("other {other}"),
        })
        .collect()
}

fn moved<'a>(staged: &'a Staged, user: &str) -> &'a AccountMove {
    staged
        .moved
        .iter()
        .find(|m| m.user_id == user)
        .unwrap_or_else(|| panic!("{user} did not move"))
}

#[test]
fn a_replay_with_the_same_fingerprint_answers_the_committed_row() {
    let write = grant("alice", 10, "k1");
    let mut state = BatchState {
        fingerprints: vec![write.fingerprint()],
        ..BatchState::default()
    };
    state.keys.insert(
        "k1".into(),
        KeyState::Committed {
            fingerprint: write.fingerprint().to_vec(),
            entry_id: EntryId(7),
            balance_after: Some(10),
            token_amount: None,
            price_id: None,
        },
    );
    let (outcomes, staged) = evaluate(state, &[write], now());
    let receipt = outcomes[0].as_ref().unwrap();
    assert_eq!(
        (receipt.transaction_id, receipt.balance, receipt.replayed),
        (EntryId(7), 10, true)
    );
    assert_eq!(
        staged,
        Staged {
            now: now(),
            ..Staged::default()
        },
        "nothing staged"
    );
}

#[test]
fn a_replay_with_a_different_fingerprint_is_a_conflict() {
    let write = grant("alice", 11, "k1");
    let mut state = BatchState {
        fingerprints: vec![write.fingerprint()],
        ..BatchState::default()
    };
    state.keys.insert(
        "k1".into(),
        KeyState::Committed {
            fingerprint: grant("alice", 10, "k1").fingerprint().to_vec(),
            entry_id: EntryId(7),
            balance_after: Some(10),
            token_amount: None,
            price_id: None,
        },
    );
    let (outcomes, staged) = evaluate(state, &[write], now());
    assert_eq!(summary(&outcomes), ["key-conflict"]);
    assert_eq!(
        staged,
        Staged {
            now: now(),
            ..Staged::default()
        },
        "nothing staged"
    );
}

#[test]
fn a_key_pointing_at_a_missing_row_is_a_broken_invariant_not_a_success() {
    let write = grant("alice", 10, "k1");
    let mut state = BatchState {
        fingerprints: vec![write.fingerprint()],
        ..BatchState::default()
    };
    state.keys.insert(
        "k1".into(),
        KeyState::Committed {
            fingerprint: write.fingerprint().to_vec(),
            entry_id: EntryId(7),
            balance_after: None,
            token_amount: None,
            price_id: None,
        },
    );
    let (outcomes, _) = evaluate(state, &[write], now());
    assert!(matches!(outcomes[0], Err(LedgerError::Invariant(_))));
}

#[test]
fn a_key_repeated_in_one_batch_replays_or_conflicts_with_the_first() {
    let writes = [
        grant("alice", 10, "k1"),
        grant("alice", 10, "k1"),
        grant("alice", 99, "k1"),
    ];
    let (outcomes, staged) = evaluate(fresh_state(&writes), &writes, now());
    assert_eq!(summary(&outcomes), ["ok 10", "replay 10", "key-conflict"]);
    assert_eq!(staged.rows.len(), 1);
    assert_eq!(outcomes[0].as_ref().unwrap().transaction_id, EntryId(100));
    assert_eq!(outcomes[1].as_ref().unwrap().transaction_id, EntryId(100));
}

#[test]
fn a_business_key_credited_before_replays_for_the_same_user_and_amount_else_conflicts() {
    let writes = [
        purchase("bob", 500, "k1", "pi_1"),
        purchase("carol", 500, "k2", "pi_1"),
        purchase("bob", 501, "k3", "pi_1"),
    ];
    let mut state = fresh_state(&writes);
    state.credited.insert(
        BusinessKey::PaymentIntent("pi_1".into()),
        PriorCredit {
            transaction_id: EntryId(42),
            user_id: "bob".into(),
            token_amount: 500,
            balance_after: 500,
        },
    );
    let (outcomes, staged) = evaluate(state, &writes, now());
    assert_eq!(
        summary(&outcomes),
        ["replay 500", "business-conflict", "business-conflict"]
    );
    assert_eq!(outcomes[0].as_ref().unwrap().transaction_id, EntryId(42));
    assert!(staged.rows.is_empty());
    // The replaying write's own key stays free, as does every refused one.
    assert_eq!(staged.released_keys, ["k1", "k2", "k3"]);
    // Nothing applied to the accounts (bob's, carol's) the batch created for them.
    assert_eq!(staged.abandoned_accounts.len(), 2);
}

#[test]
fn a_business_key_credited_earlier_in_the_batch_replays_under_another_key() {
    let writes = [
        drip("carol", 300, "k1", 1),
        drip("carol", 300, "k2", 1),
        drip("carol", 300, "k3", 29),
    ];
    let (outcomes, staged) = evaluate(fresh_state(&writes), &writes, now());
    assert_eq!(summary(&outcomes), ["ok 300", "replay 300", "ok 600"]);
    assert_eq!(staged.rows.len(), 2);
    assert_eq!(staged.released_keys, ["k2"]);
}

#[test]
fn deductions_are_refused_in_arrival_order_against_the_running_balance() {
    let writes = [
        grant("alice", 1_000, "k1"),
        usage("alice", 300, "k2"),
        deduct("alice", 800, "k3"), // 700 left: refused
        deduct("alice", 700, "k4"), // fits exactly
        deduct("alice", 1, "k5"),   // 0 left: refused
    ];
    let (outcomes, staged) = evaluate(fresh_state(&writes), &writes, now());
    assert_eq!(
        summary(&outcomes),
        ["ok 1000", "ok 700", "insufficient", "ok 0", "insufficient"]
    );
    let alice = moved(&staged, "alice");
    assert_eq!(alice.balance.balance, 0);
    assert_eq!(alice.balance.totals.deducted, 700);
    assert_eq!(alice.balance.transaction_count, 3);
    assert_eq!(staged.released_keys, ["k3", "k5"]);
}

#[test]
fn a_deduction_the_admin_allowed_to_overdraw_applies() {
    let mut write = deduct("alice", 5, "k1");
    if let WriteDetails::Deduction { allow_negative, .. } = &mut write.details {
        *allow_negative = true;
    }
    let (outcomes, _) = evaluate(fresh_state(&[write.clone()]), &[write], now());
    assert_eq!(summary(&outcomes), ["ok -5"]);
}

#[test]
fn usage_overdraws_and_every_row_records_the_running_balance() {
    let writes = [
        grant("dave", 10, "k1"),
        usage("dave", 25, "k2"),
        usage("dave", 5, "k3"),
    ];
    let (outcomes, staged) = evaluate(fresh_state(&writes), &writes, now());
    assert_eq!(summary(&outcomes), ["ok 10", "ok -15", "ok -20"]);
    let rows: Vec<(i64, i64)> = staged
        .rows
        .iter()
        .map(|r| (r.seq, r.balance_after))
        .collect();
    assert_eq!(rows, [(1, 10), (2, -15), (3, -20)]);
    let dave = moved(&staged, "dave");
    assert_eq!(dave.balance.totals.used, 30);
    assert_eq!(dave.balance.updated_at, Some(now()));
}

#[test]
fn several_reversals_in_one_batch_are_capped_together_at_the_credit() {
    let writes = [
        reverse("bob", 300, "r1", 42),
        reverse("bob", 300, "r2", 42),
        reverse("bob", 150, "r3", 42), // 100 left after an earlier reversal of 100
        reverse("bob", 100, "r4", 42),
        reverse("bob", 1, "r5", 42),
    ];
    let mut state = fresh_state(&writes);
    state.accounts.get_mut("bob").unwrap().balance = 500;
    state.accounts.get_mut("bob").unwrap().totals.purchased = 500 + 100;
    state.accounts.get_mut("bob").unwrap().totals.reversed = 100;
    let account_id = state.accounts["bob"].account_id;
    state.originals.insert(
        EntryId(42),
        Original {
            account_id,
            kind: EntryKind::Purchase,
            token_amount: 800,
            reversed: 100,
        },
    );
    let (outcomes, staged) = evaluate(state, &writes, now());
    assert_eq!(
        summary(&outcomes),
        ["ok 200", "ok -100", "exceeds 100", "ok -200", "exceeds 0"]
    );
    assert_eq!(moved(&staged, "bob").balance.totals.reversed, 800);
}

#[test]
fn a_reversal_of_a_debit_or_of_another_users_row_is_refused() {
    let writes = [reverse("bob", 1, "r1", 42), reverse("bob", 1, "r2", 43)];
    let mut state = fresh_state(&writes);
    let bob = state.accounts["bob"].account_id;
    state.originals.insert(
        EntryId(42),
        Original {
            account_id: bob,
            kind: EntryKind::Usage,
            token_amount: -5,
            reversed: 0,
        },
    );
    state.originals.insert(
        EntryId(43),
        Original {
            account_id: bob + 1,
            kind: EntryKind::Grant,
            token_amount: 5,
            reversed: 0,
        },
    );
    let (outcomes, staged) = evaluate(state, &writes, now());
    assert_eq!(summary(&outcomes), ["not-reversible", "not-found"]);
    assert!(staged.moved.is_empty());
}

#[test]
fn a_refused_write_gives_its_key_back_and_a_later_write_under_it_is_stored_with_its_own_fingerprint(
) {
    let writes = [
        deduct("alice", 5, "k1"), // refused: the key is free again
        grant("alice", 5, "k1"),  // a different request under the same key: applies
    ];
    let state = fresh_state(&writes);
    let (outcomes, staged) = evaluate(state, &writes, now());
    assert_eq!(summary(&outcomes), ["insufficient", "ok 5"]);
    assert!(staged.released_keys.is_empty());
    assert_eq!(
        staged.rehashed_keys,
        [("k1".to_string(), writes[1].fingerprint())]
    );
}

#[test]
fn a_write_that_would_overflow_is_refused_alone() {
    let writes = [
        usage("alice", 7, "k1"),
        grant("alice", TOKENS_MAX, "k2"), // pushes the balance past i64::MAX
        usage("bob", 3, "k3"),
        usage("alice", 2, "k4"),
    ];
    let mut state = fresh_state(&writes);
    let alice = state.accounts.get_mut("alice").unwrap();
    alice.balance = i64::MAX - 10;
    alice.totals.granted = i64::MAX - 10;
    let (outcomes, staged) = evaluate(state, &writes, now());
    assert_eq!(
        summary(&outcomes),
        [
            format!("ok {}", i64::MAX - 17),
            "overflow balance".into(),
            "ok -3".into(),
            format!("ok {}", i64::MAX - 19),
        ]
    );
    assert_eq!(staged.rows.len(), 3);
    assert_eq!(staged.released_keys, ["k2"]);
}

#[test]
fn a_running_total_that_would_overflow_is_refused_even_when_the_balance_fits() {
    let writes = [usage("alice", 10, "k1")];
    let mut state = fresh_state(&writes);
    let alice = state.accounts.get_mut("alice").unwrap();
    alice.totals.granted = i64::MAX - 5;
    alice.totals.used = i64::MAX - 5;
    let (outcomes, staged) = evaluate(state, &writes, now());
    assert_eq!(summary(&outcomes), ["overflow used total"]);
    assert!(staged.rows.is_empty());
}

#[test]
fn an_account_the_batch_did_not_lock_fails_that_write_only() {
    let writes = [grant("alice", 1, "k1"), grant("bob", 2, "k2")];
    let mut state = fresh_state(&writes);
    state.accounts.remove("alice");
    let (outcomes, staged) = evaluate(state, &writes, now());
    assert!(matches!(outcomes[0], Err(LedgerError::Invariant(_))));
    assert_eq!(summary(&outcomes[1..]), ["ok 2"]);
    assert_eq!(staged.released_keys, ["k1"]);
}

#[test]
fn a_batch_mixing_every_kind_on_two_accounts_matches_one_at_a_time() {
    let writes = vec![
        grant("alice", 1_000, "k1"),
        purchase("bob", 500, "k2", "pi_1"),
        usage("alice", 300, "k3"),
        drip("bob", 300, "k4", 1),
        deduct("alice", 800, "k5"), // refused: 700 left
        reverse("bob", 200, "k6", 101),
        deduct("bob", 600, "k7"),
        usage("bob", 50, "k8"),
        grant("alice", 1_000, "k1"),        // replay
        purchase("bob", 500, "k9", "pi_1"), // business-key replay
    ];
    let mut state = fresh_state(&writes);
    // The reversal names the purchase the batch itself makes (journal id 101, key k2): the store
    // would not find it, since it is not committed yet.
    state.originals.clear();
    let (outcomes, staged) = evaluate(state.clone(), &writes, now());
    assert_eq!(
        summary(&outcomes),
        [
            "ok 1000",
            "ok 500",
            "ok 700",
            "ok 800",
            "insufficient",
            "not-found",
            "ok 200",
            "ok 150",
            "replay 1000",
            "replay 500",
        ]
    );
    // One at a time, each write in a batch of its own against the state the previous ones left,
    // gives the same answers.
    let mut one_by_one = Vec::new();
    let mut running = state;
    for write in &writes {
        let (mut outcome, staged_one) =
            evaluate(running.clone(), std::slice::from_ref(write), now());
        let outcome = outcome.remove(0);
        if let Ok(receipt) = &outcome {
            if !receipt.replayed {
                let key = write.idempotency_key.as_str().to_string();
                running.keys.insert(
                    key,
                    KeyState::Committed {
                        fingerprint: write.fingerprint().to_vec(),
                        entry_id: receipt.transaction_id,
                        balance_after: Some(receipt.balance),
                        token_amount: None,
                        price_id: None,
                    },
                );
                if let Some(bk) = write.business_key() {
                    running.credited.insert(
                        bk,
                        PriorCredit {
                            transaction_id: receipt.transaction_id,
                            user_id: write.user_id.as_str().to_string(),
                            token_amount: write.token_amount(),
                            balance_after: receipt.balance,
                        },
                    );
                }
            }
        }
        for m in staged_one.moved {
            let a = running.accounts.get_mut(&m.user_id).unwrap();
            a.balance = m.balance.balance;
            a.totals = m.balance.totals;
            a.last_seq = m.balance.transaction_count;
            a.created = false;
        }
        one_by_one.push(outcome);
    }
    assert_eq!(summary(&one_by_one), summary(&outcomes));
    assert_eq!(moved(&staged, "alice").balance.balance, 700);
    let bob = moved(&staged, "bob");
    assert_eq!(bob.balance.balance, 150);
    assert_eq!(bob.balance.transaction_count, 4);
    assert_eq!(
        bob.balance.totals,
        Totals {
            purchased: 500,
            dripped: 300,
            deducted: 600,
            used: 50,
            ..Totals::default()
        }
    );
    assert_eq!(staged.rows.len(), 6);
    assert_eq!(staged.released_keys, ["k5", "k6", "k9"]);
}

fn reserve_cmd(user: &str, tokens: i64, key: &str) -> WriteCommand {
    crate::domain::build::Reserve {
        common: common(user, tokens, key),
        ttl: None,
        overage: crate::domain::Overage::Reject,
        model: String::new(),
        feature: String::new(),
    }
    .build(actor())
    .unwrap()
}

fn commit_cmd(user: &str, hold: i64, tokens: i64, key: &str) -> WriteCommand {
    crate::domain::build::CommitHold {
        user_id: user.into(),
        hold_id: hold.to_string(),
        tokens,
        idempotency_key: key.into(),
        call: CallInput::default(),
    }
    .build(actor())
    .unwrap()
}

/// Holds are rules like any other: in one batch, in arrival order, a hold takes what a later
/// deduction could have had, and its commit gives back what it did not use.
#[test]
fn a_hold_in_a_batch_is_decided_in_arrival_order() {
    let writes = vec![
        grant("u", 100, "k1"),          // id 100
        reserve_cmd("u", 80, "k2"),     // hold 101
        deduct("u", 30, "k3"),          // refused: 20 available
        commit_cmd("u", 101, 50, "k4"), // 50 used, 30 back
        deduct("u", 30, "k5"),          // 50 available now
        reserve_cmd("u", 21, "k6"),     // refused: 20 available
    ];
    let (outcomes, staged) = evaluate(fresh_state(&writes), &writes, now());
    assert_eq!(
        summary(&outcomes),
        [
            "ok 100",
            "ok 100",
            "insufficient",
            "ok 50",
            "ok 20",
            "insufficient"
        ]
    );
    let hold = outcomes[1].as_ref().unwrap().hold.unwrap();
    assert_eq!(hold.hold_id, EntryId(101));
    let committed = outcomes[3].as_ref().unwrap().hold.unwrap();
    assert_eq!(committed.state, HoldState::Committed);
    assert_eq!(staged.holds.len(), 1);
    assert_eq!(staged.holds[0].committed_tokens, Some(50));
    let account = moved(&staged, "u");
    assert_eq!((account.balance.balance, account.wallet.held), (20, 0));
    // The grant's lot: 100 granted, 50 used by the commit, 30 deducted.
    assert_eq!(staged.lots.len(), 1);
    assert_eq!(staged.lots[0].1.remaining, 20);
    assert_eq!(staged.released_keys, ["k3", "k6"]);
}

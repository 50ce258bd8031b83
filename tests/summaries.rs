//! SummarizeUsage over real gRPC and PostgreSQL: sums grouped by model, feature, local day and
//! hour, kept in rollups by the usage writes themselves (checked against the journal by
//! `verify`), local days across DST and in half-hour zones, partial periods, paging, refusals.

mod common;

use chrono::{DateTime, Duration, DurationRound, Utc};
use common::*;
use tonic::transport::Channel;
use tonic::{Code, Status};

use token_ledger::pb;
use token_ledger::pb::ledger_service_client::LedgerServiceClient;

type Client = LedgerServiceClient<Channel>;

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().into()
}

fn request(
    user: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    zone: &str,
    groups: &[pb::UsageGroup],
) -> pb::SummarizeUsageRequest {
    pb::SummarizeUsageRequest {
        user_id: user.into(),
        from: Some(ts(&from.to_rfc3339())),
        to: Some(ts(&to.to_rfc3339())),
        time_zone: zone.into(),
        group_by: groups.iter().map(|g| *g as i32).collect(),
        ..Default::default()
    }
}

async fn summarize(
    c: &mut Client,
    m: pb::SummarizeUsageRequest,
) -> Result<Vec<pb::UsageSummaryRow>, Status> {
    c.summarize_usage(with_key(READ_KEY, m))
        .await
        .map(|r| r.into_inner().rows)
}

fn call(user: &str, tokens: i64, key: &str, model: &str, feature: &str) -> pb::TrackUsageRequest {
    pb::TrackUsageRequest {
        user_id: user.into(),
        tokens,
        idempotency_key: key.into(),
        model: model.into(),
        feature: feature.into(),
        input_tokens: tokens * 2,
        cache_read_tokens: tokens,
        output_tokens: 7,
        ..Default::default()
    }
}

/// The quarter hours around now: a window that holds everything written by the test.
fn window() -> (DateTime<Utc>, DateTime<Utc>) {
    let q = Duration::minutes(15);
    let now = Utc::now().duration_trunc(q).unwrap();
    (now - Duration::days(1), now + Duration::days(1))
}

#[tokio::test]
async fn usage_is_summed_by_model_and_feature_from_rollups_that_match_the_journal() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let calls = [
        ("a", 100, "gpt", "chat"),
        ("a", 50, "gpt", "chat"),
        ("a", 30, "gpt", "search"),
        ("a", 20, "claude", "chat"),
        ("b", 1_000, "gpt", "chat"),
    ];
    let events: Vec<pb::TrackUsageRequest> = calls
        .iter()
        .enumerate()
        .map(|(i, (u, t, m, f))| call(u, *t, &format!("k{i}"), m, f))
        .collect();
    // Through both paths: a batch, and a call of its own.
    c.track_usage_batch(with_key(
        USAGE_KEY,
        pb::TrackUsageBatchRequest {
            events: events[..4].to_vec(),
        },
    ))
    .await
    .unwrap();
    c.track_usage(with_key(USAGE_KEY, events[4].clone()))
        .await
        .unwrap();
    // A retry adds nothing.
    c.track_usage(with_key(USAGE_KEY, events[4].clone()))
        .await
        .unwrap();

    let (from, to) = window();
    let by_model = summarize(&mut c, request("a", from, to, "", &[pb::UsageGroup::Model]))
        .await
        .unwrap();
    let sums: Vec<(&str, i64, i64, i64, i64, bool)> = by_model
        .iter()
        .map(|r| {
            (
                r.model.as_str(),
                r.events,
                r.tokens,
                r.input_tokens,
                r.cache_read_tokens,
                r.partial,
            )
        })
        .collect();
    assert_eq!(
        sums,
        [
            ("claude", 1, 20, 40, 20, false),
            ("gpt", 3, 180, 360, 180, false)
        ]
    );
    let both = summarize(
        &mut c,
        request(
            "a",
            from,
            to,
            "",
            &[pb::UsageGroup::Model, pb::UsageGroup::Feature],
        ),
    )
    .await
    .unwrap();
    assert_eq!(both.len(), 3);
    // Everyone, one row: the whole window.
    let all = summarize(&mut c, request("", from, to, "", &[]))
        .await
        .unwrap();
    assert_eq!((all.len(), all[0].events, all[0].tokens), (1, 5, 1_200));
    assert_eq!(all[0].output_tokens, 35);
    // A user with no usage, and one that does not exist: no rows.
    assert!(summarize(&mut c, request("nobody", from, to, "", &[]))
        .await
        .unwrap()
        .is_empty());
    app.assert_verified().await;

    // A rollup that disagrees with the journal is reported by verify.
    sqlx::query("UPDATE usage_rollups SET tokens = tokens + 1 WHERE model = 'claude'")
        .execute(&app.pool)
        .await
        .unwrap();
    let report = app.store.verify().await.unwrap();
    assert_eq!(report.discrepancies.len(), 1, "{report:?}");
    assert!(
        report.discrepancies[0].what.contains("usage rollup")
            && report.discrepancies[0].what.contains("rollup says 1, 21"),
        "{report:?}"
    );
}

/// Rollup rows written straight into the table, for instants a test cannot write usage at.
async fn rollup_rows(app: &TestApp, user: &str, buckets: &[(&str, &str)]) {
    c_grant(app, user).await;
    for (bucket, model) in buckets {
        sqlx::query(
            "INSERT INTO usage_rollups SELECT account_id, $2::timestamptz, $3, '', 1, 10, 0, 0, 0, 0 \
             FROM accounts WHERE user_id = $1",
        )
        .bind(user)
        .bind(bucket)
        .bind(model)
        .execute(&app.pool)
        .await
        .unwrap();
    }
}

async fn c_grant(app: &TestApp, user: &str) {
    let mut c = app.client().await;
    c.grant(admin(grant_req(user, 1, &format!("g-{user}"))))
        .await
        .unwrap();
}

#[tokio::test]
async fn local_days_are_exact_across_dst_and_in_half_hour_zones() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    // Europe/Paris falls back on 2026-10-25 (03:00 CEST → 02:00 CET): that local day lasts
    // 25 hours, from 2026-10-24T22:00Z to 2026-10-25T23:00Z. One bucket per UTC hour.
    let hours: Vec<String> = (0..27)
        .map(|h| (at("2026-10-24T21:00:00Z") + Duration::hours(h)).to_rfc3339())
        .collect();
    let buckets: Vec<(&str, &str)> = hours.iter().map(|h| (h.as_str(), "m")).collect();
    rollup_rows(&app, "dst", &buckets).await;
    let days = summarize(
        &mut c,
        request(
            "dst",
            at("2026-10-24T00:00:00Z"),
            at("2026-10-27T00:00:00Z"),
            "Europe/Paris",
            &[pb::UsageGroup::Day],
        ),
    )
    .await
    .unwrap();
    let per_day: Vec<(&str, i64)> = days.iter().map(|d| (d.day.as_str(), d.events)).collect();
    assert_eq!(
        per_day,
        [("2026-10-24", 1), ("2026-10-25", 25), ("2026-10-26", 1)]
    );
    // The window starts at 02:00 local on the 24th (that day is cut) and ends at 01:00 local
    // on the 27th (the 26th is whole; the 27th has no usage, so no row).
    let partial: Vec<bool> = days.iter().map(|d| d.partial).collect();
    assert_eq!(partial, [true, false, false]);
    let cut_at_the_end = summarize(
        &mut c,
        request(
            "dst",
            at("2026-10-24T00:00:00Z"),
            at("2026-10-26T12:00:00Z"),
            "Europe/Paris",
            &[pb::UsageGroup::Day],
        ),
    )
    .await
    .unwrap();
    let last = cut_at_the_end.last().unwrap();
    assert_eq!(
        (last.day.as_str(), last.events, last.partial),
        ("2026-10-26", 1, true)
    );
    assert_eq!(
        days[1].period_start,
        Some(ts("2026-10-24T22:00:00Z")),
        "local midnight in CEST"
    );
    // The hour repeated at 02:00 local stays two hours.
    let hours = summarize(
        &mut c,
        request(
            "dst",
            at("2026-10-24T23:00:00Z"),
            at("2026-10-25T03:00:00Z"),
            "Europe/Paris",
            &[pb::UsageGroup::Hour],
        ),
    )
    .await
    .unwrap();
    let local: Vec<(String, Option<i32>)> = hours.iter().map(|h| (h.day.clone(), h.hour)).collect();
    let day = "2026-10-25".to_string();
    assert_eq!(
        local,
        [
            (day.clone(), Some(1)),
            (day.clone(), Some(2)),
            (day.clone(), Some(2)),
            (day, Some(3)),
        ]
    );
    assert_eq!(days[0].hour, None, "a day row names no hour");

    // Asia/Kolkata is UTC+05:30: 18:15Z is 23:45 on the 24th, 18:30Z is midnight of the 25th.
    rollup_rows(
        &app,
        "ist",
        &[("2026-10-24T18:15:00Z", "m"), ("2026-10-24T18:30:00Z", "m")],
    )
    .await;
    let days = summarize(
        &mut c,
        request(
            "ist",
            at("2026-10-23T18:30:00Z"),
            at("2026-10-25T18:30:00Z"),
            "Asia/Kolkata",
            &[pb::UsageGroup::Day],
        ),
    )
    .await
    .unwrap();
    let per_day: Vec<(&str, i64, bool)> = days
        .iter()
        .map(|d| (d.day.as_str(), d.events, d.partial))
        .collect();
    assert_eq!(
        per_day,
        [("2026-10-24", 1, false), ("2026-10-25", 1, false)]
    );
}

#[tokio::test]
async fn a_summary_pages_through_its_groups() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    for (i, model) in ["a", "b", "c"].iter().enumerate() {
        c.track_usage(with_key(
            USAGE_KEY,
            call("u", 10, &format!("k{i}"), model, ""),
        ))
        .await
        .unwrap();
    }
    let (from, to) = window();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .summarize_usage(with_key(
                USAGE_KEY,
                pb::SummarizeUsageRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    ..request("u", from, to, "", &[pb::UsageGroup::Model])
                },
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.rows.into_iter().map(|r| r.model));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["a", "b", "c"]);
}

#[tokio::test]
async fn a_bad_summary_request_is_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let (from, to) = window();
    let cases = [
        (
            "from",
            request("u", from + Duration::minutes(1), to, "", &[]),
        ),
        ("to", request("u", from, to + Duration::seconds(1), "", &[])),
        ("to", request("u", to, from, "", &[])),
        (
            "to",
            request("u", from, from + Duration::days(400), "", &[]),
        ),
        ("time_zone", request("u", from, to, "Mars/Base", &[])),
        ("time_zone", request("u", from, to, "UTC'--", &[])),
        (
            "group_by",
            request("u", from, to, "", &[pb::UsageGroup::Unspecified]),
        ),
        (
            "from",
            pb::SummarizeUsageRequest {
                from: None,
                ..request("u", from, to, "", &[])
            },
        ),
        (
            "page_token",
            pb::SummarizeUsageRequest {
                page_token: "nope".into(),
                ..request("u", from, to, "", &[])
            },
        ),
    ];
    for (field, m) in cases {
        let err = summarize(&mut c, m.clone()).await.unwrap_err();
        assert_eq!(bad_request_field(&err), field, "{m:?}");
    }
    // Everyone's usage takes the read scope; one user's, the usage scope too.
    let everyone = c
        .summarize_usage(with_key(USAGE_KEY, request("", from, to, "", &[])))
        .await
        .unwrap_err();
    assert_eq!(everyone.code(), Code::PermissionDenied);
    c.summarize_usage(with_key(USAGE_KEY, request("u", from, to, "", &[])))
        .await
        .unwrap();
}

// Multi-threaded: the CLI runs as a blocking child process while this runtime serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_a_summary_by_day_and_model() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.track_usage(with_key(USAGE_KEY, call("u", 40, "k1", "gpt", "chat")))
        .await
        .unwrap();
    let (from, to) = window();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_token-ledger"))
        .args(["usage-summary", "--user", "u", "--by", "day,model"])
        .args(["--from", &from.to_rfc3339(), "--to", &to.to_rfc3339()])
        .args(["--ledger-url", &format!("http://{}", app.addr)])
        .args(["--api-key", READ_KEY, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &json["rows"][0];
    assert_eq!(
        (row["model"].as_str(), row["tokens"].as_str()),
        (Some("gpt"), Some("40"))
    );
    // Today, or yesterday if midnight passed since the call.
    let today = Utc::now().date_naive();
    let days = [today, today.pred_opt().unwrap()].map(|d| d.format("%Y-%m-%d").to_string());
    assert!(days.iter().any(|d| row["day"] == d.as_str()), "{row}");
}

#[tokio::test]
async fn a_balance_as_of_an_instant_is_the_balance_after_the_last_row_before_it() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    let before_all = Utc::now();
    let mut marks = Vec::new();
    let mut expected = 0;
    for (i, delta) in [1_000i64, -300, 500, -1_250, 40].into_iter().enumerate() {
        if delta > 0 {
            c.grant(admin(grant_req("pit", delta, &format!("g{i}"))))
                .await
                .unwrap();
        } else {
            c.track_usage(with_key(
                USAGE_KEY,
                call("pit", -delta, &format!("u{i}"), "m", ""),
            ))
            .await
            .unwrap();
        }
        expected += delta;
        marks.push((Utc::now(), expected, i as i64 + 1));
        tokio::time::sleep(Duration::milliseconds(5).to_std().unwrap()).await;
    }
    let at = |t: DateTime<Utc>| pb::GetBalanceRequest {
        user_id: "pit".into(),
        as_of: Some(ts(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))),
    };
    for (t, balance, seq) in &marks {
        let r = c
            .get_balance(with_key(READ_KEY, at(*t)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.balance, r.transaction_count),
            (*balance, *seq),
            "as of {t}"
        );
        assert!(r.updated_at.is_some());
    }
    let r = c
        .get_balance(with_key(READ_KEY, at(before_all - Duration::seconds(1))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.balance, r.transaction_count, r.updated_at), (0, 0, None));
    let bad = c
        .get_balance(with_key(
            READ_KEY,
            pb::GetBalanceRequest {
                user_id: "pit".into(),
                as_of: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_request_field(&bad), "as_of");
}

//! The admin console in a real browser: a real server on port 0 with admin JWTs, driven by
//! `admin-console/e2e/admin.e2e.mjs` (headless Debian Chromium through playwright-core). The
//! holds scenario needs a user with an active hold: the test places it over gRPC first, since the
//! console only releases holds (placing one is the AI backend's job).
//!
//! Needs `node`, `/usr/bin/chromium` (or `$CHROMIUM`) and `admin-console/node_modules`
//! (`npm ci`). Without them the test is skipped with a message, unless `CI` is set: CI must run it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use token_ledger::jwt::{JwtSettings, JwtVerifier};
use token_ledger::pb;

const JWT_SECRET: &str = "browser-test-jwt-secret-0123456789";
const ADMIN_SUB: &str = "5d0c7f6e-browser-e2e-admin";
const USER_SUB: &str = "9a41b2c3-browser-e2e-user";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// What the browser test needs and is not installed.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !on_path("node") {
        missing.push("`node` is not on PATH".to_string());
    }
    let browser = chromium();
    if !browser.is_file() {
        missing.push(format!("{} does not exist", browser.display()));
    }
    let playwright = repo().join("admin-console/node_modules/playwright-core");
    if !playwright.is_dir() {
        missing.push(format!("{} does not exist", playwright.display()));
    }
    missing
}

fn hs256(sub: &str, role: &str) -> String {
    let claims = json!({
        "sub": sub,
        "aud": "authenticated",
        "role": "authenticated",
        "exp": chrono::Utc::now().timestamp() + 3600,
        "app_metadata": {"role": role, "provider": "email"},
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Tokens of the hold the browser releases.
const HOLD_TOKENS: i64 = 300;

fn at(t: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

/// Prepares the holds scenario's user: 500 tokens that lapsed (an expiry row), 1000 that expire
/// in 30 days and 200 that never do (two lots), and one active hold of [`HOLD_TOKENS`].
/// Returns the user id and the hold id.
async fn a_user_with_an_active_hold(app: &TestApp) -> (String, String) {
    let user = format!("e2e-holds-{}", uuid::Uuid::new_v4().simple());
    let mut c = app.client().await;
    let now = chrono::Utc::now();
    for (key, tokens, expires) in [
        ("lapsing", 500, Some(now + chrono::Duration::minutes(1))),
        ("month", 1000, Some(now + chrono::Duration::days(30))),
        ("forever", 200, None),
    ] {
        c.grant(admin(pb::GrantRequest {
            expires_at: expires.and_then(at),
            ..grant_req(&user, tokens, key)
        }))
        .await
        .unwrap();
    }
    // The ledger's clock moves past the first lot's expiry; the Reserve, a write, settles the
    // account first and so writes the expiry row.
    app.advance(chrono::Duration::minutes(2));
    let hold = c
        .reserve(admin(pb::ReserveRequest {
            user_id: user.clone(),
            tokens: HOLD_TOKENS,
            idempotency_key: "e2e-hold".into(),
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            model: "gpt-4o".into(),
            feature: "chat".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (hold.held, hold.balance, hold.available),
        (HOLD_TOKENS, 1200, 1200 - HOLD_TOKENS)
    );
    let expired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM token_transactions t JOIN accounts a USING (account_id) \
         WHERE a.user_id = $1 AND t.transaction_type = 'expiry'",
    )
    .bind(&user)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(expired, 1, "the lapsed lot's expiry row");
    (user, hold.hold_id)
}

#[tokio::test]
async fn an_admin_signs_in_in_a_real_browser_grants_tokens_and_releases_a_hold() {
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let what = missing.join(", ");
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            panic!("the browser test must run under CI, but {what}");
        }
        eprintln!(
            "skipped: {what}; run .ci/run or `apt-get install chromium && (cd admin-console && npm ci)`"
        );
        return;
    }

    let app = TestApp::spawn_with(TestOptions {
        jwt: JwtVerifier::from_settings(&JwtSettings {
            hs256_secret: Some(JWT_SECRET.into()),
            admin_claim: "app_metadata.role=admin".into(),
            ..Default::default()
        })
        .unwrap(),
        ..Default::default()
    })
    .await;
    let admin_jwt = hs256(ADMIN_SUB, "admin");
    let (hold_user, hold_id) = a_user_with_an_active_hold(&app).await;
    let user_jwt = hs256(USER_SUB, "user");
    let artifacts = repo().join("test-artifacts");

    let console_dir = repo().join("admin-console");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(Path::new("e2e").join("admin.e2e.mjs"))
        .current_dir(&console_dir)
        .env("LEDGER_URL", format!("http://{}", app.addr))
        .env("ADMIN_JWT", &admin_jwt)
        .env("NON_ADMIN_JWT", &user_jwt)
        .env("HOLD_USER_ID", &hold_user)
        .env("HOLD_ID", &hold_id)
        .env("SCREENSHOT_DIR", &artifacts)
        .env("CHROMIUM", chromium())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("could not start node");
    // Awaiting (not blocking) keeps the server, which runs on this runtime, answering.
    let output = match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.expect("could not wait for node"),
        Err(_) => panic!(
            "admin.e2e.mjs did not finish within {}s (killed)",
            SCRIPT_TIMEOUT.as_secs()
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("admin.e2e.mjs stdout:\n{stdout}");
    assert!(
        output.status.success() && stdout.contains("3 passed, 0 failed"),
        "admin.e2e.mjs failed ({}); screenshots in {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status,
        artifacts.display()
    );
    assert!(
        artifacts.join("admin-console.png").is_file(),
        "no screenshot at {}",
        artifacts.join("admin-console.png").display()
    );

    // The browser's writes are recorded as the admin JWT's subject, never a request field.
    let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT a.user_id, t.transaction_type, t.token_amount, t.created_by \
         FROM token_transactions t JOIN accounts a USING (account_id) \
         WHERE a.user_id LIKE 'e2e-user-%' ORDER BY t.entry_seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let grant = rows
        .iter()
        .find(|(_, kind, _, _)| kind == "grant")
        .unwrap_or_else(|| panic!("no grant row from the browser: {rows:?}"));
    assert_eq!(grant.2, 1234, "{rows:?}");
    assert_eq!(grant.3, ADMIN_SUB, "{rows:?}");
    assert!(
        rows.iter()
            .all(|(_, _, _, created_by)| created_by == ADMIN_SUB),
        "{rows:?}"
    );
    assert_eq!(
        rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
        ["grant", "deduction"],
        "the refused overdraft wrote nothing: {rows:?}"
    );

    // The page released the hold: ended unused, nothing charged, everything available again.
    let mut c = app.client().await;
    let holds = c
        .list_holds(admin(pb::ListHoldsRequest {
            user_id: hold_user.clone(),
            active_only: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .holds;
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert_eq!(holds[0].hold_id, hold_id, "{holds:?}");
    assert_eq!(holds[0].state, pb::HoldState::Released as i32, "{holds:?}");
    let balance = c
        .get_balance(admin(pb::GetBalanceRequest {
            user_id: hold_user.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (balance.balance, balance.held, balance.available),
        (1200, 0, 1200)
    );
}

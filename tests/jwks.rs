//! Admin JWTs checked against keys fetched from a JWKS URL: a real HTTP server on port 0 in the
//! test publishes the keys (and rotates them, or fails), the ledger serves real gRPC.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use serde_json::{json, Value};
use token_ledger::jwt::{JwtSettings, JwtVerifier};
use token_ledger::pb;
use tonic::Code;

/// What the test's JWKS endpoint answers, and how often it was asked.
#[derive(Clone, Default)]
struct Issuer {
    /// `None`: answer 500.
    keys: Arc<Mutex<Option<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl Issuer {
    /// Serves `GET /.well-known/jwks.json` on port 0; returns its URL.
    async fn serve(&self) -> String {
        let state = self.clone();
        let router = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let state = state.clone();
                async move {
                    state.fetches.fetch_add(1, Ordering::SeqCst);
                    match state.keys.lock().unwrap().clone() {
                        Some(keys) => (StatusCode::OK, keys.to_string()),
                        None => (StatusCode::INTERNAL_SERVER_ERROR, "down".to_string()),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}/.well-known/jwks.json")
    }

    fn publish(&self, keys: &[&SigningKey]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
        *self.keys.lock().unwrap() = Some(json!({ "keys": keys }));
    }

    fn fail(&self) {
        *self.keys.lock().unwrap() = None;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// An ES256 key pair with its key id.
struct SigningKey {
    kid: String,
    jwk: Value,
    encoding: EncodingKey,
}

impl SigningKey {
    fn new(seed: u8, kid: &str) -> Self {
        let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        let mut jwk: Value = serde_json::from_str(&secret.public_key().to_jwk_string()).unwrap();
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!("ES256");
        jwk["use"] = json!("sig");
        let der = secret.to_pkcs8_der().unwrap();
        Self {
            kid: kid.into(),
            jwk,
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
        }
    }

    /// An admin's token signed with this key.
    fn token(&self, sub: &str) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = json!({
            "sub": sub, "aud": "authenticated",
            "exp": chrono::Utc::now().timestamp() + 3600,
            "app_metadata": {"role": "admin"}
        });
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

async fn app_with_jwks(url: String, refresh: Duration, refetch_gap: Duration) -> TestApp {
    TestApp::spawn_with(TestOptions {
        jwt: JwtVerifier::from_settings(&JwtSettings {
            jwks_url: Some(url),
            jwks_refresh_interval: refresh,
            jwks_refetch_gap: refetch_gap,
            audience: Some("authenticated".into()),
            admin_claim: "app_metadata.role=admin".into(),
            ..Default::default()
        })
        .unwrap(),
        ..Default::default()
    })
    .await
}

async fn who(app: &TestApp, token: &str) -> Result<String, Code> {
    app.client()
        .await
        .who_am_i(with_key(token, pb::WhoAmIRequest {}))
        .await
        .map(|r| r.into_inner().actor)
        .map_err(|s| s.code())
}

/// Polls until `condition` holds, failing after `what` has not happened for 10 s.
async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_rotated_key_is_fetched_on_its_first_use_and_refetches_are_rate_limited() {
    let issuer = Issuer::default();
    let (old, new, newer) = (
        SigningKey::new(7, "old"),
        SigningKey::new(8, "new"),
        SigningKey::new(9, "newer"),
    );
    issuer.publish(&[&old]);
    let url = issuer.serve().await;
    // Periodic refreshes out of the way: only unknown key ids cause fetches here.
    let app = app_with_jwks(url, Duration::from_secs(3600), Duration::from_secs(3600)).await;
    eventually("the start-up fetch", async || issuer.fetches() == 1).await;
    assert_eq!(who(&app, &old.token("ada")).await, Ok("ada".into()));

    // The issuer rotates: the first call with the new key is accepted after one refetch.
    issuer.publish(&[&new]);
    assert_eq!(who(&app, &new.token("ada")).await, Ok("ada".into()));
    assert_eq!(issuer.fetches(), 2);

    // Another unknown key within the refetch gap: refused, and the issuer is not asked again.
    issuer.publish(&[&new, &newer]);
    for _ in 0..3 {
        assert_eq!(
            who(&app, &newer.token("ada")).await,
            Err(Code::Unauthenticated)
        );
    }
    assert_eq!(issuer.fetches(), 2, "refetches are rate-limited");
    assert_eq!(who(&app, &new.token("ada")).await, Ok("ada".into()));
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_last_good_keys_and_a_later_refresh_picks_up_new_ones() {
    let issuer = Issuer::default();
    let (old, new) = (SigningKey::new(7, "old"), SigningKey::new(8, "new"));
    issuer.publish(&[&old]);
    let url = issuer.serve().await;
    // Refreshes every 50 ms; unknown key ids never cause a refetch of their own after the first.
    let app = app_with_jwks(url, Duration::from_millis(50), Duration::from_secs(3600)).await;
    eventually("the start-up fetch", async || issuer.fetches() >= 1).await;
    assert_eq!(who(&app, &old.token("ada")).await, Ok("ada".into()));
    // Spend the one unknown-kid refetch, so only the periodic refresh can learn a key below.
    assert_eq!(
        who(&app, &new.token("ada")).await,
        Err(Code::Unauthenticated)
    );

    // The issuer fails for a few refreshes: the old key still works.
    issuer.fail();
    let failing_since = issuer.fetches();
    eventually("two failed refreshes", async || {
        issuer.fetches() >= failing_since + 2
    })
    .await;
    assert_eq!(who(&app, &old.token("ada")).await, Ok("ada".into()));

    // It recovers with a rotated key: a periodic refresh picks it up.
    issuer.publish(&[&new]);
    eventually("the new key accepted", async || {
        who(&app, &new.token("ada")).await.is_ok()
    })
    .await;
    assert_eq!(
        who(&app, &old.token("ada")).await,
        Err(Code::Unauthenticated),
        "a key the issuer withdrew is withdrawn here too"
    );
}

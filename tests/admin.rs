//! The admin path: grpc-web on the gRPC port, CORS, admin JWTs, and the admin page's queries.

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message;
use serde_json::json;
use token_ledger::jwt::{JwtSettings, JwtVerifier};
use token_ledger::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const JWT_SECRET: &str = "jwt-secret-for-tests-0123456789";
const ORIGIN: &str = "https://admin.example.com";

fn jwt_settings() -> JwtSettings {
    JwtSettings {
        hs256_secret: Some(JWT_SECRET.into()),
        jwks_file: None,
        audience: Some("authenticated".into()),
        issuer: None,
        admin_claim: "app_metadata.role=admin".into(),
        ..Default::default()
    }
}

async fn jwt_app(settings: JwtSettings) -> TestApp {
    TestApp::spawn_with(TestOptions {
        jwt: JwtVerifier::from_settings(&settings).unwrap(),
        cors_origins: vec![ORIGIN.into()],
        ..Default::default()
    })
    .await
}

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(sub: &str, role: &str, exp_in_secs: i64) -> serde_json::Value {
    json!({
        "sub": sub, "aud": "authenticated", "role": "authenticated",
        "exp": chrono::Utc::now().timestamp() + exp_in_secs,
        "app_metadata": {"role": role, "provider": "email"}
    })
}

async fn who(app: &TestApp, token: &str) -> Result<pb::WhoAmIResponse, tonic::Status> {
    app.client()
        .await
        .who_am_i(with_key(token, pb::WhoAmIRequest {}))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn an_admin_jwt_is_an_admin_recorded_by_its_sub() {
    let app = jwt_app(jwt_settings()).await;
    let token = hs256(claims("6f1e-admin-uuid", "admin", 3600), JWT_SECRET);

    let me = who(&app, &token).await.unwrap();
    assert_eq!(
        (me.actor.as_str(), me.credential.as_str()),
        ("6f1e-admin-uuid", "jwt")
    );

    let mut c = app.client().await;
    c.grant(with_key(&token, grant_req("u", 100, "g")))
        .await
        .unwrap();
    c.deduct(with_key(
        &token,
        pb::DeductRequest {
            user_id: "u".into(),
            tokens: 10,
            idempotency_key: "d".into(),
            reason: "fix".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    let created_by: Vec<String> =
        sqlx::query_scalar("SELECT created_by FROM token_transactions ORDER BY entry_seq")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(created_by, vec!["6f1e-admin-uuid", "6f1e-admin-uuid"]);
    // API keys keep working beside JWTs.
    assert!(c.grant(admin(grant_req("u", 1, "g2"))).await.is_ok());
}

#[tokio::test]
async fn a_non_admin_jwt_is_permission_denied_and_a_bad_one_unauthenticated() {
    let app = jwt_app(jwt_settings()).await;
    let user = hs256(claims("plain-user", "user", 3600), JWT_SECRET);
    assert_eq!(
        who(&app, &user).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let mut c = app.client().await;
    assert_eq!(
        c.grant(with_key(&user, grant_req("u", 1, "g")))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    let expired = hs256(claims("a", "admin", -3600), JWT_SECRET);
    let wrong_signature = hs256(claims("a", "admin", 3600), "some-other-secret-0123456789");
    let mut wrong_audience_claims = claims("a", "admin", 3600);
    wrong_audience_claims["aud"] = json!("someone-else");
    let wrong_audience = hs256(wrong_audience_claims, JWT_SECRET);
    let mut no_exp_claims = claims("a", "admin", 3600);
    no_exp_claims.as_object_mut().unwrap().remove("exp");
    let no_exp = hs256(no_exp_claims, JWT_SECRET);
    // alg "none": a header and payload with an empty signature.
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims("a", "admin", 3600))
    );
    let alg_none_signed = format!(
        "{}.{}.c2ln",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims("a", "admin", 3600))
    );
    for (name, token) in [
        ("expired", expired),
        ("wrong signature", wrong_signature),
        ("wrong audience", wrong_audience),
        ("no exp", no_exp),
        ("alg none", alg_none),
        ("alg none with a signature", alg_none_signed),
    ] {
        let err = who(&app, &token).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{name}: {err:?}");
    }
    assert_eq!(app.journal_rows().await, 0);
}

#[tokio::test]
async fn an_es256_jwt_is_checked_with_the_jwks_file() {
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
    let mut jwk: serde_json::Value =
        serde_json::from_str(&secret.public_key().to_jwk_string()).unwrap();
    jwk["kid"] = json!("key-1");
    jwk["alg"] = json!("ES256");
    jwk["use"] = json!("sig");
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, json!({"keys": [jwk]}).to_string()).unwrap();
    let app = jwt_app(JwtSettings {
        hs256_secret: None,
        jwks_file: Some(jwks_file),
        issuer: Some("https://auth.example.com".into()),
        ..jwt_settings()
    })
    .await;

    let der = secret.to_pkcs8_der().unwrap();
    let key = EncodingKey::from_ec_der(der.as_bytes());
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("key-1".into());
    let mut c = claims("es-admin", "admin", 3600);
    c["iss"] = json!("https://auth.example.com");
    let token = jsonwebtoken::encode(&header, &c, &key).unwrap();
    assert_eq!(who(&app, &token).await.unwrap().actor, "es-admin");

    let mut wrong_issuer = c.clone();
    wrong_issuer["iss"] = json!("https://evil.example.com");
    let token = jsonwebtoken::encode(&header, &wrong_issuer, &key).unwrap();
    assert_eq!(
        who(&app, &token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // HS256 is not configured here: such a token is refused, not checked against nothing.
    assert_eq!(
        who(&app, &hs256(claims("a", "admin", 3600), JWT_SECRET))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
}

/// A grpc-web call over plain HTTP/1.1: returns (status line code, headers text, body bytes).
async fn grpc_web(
    app: &TestApp,
    method: &str,
    message: &[u8],
    extra_headers: &str,
) -> (u16, String, Vec<u8>) {
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /tokenledger.v1.LedgerService/{method} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\nAccept: application/grpc-web+proto\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
        app.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let headers = String::from_utf8_lossy(&response[..split]).to_string();
    let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = response[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

/// The body of a chunked response: every complete chunk so far (a stream still open may end
/// in a partial one).
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
}

/// Splits a grpc-web body into (data messages, trailers text); a partial last frame (of a
/// stream still open) is left out.
fn frames(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let mut messages = Vec::new();
    let mut trailers = String::new();
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        if body.len() < 5 + len {
            break;
        }
        let payload = &body[5..5 + len];
        if flag & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(payload));
        } else {
            messages.push(payload.to_vec());
        }
        body = &body[5 + len..];
    }
    (messages, trailers.to_ascii_lowercase())
}

#[tokio::test]
async fn grpc_web_carries_a_unary_call_and_its_status_in_trailers() {
    let app = jwt_app(jwt_settings()).await;
    let auth = format!("Authorization: Bearer {ADMIN_KEY}\r\n");

    let grant = grant_req("web-user", 500, "web-1").encode_to_vec();
    let (status, _headers, body) = grpc_web(&app, "Grant", &grant, &auth).await;
    assert_eq!(status, 200);
    let (messages, trailers) = frames(&body);
    assert_eq!(messages.len(), 1);
    let response = pb::GrantResponse::decode(messages[0].as_slice()).unwrap();
    assert_eq!(response.balance, 500);
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");

    // An error: the status travels in the grpc-web trailers frame (or, for a trailers-only
    // answer, the headers), with the message.
    let deduct = pb::DeductRequest {
        user_id: "web-user".into(),
        tokens: 501,
        idempotency_key: "web-2".into(),
        reason: "r".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let (status, headers, body) = grpc_web(&app, "Deduct", &deduct, &auth).await;
    assert_eq!(status, 200);
    let (messages, trailers) = frames(&body);
    assert!(messages.is_empty());
    let all = format!("{}\n{trailers}", headers.to_ascii_lowercase());
    assert!(
        all.contains("grpc-status: 9") || all.contains("grpc-status:9"),
        "{all}"
    );
    assert!(all.contains("insufficient"), "{all}");

    // No credentials: UNAUTHENTICATED (16).
    let (_, headers, body) = grpc_web(&app, "Grant", &grant, "").await;
    let all = format!("{}\n{}", headers.to_ascii_lowercase(), frames(&body).1);
    assert!(
        all.contains("grpc-status: 16") || all.contains("grpc-status:16"),
        "{all}"
    );
}

/// A server-streaming grpc-web call over plain HTTP/1.1, read as it arrives (the stream stays
/// open).
struct GrpcWebStream {
    stream: tokio::net::TcpStream,
    response: Vec<u8>,
}

impl GrpcWebStream {
    async fn open(app: &TestApp, method: &str, message: &[u8], extra_headers: &str) -> Self {
        let mut body = vec![0u8];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /tokenledger.v1.LedgerService/{method} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/grpc-web+proto\r\n\
             X-Grpc-Web: 1\r\nAccept: application/grpc-web+proto\r\nContent-Length: {}\r\n{extra_headers}\r\n",
            app.addr,
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        Self {
            stream,
            response: Vec::new(),
        }
    }

    /// Reads until `wanted` data messages have come in all: (response headers, the messages).
    async fn until(&mut self, wanted: usize) -> (String, Vec<Vec<u8>>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(split) = self.response.windows(4).position(|w| w == b"\r\n\r\n") {
                let headers = String::from_utf8_lossy(&self.response[..split]).to_string();
                let mut body = self.response[split + 4..].to_vec();
                if headers
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: chunked")
                {
                    body = dechunk(&body);
                }
                let (messages, _) = frames(&body);
                if messages.len() >= wanted {
                    return (headers, messages);
                }
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .expect("the stream did not bring enough messages in time")
                .unwrap();
            assert!(n > 0, "the server closed the stream: {:?}", self.response);
            self.response.extend_from_slice(&buf[..n]);
        }
    }
}

#[tokio::test]
async fn grpc_web_carries_watch_balance_as_it_happens() {
    let app = jwt_app(jwt_settings()).await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("web-watch", 500, "g1")))
        .await
        .unwrap();
    let auth = format!("Authorization: Bearer {READ_KEY}\r\n");
    let request = pb::WatchBalanceRequest {
        user_id: "web-watch".into(),
        after_seq: 0,
    }
    .encode_to_vec();

    let mut stream = GrpcWebStream::open(&app, "WatchBalance", &request, &auth).await;
    // The first message is the current balance; once it came the watcher is registered, and a
    // write brings the second.
    let (headers, messages) = stream.until(1).await;
    assert!(headers.starts_with("HTTP/1.1 200"), "{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/grpc-web"),
        "{headers}"
    );
    let first = pb::BalanceUpdate::decode(messages[0].as_slice()).unwrap();
    assert_eq!((first.seq, first.balance, first.heartbeat), (1, 500, false));

    c.track_usage(with_key(USAGE_KEY, usage_req("web-watch", 120, "u1")))
        .await
        .unwrap();
    let (_, messages) = stream.until(2).await;
    let second = pb::BalanceUpdate::decode(messages[1].as_slice()).unwrap();
    assert_eq!(
        (second.seq, second.balance, second.available),
        (2, 380, 380)
    );
}

async fn raw_http(app: &TestApp, request: String) -> String {
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&response).to_string()
}

fn preflight(addr: std::net::SocketAddr, origin: &str) -> String {
    format!(
        "OPTIONS /tokenledger.v1.LedgerService/GetBalance HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization\r\n\
         Connection: close\r\n\r\n"
    )
}

#[tokio::test]
async fn cors_grants_the_configured_origin_and_no_other() {
    let app = jwt_app(jwt_settings()).await;

    let allowed = raw_http(&app, preflight(app.addr, ORIGIN))
        .await
        .to_ascii_lowercase();
    assert!(allowed.starts_with("http/1.1 200"), "{allowed}");
    assert!(
        allowed.contains(&format!("access-control-allow-origin: {ORIGIN}")),
        "{allowed}"
    );
    for h in [
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "authorization",
    ] {
        assert!(allowed.contains(h), "preflight must allow {h}: {allowed}");
    }

    let foreign = raw_http(&app, preflight(app.addr, "https://evil.example.com"))
        .await
        .to_ascii_lowercase();
    assert!(
        !foreign.contains("access-control-allow-origin"),
        "{foreign}"
    );

    // An actual grpc-web call from the allowed origin exposes the grpc headers to the page.
    let message = pb::GetBalanceRequest {
        user_id: "u".into(),
        as_of: None,
    }
    .encode_to_vec();
    let (_, headers, _) = grpc_web(
        &app,
        "GetBalance",
        &message,
        &format!("Origin: {ORIGIN}\r\nAuthorization: Bearer {READ_KEY}\r\n"),
    )
    .await;
    let headers = headers.to_ascii_lowercase();
    assert!(
        headers.contains(&format!("access-control-allow-origin: {ORIGIN}")),
        "{headers}"
    );
    for h in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(headers.contains(h), "must expose {h}: {headers}");
    }
}

#[tokio::test]
async fn the_console_is_served_at_admin() {
    let app = TestApp::spawn().await;
    let page = raw_http(
        &app,
        format!(
            "GET /admin HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            app.addr
        ),
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{page}"
    );
    let script = raw_http(
        &app,
        format!(
            "GET /admin/app.js HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            app.addr
        ),
    )
    .await;
    assert!(script.starts_with("HTTP/1.1 200"), "{script}");
}

#[tokio::test]
async fn accounts_are_searched_by_prefix_and_paged_by_balance_or_activity() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    for (i, user) in ["team-a", "team-b", "team-c", "team_d", "other"]
        .iter()
        .enumerate()
    {
        c.grant(admin(grant_req(
            user,
            100 * (i as i64 + 1),
            &format!("g{i}"),
        )))
        .await
        .unwrap();
    }
    let list =
        |prefix: &str, order: pb::AccountOrder, size: i32, token: String| pb::ListAccountsRequest {
            user_id_prefix: prefix.into(),
            order_by: order as i32,
            page_size: size,
            page_token: token,
        };
    let c2 = app.client().await;
    let all = |req: pb::ListAccountsRequest| {
        let mut c = c2.clone();
        async move {
            let mut users = Vec::new();
            let mut req = req;
            loop {
                let page = c
                    .list_accounts(with_key(READ_KEY, req.clone()))
                    .await
                    .unwrap()
                    .into_inner();
                users.extend(page.accounts.into_iter().map(|a| (a.user_id, a.balance)));
                if page.next_page_token.is_empty() {
                    return users;
                }
                req.page_token = page.next_page_token;
            }
        }
    };
    let by_id = all(list("team", pb::AccountOrder::UserId, 2, String::new())).await;
    assert_eq!(
        by_id.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(),
        vec!["team-a", "team-b", "team-c", "team_d"]
    );
    // "_" is a literal in a prefix, not a wildcard.
    let underscore = all(list("team_", pb::AccountOrder::UserId, 10, String::new())).await;
    assert_eq!(underscore, vec![("team_d".to_string(), 400)]);
    let by_balance = all(list("", pb::AccountOrder::BalanceDesc, 2, String::new())).await;
    assert_eq!(
        by_balance.iter().map(|(_, b)| *b).collect::<Vec<_>>(),
        vec![500, 400, 300, 200, 100]
    );
    let by_activity = all(list(
        "",
        pb::AccountOrder::LastActivityDesc,
        3,
        String::new(),
    ))
    .await;
    assert_eq!(
        by_activity.first().unwrap().0,
        "other",
        "the most recent change first"
    );
    assert_eq!(by_activity.len(), 5);

    let err = c
        .list_accounts(with_key(
            READ_KEY,
            list("", pb::AccountOrder::BalanceDesc, 2, "garbage".into()),
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_request_field(&err), "page_token");
    assert_eq!(
        c.list_accounts(with_key(
            USAGE_KEY,
            list("", pb::AccountOrder::UserId, 2, String::new())
        ))
        .await
        .unwrap_err()
        .code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn history_filters_by_kind_and_date() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("u", 1_000, "g"))).await.unwrap();
    for i in 0..3 {
        c.track_usage(admin(usage_req("u", 10, &format!("use{i}"))))
            .await
            .unwrap();
    }
    c.record_purchase(admin(purchase_req("u", "p", "pi_1")))
        .await
        .unwrap();

    let list =
        |kinds: Vec<pb::TransactionKind>,
         after: Option<prost_types::Timestamp>,
         before: Option<prost_types::Timestamp>| pb::ListTransactionsRequest {
            user_id: "u".into(),
            page_size: 2,
            kinds: kinds.into_iter().map(|k| k as i32).collect(),
            created_after: after,
            created_before: before,
            ..Default::default()
        };
    let page = c
        .list_transactions(admin(list(vec![pb::TransactionKind::Usage], None, None)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.transactions.len(), 2);
    assert!(page
        .transactions
        .iter()
        .all(|t| t.kind == pb::TransactionKind::Usage as i32));
    let mut next = list(vec![pb::TransactionKind::Usage], None, None);
    next.page_token = page.next_page_token;
    let rest = c.list_transactions(admin(next)).await.unwrap().into_inner();
    assert_eq!(rest.transactions.len(), 1);
    assert!(rest.next_page_token.is_empty());

    let credits = c
        .list_transactions(admin(list(
            vec![pb::TransactionKind::Grant, pb::TransactionKind::Purchase],
            None,
            None,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        credits
            .transactions
            .iter()
            .map(|t| t.kind)
            .collect::<Vec<_>>(),
        vec![
            pb::TransactionKind::Purchase as i32,
            pb::TransactionKind::Grant as i32
        ]
    );

    let future = ts("2999-01-01T00:00:00Z");
    let none = c
        .list_transactions(admin(list(vec![], Some(future), None)))
        .await
        .unwrap()
        .into_inner();
    assert!(none.transactions.is_empty());
    let all_before = c
        .list_transactions(admin(list(vec![], None, Some(future))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all_before.transactions.len(), 2);
    let err = c
        .list_transactions(admin(list(
            vec![pb::TransactionKind::Unspecified],
            None,
            None,
        )))
        .await
        .unwrap_err();
    assert_eq!(bad_request_field(&err), "kinds");
}

#[tokio::test]
async fn a_deduction_below_zero_needs_an_explicit_override_which_is_recorded() {
    let app = TestApp::spawn().await;
    let mut c = app.client().await;
    c.grant(admin(grant_req("u", 100, "g"))).await.unwrap();
    let deduct = |allow_negative: bool, key: &str| pb::DeductRequest {
        user_id: "u".into(),
        tokens: 250,
        idempotency_key: key.into(),
        reason: "chargeback".into(),
        allow_negative,
    };
    assert_eq!(
        c.deduct(admin(deduct(false, "d1")))
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    let r = c
        .deduct(admin(deduct(true, "d2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.balance, -150);
    let flags: Vec<bool> = sqlx::query_scalar(
        "SELECT allow_negative FROM token_transactions WHERE transaction_type = 'deduction'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(flags, vec![true]);
    let history = c
        .list_transactions(admin(pb::ListTransactionsRequest {
            user_id: "u".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        history.transactions[0].details,
        Some(pb::transaction::Details::Deduction(pb::DeductionDetails {
            allow_negative: true
        }))
    );
}

//! JWT public keys published at a URL (a JWKS endpoint: Supabase's
//! `https://<project>.supabase.co/auth/v1/.well-known/jwks.json`, Auth0's
//! `https://<tenant>.auth0.com/.well-known/jwks.json`), cached in memory.
//!
//! The keys are fetched at start-up and again every refresh interval. A token whose `kid` is not
//! in the cache has the set refetched before it is checked, so a key the issuer just rotated in
//! is accepted on its first use; such refetches are rate-limited (at most one per
//! [`REFETCH_GAP_DEFAULT`]), so a stream of tokens with made-up key ids cannot turn the server
//! into a load generator against the issuer. A failed fetch (network, HTTP status, bad JSON, an
//! empty set) keeps the last good keys and is logged; tokens keep being checked against them.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use tokio::time::Instant;

/// How often the key set is refetched when nothing asks sooner. Issuers rotate keys by
/// publishing the new one ahead of use, and Auth0 and Supabase cache their own answers for
/// minutes, so a few minutes loses nothing.
pub const REFRESH_INTERVAL_DEFAULT: Duration = Duration::from_secs(300);
/// Least time between two fetches caused by unknown key ids.
pub const REFETCH_GAP_DEFAULT: Duration = Duration::from_secs(30);
/// How long one fetch may take, connecting included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted; real ones hold a few keys in a few KiB.
const JWKS_BYTES_MAX: usize = 256 * 1024;

/// A key set fetched from a URL and kept fresh. Cheap to share (`Arc`).
pub struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<Arc<JwkSet>>,
    refetch_gap: Duration,
    /// Held while fetching, so concurrent unknown-kid tokens cause one fetch; holds when the
    /// last unknown-kid refetch began.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.url)
            .field("keys", &self.current().keys.len())
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    /// Starts with no keys and spawns the refresher, whose first fetch runs at once. The
    /// refresher stops when the last `Arc` is dropped.
    pub fn start(
        url: &str,
        refresh_interval: Duration,
        refetch_gap: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(
            url.starts_with("https://") || url.starts_with("http://"),
            "the JWKS URL must be an http(s) URL, not {url:?}"
        );
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("building the JWKS HTTP client: {e}"))?;
        let jwks = Arc::new(Self {
            url: url.to_string(),
            client,
            keys: RwLock::new(Arc::new(JwkSet { keys: Vec::new() })),
            refetch_gap,
            fetching: tokio::sync::Mutex::new(None),
        });
        tokio::spawn(refresh(Arc::downgrade(&jwks), refresh_interval));
        Ok(jwks)
    }

    /// The keys as last fetched successfully.
    pub fn current(&self) -> Arc<JwkSet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes sure `kid` is known if the issuer publishes it: refetches unless it is already
    /// cached or a refetch for an unknown kid ran less than the refetch gap ago.
    pub async fn learn(&self, kid: &str) {
        if self.current().find(kid).is_some() {
            return;
        }
        let mut last = self.fetching.lock().await;
        // Another call may have fetched it while this one waited for the lock.
        if self.current().find(kid).is_some() {
            return;
        }
        if last.is_some_and(|at| at.elapsed() < self.refetch_gap) {
            tracing::debug!(
                kid,
                "unknown JWT key id; JWKS refetched recently, not again yet"
            );
            return;
        }
        *last = Some(Instant::now());
        tracing::info!(kid, url = %self.url, "unknown JWT key id: refetching the JWKS");
        self.fetch_and_keep().await;
    }

    /// Fetches the set; keeps it if it is good, else keeps the last good one and logs why.
    async fn fetch_and_keep(&self) {
        match self.fetch().await {
            Ok(set) => {
                tracing::debug!(url = %self.url, keys = set.keys.len(), "JWKS fetched");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
            }
            Err(err) => tracing::error!(
                url = %self.url,
                error = %err,
                keys_kept = self.current().keys.len(),
                "JWKS fetch failed: keeping the last good keys"
            ),
        }
    }

    async fn fetch(&self) -> anyhow::Result<JwkSet> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", crate::error::one_line(&e)))?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "the JWKS URL answered HTTP {status}");
        let body = response
            .bytes()
            .await
            .map_err(|e| anyhow::anyhow!("reading the JWKS: {e}"))?;
        anyhow::ensure!(
            body.len() <= JWKS_BYTES_MAX,
            "the JWKS is {} bytes, more than the {JWKS_BYTES_MAX} accepted",
            body.len()
        );
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| anyhow::anyhow!("the JWKS is not a JWK set: {e}"))?;
        anyhow::ensure!(!set.keys.is_empty(), "the JWKS has no keys");
        Ok(set)
    }
}

/// Fetches at once, then every `interval`, while anyone holds the key set.
async fn refresh(jwks: Weak<RemoteJwks>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(jwks) = jwks.upgrade() else { return };
        let _fetching = jwks.fetching.lock().await;
        jwks.fetch_and_keep().await;
    }
}

//! Admin identity from JWTs: the admin frontend sends the signed-in admin's token
//! (`authorization: Bearer <jwt>`). HS256 tokens (as Supabase issues them) are checked with a
//! shared secret; RS256 and ES256 tokens with public keys from a JWKS file and/or a JWKS URL
//! (fetched and kept fresh by [`crate::jwks`]). Expiry is always
//! required; audience and issuer are checked where configured; `alg: none` and every algorithm
//! not listed here are refused. A valid token carrying the configured admin claim is an admin
//! (all scopes) whose `sub` is recorded as `created_by`; any other valid token has no scope.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::auth::{Caller, Credential, Scope};
use crate::error::LedgerError;

/// Longest token accepted; real ones are under 2 KiB.
const JWT_LEN_MAX: usize = 8 * 1024;
/// Clock skew tolerated on `exp`/`nbf`, in seconds.
const JWT_LEEWAY_SECS: u64 = 30;
/// Longest `sub` accepted (it becomes `created_by`).
const SUBJECT_LEN_MAX: usize = 256;

/// Whether a bearer credential has a JWT's shape (three base64url segments).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("ey")
}

/// JWT settings.
#[derive(Debug, Clone, Default)]
pub struct JwtSettings {
    pub hs256_secret: Option<String>,
    pub jwks_file: Option<std::path::PathBuf>,
    /// A JWKS URL (Supabase, Auth0), fetched at start-up and every `jwks_refresh_interval`.
    pub jwks_url: Option<String>,
    /// Zero: [`crate::jwks::REFRESH_INTERVAL_DEFAULT`].
    pub jwks_refresh_interval: Duration,
    /// Least time between refetches caused by unknown key ids. Zero:
    /// [`crate::jwks::REFETCH_GAP_DEFAULT`].
    pub jwks_refetch_gap: Duration,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    /// `path.to.claim=value`, e.g. `app_metadata.role=admin`.
    pub admin_claim: String,
}

impl JwtSettings {
    pub fn is_configured(&self) -> bool {
        self.hs256_secret.is_some() || self.jwks_file.is_some() || self.jwks_url.is_some()
    }
}

/// Verifies admin JWTs. Cheap to clone.
#[derive(Clone)]
pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    jwks: Option<JwkSet>,
    remote: Option<Arc<crate::jwks::RemoteJwks>>,
    audience: Option<String>,
    issuer: Option<String>,
    admin_claim_path: Vec<String>,
    admin_claim_value: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("jwks_keys", &self.jwks.as_ref().map(|j| j.keys.len()))
            .field("remote", &self.remote)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// `None` when no JWT verification is configured. With a JWKS URL, this starts its
    /// refresher, so it must run inside a Tokio runtime.
    pub fn from_settings(s: &JwtSettings) -> anyhow::Result<Option<Self>> {
        if !s.is_configured() {
            return Ok(None);
        }
        let jwks = match &s.jwks_file {
            Some(path) => Some(load_jwks(path)?),
            None => None,
        };
        let or_default = |d: Duration, default| if d.is_zero() { default } else { d };
        let remote = match &s.jwks_url {
            Some(url) => Some(crate::jwks::RemoteJwks::start(
                url,
                or_default(
                    s.jwks_refresh_interval,
                    crate::jwks::REFRESH_INTERVAL_DEFAULT,
                ),
                or_default(s.jwks_refetch_gap, crate::jwks::REFETCH_GAP_DEFAULT),
            )?),
            None => None,
        };
        let (path, value) = s.admin_claim.split_once('=').context(
            "the admin claim must look like path.to.claim=value, e.g. app_metadata.role=admin",
        )?;
        if let Some(secret) = &s.hs256_secret {
            if secret.len() < 16 {
                anyhow::bail!("the JWT HS256 secret must be at least 16 characters");
            }
        }
        Ok(Some(Self {
            hs256: s
                .hs256_secret
                .as_ref()
                .map(|k| DecodingKey::from_secret(k.as_bytes())),
            jwks,
            remote,
            audience: s.audience.clone(),
            issuer: s.issuer.clone(),
            admin_claim_path: path.split('.').map(str::to_owned).collect(),
            admin_claim_value: value.to_string(),
        }))
    }

    /// Checks `token` and returns its caller: an admin, or a caller with no scope.
    pub fn verify(&self, token: &str) -> Result<Caller, LedgerError> {
        let bad = |why: String| LedgerError::InvalidJwt(why);
        if token.len() > JWT_LEN_MAX {
            return Err(bad("token too long".into()));
        }
        // An unknown algorithm (including "none") fails to parse here.
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| bad(format!("bad header: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs256
                .clone()
                .ok_or_else(|| bad("HS256 tokens are not accepted here".into()))?,
            Algorithm::RS256 | Algorithm::ES256 => {
                if self.jwks.is_none() && self.remote.is_none() {
                    return Err(bad(format!(
                        "{:?} tokens are not accepted here",
                        header.alg
                    )));
                }
                let remote = self.remote.as_ref().map(|r| r.current());
                let sets = self.jwks.iter().chain(remote.as_deref());
                let keys: Vec<&jsonwebtoken::jwk::Jwk> = sets.flat_map(|s| &s.keys).collect();
                let jwk = match &header.kid {
                    Some(kid) => keys
                        .iter()
                        .find(|k| k.common.key_id.as_deref() == Some(kid)),
                    None if keys.len() == 1 => keys.first(),
                    None => None,
                }
                .ok_or_else(|| bad("no key in the JWKS matches the token's kid".into()))?;
                DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("unusable JWKS key: {e}")))?
            }
            other => return Err(bad(format!("algorithm {other:?} is not accepted"))),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| bad(e.to_string()))?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| {
                !s.is_empty() && s.len() <= SUBJECT_LEN_MAX && !s.chars().any(char::is_control)
            })
            .ok_or_else(|| bad("sub must be a non-empty string".into()))?;
        let scopes = if self.is_admin(&claims) {
            vec![Scope::Admin]
        } else {
            Vec::new()
        };
        Ok(Caller {
            name: sub.to_string(),
            scopes,
            credential: Credential::Jwt,
        })
    }

    /// Before [`Self::verify`], which cannot wait: when `token` names a key id no key set here
    /// knows, has the JWKS URL (if any) refetched, rate-limited, so a just-rotated key works on
    /// its first use.
    pub async fn learn_key_for(&self, token: &str) {
        let Some(remote) = &self.remote else { return };
        if token.len() > JWT_LEN_MAX {
            return;
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return;
        };
        let Some(kid) = header.kid else { return };
        if self.jwks.as_ref().is_some_and(|j| j.find(&kid).is_some()) {
            return;
        }
        remote.learn(&kid).await;
    }

    fn is_admin(&self, claims: &Value) -> bool {
        let mut cur = claims;
        for key in &self.admin_claim_path {
            match cur.get(key) {
                Some(next) => cur = next,
                None => return false,
            }
        }
        match cur {
            Value::String(s) => *s == self.admin_claim_value,
            Value::Array(items) => items
                .iter()
                .any(|i| i.as_str() == Some(&self.admin_claim_value)),
            Value::Bool(b) => b.to_string() == self.admin_claim_value,
            _ => false,
        }
    }
}

fn load_jwks(path: &Path) -> anyhow::Result<JwkSet> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the JWKS file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing the JWKS file {}", path.display()))
}

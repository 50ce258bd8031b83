//! API keys and scopes: who may call what.
//!
//! A key is configured as `NAME:SCOPE[+SCOPE...]:SECRET`. Callers send
//! `authorization: Bearer SECRET`. Secrets are kept only as SHA-256 digests and compared in
//! constant time against every configured key, so neither a match nor its position leaks through
//! timing.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::Actor;
use crate::error::LedgerError;

/// Shortest secret accepted in configuration: 16 characters, so a key cannot be guessed online.
pub const API_KEY_SECRET_LEN_MIN: usize = 16;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The AI backend: TrackUsage, GetBalance.
    Usage,
    /// The Stripe webhook adapter: Drip, RecordPurchase, annual Grant, GetBalance.
    Billing,
    /// Operators and the admin page: everything.
    Admin,
    /// Dashboards: GetBalance, ListTransactions.
    Read,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Usage => "usage",
            Scope::Billing => "billing",
            Scope::Admin => "admin",
            Scope::Read => "read",
        }
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "usage" => Ok(Scope::Usage),
            "billing" => Ok(Scope::Billing),
            "admin" => Ok(Scope::Admin),
            "read" => Ok(Scope::Read),
            other => Err(format!(
                "unknown scope {other:?}: expected usage, billing, admin or read"
            )),
        }
    }
}

/// One configured API key.
#[derive(Clone)]
pub struct ApiKey {
    pub name: String,
    pub scopes: Vec<Scope>,
    secret_sha256: [u8; 32],
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret, not even its digest.
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl FromStr for ApiKey {
    type Err = String;
    /// Parses `NAME:SCOPE[+SCOPE...]:SECRET`; the secret may itself contain `:`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().splitn(3, ':');
        let (Some(name), Some(scopes), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("an API key must look like NAME:SCOPE[+SCOPE...]:SECRET".into());
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "API key name {name:?} must be non-empty ASCII letters, digits, '-', '_' or '.'"
            ));
        }
        let scopes = scopes
            .split('+')
            .map(Scope::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        if secret.chars().count() < API_KEY_SECRET_LEN_MIN {
            return Err(format!(
                "API key {name:?}: the secret must be at least {API_KEY_SECRET_LEN_MIN} characters"
            ));
        }
        Ok(ApiKey {
            name: name.to_string(),
            scopes,
            secret_sha256: Sha256::digest(secret.as_bytes()).into(),
        })
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    ApiKey,
    Jwt,
    /// Code in this process (the hosted Stripe webhook).
    InProcess,
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::ApiKey => "api_key",
            Credential::Jwt => "jwt",
            Credential::InProcess => "in_process",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name, or the JWT's `sub`.
    pub name: String,
    pub scopes: Vec<Scope>,
    pub credential: Credential,
}

impl Caller {
    pub fn api_key(name: impl Into<String>, scopes: Vec<Scope>) -> Self {
        Self {
            name: name.into(),
            scopes,
            credential: Credential::ApiKey,
        }
    }

    /// What `created_by` records: `key:<name>` for API keys and in-process callers (prefixed so
    /// it cannot be mistaken for a user id), the JWT's `sub` for a signed-in admin.
    pub fn actor(&self) -> Actor {
        match self.credential {
            Credential::Jwt => Actor::new(self.name.clone()),
            Credential::ApiKey | Credential::InProcess => Actor::new(format!("key:{}", self.name)),
        }
    }
}

/// Decides who a request comes from and whether it may make the call.
#[derive(Debug, Clone)]
pub struct Authenticator {
    keys: Vec<ApiKey>,
    jwt: Option<crate::jwt::JwtVerifier>,
}

impl Authenticator {
    pub fn new(keys: Vec<ApiKey>) -> Self {
        Self { keys, jwt: None }
    }

    /// Also accept admin JWTs checked by `verifier`.
    pub fn with_jwt(mut self, verifier: Option<crate::jwt::JwtVerifier>) -> Self {
        self.jwt = verifier;
        self
    }

    /// With no keys and no JWT verification configured every caller is let in as `open-mode`,
    /// with every scope. The server only allows this on a loopback address.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty() && self.jwt.is_none()
    }

    /// Checks the `authorization` header value and that the caller holds one of `allowed` (or
    /// `admin`, which may do everything).
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        method: &'static str,
        allowed: &[Scope],
    ) -> Result<Caller, LedgerError> {
        Self::permit(self.authenticate(authorization)?, method, allowed)
    }

    /// Checks that an authenticated caller holds one of `allowed` (or `admin`).
    pub fn permit(
        caller: Caller,
        method: &'static str,
        allowed: &[Scope],
    ) -> Result<Caller, LedgerError> {
        if caller.scopes.contains(&Scope::Admin)
            || caller.scopes.iter().any(|s| allowed.contains(s))
        {
            return Ok(caller);
        }
        let mut needed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        needed.push("admin");
        Err(LedgerError::PermissionDenied {
            caller: caller.name,
            method,
            needed: needed.join(", "),
        })
    }

    /// Runs before [`Self::authorize`] (which cannot wait): a JWT naming a key id not yet known
    /// has the JWKS URL refetched first (see [`crate::jwt::JwtVerifier::learn_key_for`]).
    pub async fn prepare(&self, authorization: Option<&str>) {
        let token = authorization.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        });
        if let (Some(verifier), Some(token)) = (&self.jwt, token) {
            let token = token.trim();
            if crate::jwt::looks_like_jwt(token) {
                verifier.learn_key_for(token).await;
            }
        }
    }

    fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, LedgerError> {
        if self.is_open() {
            return Ok(Caller::api_key("open-mode", vec![Scope::Admin]));
        }
        let header = authorization.ok_or(LedgerError::Unauthenticated(
            "missing credentials: send `authorization: Bearer <api key>`",
        ))?;
        let secret = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(LedgerError::Unauthenticated(
                "malformed authorization header: expected `Bearer <api key>`",
            ))?
            .trim();
        if let Some(verifier) = &self.jwt {
            if crate::jwt::looks_like_jwt(secret) {
                return verifier.verify(secret);
            }
        }
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        // Look at every key, whatever matched, so timing says nothing about which key matched.
        let mut found: Option<&ApiKey> = None;
        for key in &self.keys {
            if bool::from(key.secret_sha256.ct_eq(&presented)) {
                found = Some(key);
            }
        }
        let key = found.ok_or(LedgerError::Unauthenticated("unknown API key"))?;
        Ok(Caller::api_key(key.name.clone(), key.scopes.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(vec![
            "backend:usage:backend-secret-0123456789".parse().unwrap(),
            "ops:admin:ops-secret-0123456789:with-colon"
                .parse()
                .unwrap(),
        ])
    }

    #[test]
    fn keys_parse_with_scopes_and_colons_in_the_secret() {
        let key: ApiKey = "hook:billing+read:abcdefghijklmnop:q".parse().unwrap();
        assert_eq!(key.name, "hook");
        assert_eq!(key.scopes, vec![Scope::Billing, Scope::Read]);
        assert!("hook:billing:short".parse::<ApiKey>().is_err());
        assert!("hook:superuser:abcdefghijklmnopq"
            .parse::<ApiKey>()
            .is_err());
        assert!("no-secret".parse::<ApiKey>().is_err());
        assert!(!format!("{key:?}").contains("abcdefghijklmnop"));
    }

    #[test]
    fn scopes_decide_access_and_admin_does_everything() {
        let a = auth();
        let caller = a
            .authorize(
                Some("Bearer backend-secret-0123456789"),
                "TrackUsage",
                &[Scope::Usage],
            )
            .unwrap();
        assert_eq!(caller.actor().as_str(), "key:backend");
        assert!(matches!(
            a.authorize(
                Some("Bearer backend-secret-0123456789"),
                "Grant",
                &[Scope::Billing]
            ),
            Err(LedgerError::PermissionDenied { .. })
        ));
        assert!(a
            .authorize(
                Some("Bearer ops-secret-0123456789:with-colon"),
                "Grant",
                &[Scope::Billing]
            )
            .is_ok());
        assert!(matches!(
            a.authorize(None, "Grant", &[Scope::Billing]),
            Err(LedgerError::Unauthenticated(_))
        ));
        assert!(matches!(
            a.authorize(Some("Bearer nope"), "Grant", &[Scope::Billing]),
            Err(LedgerError::Unauthenticated(_))
        ));
    }
}

//! JWT verification (the handshake's authentication) and minting (CLI and tests), PROTOCOL.md §3.
//!
//! A [`JwtVerifier`] is configured with exactly one algorithm and its key: HS256 with a shared secret,
//! or RS256 / ES256 with a PEM public key. The algorithm is **pinned**: a token whose header names any
//! other algorithm is refused, which rules out algorithm-confusion attacks (an RSA public key used as
//! an HMAC secret, `alg: none`).
//!
//! Checks, following the Go validator (PROTOCOL.md §3):
//! * the signature;
//! * `exp` is required and must not be past;
//! * `nbf`, when present, must not be in the future; `iat`, when present, must not be in the future;
//! * all three time checks allow a small clock-skew leeway, [`DEFAULT_LEEWAY`] (5 s) unless configured
//!   with [`JwtVerifier::with_leeway`] (jsonwebtoken's own default is 60 s, far looser than Go's);
//! * optional `iss` / `aud` checks when configured; an `aud` claim is otherwise ignored, as in Go;
//! * the `scopes` claim (a JSON array of strings, or one comma-separated string) must grant a usable
//!   store scope according to [`StoreScopes::from_scopes`] (`streamkit::*` or `streamkit::{uuid}`).
//!
//! Every failure is an [`AuthError`]; the HTTP front answers it with 401. Other ways to authenticate (a
//! key set chosen by `kid`, a closure of the application's) are [`Authenticator`]s.

mod authenticator;
mod jwks;

pub use authenticator::{AuthRefusal, AuthRequest, Authenticator};
pub use jwks::{JwksError, JwksVerifier};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use streamkit_proto::Millis;
use streamkit_proto::auth::{ScopeError, StoreScopes};

/// Clock-skew allowance for `exp`, `nbf` and `iat` unless configured otherwise.
///
/// Five seconds absorbs ordinary skew between the token issuer and this server (and the rounding of
/// whole-second timestamps) while keeping an expired token usable for at most that long.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// The signature algorithms a verifier or signer can be pinned to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret (what the Go tests use).
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, RSA key pair in PEM.
    Rs256,
    /// ECDSA P-256 with SHA-256, EC key pair in PEM.
    Es256,
}

impl JwtAlgorithm {
    fn jsonwebtoken(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        }
    }
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// An HS256 secret must not be empty: an empty secret makes every token forgeable.
    #[error("the HS256 secret is empty")]
    EmptySecret,
    /// The key material could not be parsed.
    #[error("invalid {algorithm:?} key: {source}")]
    Invalid {
        /// The algorithm the key was meant for.
        algorithm: JwtAlgorithm,
        /// What jsonwebtoken reported.
        source: jsonwebtoken::errors::Error,
    },
}

/// Why a request is not authenticated: answered 401, unless an [`Authenticator`] refuses with
/// [`AuthRefusal::Forbidden`] (403).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header (or more than one).
    #[error("missing Authorization header")]
    MissingAuthorization,
    /// The header is not `Bearer <token>`.
    #[error("Authorization is not a Bearer token")]
    NotBearer,
    /// The token is not a well-formed JWT, or a claim has the wrong type.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names an algorithm other than the pinned one.
    #[error("token algorithm is not the configured one")]
    WrongAlgorithm,
    /// The signature does not verify with the configured key.
    #[error("invalid token signature")]
    InvalidSignature,
    /// No usable `exp` claim (Go: `expiration claim missing or invalid`).
    #[error("expiration claim missing or invalid")]
    MissingExpiry,
    /// `exp` is past (Go: `token has expired`).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("token used before issued")]
    IssuedInFuture,
    /// `iss` or `aud` does not match the configured value.
    #[error("token issuer or audience not accepted")]
    WrongIssuerOrAudience,
    /// The scopes grant no usable store (PROTOCOL.md §3).
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// No key of the verifier's key set matches the token (`kid` unknown, or missing with several
    /// keys).
    #[error("no key for this token: {0}")]
    UnknownKey(String),
    /// Refused by an authenticator of the application's, which says why.
    #[error("{0}")]
    Refused(String),
}

/// An authenticated caller: what a verified token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The stores the caller may access.
    pub scopes: StoreScopes,
    /// The `sub` claim, if any.
    pub subject: Option<String>,
    /// The `tenant_id` claim, if any.
    pub tenant_id: Option<String>,
    /// When the token expires, in Unix epoch milliseconds (the core's time scale).
    pub expires_at: Millis,
}

/// The `scopes` claim: an array, or one comma-separated string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopesClaim {
    List(Vec<String>),
    Joined(String),
}

/// The claims the verifier reads. `exp` is loosely typed here because this struct is deserialized
/// before jsonwebtoken's validation runs: a missing or non-numeric `exp` must reach that validation and
/// be reported as [`AuthError::MissingExpiry`], not fail earlier as a malformed token.
#[derive(Deserialize)]
struct VerifiedClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    scopes: Option<ScopesClaim>,
    #[serde(default)]
    exp: Option<serde_json::Value>,
    #[serde(default)]
    iat: Option<f64>,
}

/// Verifies bearer tokens against one pinned algorithm and key. Cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct JwtVerifier {
    algorithm: JwtAlgorithm,
    key: DecodingKey,
    validation: Validation,
    leeway: Duration,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// HS256 with a shared secret (the raw bytes of the secret).
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        let key = DecodingKey::from_secret(secret)
            .map_err(|source| KeyError::Invalid { algorithm: JwtAlgorithm::Hs256, source })?;
        Ok(Self::with_key(JwtAlgorithm::Hs256, key))
    }

    /// RS256 with an RSA public key in PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`).
    pub fn rs256_pem(public_key_pem: &[u8]) -> Result<Self, KeyError> {
        let key = DecodingKey::from_rsa_pem(public_key_pem)
            .map_err(|source| KeyError::Invalid { algorithm: JwtAlgorithm::Rs256, source })?;
        Ok(Self::with_key(JwtAlgorithm::Rs256, key))
    }

    /// ES256 with a P-256 public key in PEM (`PUBLIC KEY`).
    pub fn es256_pem(public_key_pem: &[u8]) -> Result<Self, KeyError> {
        let key = DecodingKey::from_ec_pem(public_key_pem)
            .map_err(|source| KeyError::Invalid { algorithm: JwtAlgorithm::Es256, source })?;
        Ok(Self::with_key(JwtAlgorithm::Es256, key))
    }

    fn with_key(algorithm: JwtAlgorithm, key: DecodingKey) -> Self {
        let mut validation = Validation::new(algorithm.jsonwebtoken());
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Go ignores `aud` unless an audience is configured; jsonwebtoken would refuse any `aud`.
        validation.validate_aud = false;
        validation.leeway = DEFAULT_LEEWAY.as_secs();
        Self { algorithm, key, validation, leeway: DEFAULT_LEEWAY }
    }

    /// Sets the clock-skew leeway for `exp`, `nbf` and `iat` (whole seconds; default [`DEFAULT_LEEWAY`]).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = Duration::from_secs(leeway.as_secs());
        self.validation.leeway = leeway.as_secs();
        self
    }

    /// Requires `iss` to be present and equal to `issuer`.
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation.required_spec_claims.insert("iss".to_owned());
        self
    }

    /// Requires `aud` to be present and to contain `audience`.
    pub fn with_audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.validation.required_spec_claims.insert("aud".to_owned());
        self
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// Verifies the value of an `Authorization` header (`None` when the header is absent).
    pub fn verify_authorization(&self, header: Option<&[u8]>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::MissingAuthorization)?;
        self.verify(bearer_token(header)?)
    }

    /// Verifies a bare token.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<VerifiedClaims>(token, &self.key, &self.validation)
            .map_err(map_jwt_error)?;
        let claims = data.claims;
        // jsonwebtoken checked `exp` (present, numeric, not past); `iat` is ours to check.
        let exp = claims.exp.as_ref().and_then(serde_json::Value::as_f64).ok_or(AuthError::MissingExpiry)?;
        if let Some(iat) = claims.iat {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            if iat > now + self.leeway.as_secs_f64() {
                return Err(AuthError::IssuedInFuture);
            }
        }
        let scopes = match claims.scopes {
            None => StoreScopes::from_scopes::<&str>(&[])?,
            Some(ScopesClaim::List(list)) => StoreScopes::from_scopes(&list)?,
            Some(ScopesClaim::Joined(joined)) => StoreScopes::from_scopes(&[joined])?,
        };
        Ok(Principal {
            scopes,
            subject: claims.sub,
            tenant_id: claims.tenant_id,
            // Float seconds (allowed by RFC 7519) become milliseconds; `as` saturates.
            expires_at: Millis((exp * 1000.0) as u64),
        })
    }
}

fn map_jwt_error(error: jsonwebtoken::errors::Error) -> AuthError {
    match error.kind() {
        ErrorKind::InvalidSignature => AuthError::InvalidSignature,
        ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => AuthError::MissingExpiry,
        ErrorKind::InvalidClaimFormat(claim) if claim == "exp" => AuthError::MissingExpiry,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
            AuthError::WrongIssuerOrAudience
        }
        _ => AuthError::Malformed(error.to_string()),
    }
}

/// Extracts the token of an `Authorization: Bearer <token>` header value. The scheme is matched
/// case-insensitively, as Go's mux does.
pub fn bearer_token(header: &[u8]) -> Result<&str, AuthError> {
    let value = std::str::from_utf8(header).map_err(|_| AuthError::NotBearer)?.trim();
    let (scheme, token) = value.split_once([' ', '\t']).ok_or(AuthError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(token)
}

/// The claims [`TokenSigner`] writes: `{sub?, tenant_id?, scopes, exp, iat}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Tenant id (the Go tests put a UUID here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Scopes, e.g. `["streamkit::*"]`.
    pub scopes: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issue time, Unix seconds.
    pub iat: u64,
}

impl TokenClaims {
    /// Claims issued now that expire after `ttl`.
    pub fn new<S: Into<String>>(scopes: impl IntoIterator<Item = S>, ttl: Duration) -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        Self {
            sub: None,
            tenant_id: None,
            scopes: scopes.into_iter().map(Into::into).collect(),
            exp: now.saturating_add(ttl.as_secs()),
            iat: now,
        }
    }

    /// Sets `sub`.
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.sub = Some(subject.into());
        self
    }

    /// Sets `tenant_id`.
    pub fn with_tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }
}

/// A token could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign token: {0}")]
pub struct SignError(#[from] jsonwebtoken::errors::Error);

/// Mints tokens (for the CLI and tests) with one algorithm and private key.
#[derive(Clone)]
pub struct TokenSigner {
    algorithm: JwtAlgorithm,
    key: EncodingKey,
    key_id: Option<String>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        let key = EncodingKey::from_secret(secret)
            .map_err(|source| KeyError::Invalid { algorithm: JwtAlgorithm::Hs256, source })?;
        Ok(Self { algorithm: JwtAlgorithm::Hs256, key, key_id: None })
    }

    /// RS256 with an RSA private key in PEM (PKCS#1 or PKCS#8).
    pub fn rs256_pem(private_key_pem: &[u8]) -> Result<Self, KeyError> {
        let key = EncodingKey::from_rsa_pem(private_key_pem)
            .map_err(|source| KeyError::Invalid { algorithm: JwtAlgorithm::Rs256, source })?;
        Ok(Self { algorithm: JwtAlgorithm::Rs256, key, key_id: None })
    }

    /// ES256 with a P-256 private key in PEM (PKCS#8).
    pub fn es256_pem(private_key_pem: &[u8]) -> Result<Self, KeyError> {
        let key = EncodingKey::from_ec_pem(private_key_pem)
            .map_err(|source| KeyError::Invalid { algorithm: JwtAlgorithm::Es256, source })?;
        Ok(Self { algorithm: JwtAlgorithm::Es256, key, key_id: None })
    }

    /// The algorithm tokens are signed with.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// Names the key in every token's header (`kid`), for servers that pick the key from a set
    /// ([`JwksVerifier`]).
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &TokenClaims) -> Result<String, SignError> {
        self.sign_claims(claims)
    }

    /// Signs arbitrary claims (tests use it to build tokens the verifier must refuse).
    pub fn sign_claims<T: Serialize>(&self, claims: &T) -> Result<String, SignError> {
        let mut header = Header::new(self.algorithm.jsonwebtoken());
        header.kid.clone_from(&self.key_id);
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token(b"Bearer abc"), Ok("abc"));
        assert_eq!(bearer_token(b"bEaReR   abc "), Ok("abc"));
        assert_eq!(bearer_token(b"Basic abc"), Err(AuthError::NotBearer));
        assert_eq!(bearer_token(b"Bearer"), Err(AuthError::NotBearer));
        assert_eq!(bearer_token(b"Bearer   "), Err(AuthError::NotBearer));
        assert_eq!(bearer_token(b"Bearer \xff"), Err(AuthError::NotBearer));
    }

    #[test]
    fn hs256_round_trip_and_failures() {
        let signer = TokenSigner::hs256(b"top-secret").unwrap();
        let verifier = JwtVerifier::hs256(b"top-secret").unwrap();
        let claims =
            TokenClaims::new(["streamkit::*"], Duration::from_secs(60)).with_subject("svc").with_tenant("t1");
        let principal = verifier.verify(&signer.sign(&claims).unwrap()).unwrap();
        assert_eq!(principal.scopes, StoreScopes::All);
        assert_eq!(principal.subject.as_deref(), Some("svc"));
        assert_eq!(principal.tenant_id.as_deref(), Some("t1"));
        assert_eq!(principal.expires_at, Millis(claims.exp * 1000));

        let verify = |claims: serde_json::Value| verifier.verify(&signer.sign_claims(&claims).unwrap());
        let t = now();
        assert_eq!(verify(json!({"scopes": ["streamkit::*"]})), Err(AuthError::MissingExpiry));
        assert_eq!(verify(json!({"scopes": ["streamkit::*"], "exp": "soon"})), Err(AuthError::MissingExpiry));
        assert_eq!(verify(json!({"scopes": ["streamkit::*"], "exp": t - 60})), Err(AuthError::Expired));
        assert_eq!(
            verify(json!({"scopes": ["streamkit::*"], "exp": t + 60, "nbf": t + 60})),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            verify(json!({"scopes": ["streamkit::*"], "exp": t + 60, "iat": t + 60})),
            Err(AuthError::IssuedInFuture)
        );
        // Within the leeway, skewed clocks are tolerated.
        assert!(
            verify(json!({"scopes": ["streamkit::*"], "exp": t + 60, "iat": t + 2, "nbf": t + 2})).is_ok()
        );
        assert!(verify(json!({"scopes": ["streamkit::*"], "exp": t - 2})).is_ok());
        // Comma-separated scopes, and an unrelated audience is ignored.
        let id = "6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b";
        let p = verify(json!({"scopes": format!("other::x,streamkit::{id}"), "exp": t + 60, "aud": "x"}))
            .unwrap();
        assert!(p.scopes.allows(&id.parse().unwrap()));
        assert_eq!(
            verify(json!({"scopes": ["other::*"], "exp": t + 60})),
            Err(AuthError::Scope(ScopeError::NoStreamkitScope))
        );
        assert_eq!(verify(json!({"exp": t + 60})), Err(AuthError::Scope(ScopeError::NoStreamkitScope)));
        assert!(matches!(
            verify(json!({"scopes": ["streamkit::not-a-uuid"], "exp": t + 60})),
            Err(AuthError::Scope(ScopeError::MalformedStoreScope(_)))
        ));
        assert!(matches!(verify(json!({"scopes": [1, 2], "exp": t + 60})), Err(AuthError::Malformed(_))));

        let other = TokenSigner::hs256(b"other-secret").unwrap();
        assert_eq!(verifier.verify(&other.sign(&claims).unwrap()), Err(AuthError::InvalidSignature));
        assert!(matches!(verifier.verify("not.a.jwt"), Err(AuthError::Malformed(_))));
        assert!(matches!(verifier.verify(""), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn leeway_is_configurable() {
        let signer = TokenSigner::hs256(b"k").unwrap();
        let strict = JwtVerifier::hs256(b"k").unwrap().with_leeway(Duration::ZERO);
        let t = now();
        let token =
            signer.sign_claims(&json!({"scopes": ["streamkit::*"], "exp": t + 60, "iat": t + 3})).unwrap();
        assert_eq!(strict.verify(&token), Err(AuthError::IssuedInFuture));
        let expired = signer.sign_claims(&json!({"scopes": ["streamkit::*"], "exp": t - 3})).unwrap();
        assert_eq!(strict.verify(&expired), Err(AuthError::Expired));
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let signer = TokenSigner::hs256(b"k").unwrap();
        let verifier = JwtVerifier::hs256(b"k").unwrap().with_issuer("me").with_audience("streamkit");
        let t = now();
        let ok = json!({"scopes": ["streamkit::*"], "exp": t + 60, "iss": "me", "aud": ["streamkit", "x"]});
        assert!(verifier.verify(&signer.sign_claims(&ok).unwrap()).is_ok());
        for bad in [
            json!({"scopes": ["streamkit::*"], "exp": t + 60, "aud": "streamkit"}),
            json!({"scopes": ["streamkit::*"], "exp": t + 60, "iss": "you", "aud": "streamkit"}),
            json!({"scopes": ["streamkit::*"], "exp": t + 60, "iss": "me"}),
        ] {
            assert_eq!(
                verifier.verify(&signer.sign_claims(&bad).unwrap()),
                Err(AuthError::WrongIssuerOrAudience)
            );
        }
    }

    #[test]
    fn empty_secret_is_refused() {
        assert!(matches!(JwtVerifier::hs256(b""), Err(KeyError::EmptySecret)));
        assert!(matches!(TokenSigner::hs256(b""), Err(KeyError::EmptySecret)));
        assert!(matches!(JwtVerifier::rs256_pem(b"nope"), Err(KeyError::Invalid { .. })));
    }
}

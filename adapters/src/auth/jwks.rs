//! [`JwksVerifier`]: tokens checked against a JSON Web Key Set, the key chosen by the token's `kid`,
//! so an identity provider can rotate its keys without a restart of the server.
//!
//! Keys are read from a JWKS document (`{"keys": [...]}`, RFC 7517): RS256 (`kty: RSA`), ES256
//! (`kty: EC`, `crv: P-256`) and HS256 (`kty: oct`). A key's algorithm is its `alg`, or follows from
//! its type when `alg` is absent; each key is pinned to its algorithm like a [`JwtVerifier`], so a
//! token naming another algorithm is refused. Keys without `kid`, meant for encryption (`use: enc`)
//! or of other algorithms are skipped. A token must name a `kid` of the set (a token without one is
//! accepted only when the set holds exactly one key).
//!
//! Rotation: [`JwksVerifier::from_file`] watches its file and reads it again when it changes (looked
//! at most once a second, on a handshake; a document that does not load keeps the previous keys);
//! `JwksVerifier::from_url` (feature `jwks-url`) fetches a provider's `jwks_uri` periodically;
//! [`JwksVerifier::replace`] takes a new document from the application (say, one it fetched from
//! the provider's `jwks_uri`). Publish the new key before signing with it, and remove the old one
//! once its tokens have expired: tokens keep working for as long as their key is in the set.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{DecodingKey, decode_header};

use super::authenticator::{AuthRefusal, AuthRequest, Authenticator};
use super::{AuthError, DEFAULT_LEEWAY, JwtAlgorithm, JwtVerifier, Principal};
use crate::reloading::Reloading;

/// Why a JWKS document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The file could not be read.
    #[error("cannot read the JWKS file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Not a JWKS document.
    #[error("not a JWKS document: {0}")]
    Malformed(String),
    /// The document could not be fetched from its URL.
    #[error("cannot fetch the JWKS document from {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// [`JwksVerifier::replace`] on a key set read from a file: the file is its source.
    #[error("this key set follows its file; write the document there")]
    FollowsFile,
    /// The document holds no key this verifier can use.
    #[error("the JWKS document holds no usable signing key (RS256, ES256 or HS256 with a kid)")]
    NoUsableKey,
}

/// The checks applied with every key (see [`JwtVerifier`]'s settings).
#[derive(Clone, Debug)]
struct Checks {
    leeway: Duration,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Checks {
    fn apply(&self, verifier: JwtVerifier) -> JwtVerifier {
        let mut verifier = verifier.with_leeway(self.leeway);
        if let Some(issuer) = &self.issuer {
            verifier = verifier.with_issuer(issuer);
        }
        if let Some(audience) = &self.audience {
            verifier = verifier.with_audience(audience);
        }
        verifier
    }
}

/// Verifiers by key id.
type KeySet = HashMap<String, JwtVerifier>;

/// Where the keys come from.
enum Source {
    /// A watched file.
    File(Reloading<KeySet, JwksError>),
    /// Documents handed over by the application.
    Given(RwLock<Arc<KeySet>>),
}

/// Verifies bearer tokens against a key set (see the module docs). Cheap to clone; clones share
/// the keys.
#[derive(Clone)]
pub struct JwksVerifier {
    source: Arc<Source>,
    checks: Checks,
}

impl std::fmt::Debug for JwksVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksVerifier").field("key_ids", &self.key_ids()).finish_non_exhaustive()
    }
}

impl JwksVerifier {
    /// The keys of a JWKS document; [`replace`](Self::replace) changes them.
    pub fn from_json(document: &[u8]) -> Result<Self, JwksError> {
        let keys = key_set(document)?;
        Ok(Self { source: Arc::new(Source::Given(RwLock::new(Arc::new(keys)))), checks: default_checks() })
    }

    /// The keys of the JWKS document in `path`, read again whenever the file changes.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, JwksError> {
        let path = path.into();
        let reading = {
            let path = path.clone();
            move || key_set(&read_file(&path)?)
        };
        let keys = Reloading::new("JWKS", vec![path], reading)?;
        Ok(Self { source: Arc::new(Source::File(keys)), checks: default_checks() })
    }

    /// The keys published at `url` (an identity provider's `jwks_uri`, `https://` or `http://`):
    /// fetched now (an error if that fails), then again every `refresh` for as long as the verifier
    /// (or a clone) lives. A fetch that fails, or a document that does not load, keeps the keys in
    /// use and is logged. Publish a new key at least one `refresh` before tokens are signed with it.
    #[cfg(feature = "jwks-url")]
    pub async fn from_url(url: impl Into<String>, refresh: Duration) -> Result<Self, JwksError> {
        let url = url.into();
        let document = fetch(url.clone()).await?;
        let verifier = Self::from_json(&document)?;
        let weak = Arc::downgrade(&verifier.source);
        let refresh = refresh.max(Duration::from_secs(1));
        let refreshing_url = url.clone();
        crate::sidecar::spawn(async move {
            let url = refreshing_url;
            loop {
                tokio::time::sleep(refresh).await;
                let Some(source) = weak.upgrade() else { return };
                let Source::Given(current) = &*source else { return };
                match fetch(url.clone()).await.and_then(|document| key_set(&document)) {
                    Ok(keys) => *current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys),
                    Err(error) => tracing::warn!(%error, "JWKS not refreshed; the previous keys stay in use"),
                }
            }
        })
        .map_err(|reason| JwksError::Fetch { url, reason })?;
        tracing::info!(keys = ?verifier.key_ids(), "JWKS fetched; refreshed every {refresh:?}");
        Ok(verifier)
    }

    /// Replaces the keys with those of `document` (for keys the application fetches itself). An
    /// unusable document changes nothing. A verifier [`from_file`](Self::from_file) keeps its file
    /// as the source and refuses: write the document there instead.
    pub fn replace(&self, document: &[u8]) -> Result<(), JwksError> {
        let Source::Given(current) = &*self.source else {
            return Err(JwksError::FollowsFile);
        };
        let keys = key_set(document)?;
        *current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(())
    }

    /// Sets the clock-skew leeway of every key (default [`DEFAULT_LEEWAY`]).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.checks.leeway = leeway;
        self
    }

    /// Requires `iss` to be `issuer`, with every key.
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.checks.issuer = Some(issuer.to_owned());
        self
    }

    /// Requires `aud` to contain `audience`, with every key.
    pub fn with_audience(mut self, audience: &str) -> Self {
        self.checks.audience = Some(audience.to_owned());
        self
    }

    /// The key ids in use, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.keys().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Verifies a bare token with the key its `kid` names.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = decode_header(token).map_err(|error| AuthError::Malformed(error.to_string()))?;
        let keys = self.keys();
        let verifier = match &header.kid {
            Some(kid) => keys.get(kid).ok_or_else(|| AuthError::UnknownKey(format!("kid {kid:?}")))?,
            None if keys.len() == 1 => {
                keys.values().next().ok_or_else(|| AuthError::UnknownKey("empty".into()))?
            }
            None => return Err(AuthError::UnknownKey("the token names no kid".into())),
        };
        // One verifier per handshake: the checks are this verifier's, the key is the set's.
        self.checks.apply(verifier.clone()).verify(token)
    }

    fn keys(&self) -> Arc<KeySet> {
        match &*self.source {
            Source::File(keys) => keys.current(),
            Source::Given(keys) => keys.read().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

impl Authenticator for JwksVerifier {
    fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthRefusal> {
        Ok(self.verify(request.bearer_token()?)?)
    }
}

fn default_checks() -> Checks {
    Checks { leeway: DEFAULT_LEEWAY, issuer: None, audience: None }
}

/// The largest JWKS document fetched (providers publish a few keys: kilobytes).
#[cfg(feature = "jwks-url")]
const MAX_FETCHED_DOCUMENT: usize = 1 << 20;

/// GETs the document at `url` on the I/O runtime, at most [`MAX_FETCHED_DOCUMENT`] bytes, within 10 s.
#[cfg(feature = "jwks-url")]
async fn fetch(url: String) -> Result<Vec<u8>, JwksError> {
    let failed = |url: &str, reason: String| JwksError::Fetch { url: url.to_owned(), reason };
    let fetching = {
        let url = url.clone();
        async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?;
            let mut response = client
                .get(&url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| e.to_string())?;
            let mut document = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                if document.len() + chunk.len() > MAX_FETCHED_DOCUMENT {
                    return Err(format!("the document is over {MAX_FETCHED_DOCUMENT} bytes"));
                }
                document.extend_from_slice(&chunk);
            }
            Ok(document)
        }
    };
    crate::sidecar::run(fetching)
        .await
        .map_err(|reason| failed(&url, reason))?
        .map_err(|reason| failed(&url, reason))
}

fn read_file(path: &Path) -> Result<Vec<u8>, JwksError> {
    fs::read(path).map_err(|source| JwksError::Read { path: path.to_owned(), source })
}

/// The usable keys of a JWKS document.
fn key_set(document: &[u8]) -> Result<KeySet, JwksError> {
    let set: JwkSet = serde_json::from_slice(document).map_err(|e| JwksError::Malformed(e.to_string()))?;
    let keys: KeySet = set
        .keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            Some((kid, verifier_of(jwk)?))
        })
        .collect();
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(keys)
}

/// A verifier pinned to `jwk`'s key and algorithm; `None` for keys this server cannot verify with.
fn verifier_of(jwk: &Jwk) -> Option<JwtVerifier> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => JwtAlgorithm::Rs256,
        AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {
            JwtAlgorithm::Es256
        }
        AlgorithmParameters::OctetKey(_) => JwtAlgorithm::Hs256,
        _ => return None,
    };
    let algorithm = match jwk.common.key_algorithm {
        None => implied,
        Some(KeyAlgorithm::RS256) if implied == JwtAlgorithm::Rs256 => implied,
        Some(KeyAlgorithm::ES256) if implied == JwtAlgorithm::Es256 => implied,
        Some(KeyAlgorithm::HS256) if implied == JwtAlgorithm::Hs256 => implied,
        Some(_) => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(JwtVerifier::with_key(algorithm, key))
}

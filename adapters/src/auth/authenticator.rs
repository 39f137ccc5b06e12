//! Pluggable authentication: an [`Authenticator`] turns the headers of a WebSocket upgrade request
//! into a [`Principal`] (the stores it may use, until when) or a refusal with its HTTP status. Every
//! front uses one ([`ServerConfig::new`](crate::server::ServerConfig::new) and friends take any), and
//! it decides **before** the 101, so a refused request is answered, never upgraded.
//!
//! Built in: [`JwtVerifier`] (one pinned key), [`JwksVerifier`](super::JwksVerifier) (a key set chosen
//! by `kid`, reloaded when its file changes), and any closure
//! `Fn(&AuthRequest) -> Result<Principal, AuthRefusal>`:
//!
//! ```
//! use streamkit::auth::{AuthError, AuthRefusal, AuthRequest, Authenticator, Principal};
//! use streamkit::core::auth::StoreScopes;
//!
//! // API keys from a table of your own; each key reaches one store.
//! let keys = std::collections::HashMap::from([("k-123".to_owned(), "streamkit::*".to_owned())]);
//! let authenticator = move |request: &AuthRequest<'_>| -> Result<Principal, AuthRefusal> {
//!     let key = request.header("x-api-key").ok_or(AuthError::MissingAuthorization)?;
//!     let scope = keys.get(std::str::from_utf8(key).unwrap_or_default()).ok_or_else(|| {
//!         AuthRefusal::Forbidden(AuthError::Refused("unknown API key".into()))
//!     })?;
//!     Ok(Principal::new(StoreScopes::from_scopes(&[scope.as_str()]).map_err(AuthError::from)?))
//! };
//! # fn takes(_: impl Authenticator) {}
//! # takes(authenticator);
//! ```

use streamkit_proto::Millis;
use streamkit_proto::auth::StoreScopes;

use super::{AuthError, JwtVerifier, Principal, bearer_token};
use crate::http::RequestHead;

/// The upgrade request an [`Authenticator`] decides on: its headers.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    head: &'a RequestHead,
}

impl<'a> AuthRequest<'a> {
    pub(crate) fn new(head: &'a RequestHead) -> Self {
        Self { head }
    }

    /// The value of header `name` (any case) when it appears exactly once: a repeated header is
    /// ambiguous and reads as absent.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        let mut values = self.header_values(name);
        let first = values.next()?;
        values.next().is_none().then_some(first)
    }

    /// Every value of header `name` (any case), in request order.
    pub fn header_values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.head
            .headers()
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The token of the single `Authorization: Bearer <token>` header.
    pub fn bearer_token(&self) -> Result<&'a str, AuthError> {
        bearer_token(self.header("authorization").ok_or(AuthError::MissingAuthorization)?)
    }
}

/// Why an [`Authenticator`] refused a request, with the status it is answered with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    /// `401 Unauthorized` (body `Unauthorized\n`, Go's answer): no credentials, or bad ones.
    #[error("{0}")]
    Unauthorized(AuthError),
    /// `403 Forbidden` (body `Forbidden\n`): valid credentials that may not connect.
    #[error("{0}")]
    Forbidden(AuthError),
}

impl From<AuthError> for AuthRefusal {
    fn from(error: AuthError) -> Self {
        Self::Unauthorized(error)
    }
}

/// Decides who a WebSocket upgrade request is (see the module docs). Called once per upgrade, on
/// the connection's task, before anything is switched: keep it quick (keys cached, no blocking I/O).
pub trait Authenticator: Send + Sync + 'static {
    /// The principal of `request`, or why it is refused.
    fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthRefusal>;
}

impl Authenticator for JwtVerifier {
    fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthRefusal> {
        Ok(self.verify(request.bearer_token()?)?)
    }
}

impl<F> Authenticator for F
where
    F: Fn(&AuthRequest<'_>) -> Result<Principal, AuthRefusal> + Send + Sync + 'static,
{
    fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthRefusal> {
        self(request)
    }
}

/// A shared authenticator (what [`ServerConfig`](crate::server::ServerConfig) holds).
impl<A: Authenticator + ?Sized> Authenticator for std::sync::Arc<A> {
    fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthRefusal> {
        (**self).authenticate(request)
    }
}

impl Principal {
    /// A principal allowed `scopes`, without subject or tenant, whose connections never expire
    /// (for authenticators without expiring credentials; see [`with_expiry`](Self::with_expiry)).
    pub fn new(scopes: StoreScopes) -> Self {
        Self { scopes, subject: None, tenant_id: None, expires_at: Millis(u64::MAX) }
    }

    /// Connections of this principal are closed at `expires_at` (Unix epoch milliseconds), as they
    /// are when a token expires.
    pub fn with_expiry(mut self, expires_at: Millis) -> Self {
        self.expires_at = expires_at;
        self
    }

    /// Sets the subject (for logs).
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }
}

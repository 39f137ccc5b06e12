//! Store scopes (PROTOCOL.md §3): which stores a verified token may touch.
//!
//! JWT verification happens in the adapters (it needs crypto); the core only interprets the `scopes`
//! claim. `streamkit::*` allows every store, `streamkit::{uuid}` one store; other scopes are ignored.
//! Construction follows Go's scan: scopes are read in order, `streamkit::*` wins immediately, a
//! `streamkit::` scope that is not a UUID fails the whole set (no partial access), and a set with no
//! usable scope fails.

use alloc::string::String;
use alloc::vec::Vec;
use uuid::Uuid;

/// Prefix of every streamkit scope.
pub const SCOPE_PREFIX: &str = "streamkit::";
/// The scope that allows every store.
pub const WILDCARD_SCOPE: &str = "streamkit::*";

/// Why a scope set gives no access (the handshake answers 401).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// No `streamkit::` scope at all.
    #[error("invalid scope: expected \"streamkit::*\" or \"streamkit::{{storeID}}\"")]
    NoStreamkitScope,
    /// A `streamkit::` scope whose remainder is not a UUID.
    #[error("invalid scope: \"{0}\" is not a store id")]
    MalformedStoreScope(String),
}

/// The stores a connection may access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreScopes {
    /// Every store (`streamkit::*`, and client sessions).
    All,
    /// Only these stores (sorted, deduplicated).
    Stores(Vec<Uuid>),
}

impl StoreScopes {
    /// Interprets the scopes of a token. A single string may also hold comma-separated scopes (the Go
    /// principal joins and splits claim arrays on commas).
    pub fn from_scopes<S: AsRef<str>>(scopes: &[S]) -> Result<Self, ScopeError> {
        let mut stores = Vec::new();
        for scope in scopes.iter().flat_map(|s| s.as_ref().split(',')) {
            let scope = scope.trim();
            let Some(rest) = scope.strip_prefix(SCOPE_PREFIX) else { continue };
            if rest == "*" {
                return Ok(StoreScopes::All);
            }
            match Uuid::try_parse(rest) {
                Ok(id) => stores.push(id),
                Err(_) => return Err(ScopeError::MalformedStoreScope(scope.into())),
            }
        }
        if stores.is_empty() {
            return Err(ScopeError::NoStreamkitScope);
        }
        stores.sort_unstable();
        stores.dedup();
        Ok(StoreScopes::Stores(stores))
    }

    /// Whether `store` may be accessed.
    pub fn allows(&self, store: &Uuid) -> bool {
        match self {
            StoreScopes::All => true,
            StoreScopes::Stores(ids) => ids.binary_search(store).is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b";
    const B: &str = "0b7e3c1a-9d2f-4c6e-a1b3-5d7f9e1c3a5b";

    #[test]
    fn wildcard_allows_everything() {
        let s = StoreScopes::from_scopes(&["other::x", "streamkit::*"]).unwrap();
        assert_eq!(s, StoreScopes::All);
        assert!(s.allows(&Uuid::nil()));
    }

    #[test]
    fn store_scopes_allow_only_their_stores() {
        let s = StoreScopes::from_scopes(&[alloc::format!("streamkit::{A}")]).unwrap();
        assert!(s.allows(&Uuid::parse_str(A).unwrap()));
        assert!(!s.allows(&Uuid::parse_str(B).unwrap()));
        let upper = alloc::format!("streamkit::{}", A.to_uppercase());
        assert!(StoreScopes::from_scopes(&[upper]).unwrap().allows(&Uuid::parse_str(A).unwrap()));
        let joined = alloc::format!("streamkit::{A},streamkit::{B}");
        let s = StoreScopes::from_scopes(&[joined]).unwrap();
        assert!(s.allows(&Uuid::parse_str(B).unwrap()));
    }

    #[test]
    fn failures_follow_go() {
        assert_eq!(StoreScopes::from_scopes::<&str>(&[]), Err(ScopeError::NoStreamkitScope));
        assert_eq!(StoreScopes::from_scopes(&["other::*"]), Err(ScopeError::NoStreamkitScope));
        assert!(matches!(
            StoreScopes::from_scopes(&["streamkit::not-a-uuid"]),
            Err(ScopeError::MalformedStoreScope(_))
        ));
        // One valid and one malformed store scope: no partial access.
        let valid = alloc::format!("streamkit::{A}");
        assert!(StoreScopes::from_scopes(&[valid.as_str(), "streamkit::nope"]).is_err());
        // A wildcard seen before the malformed scope wins (Go's order dependence).
        assert_eq!(StoreScopes::from_scopes(&["streamkit::*", "streamkit::nope"]), Ok(StoreScopes::All));
    }
}

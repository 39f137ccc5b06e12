//! Lease tests through the node: the §9.2 lease scenarios with their exact texts.

use super::NodeConfig;
use super::harness::NodeHarness;
use crate::api::*;
use crate::time::Millis;
use crate::wire::{Codec, Message};

fn acquire(key: &str, holder: &str, ttl_seconds: i64) -> Request {
    Request::LeaseAcquire(LeaseAcquire { key: key.into(), holder: holder.into(), ttl_seconds })
}

fn renew(key: &str, holder: &str, ttl_seconds: i64) -> Request {
    Request::LeaseRenew(LeaseRenew { key: key.into(), holder: holder.into(), ttl_seconds })
}

fn release(key: &str, holder: &str) -> Request {
    Request::LeaseRelease(LeaseRelease { key: key.into(), holder: holder.into() })
}

/// Runs one lease request: exactly one result, then a clean close.
fn call(h: &mut NodeHarness, request: Request) -> LeaseResult {
    let s = h.open(request);
    let log = h.log(s);
    assert_eq!(log.close_error(), None);
    assert_eq!(log.sent.len(), 1, "one result per request");
    log.lease_results().pop().expect("a lease result")
}

fn harness() -> NodeHarness {
    NodeHarness::new(NodeConfig::default())
}

#[test]
fn acquire_returns_ok() {
    let mut h = harness();
    let s = h.open(acquire("k", "h1", 30));
    let Message::LeaseResult(result) = &h.log(s).sent[0] else { panic!("not a lease result") };
    assert_eq!(Codec::Json.encode_value(result), br#"{"ok":true}"#);
}

#[test]
fn acquire_conflict_returns_not_ok() {
    let mut h = harness();
    assert_eq!(call(&mut h, acquire("k", "h0", 30)), LeaseResult::plain(true));
    assert_eq!(call(&mut h, acquire("k", "h0", 30)), LeaseResult::plain(true), "same holder refreshes");
    assert_eq!(call(&mut h, acquire("k", "h1", 30)), LeaseResult::plain(false));
    assert_eq!(call(&mut h, acquire("other", "h1", 30)), LeaseResult::plain(true));
}

#[test]
fn renew_and_release() {
    let mut h = harness();
    assert!(call(&mut h, acquire("k", "h1", 30)).ok);
    assert!(!call(&mut h, renew("k", "h2", 60)).ok, "renew by another holder fails");
    assert!(call(&mut h, renew("k", "h1", 60)).ok);
    assert_eq!(h.node.leases().get("k").unwrap().expires_at, h.now.as_timestamp() + 60_000);
    assert!(!call(&mut h, release("k", "h2")).ok, "release by another holder fails");
    assert!(call(&mut h, release("k", "h1")).ok);
    assert!(!call(&mut h, release("k", "h1")).ok);
    assert!(!call(&mut h, renew("k", "h1", 60)).ok, "nothing to renew");
}

#[test]
fn acquire_and_renew_validation() {
    let mut h = harness();
    let cases = [
        ("", "h", 30, "lease key must not be empty"),
        ("", "", 0, "lease key must not be empty"),
        ("k", "", 30, "lease holder must not be empty"),
        ("k", "h", 0, "ttl_seconds must be positive"),
        ("k", "h", -3, "ttl_seconds must be positive"),
        ("k", "h", 86_401, "ttl_seconds exceeds maximum of 86400"),
    ];
    for (key, holder, ttl, message) in cases {
        assert_eq!(call(&mut h, acquire(key, holder, ttl)), LeaseResult::refused(message));
        assert_eq!(call(&mut h, renew(key, holder, ttl)), LeaseResult::refused(message));
    }
    assert!(h.node.leases().is_empty());
    assert!(call(&mut h, acquire("k", "h", 86_400)).ok);
}

#[test]
fn release_validation() {
    let mut h = harness();
    assert_eq!(call(&mut h, release("", "h")), LeaseResult::refused("lease key must not be empty"));
    assert_eq!(call(&mut h, release("k", "")), LeaseResult::refused("lease holder must not be empty"));
    let s = h.open(release("", "h"));
    let Message::LeaseResult(result) = &h.log(s).sent[0] else { panic!("not a lease result") };
    assert_eq!(Codec::Json.encode_value(result), br#"{"ok":false,"message":"lease key must not be empty"}"#);
}

#[test]
fn expired_lease_can_be_taken_over() {
    let mut h = harness();
    assert!(call(&mut h, acquire("k", "h0", 1)).ok);
    h.advance(999);
    assert!(!call(&mut h, acquire("k", "h1", 1)).ok);
    h.advance(1);
    assert!(call(&mut h, acquire("k", "h1", 5)).ok);
    assert_eq!(h.node.leases().get("k").unwrap().holder, "h1");
}

#[test]
fn expired_lease_is_swept_and_live_ones_kept() {
    let mut h = harness();
    assert!(call(&mut h, acquire("short", "h", 1)).ok);
    assert!(call(&mut h, acquire("long", "h", 3600)).ok);
    h.advance(59_000);
    assert_eq!(h.node.leases().len(), 2, "not swept before the interval");
    h.advance(1000);
    assert_eq!(h.node.leases().len(), 1);
    assert!(h.node.leases().get("long").is_some());
    // A live lease keeps the node from being idle (closing it would lose the lease).
    assert!(!h.node.is_idle());
    h.advance(3_600_000);
    assert!(h.node.leases().is_empty());
    assert!(h.node.is_idle());
    assert_eq!(h.node.poll_timeout(), None, "the sweeper stops with the last lease");
}

#[test]
fn expired_but_unswept_lease_can_still_be_released() {
    let mut h = NodeHarness::new(NodeConfig {
        lease_sweep_interval: Millis::from_secs(3600),
        ..NodeConfig::default()
    });
    assert!(call(&mut h, acquire("k", "h", 1)).ok);
    h.advance(5000);
    assert!(call(&mut h, release("k", "h")).ok);
}

/// The same rules with leases kept in the store (cluster-wide leases).
mod stored {
    use super::*;
    use crate::node::Node;

    fn stored_harness() -> NodeHarness {
        NodeHarness::new(NodeConfig { leases_in_storage: true, ..NodeConfig::default() })
    }

    /// Another server instance over the same store.
    fn other_instance(h: &NodeHarness) -> Node {
        let config = NodeConfig { leases_in_storage: true, ..NodeConfig::default() };
        Node::new(h.node.store_id(), config, h.now, 99)
    }

    #[test]
    fn rules_hold_through_storage() {
        let mut h = stored_harness();
        assert_eq!(call(&mut h, acquire("k", "h0", 30)), LeaseResult::plain(true));
        assert_eq!(call(&mut h, acquire("k", "h0", 30)), LeaseResult::plain(true), "same holder refreshes");
        assert_eq!(call(&mut h, acquire("k", "h1", 30)), LeaseResult::plain(false));
        assert!(!call(&mut h, renew("k", "h1", 60)).ok);
        assert!(call(&mut h, renew("k", "h0", 60)).ok);
        assert!(!call(&mut h, release("k", "h1")).ok);
        assert!(call(&mut h, release("k", "h0")).ok);
        assert!(call(&mut h, acquire("k", "h1", 1)).ok);
        h.advance(1_001);
        assert!(!call(&mut h, renew("k", "h1", 1)).ok, "expired");
        assert!(call(&mut h, acquire("k", "h2", 1)).ok, "an expired lease can be taken");
        // Validation texts are the same and need no storage.
        assert_eq!(call(&mut h, acquire("", "h", 1)), LeaseResult::refused("lease key must not be empty"));
        assert_eq!(
            call(&mut h, acquire("k", "h", 86_401)),
            LeaseResult::refused("ttl_seconds exceeds maximum of 86400")
        );
    }

    #[test]
    fn a_lease_held_through_one_instance_is_refused_through_another() {
        let mut h = stored_harness();
        assert!(call(&mut h, acquire("leader", "a", 30)).ok);
        let mut other = other_instance(&h);
        core::mem::swap(&mut h.node, &mut other);
        assert!(!call(&mut h, acquire("leader", "b", 30)).ok, "held by a through the first instance");
        core::mem::swap(&mut h.node, &mut other);
        assert!(call(&mut h, release("leader", "a")).ok);
        core::mem::swap(&mut h.node, &mut other);
        assert!(call(&mut h, acquire("leader", "b", 30)).ok, "free again, seen by the other instance");
    }

    #[test]
    fn racing_acquires_have_one_winner() {
        // Both reads happen before either commit: the second commit's precondition fails, it re-reads and
        // sees the first holder.
        let mut h = stored_harness();
        h.hold_storage = true;
        let a = h.open(acquire("k", "a", 30));
        let b = h.open(acquire("k", "b", 30));
        h.release_storage(); // a reads
        h.release_storage(); // b reads
        h.release_storage(); // a commits
        h.hold_storage = false;
        h.release_all(); // b's commit conflicts, b re-reads and decides again
        let results: Vec<bool> = [a, b].iter().map(|s| h.log(*s).lease_results()[0].ok).collect();
        assert_eq!(results, [true, false]);
    }

    #[test]
    fn leases_survive_a_node_restart() {
        let mut h = stored_harness();
        assert!(call(&mut h, acquire("k", "a", 30)).ok);
        h.node = other_instance(&h);
        assert!(!call(&mut h, acquire("k", "b", 30)).ok);
        assert!(call(&mut h, renew("k", "a", 30)).ok);
    }
}

//! Worker presence (PROTOCOL.md §6.6): a live inventory of the workers of a store, kept in memory by its node.
//!
//! A `SubscribeWorkers` stream with a nil `worker_id` is an **observer**: it receives the current
//! inventory, then every change. With a `worker_id` it is a **worker**: it is registered (replacing any
//! registration of the same id by another stream, which is closed with
//! `worker_id registered by another stream`), every subscriber including itself receives the new
//! inventory, and the worker renews its presence with `Presence{heartbeat:false}` envelopes on the same
//! stream. A worker that stops renewing is evicted by a sweeper (every 5 s) once
//! `now - last_seen_at > max(30 s, 3 × interval)`, and its stream is closed with `worker presence expired`.
//! A worker stream that sends anything but a renewal for its own id, or something undecodable, is closed
//! with the reason and its worker removed. Go closes such streams silently; we always tell the client.
//!
//! Inventories are envelopes (`streamkit://api/v1/worker_inventory`), workers sorted by the raw bytes of
//! their ids (`Uuid`'s order), stamped with the time they are built. Fan-out coalesces to the latest
//! state: a change only bumps the router's version (the inventory is built once, when a subscriber
//! needs it, and shared), and a subscriber is sent an inventory only when the previous one has left
//! (nothing of its stream is in flight). A subscriber that does not read therefore holds at most one
//! inventory in the transport, however many workers come and go, and always ends up with the latest.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use uuid::Uuid;

use super::io_queue::Owner;
use super::{Services, Step, StreamOp, clamp_heartbeat_seconds};
use crate::api::{Envelope, Metadata, Presence, SubscribeWorkers, WorkerInfo, WorkerInventory};
use crate::stream::{StreamEnd, StreamId};
use crate::time::Millis;
use crate::wire::Message;

/// How often stale workers are looked for by default.
pub const DEFAULT_PRESENCE_SWEEP_INTERVAL: Millis = Millis::from_secs(5);
/// Renewal interval assumed for a worker that asked for none, in seconds.
pub const DEFAULT_WORKER_RENEW_SECONDS: i64 = 30;
/// Shortest time a worker stays registered without renewing.
pub const MIN_WORKER_TTL: Millis = Millis::from_secs(30);
/// Renewal intervals a worker may miss before it is evicted.
pub const WORKER_TTL_MULTIPLIER: u64 = 3;

/// Text of the close sent to a worker stream whose id another stream registered.
pub const WORKER_ID_TAKEN: &str = "worker_id registered by another stream";
/// Text of the close sent to a worker stream evicted for not renewing.
pub const WORKER_EXPIRED: &str = "worker presence expired";

const TAG_HEARTBEAT: u32 = 1;
const TAG_SWEEP: u32 = 1;
const TAG_ANNOUNCE: u32 = 2;
const TAG_CLUSTER_SUBSCRIBED: u32 = 3;
const TAG_ANNOUNCED: u32 = 4;

/// The renewal interval a worker is held to (Go `WorkerPresenceRenewIntervalSeconds`): 0 or less means the
/// default of 30 s, anything else is clamped to 1..=300 s.
pub fn worker_renew_interval_seconds(heartbeat_interval_seconds: i64) -> i64 {
    if heartbeat_interval_seconds <= 0 {
        DEFAULT_WORKER_RENEW_SECONDS
    } else {
        heartbeat_interval_seconds.clamp(1, super::MAX_HEARTBEAT_SECONDS)
    }
}

/// How long a worker with this renewal interval stays registered without renewing (Go
/// `WorkerPresenceTTL`): `max(30 s, 3 × interval)`.
pub fn worker_presence_ttl(renew_interval_seconds: i64) -> Millis {
    let interval = Millis::from_secs(renew_interval_seconds.max(0).unsigned_abs());
    MIN_WORKER_TTL.max(Millis(interval.0.saturating_mul(WORKER_TTL_MULTIPLIER)))
}

#[derive(Debug)]
struct Worker {
    metadata: Metadata,
    /// The stream that registered it; only that stream renews or removes it.
    stream: StreamId,
    /// Last renewal, on the worker's clock (as in Go): what inventories report.
    last_seen_at: i64,
    /// Last renewal, on the node's monotonic clock: what expiry is decided on, so that a step of
    /// either wall clock does not expire live workers.
    renewed_at: Millis,
    renew_seconds: i64,
}

#[derive(Debug, Default)]
struct Subscriber {
    /// The worker this stream registered, if it is a worker stream.
    worker: Option<Uuid>,
    /// The router version of the last inventory sent; `None` before the first.
    sent_version: Option<u64>,
    /// A server heartbeat is due.
    heartbeat: bool,
}

/// The workers another instance last announced.
#[derive(Debug)]
struct Remote {
    workers: Vec<WorkerInfo>,
    /// Dropped when no announcement refreshed it by then (the instance died or lost the bus).
    expires_at: Millis,
}

/// This node's link to the other instances (cluster-wide presence only).
#[derive(Debug, Default, PartialEq, Eq)]
enum ClusterLink {
    #[default]
    Off,
    Subscribing,
    On,
}

/// The presence state of a node: workers and the streams that watch them.
#[derive(Debug, Default)]
pub(crate) struct PresenceRouter {
    workers: BTreeMap<Uuid, Worker>,
    subscribers: BTreeMap<StreamId, Subscriber>,
    /// Bumped by every change of the inventory.
    version: u64,
    /// The inventory of `version`, built when first needed.
    latest: Option<Arc<WorkerInventory>>,
    sweeping: bool,
    /// Workers of the other instances, by instance.
    remote: BTreeMap<Uuid, Remote>,
    link: ClusterLink,
    announcing: bool,
}

impl PresenceRouter {
    /// Number of registered workers.
    #[cfg(test)]
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }
}

fn local_workers(sv: &Services) -> Vec<WorkerInfo> {
    sv.presence
        .workers
        .iter()
        .map(|(id, w)| WorkerInfo {
            worker_id: *id,
            metadata: w.metadata.clone(),
            last_seen_at: w.last_seen_at,
        })
        .collect()
}

/// This node's workers and those other instances announced; an id registered on several instances (a
/// worker that reconnected elsewhere) counts once, with its latest renewal.
fn inventory(sv: &Services) -> WorkerInventory {
    let mut merged: BTreeMap<Uuid, WorkerInfo> = BTreeMap::new();
    let remote = sv.presence.remote.values().flat_map(|r| r.workers.iter().cloned());
    for info in local_workers(sv).into_iter().chain(remote) {
        match merged.get(&info.worker_id) {
            Some(known) if known.last_seen_at >= info.last_seen_at => {}
            _ => {
                merged.insert(info.worker_id, info);
            }
        }
    }
    WorkerInventory { workers: merged.into_values().collect(), timestamp: sv.wall.as_timestamp() }
}

/// How long another instance's announcement stays valid: `max(floor, 3 × announce interval)`, the floor
/// being [`NodeConfig::presence_stale_floor`](super::NodeConfig::presence_stale_floor) (30 s by default).
fn remote_ttl(sv: &Services) -> Millis {
    let multiple = Millis(sv.config.presence_announce_interval.0.saturating_mul(WORKER_TTL_MULTIPLIER));
    sv.config.presence_stale_floor.max(multiple)
}

/// Joins the other instances' presence when the first presence stream of the node opens.
fn cluster_join(sv: &mut Services) {
    if sv.config.cluster_presence && sv.presence.link == ClusterLink::Off {
        sv.presence.link = ClusterLink::Subscribing;
        let route = super::worker_presence_route(&sv.store_id);
        sv.io.bus_subscribe(Owner::Presence(TAG_CLUSTER_SUBSCRIBED), route);
    }
}

/// Leaves when the last presence stream of the node is gone.
fn cluster_leave(sv: &mut Services) {
    if sv.presence.subscribers.is_empty() && sv.presence.link == ClusterLink::On {
        // Tell the others this instance has no worker any more, then stop listening.
        announce(sv, false);
        sv.presence.link = ClusterLink::Off;
        sv.io.bus_unsubscribe(super::worker_presence_route(&sv.store_id));
        sv.presence.remote.clear();
    }
}

/// Publishes this instance's workers (with `sync`, asks the others to publish theirs).
fn announce(sv: &mut Services, sync: bool) {
    if sv.presence.link != ClusterLink::On {
        return;
    }
    let announcement = super::PresenceAnnouncement {
        instance: sv.instance,
        store_id: sv.store_id,
        workers: local_workers(sv),
        sync,
    };
    let route = super::worker_presence_route(&sv.store_id);
    sv.io.bus_announce(Owner::Presence(TAG_ANNOUNCED), route, announcement);
    arm_announcer(sv);
}

/// Keeps one re-announcement timer armed while this instance has workers.
fn arm_announcer(sv: &mut Services) {
    if sv.presence.link == ClusterLink::On && !sv.presence.announcing && !sv.presence.workers.is_empty() {
        sv.presence.announcing = true;
        let at = sv.now + sv.config.presence_announce_interval.max(Millis(1));
        sv.io.timer(Owner::Presence(TAG_ANNOUNCE), at, "worker presence announcement");
    }
}

/// The local worker set changed: tell local subscribers and the other instances.
fn changed(sv: &mut Services) {
    fan_out(sv);
    announce(sv, false);
}

/// A timer of the router fired.
pub(crate) fn on_timer(sv: &mut Services, tag: u32) {
    match tag {
        TAG_ANNOUNCE => {
            sv.presence.announcing = false;
            announce(sv, false);
        }
        _ => on_sweep(sv),
    }
}

/// A bus completion of the router.
pub(crate) fn on_bus(sv: &mut Services, tag: u32, result: Result<(), String>) {
    if tag != TAG_CLUSTER_SUBSCRIBED || sv.presence.link != ClusterLink::Subscribing {
        // Announcements that fail are repeated by the next one; nothing else to do.
        return;
    }
    if result.is_ok() {
        sv.presence.link = ClusterLink::On;
        if sv.presence.subscribers.is_empty() {
            cluster_leave(sv);
        } else {
            announce(sv, true);
        }
    } else {
        // Local presence keeps working; the next presence stream retries the link.
        sv.presence.link = ClusterLink::Off;
    }
}

/// Another instance announced its workers.
pub(crate) fn on_announcement(sv: &mut Services, announcement: super::PresenceAnnouncement) {
    if announcement.instance == sv.instance
        || announcement.store_id != sv.store_id
        || sv.presence.link != ClusterLink::On
    {
        return;
    }
    let expires_at = sv.now + remote_ttl(sv);
    let before = sv.presence.remote.get(&announcement.instance).map(|r| r.workers.clone());
    if announcement.workers.is_empty() {
        sv.presence.remote.remove(&announcement.instance);
    } else {
        let remote = Remote { workers: announcement.workers.clone(), expires_at };
        sv.presence.remote.insert(announcement.instance, remote);
    }
    let after = sv.presence.remote.get(&announcement.instance).map(|r| r.workers.clone());
    sv.presence.latest = None;
    // Renewal timestamps alone do not make a new inventory (as for local renewals).
    let ids = |w: &Option<Vec<WorkerInfo>>| -> Vec<(Uuid, Metadata)> {
        w.iter().flatten().map(|i| (i.worker_id, i.metadata.clone())).collect()
    };
    if ids(&before) != ids(&after) {
        fan_out(sv);
    }
    if announcement.sync && !sv.presence.workers.is_empty() {
        announce(sv, false);
    }
    arm_sweeper(sv);
}

/// The current inventory, built once per version and shared.
fn latest(sv: &mut Services) -> Arc<WorkerInventory> {
    if let Some(latest) = &sv.presence.latest {
        return latest.clone();
    }
    let built = Arc::new(inventory(sv));
    sv.presence.latest = Some(built.clone());
    built
}

/// Sends what a subscriber has pending: the latest inventory if it has not had it and its previous
/// one has left, then a due heartbeat, as far as its credit goes.
fn flush(sv: &mut Services, stream: StreamId) {
    let version = sv.presence.version;
    let Some(sub) = sv.presence.subscribers.get(&stream) else { return };
    if sub.sent_version != Some(version) && sv.io.is_drained(&stream) && sv.io.credit(&stream) > 0 {
        let inventory = latest(sv);
        if let Some(sub) = sv.presence.subscribers.get_mut(&stream) {
            sub.sent_version = Some(version);
        }
        let message = Envelope::WorkerInventory(inventory);
        sv.io.send(stream, Message::Envelope(message));
    }
    let Some(sub) = sv.presence.subscribers.get_mut(&stream) else { return };
    if let (true, Some(worker_id)) = (sub.heartbeat, sub.worker)
        && sv.io.credit(&stream) > 0
    {
        sub.heartbeat = false;
        let heartbeat = Presence { worker_id, heartbeat: true, timestamp: sv.wall.as_timestamp() };
        sv.io.send(stream, Message::Envelope(Envelope::Presence(heartbeat)));
    }
}

/// The inventory changed: a new version, sent at once to every subscriber whose previous inventory has
/// left and later to the others (when their credit comes back).
fn fan_out(sv: &mut Services) {
    sv.presence.version += 1;
    sv.presence.latest = None;
    let streams: Vec<StreamId> = sv.presence.subscribers.keys().copied().collect();
    for stream in streams {
        if sv.io.is_drained(&stream) {
            flush(sv, stream);
        }
    }
}

/// Forgets a stream and the worker it registered; whether the inventory changed.
fn remove_stream(sv: &mut Services, stream: StreamId) -> bool {
    let Some(sub) = sv.presence.subscribers.remove(&stream) else { return false };
    let Some(worker) = sub.worker else { return false };
    // The id may have been registered since by another stream: that registration stays.
    if sv.presence.workers.get(&worker).is_some_and(|w| w.stream == stream) {
        sv.presence.workers.remove(&worker);
        return true;
    }
    false
}

fn arm_sweeper(sv: &mut Services) {
    let nothing_to_sweep = sv.presence.workers.is_empty() && sv.presence.remote.is_empty();
    if !sv.presence.sweeping && !nothing_to_sweep {
        sv.presence.sweeping = true;
        let at = sv.now + sv.config.presence_sweep_interval.max(Millis(1));
        sv.io.timer(Owner::Presence(TAG_SWEEP), at, "worker presence sweep");
    }
}

/// The sweep timer fired: evict workers that stopped renewing, tell everyone, close their streams.
pub(crate) fn on_sweep(sv: &mut Services) {
    sv.presence.sweeping = false;
    let now = sv.now;
    let stale: Vec<(Uuid, StreamId)> = sv
        .presence
        .workers
        .iter()
        .filter(|(_, w)| now.saturating_since(w.renewed_at) > worker_presence_ttl(w.renew_seconds))
        .map(|(id, w)| (*id, w.stream))
        .collect();
    for (id, stream) in &stale {
        sv.presence.workers.remove(id);
        // Unregistered before the fan-out, so the evicted stream gets the close, not the inventory.
        sv.presence.subscribers.remove(stream);
    }
    let before = sv.presence.remote.len();
    sv.presence.remote.retain(|_, r| r.expires_at > now);
    let remote_expired = sv.presence.remote.len() != before;
    if !stale.is_empty() {
        changed(sv);
        for (_, stream) in stale {
            sv.io.close(stream, Some(WORKER_EXPIRED.into()));
        }
        cluster_leave(sv);
    } else if remote_expired {
        fan_out(sv);
    }
    arm_sweeper(sv);
}

/// A `SubscribeWorkers` stream: registration, renewals and heartbeats; the shared state is in the router.
pub(crate) struct PresenceOp {
    worker: Option<Uuid>,
    heartbeat: Option<Millis>,
}

impl PresenceOp {
    pub fn start(
        sv: &mut Services,
        stream: StreamId,
        request: SubscribeWorkers,
    ) -> Option<Box<dyn StreamOp>> {
        let heartbeat_seconds = clamp_heartbeat_seconds(request.heartbeat_interval_seconds);
        let worker = (!request.worker_id.is_nil()).then_some(request.worker_id);
        if let Some(id) = worker {
            // The inventory every observer is sent stays bounded (a re-registration replaces its entry).
            let current: usize = sv
                .presence
                .workers
                .iter()
                .filter(|(other, _)| **other != id)
                .map(|(_, w)| crate::limits::worker_inventory_bytes(&w.metadata))
                .sum();
            if let Err(refused) = sv.config.limits.check_inventory(current, &request.metadata) {
                sv.io.refused(super::Refusal::Limit(refused.kind));
                sv.io.close(stream, Some(refused.message.into()));
                return None;
            }
        }
        sv.presence.subscribers.insert(stream, Subscriber { worker, ..Subscriber::default() });
        cluster_join(sv);
        let mut heartbeat = None;
        match worker {
            None => flush(sv, stream),
            Some(id) => {
                let entry = Worker {
                    metadata: request.metadata,
                    stream,
                    last_seen_at: sv.wall.as_timestamp(),
                    renewed_at: sv.now,
                    renew_seconds: worker_renew_interval_seconds(heartbeat_seconds),
                };
                if let Some(previous) = sv.presence.workers.insert(id, entry)
                    && previous.stream != stream
                {
                    // The previous stream is told (Go closes it with this error too) and forgotten here, so
                    // its teardown cannot remove the new registration.
                    sv.presence.subscribers.remove(&previous.stream);
                    sv.io.close(previous.stream, Some(WORKER_ID_TAKEN.into()));
                }
                arm_sweeper(sv);
                changed(sv);
                if heartbeat_seconds > 0 {
                    let interval = Millis::from_secs(heartbeat_seconds.unsigned_abs());
                    heartbeat = Some(interval);
                    Self::heartbeat(sv, stream, interval);
                }
            }
        }
        Some(Box::new(Self { worker, heartbeat }))
    }

    /// Queues a server heartbeat, sends what credit allows, and arms the next one.
    fn heartbeat(sv: &mut Services, stream: StreamId, interval: Millis) {
        if let Some(sub) = sv.presence.subscribers.get_mut(&stream) {
            sub.heartbeat = true;
        }
        flush(sv, stream);
        sv.io.timer(Owner::Stream(stream, TAG_HEARTBEAT), sv.now + interval, "worker presence heartbeat");
    }

    /// Closes a misbehaving worker stream with `reason`, removing its worker.
    fn tear_down(sv: &mut Services, stream: StreamId, reason: String) -> Step {
        if remove_stream(sv, stream) {
            changed(sv);
        }
        sv.io.close(stream, Some(reason.into()));
        cluster_leave(sv);
        Step::Done
    }
}

impl StreamOp for PresenceOp {
    fn accepts_input(&self) -> bool {
        // Workers renew on the stream. Observers never send (Go does not even read them); whatever they
        // send anyway is taken and dropped so it cannot pile up in the transport.
        true
    }

    fn on_message(&mut self, sv: &mut Services, stream: StreamId, message: Message) -> Step {
        let Some(worker) = self.worker else { return Step::Continue };
        match message {
            Message::Envelope(Envelope::Presence(presence)) => {
                // Heartbeats are the server's; a client echoing one changes nothing.
                if presence.heartbeat {
                    return Step::Continue;
                }
                if !presence.worker_id.is_nil() && presence.worker_id != worker {
                    let reason = format!(
                        "worker presence renew worker_id mismatch: expected {worker} got {}",
                        presence.worker_id
                    );
                    return Self::tear_down(sv, stream, reason);
                }
                // The worker's clock, as in Go; a missing timestamp means now.
                let seen = if presence.timestamp <= 0 { sv.wall.as_timestamp() } else { presence.timestamp };
                if let Some(entry) = sv.presence.workers.get_mut(&worker).filter(|w| w.stream == stream) {
                    entry.last_seen_at = seen;
                    entry.renewed_at = sv.now;
                    // Not a change worth a fan-out, but the next inventory built must show it.
                    sv.presence.latest = None;
                }
                Step::Continue
            }
            Message::Envelope(other) => {
                let reason =
                    format!("unexpected worker presence stream message type: *api.{}", other.go_type_name());
                Self::tear_down(sv, stream, reason)
            }
            other => {
                let reason = format!("unexpected worker presence stream message type: {:?}", other.kind());
                Self::tear_down(sv, stream, reason)
            }
        }
    }

    fn on_bad_message(&mut self, sv: &mut Services, stream: StreamId, error: String) -> Step {
        if self.worker.is_some() { Self::tear_down(sv, stream, error) } else { Step::Continue }
    }

    fn on_end(&mut self, sv: &mut Services, stream: StreamId, _end: StreamEnd) -> Step {
        if remove_stream(sv, stream) {
            changed(sv);
        }
        sv.io.close(stream, None);
        cluster_leave(sv);
        Step::Done
    }

    fn on_abort(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        if remove_stream(sv, stream) {
            changed(sv);
        }
        cluster_leave(sv);
        Step::Done
    }

    fn on_credit(&mut self, sv: &mut Services, stream: StreamId) -> Step {
        flush(sv, stream);
        Step::Continue
    }

    fn on_wake(&mut self, sv: &mut Services, stream: StreamId, tag: u32) -> Step {
        if let (TAG_HEARTBEAT, Some(interval)) = (tag, self.heartbeat) {
            Self::heartbeat(sv, stream, interval);
        }
        Step::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_ttls() {
        assert_eq!(worker_presence_ttl(1), Millis::from_secs(30));
        assert_eq!(worker_presence_ttl(30), Millis::from_secs(90));
        assert_eq!(worker_presence_ttl(300), Millis::from_secs(900));
        assert_eq!(worker_renew_interval_seconds(0), 30);
        assert_eq!(worker_renew_interval_seconds(-4), 30);
        assert_eq!(worker_renew_interval_seconds(15), 15);
        assert_eq!(worker_renew_interval_seconds(7200), 300);
    }
}

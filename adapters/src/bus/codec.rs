//! How bus messages travel between server instances (NATS, PostgreSQL `NOTIFY`): JSON envelopes.
//!
//! * A segment notification is Go's envelope, so a Go consumer of the bus can read it:
//!   `{"$type":"streamkit://api/v1/segment_notification","content":{"store_id":…,"segment_status":{…}}}`.
//! * A presence announcement (ours; Go has none) is
//!   `{"$type":"streamkit-rs://bus/v1/presence_announcement","content":{"instance":…,"store_id":…,
//!   "workers":[…],"sync":false}}` with the workers in their wire shape (`worker_id`, `metadata`,
//!   `last_seen_at`).
//!
//! Route names map to transport names here too: [`nats_subject`] for NATS, [`pg_channel`] for
//! PostgreSQL.

use serde::{Deserialize, Serialize};
use streamkit_proto::api::Envelope;
use streamkit_proto::node::{BusMessage, PresenceAnnouncement};
use uuid::Uuid;

/// `$type` of a presence announcement on the bus.
pub const PRESENCE_ANNOUNCEMENT_TYPE: &str = "streamkit-rs://bus/v1/presence_announcement";

#[derive(Serialize)]
struct Outgoing<'a, T> {
    #[serde(rename = "$type")]
    ty: &'a str,
    content: &'a T,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "$type", default)]
    ty: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a serde_json::value::RawValue>,
}

/// The JSON envelope of a message.
pub fn encode(message: &BusMessage) -> Vec<u8> {
    let encoded = match message {
        BusMessage::Segment(notification) => {
            serde_json::to_vec(&Envelope::SegmentNotification(notification.clone()))
        }
        BusMessage::Presence(announcement) => {
            serde_json::to_vec(&Outgoing { ty: PRESENCE_ANNOUNCEMENT_TYPE, content: announcement })
        }
    };
    // Serialising these plain structs into memory cannot fail; an empty message would be rejected
    // by every receiver's decoder rather than crash anything.
    encoded.unwrap_or_default()
}

/// Decodes a message received from the bus.
pub fn decode(bytes: &[u8]) -> Result<BusMessage, String> {
    let raw: Incoming<'_> = serde_json::from_slice(bytes).map_err(|e| format!("invalid bus message: {e}"))?;
    if raw.ty.as_deref() == Some(PRESENCE_ANNOUNCEMENT_TYPE) {
        let content = raw.content.ok_or("presence announcement without content")?;
        return serde_json::from_str::<PresenceAnnouncement>(content.get())
            .map(BusMessage::Presence)
            .map_err(|e| format!("invalid presence announcement: {e}"));
    }
    match Envelope::from_json(bytes).map_err(|e| e.to_string())? {
        Envelope::SegmentNotification(notification) => Ok(BusMessage::Segment(notification)),
        other => Err(format!("unexpected bus message type {}", other.go_type_name())),
    }
}

/// The NATS subject of a route: `prefix` followed by the route with its bracketed id turned into a
/// last token (`inbox.streamkit.segment_notification[<id>]` →
/// `inbox.streamkit.segment_notification.<id>`); characters NATS reserves (wildcards, white space)
/// become `_`.
pub fn nats_subject(prefix: &str, route: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + route.len());
    subject.push_str(prefix);
    for c in route.chars() {
        match c {
            '[' => subject.push('.'),
            ']' => {}
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') => subject.push(c),
            _ => subject.push('_'),
        }
    }
    subject
}

/// The PostgreSQL notification channel of a route in `schema`: `streamkit_` and 32 hex digits of a
/// UUIDv5 of schema and route. Routes exceed PostgreSQL's 63-byte identifier limit, so they are
/// hashed; the schema is part of the hash so that deployments sharing a database (one schema each)
/// do not hear each other.
pub fn pg_channel(schema: &str, route: &str) -> String {
    const NAMESPACE: Uuid = Uuid::from_u128(0x5a1d_0c4e_7b2f_4d8e_9a61_3c0f_b2e4_d917);
    let mut name = Vec::with_capacity(schema.len() + 1 + route.len());
    name.extend_from_slice(schema.as_bytes());
    name.push(0);
    name.extend_from_slice(route.as_bytes());
    format!("streamkit_{}", Uuid::new_v5(&NAMESPACE, &name).simple())
}

#[cfg(test)]
mod tests {
    use streamkit_proto::api::{Metadata, SegmentNotification, SegmentStatus, WorkerInfo};
    use streamkit_proto::node::{segment_notification_route, worker_presence_route};

    use super::*;

    #[test]
    fn segment_notifications_are_go_envelopes() {
        let store = Uuid::from_u128(7);
        let message = BusMessage::Segment(SegmentNotification {
            store_id: store,
            segment_status: SegmentStatus {
                space: "s".into(),
                segment: "g".into(),
                last_sequence: 3,
                ..Default::default()
            },
        });
        let json = String::from_utf8(encode(&message)).unwrap();
        assert!(json.starts_with(r#"{"$type":"streamkit://api/v1/segment_notification","content":{"store_id":"00000000-0000-0000-0000-000000000007","segment_status":{"#), "{json}");
        assert_eq!(decode(json.as_bytes()), Ok(message));
    }

    #[test]
    fn presence_announcements_round_trip() {
        let mut metadata = Metadata::new();
        metadata.insert("role".into(), "indexer".into());
        let message = BusMessage::Presence(PresenceAnnouncement {
            instance: Uuid::from_u128(1),
            store_id: Uuid::from_u128(2),
            workers: vec![WorkerInfo {
                worker_id: Uuid::from_u128(3),
                metadata,
                last_seen_at: 1_700_000_000_000,
            }],
            sync: true,
        });
        let json = String::from_utf8(encode(&message)).unwrap();
        assert!(
            json.starts_with(r#"{"$type":"streamkit-rs://bus/v1/presence_announcement","content":{"#),
            "{json}"
        );
        assert_eq!(decode(json.as_bytes()), Ok(message));
    }

    #[test]
    fn garbage_and_other_envelopes_are_errors() {
        assert!(decode(b"not json").unwrap_err().contains("invalid bus message"));
        assert!(
            decode(br#"{"$type":"streamkit://api/v1/peek","content":{"space":"a","segment":"b"}}"#)
                .unwrap_err()
                .contains("unexpected bus message type")
        );
        assert!(decode(br#"{"$type":"streamkit-rs://bus/v1/presence_announcement"}"#).is_err());
    }

    #[test]
    fn route_names_fit_their_transports() {
        let store = Uuid::parse_str("6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b").unwrap();
        let route = segment_notification_route(&store, "space0");
        assert_eq!(
            nats_subject("", &route),
            "inbox.streamkit.segment_notification.10c8c765-9a9d-5d92-9226-d855e73fdcfe"
        );
        assert_eq!(nats_subject("prod.", "a b*>[x]"), "prod.a_b__.x");
        let channel = pg_channel("public", &route);
        assert_eq!(channel.len(), 42);
        assert!(channel.len() <= 63 && channel.starts_with("streamkit_"));
        assert_ne!(channel, pg_channel("other", &route), "schemas do not share channels");
        assert_ne!(channel, pg_channel("public", &worker_presence_route(&store)));
    }
}

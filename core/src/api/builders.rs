//! Builders for the read requests, for code that constructs them by hand (the SDK's users).
//!
//! On the wire, 0 means "no bound" in every range field, as Go writes it. The builders speak
//! `Option` instead: a bound that is not set (or set to `None`) is absent, and nobody has to know the
//! sentinel. `Some(0)` is the same as `None`, since the wire has no other way to say it: sequences
//! start at 1, a timestamp of 0 is the Unix epoch, and a limit of 0 reads without limit.
//!
//! ```
//! use streamkit_proto::api::{ConsumeSegment, ConsumeSpace};
//!
//! let next_page = ConsumeSegment::new("orders", "order-42").from_sequence(101).limit(100);
//! assert_eq!((next_page.min_sequence, next_page.max_sequence, next_page.limit), (101, 0, 100));
//!
//! let whole_space = ConsumeSpace::new("orders").after(None).limit(None);
//! assert_eq!(whole_space, ConsumeSpace { space: "orders".into(), ..Default::default() });
//! ```

use alloc::string::String;

use super::{Consume, ConsumeSegment, ConsumeSpace};
use crate::lexkey::LexKey;

/// The bounds every read request has: commit time and number of entries.
macro_rules! time_and_count_bounds {
    ($($request:ty),*) => {$(
        impl $request {
            /// Only entries committed strictly after this Unix time in milliseconds; `None` for all.
            #[must_use]
            pub fn after_timestamp(mut self, millis: impl Into<Option<i64>>) -> Self {
                self.min_timestamp = millis.into().unwrap_or(0);
                self
            }

            /// Only entries committed at or before this Unix time in milliseconds; `None` up to now.
            #[must_use]
            pub fn until_timestamp(mut self, millis: impl Into<Option<i64>>) -> Self {
                self.max_timestamp = millis.into().unwrap_or(0);
                self
            }

            /// At most this many entries (over all spaces of a [`Consume`]); `None` for no limit.
            #[must_use]
            pub fn limit(mut self, entries: impl Into<Option<u64>>) -> Self {
                self.limit = entries.into().unwrap_or(0);
                self
            }
        }
    )*};
}

time_and_count_bounds!(ConsumeSegment, ConsumeSpace, Consume);

impl ConsumeSegment {
    /// Reads the whole segment `segment` of `space`, in sequence order.
    pub fn new(space: impl Into<String>, segment: impl Into<String>) -> Self {
        Self { space: space.into(), segment: segment.into(), ..Self::default() }
    }

    /// Starts at this sequence (inclusive); `None` starts at the first entry. To resume after the
    /// last entry you saw, pass its sequence + 1.
    #[must_use]
    pub fn from_sequence(mut self, sequence: impl Into<Option<u64>>) -> Self {
        self.min_sequence = sequence.into().unwrap_or(0);
        self
    }

    /// Stops after this sequence (inclusive); `None` reads to the head.
    #[must_use]
    pub fn to_sequence(mut self, sequence: impl Into<Option<u64>>) -> Self {
        self.max_sequence = sequence.into().unwrap_or(0);
        self
    }
}

impl ConsumeSpace {
    /// Reads every segment of `space`, merged in timestamp order, from the beginning.
    pub fn new(space: impl Into<String>) -> Self {
        Self { space: space.into(), ..Self::default() }
    }

    /// Resumes strictly after this cursor, the [`space_offset`](super::Entry::space_offset) of the
    /// last entry you saw; `None` reads from the beginning.
    #[must_use]
    pub fn after(mut self, offset: impl Into<Option<LexKey>>) -> Self {
        self.offset = offset.into().unwrap_or_default();
        self
    }
}

impl Consume {
    /// Reads the given spaces merged in timestamp order, each from its beginning.
    pub fn new<I, S>(spaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let offsets = spaces.into_iter().map(|space| (space.into(), LexKey::default())).collect();
        Self { offsets, ..Self::default() }
    }

    /// Reads `space` too, resuming strictly after `offset` (the
    /// [`space_offset`](super::Entry::space_offset) of the last entry you saw of it); `None` reads it
    /// from the beginning. A space already named gets the new cursor.
    #[must_use]
    pub fn after(mut self, space: impl Into<String>, offset: impl Into<Option<LexKey>>) -> Self {
        self.offsets.insert(space.into(), offset.into().unwrap_or_default());
        self
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;
    use crate::api::Entry;

    #[test]
    fn unset_and_none_bounds_are_the_wire_default() {
        let built = ConsumeSegment::new("s", "g")
            .from_sequence(None)
            .to_sequence(None)
            .after_timestamp(None)
            .until_timestamp(None)
            .limit(None);
        assert_eq!(built, ConsumeSegment { space: "s".into(), segment: "g".into(), ..Default::default() });
        assert_eq!(Consume::new(["a"]).limit(None).after_timestamp(None).until_timestamp(None).limit, 0);
    }

    #[test]
    fn set_bounds_reach_their_fields() {
        let built = ConsumeSegment::new("s", "g")
            .from_sequence(3)
            .to_sequence(9)
            .after_timestamp(10)
            .until_timestamp(20)
            .limit(5);
        assert_eq!(
            (built.min_sequence, built.max_sequence, built.min_timestamp, built.max_timestamp, built.limit),
            (3, 9, 10, 20, 5)
        );
        let space = ConsumeSpace::new("s").after_timestamp(1).until_timestamp(2).limit(7);
        assert_eq!((space.min_timestamp, space.max_timestamp, space.limit), (1, 2, 7));
    }

    #[test]
    fn cursors_resume_after_an_entry() {
        let entry = Entry {
            sequence: 4,
            timestamp: 99,
            space: "a".into(),
            segment: "g".into(),
            ..Default::default()
        };
        assert_eq!(ConsumeSpace::new("a").after(entry.space_offset()).offset, entry.space_offset());
        let multi = Consume::new(["a", "b"]).after("a", entry.space_offset()).after("c", None);
        assert_eq!(
            multi.offsets.into_iter().collect::<Vec<_>>(),
            vec![
                ("a".into(), entry.space_offset()),
                ("b".into(), LexKey::default()),
                ("c".into(), LexKey::default())
            ]
        );
    }
}

//! What a subscription's dispatcher needs from a log: entries after a cursor's
//! read position, one entry by position, moving the read position back, and
//! acknowledgements. [`ManagedLog`] is the real one; `memory::MemoryLog`
//! (tests only) keeps entries and cursors in memory, so dispatch, redelivery
//! and delayed delivery are unit-tested without sockets or disk.

use kilonova_storage::{Entry, ManagedLog, Position, StorageError};

/// Entries from a position, read through named cursors.
pub(crate) trait EntrySource {
    /// Up to `max` entries after the cursor's read position, skipping
    /// acknowledged ones, stopping once they hold `max_bytes` (at least one is
    /// read); the read position moves past them.
    fn read_next_within(
        &mut self,
        cursor: &str,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError>;
    /// One entry (`NoSuchEntry` if it is not there: trimmed, or never written).
    fn read_entry(&self, p: Position) -> Result<Entry, StorageError>;
    /// The read position goes back to the first unacknowledged entry.
    fn rewind(&mut self, cursor: &str) -> Result<(), StorageError>;
    /// The read position goes back to `p` (not before the first unacknowledged entry).
    fn rewind_read_to(&mut self, cursor: &str, p: Position) -> Result<(), StorageError>;
    /// Acknowledges each of `ps`.
    fn ack(&mut self, cursor: &str, ps: &[Position]) -> Result<(), StorageError>;
    /// Acknowledges every entry up to and including `p`.
    fn ack_cumulative(&mut self, cursor: &str, p: Position) -> Result<(), StorageError>;
    /// The cursor's first unacknowledged entry.
    fn ack_floor(&self, cursor: &str) -> Result<Position, StorageError>;
    /// The log's first entry (kept or not yet written).
    fn first_position(&self) -> Position;
}

impl EntrySource for ManagedLog {
    fn read_next_within(
        &mut self,
        cursor: &str,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        ManagedLog::read_next_within(self, cursor, max, max_bytes)
    }
    fn read_entry(&self, p: Position) -> Result<Entry, StorageError> {
        ManagedLog::read_entry(self, p)
    }
    fn rewind(&mut self, cursor: &str) -> Result<(), StorageError> {
        ManagedLog::rewind(self, cursor)
    }
    fn rewind_read_to(&mut self, cursor: &str, p: Position) -> Result<(), StorageError> {
        ManagedLog::rewind_read_to(self, cursor, p)
    }
    fn ack(&mut self, cursor: &str, ps: &[Position]) -> Result<(), StorageError> {
        ManagedLog::ack_each(self, cursor, ps)
    }
    fn ack_cumulative(&mut self, cursor: &str, p: Position) -> Result<(), StorageError> {
        ManagedLog::ack_cumulative(self, cursor, p)
    }
    fn ack_floor(&self, cursor: &str) -> Result<Position, StorageError> {
        ManagedLog::ack_floor(self, cursor)
    }
    fn first_position(&self) -> Position {
        ManagedLog::first_position(self)
    }
}

/// The first entry the subscription has not acknowledged (entries before it all are).
/// A subscription the log does not know has acknowledged nothing: the log's start.
pub(crate) fn first_unacked(log: &impl EntrySource, cursor: &str) -> Position {
    log.ack_floor(cursor)
        .unwrap_or_else(|_| log.first_position())
}

#[cfg(test)]
pub(crate) mod memory {
    //! An in-memory log of one segment (id 0) with cursors that behave as the
    //! managed log's do: a floor (first unacknowledged entry), a read
    //! position, and individually acknowledged entries after the floor.

    use std::collections::{BTreeSet, HashMap};

    use bytes::Bytes;

    use super::*;

    #[derive(Default)]
    struct Cursor {
        floor: u64,
        read: u64,
        acked: BTreeSet<u64>,
    }

    #[derive(Default)]
    pub(crate) struct MemoryLog {
        entries: Vec<Entry>,
        cursors: HashMap<String, Cursor>,
    }

    fn no_cursor(name: &str) -> StorageError {
        StorageError::NoSuchCursor(name.to_owned())
    }

    impl MemoryLog {
        /// Appends an entry of `message_count` messages; returns its position.
        pub(crate) fn append(
            &mut self,
            data: Bytes,
            message_count: u32,
            publish_time_ms: u64,
        ) -> Position {
            let position = Position::new(0, self.entries.len() as u64);
            let message_index = self
                .entries
                .last()
                .map_or(0, |e| e.message_index + u64::from(e.message_count));
            self.entries.push(Entry {
                position,
                publish_time_ms,
                message_index,
                message_count,
                data,
            });
            position
        }

        /// Where the cursor reads next.
        pub(crate) fn read_position(&self, name: &str) -> Position {
            Position::new(0, self.cursors.get(name).map_or(0, |c| c.read.max(c.floor)))
        }

        /// Opens a cursor at the first entry.
        pub(crate) fn open_cursor(&mut self, name: &str) {
            self.cursors.entry(name.to_owned()).or_default();
        }

        fn cursor(&self, name: &str) -> Result<&Cursor, StorageError> {
            self.cursors.get(name).ok_or_else(|| no_cursor(name))
        }

        fn cursor_mut(&mut self, name: &str) -> Result<&mut Cursor, StorageError> {
            self.cursors.get_mut(name).ok_or_else(|| no_cursor(name))
        }

        /// Acknowledged entries after the floor fold into it.
        fn settle(c: &mut Cursor) {
            while c.acked.remove(&c.floor) {
                c.floor += 1;
            }
            c.read = c.read.max(c.floor);
        }
    }

    impl EntrySource for MemoryLog {
        fn read_next_within(
            &mut self,
            cursor: &str,
            max: usize,
            max_bytes: usize,
        ) -> Result<Vec<Entry>, StorageError> {
            let end = self.entries.len() as u64;
            let c = self
                .cursors
                .get_mut(cursor)
                .ok_or_else(|| no_cursor(cursor))?;
            let (mut out, mut bytes) = (Vec::new(), 0usize);
            let mut p = c.read.max(c.floor);
            while p < end && out.len() < max && (out.is_empty() || bytes < max_bytes) {
                if !c.acked.contains(&p) {
                    let e =
                        self.entries
                            .get(p as usize)
                            .cloned()
                            .ok_or(StorageError::NoSuchEntry {
                                segment: 0,
                                entry: p,
                            })?;
                    bytes = bytes.saturating_add(e.data.len());
                    out.push(e);
                }
                p += 1;
            }
            c.read = p;
            Ok(out)
        }

        fn read_entry(&self, p: Position) -> Result<Entry, StorageError> {
            self.entries
                .get(usize::try_from(p.entry).unwrap_or(usize::MAX))
                .filter(|_| p.segment == 0)
                .cloned()
                .ok_or(StorageError::NoSuchEntry {
                    segment: p.segment,
                    entry: p.entry,
                })
        }

        fn rewind(&mut self, cursor: &str) -> Result<(), StorageError> {
            let c = self.cursor_mut(cursor)?;
            c.read = c.floor;
            Ok(())
        }

        fn rewind_read_to(&mut self, cursor: &str, p: Position) -> Result<(), StorageError> {
            let c = self.cursor_mut(cursor)?;
            if p.entry < c.read {
                c.read = p.entry.max(c.floor);
            }
            Ok(())
        }

        fn ack(&mut self, cursor: &str, ps: &[Position]) -> Result<(), StorageError> {
            let c = self.cursor_mut(cursor)?;
            for p in ps {
                if p.entry >= c.floor {
                    c.acked.insert(p.entry);
                }
            }
            Self::settle(c);
            Ok(())
        }

        fn ack_cumulative(&mut self, cursor: &str, p: Position) -> Result<(), StorageError> {
            let c = self.cursor_mut(cursor)?;
            if p.entry >= c.floor {
                c.floor = p.entry + 1;
                c.acked = c.acked.split_off(&c.floor);
            }
            Self::settle(c);
            Ok(())
        }

        fn ack_floor(&self, cursor: &str) -> Result<Position, StorageError> {
            Ok(Position::new(0, self.cursor(cursor)?.floor))
        }

        fn first_position(&self) -> Position {
            Position::new(0, 0)
        }
    }
}

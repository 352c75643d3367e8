//! Entries by message index: what the Kafka edge reads with (a Kafka offset
//! is the topic's message index). A read that finds nothing may wait: the
//! topic answers it when the next entry is stored, and drops it once its
//! reader stopped waiting.

use kilonova_storage::{Entry, ManagedLog, StorageError};
use tokio::sync::oneshot;

use super::Topic;
use crate::error::BrokerError;

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexQuery {
    /// Entries from the one holding message index `from` on, until they
    /// hold `max_bytes` (at least one entry); with `wait`, an answer with
    /// no entry waits until an entry is stored.
    Read {
        from: u64,
        max_bytes: usize,
        wait: bool,
    },
    /// The message index of the first entry published at or after `time_ms`.
    AtTime(u64),
    /// Only the bounds.
    Bounds,
}

/// The answer: entries (for `Read`), the index of the first stored message
/// (`start`), the index after the last durable one (`end`), and for `AtTime`
/// the index found (`end` when none).
#[derive(Debug, Default)]
pub(crate) struct IndexAnswer {
    pub entries: Vec<Entry>,
    pub start: u64,
    pub end: u64,
    pub at_time: Option<u64>,
}

pub(crate) type IndexReply = oneshot::Sender<Result<IndexAnswer, BrokerError>>;

/// A read waiting for an entry to be stored.
pub(super) struct IndexWaiter {
    from: u64,
    max_bytes: usize,
    reply: IndexReply,
}

/// The most reads one topic keeps waiting (each Kafka fetch in flight
/// waits on each partition it asks for once); past it a read is answered
/// empty at once, and its client asks again.
const MAX_WAITERS: usize = 1024;

impl Topic {
    pub(super) fn by_index(&mut self, query: IndexQuery, reply: IndexReply) {
        if let Some(log) = self.log.as_mut() {
            log.note_index_reader();
        }
        let Some(log) = self.log.as_ref() else {
            let _ = reply.send(Err(BrokerError::NotAllowed(
                "a non-persistent topic keeps no messages to read by offset".into(),
            )));
            return;
        };
        let answer = match query {
            IndexQuery::Read {
                from,
                max_bytes,
                wait,
            } => match read(log, from, max_bytes) {
                Ok(a) if a.entries.is_empty() && wait && from >= a.end => {
                    self.index_waiters.retain(|w| !w.reply.is_closed());
                    if self.index_waiters.len() < MAX_WAITERS {
                        self.index_waiters.push(IndexWaiter {
                            from,
                            max_bytes,
                            reply,
                        });
                        return;
                    }
                    Ok(a)
                }
                other => other,
            },
            IndexQuery::AtTime(t) => bounds(log).and_then(|(start, end)| {
                let p = log.position_of_publish_time(t)?;
                let at = match log.is_readable(p) {
                    true => log.read_entry(p)?.message_index,
                    false => end,
                };
                Ok(IndexAnswer {
                    start,
                    end,
                    at_time: Some(at.max(start)),
                    ..Default::default()
                })
            }),
            IndexQuery::Bounds => bounds(log).map(|(start, end)| IndexAnswer {
                start,
                end,
                ..Default::default()
            }),
        };
        let _ = reply.send(answer.map_err(BrokerError::from));
    }

    /// Answers the reads waiting for entries, now that some are stored.
    pub(super) fn wake_index_waiters(&mut self) {
        if self.index_waiters.is_empty() {
            return;
        }
        let Some(log) = self.log.as_ref() else {
            return;
        };
        let waiting = std::mem::take(&mut self.index_waiters);
        for w in waiting {
            if w.reply.is_closed() {
                continue;
            }
            match read(log, w.from, w.max_bytes) {
                Ok(a) if a.entries.is_empty() && w.from >= a.end => self.index_waiters.push(w),
                answer => {
                    let _ = w.reply.send(answer.map_err(BrokerError::from));
                }
            }
        }
    }
}

/// The first stored message index and the index after the last durable one.
fn bounds(log: &ManagedLog) -> Result<(u64, u64), StorageError> {
    let end = match log.last_position() {
        Some(p) => {
            let e = log.read_entry(p)?;
            e.message_index + u64::from(e.message_count)
        }
        None => log.segments().last().map_or(0, |s| s.first_message_index),
    };
    let first = log.first_position();
    let start = match log.is_readable(first) {
        true => log.read_entry(first)?.message_index,
        false => end,
    };
    Ok((start, end))
}

fn read(log: &ManagedLog, from: u64, max_bytes: usize) -> Result<IndexAnswer, StorageError> {
    let (start, end) = bounds(log)?;
    let mut answer = IndexAnswer {
        start,
        end,
        ..Default::default()
    };
    if from < start || from >= end {
        return Ok(answer);
    }
    let Some(mut p) = log.position_of_message_index(from)? else {
        return Ok(answer);
    };
    let mut bytes = 0usize;
    // A few entries at a time: the byte budget, not a count, ends the read.
    const STEP: usize = 16;
    loop {
        let entries = log.read_from(p, STEP)?;
        let n = entries.len();
        for e in entries {
            if bytes > 0 && bytes + e.data.len() > max_bytes {
                return Ok(answer);
            }
            bytes += e.data.len();
            p = e.position;
            answer.entries.push(e);
        }
        if n < STEP {
            return Ok(answer);
        }
        // (A position past its segment's end stands for the next segment's first.)
        p = kilonova_storage::Position::new(p.segment, p.entry + 1);
    }
}

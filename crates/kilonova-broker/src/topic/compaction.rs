//! Compacting a topic, in the topic's own task, a step at a time so the
//! topic keeps serving: phase one reads the previous compacted view and the
//! log after its horizon up to the last entry when compaction started,
//! keeping every key's latest message ([`crate::compaction`]); phase two
//! writes the kept entries to a new compacted view; then the view replaces
//! the old one and the `__compaction` cursor moves to the horizon, which
//! frees the log before it for retention. The status is Pulsar's
//! (`NOT_RUN`, `RUNNING`, `SUCCESS`, `ERROR` with the last error).

use serde::Serialize;

use kilonova_storage::{CompactedWriter, Entry, InitialPosition, Position, StorageError};

use super::Topic;
use crate::compaction::{self, CompactionError, Keep, KeyTable, Source};
use crate::error::BrokerError;

/// The cursor that marks how far the topic is compacted (Pulsar's name).
pub(crate) const COMPACTION_CURSOR: &str = "__compaction";

/// Entries a step reads or writes before the topic serves again.
const STEP_ENTRIES: usize = 256;

/// A compaction's status as the admin API shows it (Pulsar's `LongRunningProcessStatus`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompactionStatus {
    pub status: &'static str,
    #[serde(rename = "lastError")]
    pub last_error: String,
}

/// The topic's compaction: the one running, and how the last one ended.
#[derive(Default)]
pub(super) struct Compaction {
    run: Option<Run>,
    last: Option<Result<(), String>>,
}

struct Run {
    horizon: Position,
    /// The previous view's horizon (the log is read after it).
    previous: Option<Position>,
    phase: Phase,
}

enum Phase {
    /// Reading the previous view, entry by entry.
    View { table: KeyTable, next: usize },
    /// Reading the log up to the horizon.
    Log { table: KeyTable, next: Position },
    /// Writing the kept entries.
    Write {
        plan: std::vec::IntoIter<(Position, Source, Keep)>,
        writer: Option<CompactedWriter>,
    },
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Compaction(#[from] CompactionError),
}

impl Compaction {
    pub(super) fn is_running(&self) -> bool {
        self.run.is_some()
    }

    pub(super) fn status(&self) -> CompactionStatus {
        let (status, last_error) = match (&self.run, &self.last) {
            (Some(_), _) => ("RUNNING", String::new()),
            (None, None) => ("NOT_RUN", String::new()),
            (None, Some(Ok(()))) => ("SUCCESS", String::new()),
            (None, Some(Err(e))) => ("ERROR", e.clone()),
        };
        CompactionStatus { status, last_error }
    }
}

impl Topic {
    /// Starts compacting the topic (refused while a compaction runs, as Pulsar does).
    pub(super) fn start_compaction(&mut self) -> Result<(), BrokerError> {
        if self.compaction.is_running() {
            return Err(BrokerError::Conflict(
                "Compaction already in progress".into(),
            ));
        }
        let max_keys = self.broker.config().compaction_max_keys;
        let max_batch_bytes = self.max_batch_bytes();
        let log = self.log.as_mut().ok_or_else(|| {
            BrokerError::NotAllowed("compaction is not supported on non-persistent topics".into())
        })?;
        let Some(horizon) = log.last_position() else {
            // Nothing to compact.
            self.compaction.last = Some(Ok(()));
            return Ok(());
        };
        if !log.has_cursor(COMPACTION_CURSOR) {
            // Held from now on, so retention keeps what is not compacted yet.
            log.open_cursor(COMPACTION_CURSOR, InitialPosition::Earliest, true)?;
        }
        let previous = log.compacted_horizon();
        let table = KeyTable::new(max_keys, max_batch_bytes);
        let phase = if previous.is_some() {
            Phase::View { table, next: 0 }
        } else {
            Phase::Log {
                table,
                next: log.first_position(),
            }
        };
        tracing::info!(topic = %self.full_name, ?horizon, "compaction started");
        self.compaction.run = Some(Run {
            horizon,
            previous,
            phase,
        });
        Ok(())
    }

    /// One step of the running compaction.
    pub(super) async fn compaction_step(&mut self) {
        let Some(mut run) = self.compaction.run.take() else {
            return;
        };
        match self.step(&mut run).await {
            Ok(false) => self.compaction.run = Some(run),
            Ok(true) => {
                tracing::info!(topic = %self.full_name, horizon = ?run.horizon, "compaction done");
                let entries = self.log.as_ref().map_or(0, |l| l.compacted_entries());
                self.metrics.compaction_finished(Some(entries as u64));
                self.compaction.last = Some(Ok(()));
            }
            Err(e) => {
                tracing::warn!(topic = %self.full_name, error = %e, "compaction failed");
                if let (Phase::Write { writer, .. }, Some(log)) = (&mut run.phase, &self.log) {
                    if let Some(w) = writer.take() {
                        log.abort_compacted(w).await;
                    }
                }
                self.metrics.compaction_finished(None);
                self.compaction.last = Some(Err(e.to_string()));
            }
        }
    }

    /// The largest batch, uncompressed, that compaction decompresses: the
    /// bound a publish is held to (`checked_message_count`).
    pub(super) fn max_batch_bytes(&self) -> usize {
        usize::try_from(self.broker.max_uncompressed_batch_bytes()).unwrap_or(usize::MAX)
    }

    /// Returns whether the compaction is done.
    async fn step(&mut self, run: &mut Run) -> Result<bool, StepError> {
        let max_batch_bytes = self.max_batch_bytes();
        let Some(log) = self.log.as_mut() else {
            return Err(StorageError::Log("the topic has no log".into()).into());
        };
        match &mut run.phase {
            Phase::View { table, next } => {
                let end = (*next + STEP_ENTRIES).min(log.compacted_entries());
                for i in *next..end {
                    table.observe(&log.read_compacted(i)?, Source::View(i))?;
                }
                *next = end;
                if end == log.compacted_entries() {
                    let table = std::mem::replace(table, KeyTable::new(0, 0));
                    let after = run.previous.map_or_else(
                        || log.first_position(),
                        |h| Position::new(h.segment, h.entry + 1),
                    );
                    run.phase = Phase::Log { table, next: after };
                }
                Ok(false)
            }
            Phase::Log { table, next } => {
                let entries = log.read_from(*next, STEP_ENTRIES)?;
                let mut done = entries.is_empty();
                for e in &entries {
                    if e.position > run.horizon {
                        done = true;
                        break;
                    }
                    table.observe(e, Source::Log)?;
                    *next = Position::new(e.position.segment, e.position.entry + 1);
                }
                if done || *next > run.horizon {
                    let table = std::mem::replace(table, KeyTable::new(0, 0));
                    if let Some((count, first, why)) = table.unreadable() {
                        tracing::warn!(topic = %self.full_name, count, ?first, reason = %why,
                            "batches that cannot be read are kept whole in the compacted view");
                    }
                    run.phase = Phase::Write {
                        plan: table.plan().into_iter(),
                        writer: Some(log.begin_compacted().await?),
                    };
                }
                Ok(false)
            }
            Phase::Write { plan, writer } => {
                let Some(w) = writer.as_mut() else {
                    return Err(StorageError::Log("compaction writer gone".into()).into());
                };
                for (p, source, keep) in plan.by_ref().take(STEP_ENTRIES) {
                    let entry: Entry = match source {
                        Source::View(i) => log.read_compacted(i)?,
                        Source::Log => log.read_entry(p)?,
                    };
                    log.append_compacted(w, &compaction::rewrite(&entry, &keep, max_batch_bytes))
                        .await?;
                }
                if plan.len() > 0 {
                    return Ok(false);
                }
                let Some(w) = writer.take() else {
                    return Err(StorageError::Log("compaction writer gone".into()).into());
                };
                log.finish_compacted(w, run.horizon).await?;
                log.ack_cumulative(COMPACTION_CURSOR, run.horizon)?;
                Ok(true)
            }
        }
    }

    /// The compaction threshold: starts a compaction when the backlog of the
    /// compaction cursor (the whole log if it never ran) is over it.
    pub(super) fn check_compaction_threshold(&mut self) {
        let Some(threshold) = self.policies.compaction_threshold_bytes else {
            return;
        };
        if self.compaction.is_running() {
            return;
        }
        let Some(log) = self.log.as_ref() else {
            return;
        };
        let backlog = if log.has_cursor(COMPACTION_CURSOR) {
            log.backlog_bytes(COMPACTION_CURSOR).unwrap_or(0)
        } else {
            log.size_bytes()
        };
        if backlog > threshold {
            tracing::debug!(topic = %self.full_name, backlog, threshold, "compaction threshold reached");
            if let Err(e) = self.start_compaction() {
                tracing::warn!(topic = %self.full_name, error = %e, "compaction not started");
            }
        }
    }
}

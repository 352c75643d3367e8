//! A log's termination: once terminated, a log takes no more appends, for
//! good (Pulsar's terminated managed ledger). What was appended before stays
//! readable; the last entry is where the log ends.
//!
//! The mark is one record at `logs/<id>/terminated`, written before
//! [`ManagedLog::terminate`] returns, so it survives a crash and a restart.
//! The log's end needs no recording: nothing can be appended after the mark.

use crate::error::{Result, StorageError};
use crate::position::Position;
use crate::state_store::StateStore;

use super::ManagedLog;

const TERMINATED_VERSION: u8 = 1;

/// Where log `id` records that it is terminated.
fn terminated_key(id: u64) -> String {
    format!("logs/{id}/terminated")
}

/// Whether log `id`'s stored state says it is terminated.
pub(super) fn load(state: &dyn StateStore, id: u64) -> Result<bool> {
    match state.load(&terminated_key(id))? {
        None => Ok(false),
        Some(b) if b.as_ref() == [TERMINATED_VERSION] => Ok(true),
        Some(_) => Err(super::meta::malformed("terminated record")),
    }
}

impl ManagedLog {
    /// Terminates the log: every later append fails with
    /// [`StorageError::Terminated`]. Returns the last entry's position (`None`
    /// for a log with none). Idempotent. The caller waits for its appends in
    /// flight first: one that completes after this call still lands, before
    /// the end.
    pub fn terminate(&mut self) -> Result<Option<Position>> {
        if !self.terminated {
            self.side().close_lane();
            self.state
                .store(&terminated_key(self.id), &[TERMINATED_VERSION])?;
            self.terminated = true;
            tracing::info!(log = self.id, "log terminated");
        }
        Ok(self.last_position())
    }

    /// Whether the log is terminated.
    pub fn is_terminated(&self) -> bool {
        self.terminated
    }

    /// Refuses an append to a terminated log.
    pub(super) fn check_not_terminated(&self) -> Result<()> {
        if self.terminated {
            return Err(StorageError::Terminated);
        }
        Ok(())
    }
}

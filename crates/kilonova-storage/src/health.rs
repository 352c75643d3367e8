//! Whether the store can write: the health signal a broker reports.
//!
//! The journal records each failure to write or sync (a full disk, an I/O
//! error) and clears it when an append written after it becomes durable, so
//! the signal says what the last attempt found: a store on a full disk serves
//! reads and reports `DiskFull` until an append succeeds again. (A group
//! written just before a failure and synced just after it does not clear it:
//! each write carries the failure count it saw.) When it was the journal's
//! next file that could not be made, small appends may still fit in the
//! active file's rest: their success does not clear the failure, which stays
//! until a file for entries is made (the disk has room again).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::error::StorageError;

/// What kind of trouble the store is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreTrouble {
    /// The disk (or quota) is full: appends fail until space is freed.
    DiskFull,
    /// A write or fdatasync failed for another reason.
    Io,
}

/// The store's last write failure, while no append has succeeded since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreFailure {
    pub trouble: StoreTrouble,
    /// The error, as text (what failed, and why).
    pub detail: String,
    /// The first failure since the store last wrote successfully.
    pub since: SystemTime,
    /// The latest one.
    pub last: SystemTime,
    /// Failures since the store last wrote successfully.
    pub count: u64,
}

/// [`crate::SegmentStore::health`]: `Ok`, or the trouble the last write ran into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreHealth {
    Ok,
    Failing(StoreFailure),
}

impl StoreHealth {
    pub fn is_ok(&self) -> bool {
        matches!(self, StoreHealth::Ok)
    }
}

/// The journal's record of its last failure.
#[derive(Debug, Default)]
pub(crate) struct HealthState {
    failure: Mutex<Option<StoreFailure>>,
    /// Failures ever recorded: a write stamps itself with this count, and
    /// clears a failure only if none came after it.
    failures: AtomicU64,
    /// The journal could not make its next file for entries: successes do
    /// not clear the failure until [`Self::rolled`].
    roll_blocked: AtomicBool,
}

impl HealthState {
    /// Records a failed write, sync or file creation (other errors say nothing
    /// about the disk and are ignored).
    pub fn failed(&self, e: &StorageError) {
        let trouble = match e {
            StorageError::DiskFull { .. } => StoreTrouble::DiskFull,
            StorageError::Io { .. } => StoreTrouble::Io,
            _ => return,
        };
        let now = SystemTime::now();
        if let Ok(mut f) = self.failure.lock() {
            self.failures.fetch_add(1, Ordering::AcqRel);
            let (since, count) = match f.as_ref() {
                Some(old) => (old.since, old.count + 1),
                None => (now, 1),
            };
            *f = Some(StoreFailure {
                trouble,
                detail: e.to_string(),
                since,
                last: now,
                count,
            });
        }
    }

    /// The journal could not make its next file for entries.
    pub fn roll_failed(&self, e: &StorageError) {
        self.roll_blocked.store(true, Ordering::Release);
        self.failed(e);
    }

    /// The journal made a file for entries: appends succeeding from now on
    /// clear the failure again.
    pub fn rolled(&self) {
        self.roll_blocked.store(false, Ordering::Release);
    }

    /// Failures recorded so far: what a write about to be issued stamps itself with.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }

    /// An append written when [`Self::failures`] was `seen` became durable:
    /// the store writes again, unless something failed after it was written.
    pub fn succeeded(&self, seen: u64) {
        if let Ok(mut f) = self.failure.lock() {
            if self.failures.load(Ordering::Acquire) != seen
                || self.roll_blocked.load(Ordering::Acquire)
            {
                return;
            }
            if f.take().is_some() {
                tracing::info!("storage writes succeed again");
            }
        }
    }

    pub fn get(&self) -> StoreHealth {
        match self.failure.lock().ok().and_then(|f| f.clone()) {
            Some(f) => StoreHealth::Failing(f),
            None => StoreHealth::Ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_kept_until_a_success_and_other_errors_ignored() {
        let h = HealthState::default();
        assert!(h.get().is_ok());
        h.failed(&StorageError::SegmentSealed(3));
        assert!(h.get().is_ok(), "not a disk problem");
        h.failed(&StorageError::DiskFull { context: "x" });
        h.failed(&StorageError::io("y", std::io::Error::other("boom")));
        let StoreHealth::Failing(f) = h.get() else {
            panic!("not failing");
        };
        assert_eq!((f.trouble, f.count), (StoreTrouble::Io, 2));
        assert!(f.detail.contains("boom"), "{f:?}");
        assert!(f.since <= f.last);
        h.succeeded(h.failures());
        assert!(h.get().is_ok());
    }

    #[test]
    fn a_write_issued_before_a_failure_does_not_clear_it() {
        let h = HealthState::default();
        let before = h.failures();
        h.failed(&StorageError::DiskFull { context: "rolling" });
        h.succeeded(before);
        assert!(
            !h.get().is_ok(),
            "an earlier write's sync cleared a later failure"
        );
        let after = h.failures();
        h.succeeded(after);
        assert!(h.get().is_ok());
    }

    #[test]
    fn a_failed_roll_is_cleared_by_a_new_file_not_by_appends_that_fit() {
        let h = HealthState::default();
        h.roll_failed(&StorageError::DiskFull {
            context: "creating a journal file",
        });
        h.succeeded(h.failures());
        assert!(
            !h.get().is_ok(),
            "a small append into the active file's rest"
        );
        h.rolled();
        assert!(!h.get().is_ok(), "no append has succeeded since");
        h.succeeded(h.failures());
        assert!(h.get().is_ok());
    }
}

//! Whether the store can write: the health signal a broker reports.
//!
//! The journal records each failure to write or sync (a full disk, an I/O
//! error) and clears it when an append next becomes durable, so the signal
//! says what the last attempt found: a store on a full disk serves reads and
//! reports `DiskFull` until an append succeeds again.

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

    /// An append became durable: the store writes again.
    pub fn succeeded(&self) {
        if let Ok(mut f) = self.failure.lock() {
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
        h.succeeded();
        assert!(h.get().is_ok());
    }
}

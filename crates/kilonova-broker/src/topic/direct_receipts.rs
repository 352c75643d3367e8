//! Appends answered off the topic's task: how many are in flight, whether
//! one failed, and waking the task only when it asked to be woken.
//!
//! A plain SEND (a local log, no deduplication, no marker, outside a
//! cluster) is answered by the call the journal makes once its entry is
//! durable ([`kilonova_storage::ManagedLog::append_then`]): the receipt goes
//! to the connection from the journal's thread, and the topic's task is not
//! woken for it. With many quiet topics that halves the task wake-ups a
//! message costs (one for its SEND, none for its completion).
//!
//! The task still needs to hear of completions when it has readers to
//! dispatch to, answers queued behind these appends, or is draining: it says
//! so with [`DirectReceipts::watch`] and [`DirectReceipts::progress`] wakes it.
//! A failed append always wakes it (it fences the topic).
//!
//! Appends a connection made through the topic's lane
//! ([`super::publish_lane`]) are counted here too: they are queued and
//! answered off the task the same way, only queued from elsewhere.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

#[derive(Default)]
pub(super) struct Shared {
    /// Appends queued to be answered by a call (by the task or a lane).
    queued: AtomicU64,
    /// Calls made so far.
    answered: AtomicU64,
    /// A call answered a failed append (until the topic clears it).
    failed: AtomicBool,
    /// The task asked to be woken at every call.
    watched: AtomicBool,
    waker: AtomicWaker,
}

/// The topic's side: what it has seen.
#[derive(Default)]
pub(super) struct DirectReceipts {
    shared: Arc<Shared>,
    /// Calls the task has been told of.
    seen: u64,
    /// The task was told of the failure.
    failure_seen: bool,
}

/// The calls' side, shared by every append answered off the task.
impl Shared {
    /// An append is about to be queued (its call will come).
    pub(super) fn queued(&self) {
        self.queued.fetch_add(1, SeqCst);
    }

    /// Whether an append before this one failed: then this one is answered
    /// with an error too, stored or not (the topic is fenced); a lane
    /// queues nothing then.
    pub(super) fn after_failure(&self) -> bool {
        self.failed.load(SeqCst)
    }

    /// The task asked to hear of every call (it has readers to dispatch
    /// to, or answers of its own queued).
    pub(super) fn watched(&self) -> bool {
        self.watched.load(SeqCst)
    }

    /// An append was answered (`failed`: with a failure of its own).
    pub(super) fn done(&self, failed: bool) {
        if failed {
            self.failed.store(true, SeqCst);
        }
        self.answered.fetch_add(1, SeqCst);
        if failed || self.watched.load(SeqCst) {
            // Once for a whole group commit's answers, not at each.
            if let Some(w) = self.waker.take() {
                kilonova_storage::wake_after_answers(w);
            }
        }
    }
}

/// Passed once every append queued before it was answered.
pub(super) struct Barrier {
    shared: Arc<Shared>,
    upto: u64,
}

impl Barrier {
    pub(super) fn poll_passed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.answered.load(SeqCst) >= self.upto {
            return Poll::Ready(());
        }
        self.shared.waker.register(cx.waker());
        match self.shared.answered.load(SeqCst) >= self.upto {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

impl DirectReceipts {
    /// What the calls share ([`Shared::queued`] before each append).
    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Appends queued and not answered yet.
    pub(super) fn in_flight(&self) -> bool {
        self.shared.answered.load(SeqCst) < self.shared.queued.load(SeqCst)
    }

    /// A barrier behind every append in flight (none if none is).
    pub(super) fn barrier(&self) -> Option<Barrier> {
        let queued = self.shared.queued.load(SeqCst);
        (self.shared.answered.load(SeqCst) < queued).then(|| Barrier {
            shared: self.shared.clone(),
            upto: queued,
        })
    }

    /// Whether the task wants [`Self::progress`] to wake it at every call.
    pub(super) fn watch(&self, on: bool) {
        if self.shared.watched.load(SeqCst) != on {
            self.shared.watched.store(on, SeqCst);
        }
    }

    /// An append answered off the task failed (and the fence has not lifted).
    pub(super) fn failed(&self) -> bool {
        self.shared.failed.load(SeqCst)
    }

    pub(super) fn is_watched(&self) -> bool {
        self.shared.watched.load(SeqCst)
    }

    /// Resolves once calls came since the last look while watched, or a
    /// failure the task was not told of yet, watched or not; `true` for that
    /// failure (told once). The task polls it always: a failure must reach
    /// it even when it has nothing to do for a receipt.
    pub(super) fn progress(&mut self) -> impl Future<Output = bool> + '_ {
        std::future::poll_fn(|cx| {
            if let Some(failed) = self.look() {
                return Poll::Ready(failed);
            }
            self.shared.waker.register(cx.waker());
            match self.look() {
                Some(failed) => Poll::Ready(failed),
                None => Poll::Pending,
            }
        })
    }

    /// `Some(new failure)` if a failure came, or calls came while watched,
    /// since the last look.
    fn look(&mut self) -> Option<bool> {
        let answered = self.shared.answered.load(SeqCst);
        let failed = self.shared.failed.load(SeqCst) && !self.failure_seen;
        if (answered == self.seen || !self.is_watched()) && !failed {
            return None;
        }
        self.seen = answered;
        self.failure_seen |= failed;
        Some(failed)
    }

    /// Resolves once nothing is in flight; `true` if a failure came that
    /// the task was not told of yet (told now).
    pub(super) async fn drained(&mut self) -> bool {
        let watched = self.is_watched();
        self.watch(true);
        let mut failed = false;
        while self.in_flight() {
            failed |= self.progress().await;
        }
        failed |= self.look().unwrap_or(false);
        self.watch(watched);
        failed
    }

    /// Nothing in flight: a failure is forgotten (the fence lifts).
    pub(super) fn clear_failure(&mut self) {
        if !self.in_flight() {
            self.shared.failed.store(false, SeqCst);
            self.failure_seen = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicU64);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    /// Polls `d.progress()` once with `waker`.
    fn look(d: &mut DirectReceipts, waker: &std::task::Waker) -> Poll<bool> {
        let mut cx = Context::from_waker(waker);
        std::pin::pin!(d.progress()).poll(&mut cx)
    }

    #[test]
    fn a_call_wakes_the_task_only_when_watched_or_failed() {
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut d = DirectReceipts::default();
        let calls = d.shared().clone();
        for _ in 0..4 {
            calls.queued();
        }
        assert!(d.in_flight());
        assert_eq!(look(&mut d, &waker), Poll::Pending);
        calls.done(false);
        assert_eq!(wakes.0.load(SeqCst), 0, "not watched: no wake-up");
        assert_eq!(look(&mut d, &waker), Poll::Pending, "nor told");
        d.watch(true);
        assert_eq!(
            look(&mut d, &waker),
            Poll::Ready(false),
            "told once watched"
        );
        assert_eq!(look(&mut d, &waker), Poll::Pending, "nothing new");
        calls.done(false);
        assert_eq!(wakes.0.load(SeqCst), 1, "watched: woken");
        assert_eq!(look(&mut d, &waker), Poll::Ready(false));
        d.watch(false);
        assert_eq!(look(&mut d, &waker), Poll::Pending);
        calls.done(true);
        assert_eq!(wakes.0.load(SeqCst), 2, "a failure wakes, watched or not");
        assert_eq!(
            look(&mut d, &waker),
            Poll::Ready(true),
            "the failure is told, watched or not"
        );
        assert!(calls.after_failure(), "appends behind a failure fail too");
        calls.done(false);
        assert!(!d.in_flight());
        assert_eq!(look(&mut d, &waker), Poll::Pending, "told once");
        d.clear_failure();
        assert!(!calls.after_failure());
    }

    #[tokio::test]
    async fn a_barrier_passes_once_the_appends_before_it_are_answered() {
        let mut d = DirectReceipts::default();
        let calls = d.shared().clone();
        assert!(d.barrier().is_none(), "nothing in flight");
        calls.queued();
        let barrier = d.barrier().unwrap();
        calls.queued();
        let mut passed = std::pin::pin!(std::future::poll_fn(|cx| barrier.poll_passed(cx)));
        assert!(passed.as_mut().now_or_never().is_none());
        calls.done(false);
        passed.await;
        assert!(
            d.in_flight(),
            "the barrier waits only for what was before it"
        );
        calls.done(false);
        assert!(!d.drained().await);
    }
}

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

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

#[derive(Default)]
struct Shared {
    /// Calls made so far.
    answered: AtomicU64,
    /// A call answered a failed append (until the topic clears it).
    failed: AtomicBool,
    /// The task asked to be woken at every call.
    watched: AtomicBool,
    waker: AtomicWaker,
}

/// The topic's side: what it queued, what it has seen.
#[derive(Default)]
pub(super) struct DirectReceipts {
    shared: Arc<Shared>,
    /// Appends queued to be answered by a call.
    queued: u64,
    /// Calls the task has been told of.
    seen: u64,
    /// The task was told of the failure.
    failure_seen: bool,
}

/// The call's side: one per append, told when it answered.
pub(super) struct Answered(Arc<Shared>);

impl Answered {
    /// Whether an append before this one failed: then this one is answered
    /// with an error too, stored or not (the topic is fenced).
    pub(super) fn after_failure(&self) -> bool {
        self.0.failed.load(SeqCst)
    }

    /// The append was answered (`failed`: with a failure of its own).
    pub(super) fn done(self, failed: bool) {
        if failed {
            self.0.failed.store(true, SeqCst);
        }
        self.0.answered.fetch_add(1, SeqCst);
        if failed || self.0.watched.load(SeqCst) {
            self.0.waker.wake();
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
    /// The handle for the call that answers the next append; counted once
    /// [`Self::queued`] says the append was queued.
    pub(super) fn answer(&self) -> Answered {
        Answered(self.shared.clone())
    }

    /// The append of the last [`Self::answer`] was queued (its call will come).
    pub(super) fn queued(&mut self) {
        self.queued += 1;
    }

    /// Appends queued and not answered yet.
    pub(super) fn in_flight(&self) -> bool {
        self.shared.answered.load(SeqCst) < self.queued
    }

    /// A barrier behind every append in flight (none if none is).
    pub(super) fn barrier(&self) -> Option<Barrier> {
        self.in_flight().then(|| Barrier {
            shared: self.shared.clone(),
            upto: self.queued,
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
        let (a, b, c, e) = (d.answer(), d.answer(), d.answer(), d.answer());
        for _ in 0..4 {
            d.queued();
        }
        assert!(d.in_flight());
        assert_eq!(look(&mut d, &waker), Poll::Pending);
        a.done(false);
        assert_eq!(wakes.0.load(SeqCst), 0, "not watched: no wake-up");
        assert_eq!(look(&mut d, &waker), Poll::Pending, "nor told");
        d.watch(true);
        assert_eq!(
            look(&mut d, &waker),
            Poll::Ready(false),
            "told once watched"
        );
        assert_eq!(look(&mut d, &waker), Poll::Pending, "nothing new");
        b.done(false);
        assert_eq!(wakes.0.load(SeqCst), 1, "watched: woken");
        assert_eq!(look(&mut d, &waker), Poll::Ready(false));
        d.watch(false);
        assert_eq!(look(&mut d, &waker), Poll::Pending);
        c.done(true);
        assert_eq!(wakes.0.load(SeqCst), 2, "a failure wakes, watched or not");
        assert_eq!(
            look(&mut d, &waker),
            Poll::Ready(true),
            "the failure is told, watched or not"
        );
        assert!(e.after_failure(), "appends behind a failure fail too");
        e.done(false);
        assert!(!d.in_flight());
        assert_eq!(look(&mut d, &waker), Poll::Pending, "told once");
        d.clear_failure();
        assert!(!d.answer().after_failure());
    }

    #[tokio::test]
    async fn a_barrier_passes_once_the_appends_before_it_are_answered() {
        let mut d = DirectReceipts::default();
        assert!(d.barrier().is_none(), "nothing in flight");
        let first = d.answer();
        d.queued();
        let barrier = d.barrier().unwrap();
        let later = d.answer();
        d.queued();
        let mut passed = std::pin::pin!(std::future::poll_fn(|cx| barrier.poll_passed(cx)));
        assert!(passed.as_mut().now_or_never().is_none());
        first.done(false);
        passed.await;
        assert!(
            d.in_flight(),
            "the barrier waits only for what was before it"
        );
        later.done(false);
        assert!(!d.drained().await);
    }
}

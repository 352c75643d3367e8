//! Wake-ups asked for by the journal's calls, made once the run of answers
//! they belong to is over.
//!
//! The syncer answers a group commit's appends one after the other; a call
//! that wants its task woken ([`crate::ManagedLog::append_then`]) would wake
//! it at every answer, and a task on the other core would run between two
//! of them, once per entry, finding one more answer each time. Asked for
//! from inside a run, a wake-up waits for the run's end (each task once:
//! its waker is taken by the first call, and registered again only when it
//! runs); anywhere else it is made at once.

use std::cell::RefCell;
use std::task::Waker;

thread_local! {
    /// Wake-ups held back while this thread makes a run of answers.
    static HELD: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
}

/// Wakes `waker` once the run of answers this thread is making is over, or
/// now outside one.
pub fn wake_after_answers(waker: Waker) {
    let now = HELD.with(|held| match held.borrow_mut().as_mut() {
        Some(list) => {
            list.push(waker);
            None
        }
        None => Some(waker),
    });
    if let Some(w) = now {
        w.wake();
    }
}

/// Runs `answer` (a run of answers), then makes the wake-ups asked for
/// during it. The syncer's; public so that users of
/// [`wake_after_answers`] can test what they do within a run.
/// A run inside a run is part of it: its wake-ups wait for the outer end.
pub fn answering<R>(answer: impl FnOnce() -> R) -> R {
    let outer = HELD.with(|held| {
        let mut held = held.borrow_mut();
        let outer = held.is_some();
        held.get_or_insert_with(Vec::new);
        outer
    });
    if outer {
        return answer();
    }
    let r = answer();
    let wakers = HELD.with(|held| held.borrow_mut().take());
    for w in wakers.into_iter().flatten() {
        w.wake();
    }
    r
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_wake_up_asked_for_in_a_run_of_answers_waits_for_its_end() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        answering(|| {
            wake_after_answers(waker.clone());
            assert_eq!(count.0.load(Ordering::SeqCst), 0, "held during the run");
        });
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "made at its end");
        wake_after_answers(waker);
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "at once outside a run");
    }

    #[test]
    fn a_run_inside_a_run_keeps_the_outer_runs_wake_ups_until_its_end() {
        let (first, second) = (Arc::new(Count::default()), Arc::new(Count::default()));
        answering(|| {
            wake_after_answers(Waker::from(first.clone()));
            answering(|| wake_after_answers(Waker::from(second.clone())));
            assert_eq!(first.0.load(Ordering::SeqCst), 0, "held past the inner end");
            assert_eq!(
                second.0.load(Ordering::SeqCst),
                0,
                "held past the inner end"
            );
        });
        assert_eq!(first.0.load(Ordering::SeqCst), 1, "made at the outer end");
        assert_eq!(second.0.load(Ordering::SeqCst), 1, "made at the outer end");
    }
}

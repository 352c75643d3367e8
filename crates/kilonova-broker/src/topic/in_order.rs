//! Futures resolved strictly in the order they were queued, polling only the
//! oldest: the ones behind it are looked at once it resolves.
//!
//! A topic answers its SENDs in the order sent, so only the oldest append
//! can be answered next. A group commit completes many appends at once: here
//! that wakes the topic once (for the oldest), and the rest are found ready
//! when drained. `FuturesOrdered` would poll — and allocate a task for —
//! every append, and be woken by each completion.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;

pub(crate) struct InOrder<F> {
    queue: VecDeque<F>,
}

impl<F> Default for InOrder<F> {
    fn default() -> Self {
        InOrder {
            queue: VecDeque::new(),
        }
    }
}

impl<F> InOrder<F> {
    pub(crate) fn push_back(&mut self, f: F) {
        self.queue.push_back(f);
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

impl<F: Future + Unpin> Stream for InOrder<F> {
    type Item = F::Output;

    /// The oldest future's output once it resolves; `None` when none is queued.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let Some(oldest) = self.queue.front_mut() else {
            return Poll::Ready(None);
        };
        let out = std::task::ready!(Pin::new(oldest).poll(cx));
        self.queue.pop_front();
        Poll::Ready(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{FutureExt, StreamExt};
    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn outputs_come_in_queue_order_whatever_order_they_resolve_in() {
        let mut q = InOrder::default();
        let (tx1, rx1) = oneshot::channel::<u32>();
        let (tx2, rx2) = oneshot::channel::<u32>();
        let (tx3, rx3) = oneshot::channel::<u32>();
        for rx in [rx1, rx2, rx3] {
            q.push_back(rx);
        }
        tx3.send(3).unwrap();
        tx2.send(2).unwrap();
        // The oldest is not ready: nothing behind it comes out first.
        assert!(q.next().now_or_never().is_none());
        tx1.send(1).unwrap();
        let got: Vec<u32> = (&mut q).map(Result::unwrap).take(3).collect().await;
        assert_eq!(got, [1, 2, 3]);
        assert!(q.is_empty());
        assert_eq!(q.next().await, None);
    }
}

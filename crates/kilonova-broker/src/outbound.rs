//! What a connection sends: frames queued by the connection itself and by the
//! topic tasks that serve its producers and consumers, written by one writer.
//!
//! The queue is bounded in bytes (`max_outbound_bytes_per_connection`) by
//! backpressure, never by waiting or dropping:
//! * while the queue is at or over the bound, the connection decodes no more
//!   of its client's requests (a client that does not read its answers is not
//!   read either) and resumes once the writer drained the queue to half the
//!   bound ([`Outbound::is_full`], [`Outbound::drained`]);
//! * a topic sends no more messages to a consumer whose connection's queue is
//!   full, and the writer wakes the topic when it drains below half
//!   ([`Outbound::has_room`]). Topics still never wait on a slow socket: they
//!   skip that consumer and serve the others.
//!
//! Everything else queued answers a request already read (a receipt, a
//! response) or is a rare notice (a close, an active-consumer change), so a
//! queue holds at most the bound plus what crossed it: the answer being
//! written and one message per topic dispatching to the connection at that
//! moment. Each frame counts its bytes plus [`FRAME_OVERHEAD_BYTES`], so a
//! flood of tiny answers (PONGs) is bounded by the memory it really takes.
//!
//! On a plain TCP connection, receipts made by the journal's calls may skip
//! the writer: see [`direct`].

mod direct;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, Notify};

use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::BaseCommand;

/// What a queued frame costs beyond its bytes: the queue slot, the `Out`
/// value and the allocation's header (measured: ~100 bytes per queued PONG).
pub(crate) const FRAME_OVERHEAD_BYTES: usize = 128;

/// One unit for the writer: parts written back to back.
pub(crate) enum Out {
    Frame(Bytes),
    /// A MESSAGE frame: its command, an optional broker-entry-metadata
    /// prefix, and the stored payload bytes (sent without copying).
    Message {
        head: MessageHead,
        prefix: Option<Bytes>,
        payload: Bytes,
    },
    /// A SEND_RECEIPT, encoded by the writer into its own buffer (a receipt
    /// per SEND allocates nothing); `queued_at` times its last stage.
    /// `message_index` is the entry's first message index (not on Pulsar's
    /// wire; the Kafka edge answers with it as the batch's base offset;
    /// [`UNKNOWN_INDEX`] for a duplicate or a non-persistent topic).
    Receipt {
        receipt: frame::SendReceipt,
        message_index: u64,
        queued_at: std::time::Instant,
    },
    /// Flush what is queued, then close the connection.
    Close,
}

/// A MESSAGE frame's command: its fields, encoded by the writer into its
/// own buffer (dispatch's usual case: a MESSAGE per entry allocates
/// nothing), or already encoded (a MESSAGE carrying an ack set).
pub(crate) enum MessageHead {
    Fields(frame::MessageFields),
    Encoded(Bytes),
}

impl MessageHead {
    /// The header's bytes at most.
    fn len(&self) -> usize {
        match self {
            MessageHead::Fields(_) => frame::MESSAGE_HEADER_MAX_BYTES,
            MessageHead::Encoded(b) => b.len(),
        }
    }
}

/// A receipt's message index when the entry's is not known.
pub(crate) const UNKNOWN_INDEX: u64 = u64::MAX;

/// A receipt's frame at its largest: the 8-byte frame header, the command's
/// type (2) and receipt key and length (2), and the receipt's 57 bytes
/// (four one-byte keys with 10-byte varints, and the message id's key and
/// length around two more).
const RECEIPT_FRAME_BYTES: usize = 8 + 2 + 2 + 57;

impl Out {
    /// What the unit counts against the connection's bound.
    pub(crate) fn cost(&self) -> usize {
        match self {
            Out::Frame(b) => b.len() + FRAME_OVERHEAD_BYTES,
            Out::Message {
                head,
                prefix,
                payload,
            } => {
                head.len()
                    + prefix.as_ref().map_or(0, Bytes::len)
                    + payload.len()
                    + FRAME_OVERHEAD_BYTES
            }
            Out::Receipt { .. } => RECEIPT_FRAME_BYTES + FRAME_OVERHEAD_BYTES,
            Out::Close => 0,
        }
    }
}

/// State shared by a connection's queue handles and its writer.
struct Shared {
    queued_bytes: AtomicUsize,
    /// At or over this, the queue is full.
    high_bytes: usize,
    /// A full queue has drained once it is at or under this.
    low_bytes: usize,
    /// Bytes the writer has handed to the socket so far (a sign of life of a
    /// client that reads).
    written_bytes: AtomicU64,
    /// The connection's reader, waiting for the queue to drain.
    reader: Notify,
    /// Topics that held a consumer back because the queue was full; each is
    /// notified (and forgotten) when it drains. At most one entry per topic.
    topics: Mutex<Vec<Arc<Notify>>>,
    /// Set while receipts may be written by the journal's thread
    /// ([`direct`]): every push then goes through `direct`'s lock.
    direct_on: AtomicBool,
    direct: Mutex<direct::Direct>,
}

impl Shared {
    fn direct(&self) -> std::sync::MutexGuard<'_, direct::Direct> {
        // Its state stays consistent whatever a panicking holder did.
        self.direct.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Notify>>> {
        // A list of wake-ups stays usable whatever a panicking holder did.
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A handle to a connection's outbound queue. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbound {
    tx: mpsc::UnboundedSender<Out>,
    shared: Arc<Shared>,
}

/// The writer's end of the queue.
pub(crate) struct OutboundReceiver {
    rx: mpsc::UnboundedReceiver<Out>,
    shared: Arc<Shared>,
}

impl Outbound {
    /// A queue that is full at `max_bytes` (and has drained at half of it).
    pub(crate) fn new(max_bytes: usize) -> (Self, OutboundReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queued_bytes: AtomicUsize::new(0),
            high_bytes: max_bytes,
            low_bytes: max_bytes / 2,
            written_bytes: AtomicU64::new(0),
            reader: Notify::new(),
            topics: Mutex::new(Vec::new()),
            direct_on: AtomicBool::new(false),
            direct: Mutex::new(direct::Direct::default()),
        });
        (
            Outbound {
                tx,
                shared: shared.clone(),
            },
            OutboundReceiver { rx, shared },
        )
    }

    /// Bytes queued and not yet written (frame overheads included).
    pub(crate) fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Relaxed)
    }

    /// Bytes the writer has handed to the socket since the connection opened.
    pub(crate) fn written_bytes(&self) -> u64 {
        self.shared.written_bytes.load(Ordering::Relaxed)
    }

    /// Bytes that may still be queued before the queue is full.
    pub(crate) fn room_bytes(&self) -> usize {
        self.shared.high_bytes.saturating_sub(self.queued_bytes())
    }

    /// Whether the queue is at or over its bound.
    pub(crate) fn is_full(&self) -> bool {
        self.queued_bytes() >= self.shared.high_bytes
    }

    /// Whether more may be queued for a consumer now. If not, `wake` is
    /// notified once the queue has drained to half its bound.
    pub(crate) fn has_room(&self, wake: &Arc<Notify>) -> bool {
        if !self.is_full() {
            return true;
        }
        {
            let mut topics = self.shared.topics();
            if !topics.iter().any(|t| Arc::ptr_eq(t, wake)) {
                topics.push(wake.clone());
            }
        }
        // The writer may have drained it between the look and the
        // registration (then `wake` is notified once for nothing: harmless).
        !self.is_full()
    }

    /// Returns once the queue is at or under half its bound.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.shared.reader.notified();
            if self.queued_bytes() <= self.shared.low_bytes {
                return;
            }
            notified.await;
        }
    }

    fn push(&self, out: Out) {
        if self.shared.direct_on.load(Ordering::Acquire) {
            // Behind the receipts the journal's calls made before it, and
            // never while one of their writes is under way.
            let mut d = self.shared.direct();
            d.queue_pending(self);
            self.enqueue(out);
            return;
        }
        self.enqueue(out);
    }

    fn enqueue(&self, out: Out) {
        self.shared
            .queued_bytes
            .fetch_add(out.cost(), Ordering::Relaxed);
        // A closed receiver means the connection is gone; its state is being torn down.
        let _ = self.tx.send(out);
    }

    pub(crate) fn command(&self, command: BaseCommand) {
        let mut b = BytesMut::new();
        frame::encode_command(&command, &mut b);
        self.push(Out::Frame(b.freeze()));
    }

    /// Queues a SEND_RECEIPT (encoded by the writer), queued at `now`, for
    /// an entry whose first message index is `message_index`.
    pub(crate) fn receipt(
        &self,
        receipt: frame::SendReceipt,
        message_index: u64,
        now: std::time::Instant,
    ) {
        self.push(Out::Receipt {
            receipt,
            message_index,
            queued_at: now,
        });
    }

    pub(crate) fn message(&self, head: MessageHead, prefix: Option<Bytes>, payload: Bytes) {
        self.push(Out::Message {
            head,
            prefix,
            payload,
        });
    }

    pub(crate) fn close(&self) {
        self.stop_direct();
        let _ = self.tx.send(Out::Close);
    }
}

impl OutboundReceiver {
    pub(crate) async fn recv(&mut self) -> Option<Out> {
        self.rx.recv().await
    }

    pub(crate) fn try_recv(&mut self) -> Option<Out> {
        self.rx.try_recv().ok()
    }

    /// The writer stopped: nothing may be written past it any more.
    pub(crate) fn writer_stopped(&self) {
        direct::stop(&self.shared);
    }

    /// The writer wrote units costing `cost` (`bytes` of them on the wire):
    /// wakes the reader and the topics waiting if the queue drained to half
    /// its bound.
    pub(crate) fn written(&self, cost: usize, bytes: usize) {
        let s = &self.shared;
        s.written_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let before = s.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
        let after = before.saturating_sub(cost);
        if before > s.low_bytes && after <= s.low_bytes {
            s.reader.notify_one();
            let waiting = std::mem::take(&mut *s.topics());
            for t in waiting {
                t.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn pong() -> BaseCommand {
        BaseCommand {
            r#type: kilonova_pulsar_protocol::proto::base_command::Type::Pong as i32,
            pong: Some(Box::default()),
            ..Default::default()
        }
    }

    #[test]
    fn a_receipt_costs_its_largest_frame() {
        let mut b = BytesMut::new();
        let max = frame::SendReceipt {
            producer_id: u64::MAX,
            sequence_id: u64::MAX,
            highest_sequence_id: u64::MAX,
            ledger_id: u64::MAX,
            entry_id: u64::MAX,
        };
        frame::encode_send_receipt(&max, &mut b);
        assert_eq!(b.len(), RECEIPT_FRAME_BYTES);
    }

    #[test]
    fn tiny_frames_count_their_overhead() {
        let (out, _rx) = Outbound::new(1 << 20);
        out.command(pong());
        assert!(out.queued_bytes() > FRAME_OVERHEAD_BYTES);
        assert!(out.queued_bytes() < FRAME_OVERHEAD_BYTES + 32);
    }

    #[test]
    fn a_full_queue_wakes_reader_and_topics_when_drained_to_half() {
        let (out, mut rx) = Outbound::new(10 * FRAME_OVERHEAD_BYTES);
        let topic = Arc::new(Notify::new());
        assert!(out.has_room(&topic));
        let mut costs = Vec::new();
        while !out.is_full() {
            out.command(pong());
        }
        assert!(!out.has_room(&topic), "a full queue has no room");
        assert!(!out.has_room(&topic), "asking twice registers once");
        assert_eq!(out.shared.topics().len(), 1);
        while let Some(o) = rx.try_recv() {
            costs.push(o.cost());
        }
        let mut drained = std::pin::pin!(out.drained());
        assert!(
            drained.as_mut().now_or_never().is_none(),
            "nothing written yet"
        );
        // Written one by one: the wake-ups come when half is reached, not before.
        let mut woken_at = None;
        for (i, c) in costs.iter().enumerate() {
            rx.written(*c, c - FRAME_OVERHEAD_BYTES);
            if topic.notified().now_or_never().is_some() {
                assert!(woken_at.is_none(), "the topic is woken once");
                woken_at = Some(i);
                assert!(out.queued_bytes() <= 5 * FRAME_OVERHEAD_BYTES);
            }
        }
        assert!(woken_at.is_some(), "the topic was never woken");
        assert!(drained.now_or_never().is_some());
        assert!(out.has_room(&topic));
        assert!(out.written_bytes() > 0);
    }
}

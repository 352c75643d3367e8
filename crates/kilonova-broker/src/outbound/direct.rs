//! Receipts written to the socket by the journal's thread.
//!
//! A plain SEND is answered by the call the journal makes once its entry is
//! durable (ADR 0025). Queued for the connection's writer, a group commit's
//! receipts cost a wake-up of that writer's task on a runtime worker — one
//! per connection per group, and a sleeping worker woken from the journal's
//! thread for it. On a plain TCP connection the calls collect their receipts
//! here instead, and at the end of the journal's run of answers
//! ([`kilonova_storage::wake_after_answers`]) the journal's thread writes
//! them to the socket itself (the writer's own, shared), in one non-blocking
//! write, when nothing queued for the writer is ahead of them. Whatever the
//! socket does not take goes to the writer as before.
//!
//! Order: every push onto the connection's queue takes this lock and first
//! queues the receipts collected before it; the direct write happens under
//! the same lock and only while the queue is empty — nothing queued and
//! nothing in the writer's hands, since the writer counts what it took off
//! only once written —, so the writer and the journal's thread never write
//! at once and nothing is overtaken.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::Instant;

use bytes::BytesMut;
use kilonova_pulsar_protocol::frame;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use super::{Out, Outbound, Shared};
use crate::clock::SharedClock;
use crate::publish_stages::PublishStages;

/// A buffer kept between runs is dropped when it grew past this.
const KEEP_BUFFER_BYTES: usize = 16 << 10;

/// The connection's socket for the journal's thread, and the receipts
/// collected during the current run of answers.
#[derive(Default)]
pub(super) struct Direct {
    /// The connection's socket (shared with its writer); `None` once the
    /// connection closes.
    socket: Option<Arc<OwnedWriteHalf>>,
    timing: Option<(Arc<PublishStages>, SharedClock)>,
    pending: Vec<Pending>,
    /// A write is asked for at the end of the current run.
    flush_asked: bool,
    buf: BytesMut,
}

struct Pending {
    receipt: frame::SendReceipt,
    message_index: u64,
    queued_at: Instant,
}

impl Direct {
    /// Hands the receipts collected so far to the writer (under the lock,
    /// before anything queued after them).
    pub(super) fn queue_pending(&mut self, out: &Outbound) {
        for p in self.pending.drain(..) {
            out.enqueue(Out::Receipt {
                receipt: p.receipt,
                message_index: p.message_index,
                queued_at: p.queued_at,
            });
        }
    }

    fn stop(&mut self, shared: &Shared) {
        shared.direct_on.store(false, Ordering::Release);
        self.socket = None;
        self.pending = Vec::new();
    }
}

/// Nothing more may be written past the connection's writer.
pub(super) fn stop(shared: &Shared) {
    shared.direct().stop(shared);
}

/// Writes the connection's collected receipts once the journal's run of
/// answers ends.
struct Flush(Outbound);

impl Wake for Flush {
    fn wake(self: Arc<Self>) {
        self.0.flush_direct();
    }
}

impl Outbound {
    /// Lets the journal's thread write this connection's receipts to
    /// `socket`, which its writer writes to too.
    pub(crate) fn write_receipts_directly(
        &self,
        socket: Arc<OwnedWriteHalf>,
        stages: Arc<PublishStages>,
        clock: SharedClock,
    ) {
        let mut d = self.shared.direct();
        d.socket = Some(socket);
        d.timing = Some((stages, clock));
        self.shared.direct_on.store(true, Ordering::Release);
    }

    /// Queues a SEND_RECEIPT made by one of the journal's calls: collected
    /// and written by the journal's thread at the end of its run where the
    /// connection allows it, else queued for the writer like
    /// [`Outbound::receipt`].
    pub(crate) fn receipt_from_journal(
        &self,
        receipt: frame::SendReceipt,
        message_index: u64,
        now: Instant,
    ) {
        if !self.shared.direct_on.load(Ordering::Acquire) {
            return self.receipt(receipt, message_index, now);
        }
        let mut d = self.shared.direct();
        if d.socket.is_none() || (d.pending.is_empty() && self.queued_bytes() > 0) {
            // Closed, or the writer has something to send first: it sends
            // this with it.
            self.enqueue(Out::Receipt {
                receipt,
                message_index,
                queued_at: now,
            });
            return;
        }
        d.pending.push(Pending {
            receipt,
            message_index,
            queued_at: now,
        });
        if d.flush_asked {
            return;
        }
        d.flush_asked = true;
        drop(d);
        // Outside a run of answers this wakes (writes) at once.
        kilonova_storage::wake_after_answers(Waker::from(Arc::new(Flush(self.clone()))));
    }

    /// Closes the journal's way to the socket, handing what it collected to
    /// the writer first.
    pub(super) fn stop_direct(&self) {
        let mut d = self.shared.direct();
        d.queue_pending(self);
        d.stop(&self.shared);
    }

    fn flush_direct(&self) {
        let mut guard = self.shared.direct();
        let d = &mut *guard;
        d.flush_asked = false;
        if d.pending.is_empty() {
            return;
        }
        let Some(socket) = d.socket.as_ref().filter(|_| self.queued_bytes() == 0) else {
            return d.queue_pending(self);
        };
        d.buf.clear();
        for p in &d.pending {
            frame::encode_send_receipt(&p.receipt, &mut d.buf);
        }
        let stream: &TcpStream = (**socket).as_ref();
        let written = match stream.try_write(&d.buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(_) => {
                // The writer meets the same error and ends the connection.
                d.queue_pending(self);
                return d.stop(&self.shared);
            }
        };
        if written == 0 {
            return d.queue_pending(self);
        }
        self.shared
            .written_bytes
            .fetch_add(written as u64, Ordering::Relaxed);
        if written < d.buf.len() {
            // The rest of the last frames, byte for byte, before anything else.
            let rest = d.buf.split_off(written).freeze();
            self.enqueue(Out::Frame(rest));
        }
        if let Some((stages, clock)) = &d.timing {
            let now = clock.now();
            for p in &d.pending {
                stages.observe_sent_by_journal(now.saturating_duration_since(p.queued_at));
            }
        }
        d.pending.clear();
        if d.buf.capacity() > KEEP_BUFFER_BYTES {
            d.buf = BytesMut::new();
            d.pending = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::Duration;

    use bytes::BufMut;
    use kilonova_pulsar_protocol::proto::base_command::Type;
    use kilonova_pulsar_protocol::proto::BaseCommand;
    use kilonova_storage::answering;

    use super::*;
    use crate::outbound::OutboundReceiver;

    /// The broker's end of a loopback connection (its write half, ready to
    /// be written) and the client's.
    async fn socket_pair() -> (Arc<OwnedWriteHalf>, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (broker, _) = listener.accept().unwrap();
        broker.set_nonblocking(true).unwrap();
        let (_, write) = TcpStream::from_std(broker).unwrap().into_split();
        write.writable().await.unwrap();
        (Arc::new(write), client)
    }

    /// A connection's queue whose receipts the "journal" may write to the
    /// broker's end of a loopback connection; the client's end.
    async fn connection() -> (
        Outbound,
        OutboundReceiver,
        Arc<PublishStages>,
        std::net::TcpStream,
    ) {
        let (broker, client) = socket_pair().await;
        let (out, rx) = Outbound::new(1 << 20);
        let stages = Arc::new(PublishStages::default());
        out.write_receipts_directly(broker, stages.clone(), crate::clock::system());
        (out, rx, stages, client)
    }

    fn receipt(out: &Outbound, sequence_id: u64) {
        let r = frame::SendReceipt {
            producer_id: 1,
            sequence_id,
            highest_sequence_id: sequence_id,
            ledger_id: 7,
            entry_id: sequence_id,
        };
        out.receipt_from_journal(r, 0, Instant::now());
    }

    fn pong(out: &Outbound) {
        out.command(BaseCommand {
            r#type: Type::Pong as i32,
            pong: Some(Box::default()),
            ..Default::default()
        });
    }

    /// What the writer would write for `out`.
    fn writer_bytes(out: Out, dst: &mut BytesMut) {
        match out {
            Out::Frame(b) => dst.put(b),
            Out::Receipt { receipt, .. } => frame::encode_send_receipt(&receipt, dst),
            Out::Message { .. } | Out::Close => panic!("unexpected unit"),
        }
    }

    /// Sequence ids of receipts (0 for a PONG) in `bytes`, which must hold
    /// whole frames only.
    fn frames(mut bytes: BytesMut) -> Vec<u64> {
        let mut seen = Vec::new();
        while let Some(f) = frame::decode(&mut bytes, 1 << 20).unwrap() {
            seen.push(f.command.send_receipt.map_or(0, |r| r.sequence_id));
        }
        assert!(
            bytes.is_empty(),
            "a frame was cut: {} bytes left",
            bytes.len()
        );
        seen
    }

    /// Reads until `expect` bytes came or the connection ended; a read
    /// that waits over 200 ms fails the test.
    fn read_now(client: &mut std::net::TcpStream, expect: usize) -> BytesMut {
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut got = BytesMut::new();
        let mut buf = [0u8; 65536];
        while got.len() < expect {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.put_slice(&buf[..n]),
                Err(e) => panic!("read {} of {expect} bytes: {e}", got.len()),
            }
        }
        got
    }

    fn socket_is_empty(client: &std::net::TcpStream) -> bool {
        client.set_nonblocking(true).unwrap();
        let mut one = [0u8; 1];
        let empty =
            matches!(client.peek(&mut one), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        client.set_nonblocking(false).unwrap();
        empty
    }

    #[tokio::test]
    async fn a_runs_receipts_are_written_at_its_end_by_the_journal_not_the_writer() {
        let (out, mut rx, stages, mut client) = connection().await;
        answering(|| {
            for seq in 1..=5 {
                receipt(&out, seq);
            }
            assert!(socket_is_empty(&client), "written before the run ended");
        });
        let written = usize::try_from(out.written_bytes()).unwrap();
        assert!(written > 0, "nothing written by the journal");
        assert_eq!(frames(read_now(&mut client, written)), vec![1, 2, 3, 4, 5]);
        assert!(rx.try_recv().is_none(), "the writer was handed a receipt");
        assert_eq!(out.queued_bytes(), 0);
        assert_eq!(stages.sent_by_journal(), 5);
    }

    #[tokio::test]
    async fn a_frame_queued_during_a_run_goes_after_the_receipts_made_before_it() {
        let (out, mut rx, _, client) = connection().await;
        answering(|| {
            receipt(&out, 1);
            receipt(&out, 2);
            pong(&out);
            receipt(&out, 3);
        });
        // The writer has the PONG to send: the receipts go its way, in order.
        let mut bytes = BytesMut::new();
        while let Some(o) = rx.try_recv() {
            writer_bytes(o, &mut bytes);
        }
        assert_eq!(frames(bytes), vec![1, 2, 0, 3]);
        assert!(socket_is_empty(&client));
    }

    #[tokio::test]
    async fn with_something_queued_for_the_writer_a_receipt_waits_behind_it() {
        let (out, mut rx, _, client) = connection().await;
        pong(&out);
        answering(|| receipt(&out, 1));
        let mut bytes = BytesMut::new();
        while let Some(o) = rx.try_recv() {
            writer_bytes(o, &mut bytes);
        }
        assert_eq!(frames(bytes), vec![0, 1]);
        assert!(socket_is_empty(&client));
    }

    #[tokio::test]
    async fn a_socket_that_takes_no_more_leaves_the_rest_to_the_writer_whole_frames_in_order() {
        let (out, mut rx, _, mut client) = connection().await;
        // The client reads nothing until the socket's buffers are full.
        let mut next = 1;
        while out.queued_bytes() == 0 {
            assert!(next < 10_000_000, "the socket never filled");
            answering(|| {
                for _ in 0..100 {
                    receipt(&out, next);
                    next += 1;
                }
            });
        }
        // More, all behind what the writer holds.
        answering(|| {
            for _ in 0..10 {
                receipt(&out, next);
                next += 1;
            }
        });
        let written = usize::try_from(out.written_bytes()).unwrap();
        let mut bytes = read_now(&mut client, written);
        assert!(
            socket_is_empty(&client),
            "written after the writer took over"
        );
        while let Some(o) = rx.try_recv() {
            writer_bytes(o, &mut bytes);
        }
        let seen = frames(bytes);
        assert_eq!(seen, (1..next).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_closed_connection_writes_nothing_more_and_lets_its_socket_go() {
        let (broker, mut client) = socket_pair().await;
        let (out, mut rx) = Outbound::new(1 << 20);
        let stages = Arc::new(PublishStages::default());
        out.write_receipts_directly(broker.clone(), stages, crate::clock::system());
        out.close();
        answering(|| receipt(&out, 1));
        assert!(matches!(rx.try_recv(), Some(Out::Close)));
        assert!(matches!(rx.try_recv(), Some(Out::Receipt { .. })));
        // With the writer's hold gone too the client sees the end: the
        // queue let go of the socket when it closed.
        drop(broker);
        assert_eq!(read_now(&mut client, 1).len(), 0);
    }
}

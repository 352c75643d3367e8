//! The connection's writer task: it sends what the connection and the topics
//! queued, many frames per vectored write, and tells the queue what it wrote
//! (see [`crate::outbound`]).

use std::collections::VecDeque;
use std::io::IoSlice;

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use kilonova_pulsar_protocol::frame;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::clock::SharedClock;
use crate::outbound::{Out, OutboundReceiver};
use crate::publish_stages::PublishStages;

/// The writer sends up to this much per vectored write.
const WRITE_BATCH_BYTES: usize = 1 << 20;
const MAX_IO_SLICES: usize = 64;

/// Writes what is queued for the connection, many frames per vectored write.
/// Receipts are encoded into one buffer per write and timed once written.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: OutboundReceiver,
    stages: Arc<PublishStages>,
    clock: SharedClock,
) {
    let mut parts: VecDeque<Bytes> = VecDeque::new();
    let mut receipts = BytesMut::new();
    let mut receipts_queued: Vec<Instant> = Vec::new();
    'outer: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let (mut cost, mut bytes) = (0usize, 0usize);
        let mut close = false;
        while let Some(out) = next.take() {
            cost += out.cost();
            if !matches!(out, Out::Receipt { .. }) && !receipts.is_empty() {
                // Consecutive receipts go as one part, in queue order.
                parts.push_back(receipts.split().freeze());
            }
            match out {
                Out::Frame(b) => {
                    bytes += b.len();
                    parts.push_back(b);
                }
                Out::Message {
                    header,
                    prefix,
                    payload,
                } => {
                    bytes += header.len() + prefix.as_ref().map_or(0, Bytes::len) + payload.len();
                    parts.push_back(header);
                    parts.extend(prefix);
                    parts.push_back(payload);
                }
                Out::Receipt {
                    receipt, queued_at, ..
                } => {
                    let before = receipts.len();
                    frame::encode_send_receipt(&receipt, &mut receipts);
                    bytes += receipts.len() - before;
                    receipts_queued.push(queued_at);
                }
                Out::Close => {
                    close = true;
                    break;
                }
            }
            if bytes < WRITE_BATCH_BYTES {
                next = rx.try_recv();
            }
        }
        if !receipts.is_empty() {
            parts.push_back(receipts.split().freeze());
        }
        while !parts.is_empty() {
            let slices: Vec<IoSlice<'_>> = parts
                .iter()
                .take(MAX_IO_SLICES)
                .map(|b| IoSlice::new(b))
                .collect();
            let mut n = match w.write_vectored(&slices).await {
                Ok(0) | Err(_) => break 'outer,
                Ok(n) => n,
            };
            while n > 0 {
                let Some(front) = parts.front_mut() else {
                    break;
                };
                if n >= front.len() {
                    n -= front.len();
                    parts.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        rx.written(cost, bytes);
        if !receipts_queued.is_empty() {
            let now = clock.now();
            for queued_at in receipts_queued.drain(..) {
                stages.observe(
                    crate::publish_stages::Stage::Sent,
                    now.saturating_duration_since(queued_at),
                );
            }
        }
        if close {
            break;
        }
    }
    rx.writer_stopped();
    let _ = w.shutdown().await;
}

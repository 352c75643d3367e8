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
use crate::outbound::{MessageHead, Out, OutboundReceiver};
use crate::publish_stages::PublishStages;

/// The writer sends up to this much per vectored write.
const WRITE_BATCH_BYTES: usize = 1 << 20;
const MAX_IO_SLICES: usize = 64;

/// Writes what is queued for the connection, many frames per vectored write.
/// Receipts and MESSAGE headers are encoded into one buffer per write;
/// receipts are timed once written.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: OutboundReceiver,
    stages: Arc<PublishStages>,
    clock: SharedClock,
) {
    let mut parts: VecDeque<Bytes> = VecDeque::new();
    // Receipts and MESSAGE headers, encoded by the writer.
    let mut encoded = BytesMut::new();
    let mut receipts_queued: Vec<Instant> = Vec::new();
    'outer: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let (mut cost, mut bytes) = (0usize, 0usize);
        let mut close = false;
        while let Some(out) = next.take() {
            cost += out.cost();
            let encodes = matches!(
                out,
                Out::Receipt { .. }
                    | Out::Message {
                        head: MessageHead::Fields(_),
                        ..
                    }
            );
            if !encodes && !encoded.is_empty() {
                // What the writer encodes goes in one part until the next
                // unit that brings its own bytes, in queue order.
                parts.push_back(encoded.split().freeze());
            }
            match out {
                Out::Frame(b) => {
                    bytes += b.len();
                    parts.push_back(b);
                }
                Out::Message {
                    head,
                    prefix,
                    payload,
                } => {
                    let raw_len = prefix.as_ref().map_or(0, Bytes::len) + payload.len();
                    match head {
                        MessageHead::Fields(m) => {
                            // After the receipts before it, in the same part.
                            let before = encoded.len();
                            frame::encode_message_header(&m, raw_len, &mut encoded);
                            bytes += encoded.len() - before;
                            parts.push_back(encoded.split().freeze());
                        }
                        MessageHead::Encoded(header) => {
                            bytes += header.len();
                            parts.push_back(header);
                        }
                    }
                    bytes += raw_len;
                    parts.extend(prefix);
                    parts.push_back(payload);
                }
                Out::Receipt {
                    receipt, queued_at, ..
                } => {
                    let before = encoded.len();
                    frame::encode_send_receipt(&receipt, &mut encoded);
                    bytes += encoded.len() - before;
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
        if !encoded.is_empty() {
            parts.push_back(encoded.split().freeze());
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use bytes::BytesMut;
    use kilonova_pulsar_protocol::frame;
    use kilonova_pulsar_protocol::proto::{
        base_command::Type, BaseCommand, BrokerEntryMetadata, MessageMetadata,
    };
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::outbound::Outbound;

    fn payload(text: &[u8]) -> Bytes {
        let meta = MessageMetadata {
            producer_name: "p".into(),
            sequence_id: 1,
            publish_time: 1,
            ..Default::default()
        };
        frame::build_payload(&meta, text)
    }

    fn fields(entry_id: u64, consumer_epoch: Option<u64>) -> MessageHead {
        MessageHead::Fields(frame::MessageFields {
            consumer_id: 3,
            ledger_id: 9,
            entry_id,
            redelivery_count: 0,
            consumer_epoch,
        })
    }

    /// MESSAGE headers the writer encodes share its buffer with receipts;
    /// every frame still reaches the socket whole and in queue order: a
    /// receipt, a MESSAGE by its fields, a command, a MESSAGE with a broker
    /// entry metadata prefix, a MESSAGE encoded before it was queued, and a
    /// receipt after them. The bytes counted as written are the bytes sent.
    #[tokio::test]
    async fn messages_receipts_and_frames_go_out_whole_and_in_queue_order() {
        let (out, rx) = Outbound::new(1 << 20);
        let receipt = |sequence_id| frame::SendReceipt {
            producer_id: 1,
            sequence_id,
            highest_sequence_id: sequence_id,
            ledger_id: 9,
            entry_id: sequence_id,
        };
        let now = crate::clock::system().now();
        out.receipt(receipt(1), 0, now);
        out.message(fields(10, None), None, payload(b"ten"));
        out.command(BaseCommand {
            r#type: Type::Pong as i32,
            pong: Some(Box::default()),
            ..Default::default()
        });
        let prefix = frame::broker_entry_metadata_prefix(&BrokerEntryMetadata {
            broker_timestamp: Some(5),
            index: Some(41),
        });
        out.message(fields(11, Some(2)), Some(prefix), payload(b"eleven"));
        let mut header = BytesMut::new();
        let encoded_payload = payload(b"twelve");
        frame::encode_message_header(
            &frame::MessageFields {
                consumer_id: 3,
                ledger_id: 9,
                entry_id: 12,
                redelivery_count: 4,
                consumer_epoch: None,
            },
            encoded_payload.len(),
            &mut header,
        );
        out.message(MessageHead::Encoded(header.freeze()), None, encoded_payload);
        out.receipt(receipt(2), 0, now);
        out.close();

        let (w, mut r) = tokio::io::duplex(1 << 16);
        let stages = Arc::new(PublishStages::default());
        write_loop(w, rx, stages, crate::clock::system()).await;
        let mut wire = Vec::new();
        r.read_to_end(&mut wire).await.unwrap();
        // What the queue was told it wrote is what reached the socket.
        assert_eq!(out.written_bytes(), wire.len() as u64);
        let mut wire = BytesMut::from(&wire[..]);
        let mut seen = Vec::new();
        while let Some(f) = frame::decode(&mut wire, 1 << 20).unwrap() {
            let c = f.command;
            seen.push(match Type::try_from(c.r#type).unwrap() {
                Type::SendReceipt => format!("receipt {}", c.send_receipt.unwrap().sequence_id),
                Type::Pong => "pong".to_owned(),
                Type::Message => {
                    let m = c.message.unwrap();
                    let p = f.payload.expect("a MESSAGE carries its payload");
                    assert!(p.checksum_ok);
                    format!(
                        "message {} {} redelivered {} epoch {:?} index {:?}",
                        m.message_id.entry_id,
                        String::from_utf8_lossy(&p.data),
                        m.redelivery_count.unwrap_or(0),
                        m.consumer_epoch,
                        p.broker_entry_metadata.and_then(|b| b.index),
                    )
                }
                other => panic!("unexpected {other:?}"),
            });
        }
        assert!(wire.is_empty(), "a frame was cut");
        assert_eq!(
            seen,
            [
                "receipt 1",
                "message 10 ten redelivered 0 epoch None index None",
                "pong",
                "message 11 eleven redelivered 0 epoch Some(2) index Some(41)",
                "message 12 twelve redelivered 4 epoch None index None",
                "receipt 2",
            ]
        );
    }
}

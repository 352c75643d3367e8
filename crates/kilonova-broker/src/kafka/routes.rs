//! Where the topics' answers to a Kafka connection's producers go: a task
//! drains the connection's outbound queue and hands each answer to the
//! request waiting for it, so produces can be in flight while the
//! connection reads on (answers still go out in request order).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use bytes::BytesMut;
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::base_command::Type;
use tokio::sync::oneshot;

use kilonova_kafka::kafka_protocol::error::ResponseError;

use super::errors;
use crate::outbound::{Out, OutboundReceiver};

/// A producer opened (or why not, as a Kafka error code).
pub(super) type Opened = oneshot::Receiver<Result<(), i16>>;
/// An entry stored, with its first message index (or why not).
pub(super) type Stored = oneshot::Receiver<Result<u64, i16>>;

#[derive(Default)]
pub(super) struct Routes(Mutex<Waiting>);

#[derive(Default)]
struct Waiting {
    opened: HashMap<u64, oneshot::Sender<Result<(), i16>>>,
    /// By (producer id, sequence id).
    stored: HashMap<(u64, u64), oneshot::Sender<Result<u64, i16>>>,
    /// Producers a topic closed (unloaded, deleted): reopened on next use.
    closed: Vec<u64>,
}

impl Routes {
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        // Entries are whole values: a panicked holder left nothing half-done.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer to the producer opening `request_id` (ask before sending it).
    pub(super) fn expect_open(&self, request_id: u64) -> Opened {
        let (tx, rx) = oneshot::channel();
        self.waiting().opened.insert(request_id, tx);
        rx
    }

    /// The receipt of producer `producer_id`'s entry `sequence_id` (ask
    /// before sending it).
    pub(super) fn expect_stored(&self, producer_id: u64, sequence_id: u64) -> Stored {
        let (tx, rx) = oneshot::channel();
        self.waiting().stored.insert((producer_id, sequence_id), tx);
        rx
    }

    /// Forgets an entry's receipt (it was never sent).
    pub(super) fn forget_stored(&self, producer_id: u64, sequence_id: u64) {
        self.waiting().stored.remove(&(producer_id, sequence_id));
    }

    /// Producers closed by their topics since the last call.
    pub(super) fn take_closed(&self) -> Vec<u64> {
        std::mem::take(&mut self.waiting().closed)
    }

    fn route(&self, out: Out) {
        match out {
            Out::Receipt {
                receipt,
                message_index,
                ..
            } => {
                // No one waits for an acks=0 produce's receipt: dropped.
                let key = (receipt.producer_id, receipt.sequence_id);
                if let Some(tx) = self.waiting().stored.remove(&key) {
                    let _ = tx.send(Ok(message_index));
                }
            }
            Out::Frame(bytes) => {
                let mut b = BytesMut::from(&bytes[..]);
                if let Ok(Some(f)) = frame::decode(&mut b, bytes.len()) {
                    self.route_command(f.command);
                }
            }
            Out::Message { .. } | Out::Close => {}
        }
    }

    fn route_command(&self, c: kilonova_pulsar_protocol::proto::BaseCommand) {
        let mut w = self.waiting();
        match Type::try_from(c.r#type) {
            Ok(Type::ProducerSuccess) => {
                if let Some(tx) = c
                    .producer_success
                    .and_then(|s| w.opened.remove(&s.request_id))
                {
                    let _ = tx.send(Ok(()));
                }
            }
            Ok(Type::Error) => {
                if let Some(e) = c.error {
                    if let Some(tx) = w.opened.remove(&e.request_id) {
                        let _ = tx.send(Err(errors::from_server_error(e.error)));
                    }
                }
            }
            Ok(Type::SendError) => {
                if let Some(e) = c.send_error {
                    if let Some(tx) = w.stored.remove(&(e.producer_id, e.sequence_id)) {
                        let code = if e.message.starts_with(crate::dedup::KAFKA_OUT_OF_ORDER) {
                            ResponseError::OutOfOrderSequenceNumber.code()
                        } else {
                            errors::from_server_error(e.error)
                        };
                        let _ = tx.send(Err(code));
                    }
                }
            }
            Ok(Type::CloseProducer) => {
                if let Some(cp) = c.close_producer {
                    w.closed.push(cp.producer_id);
                }
            }
            _ => {}
        }
    }
}

/// Hands everything the topics queue for the connection to its waiter,
/// until the queue closes.
pub(super) async fn pump(mut rx: OutboundReceiver, routes: std::sync::Arc<Routes>) {
    while let Some(out) = rx.recv().await {
        rx.written(out.cost(), 0);
        routes.route(out);
    }
}

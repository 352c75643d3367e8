//! What a connection sends: frames queued by the connection itself and by the
//! topic tasks that serve its producers and consumers, written by one writer.
//!
//! The queue is unbounded on purpose: topics must never wait on a slow socket
//! (one slow consumer would stall every other consumer of the topic). What bounds
//! it is the protocol: MESSAGE frames only against the consumer's FLOW permits,
//! receipts only for SENDs the connection read, responses only for requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::BaseCommand;

/// One unit for the writer: parts written back to back.
pub(crate) enum Out {
    Frame(Bytes),
    /// A payload frame: the encoded header, an optional broker-entry-metadata prefix,
    /// and the stored payload bytes (sent without copying).
    Message {
        header: Bytes,
        prefix: Option<Bytes>,
        payload: Bytes,
    },
    /// Flush what is queued, then close the connection.
    Close,
}

impl Out {
    pub(crate) fn len(&self) -> usize {
        match self {
            Out::Frame(b) => b.len(),
            Out::Message {
                header,
                prefix,
                payload,
            } => header.len() + prefix.as_ref().map_or(0, Bytes::len) + payload.len(),
            Out::Close => 0,
        }
    }
}

/// A handle to a connection's outbound queue. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbound {
    tx: mpsc::UnboundedSender<Out>,
    queued_bytes: Arc<AtomicUsize>,
}

impl Outbound {
    pub(crate) fn new() -> (Self, mpsc::UnboundedReceiver<Out>, Arc<AtomicUsize>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        (
            Outbound {
                tx,
                queued_bytes: queued_bytes.clone(),
            },
            rx,
            queued_bytes,
        )
    }

    fn push(&self, out: Out) {
        self.queued_bytes.fetch_add(out.len(), Ordering::Relaxed);
        // A closed receiver means the connection is gone; its state is being torn down.
        let _ = self.tx.send(out);
    }

    pub(crate) fn command(&self, command: BaseCommand) {
        let mut b = BytesMut::new();
        frame::encode_command(&command, &mut b);
        self.push(Out::Frame(b.freeze()));
    }

    pub(crate) fn message(&self, command: &BaseCommand, prefix: Option<Bytes>, payload: Bytes) {
        let mut b = BytesMut::new();
        let len = prefix.as_ref().map_or(0, Bytes::len) + payload.len();
        frame::encode_header(command, len, &mut b);
        self.push(Out::Message {
            header: b.freeze(),
            prefix,
            payload,
        });
    }

    pub(crate) fn close(&self) {
        let _ = self.tx.send(Out::Close);
    }
}

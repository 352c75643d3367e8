//! Terminating a topic (Pulsar's `topics terminate`): it takes no more
//! messages, for good, and consumers are told when they have all of it.
//!
//! The log records the termination (it survives restarts); the topic then
//! closes its producers (their clients come back and are refused with
//! `TopicTerminatedError`, which fails what they still had to send), refuses
//! new ones and any SEND that still arrives, and sends REACHED_END_OF_TOPIC
//! to the consumers of every subscription with nothing left to acknowledge —
//! at once, or when the last acknowledgement or a new consumer comes — if
//! their client handles it (see `connection::handshake`).

use super::admin::LastMessageId;
use super::Topic;
use crate::commands;
use crate::error::BrokerError;

impl Topic {
    /// Terminates the topic once the appends in flight are answered (they
    /// land before the end); answers the last message's id.
    pub(super) async fn terminate(&mut self) -> Result<LastMessageId, BrokerError> {
        if self.log.is_none() {
            return Err(BrokerError::NotAllowed(
                "termination of a non-persistent topic is not allowed".into(),
            ));
        }
        // No SEND may land between the drain and the end: the log's lane
        // is closed under its lock, after which none can be queued.
        self.stop_lane();
        if let Some(log) = self.log.as_mut() {
            log.close_lane();
        }
        self.drain_appends().await;
        self.unfence_when_drained();
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.terminate() {
                log.open_lane();
                return Err(e.into());
            }
        }
        tracing::info!(topic = %self.full_name, producers = self.producers.len(), "topic terminated");
        self.close_producers();
        let e = self.terminated_error();
        for w in self.waiting_exclusive.drain(..) {
            w.conn.out.command(commands::broker_error(w.request_id, &e));
        }
        let names: Vec<String> = self.subscriptions.keys().cloned().collect();
        for name in names {
            self.announce_end_of_topic(&name);
        }
        Ok(self.last_message_id_stats())
    }

    /// Whether the topic is terminated.
    pub(super) fn is_terminated(&self) -> bool {
        self.log.as_ref().is_some_and(|l| l.is_terminated())
    }

    /// What a producer or a SEND on a terminated topic is told.
    pub(super) fn terminated_error(&self) -> BrokerError {
        BrokerError::TopicTerminated(format!("topic {} was already terminated", self.full_name))
    }

    /// On a terminated topic, tells the subscription's consumers that they
    /// have reached its end, if nothing of it is left to acknowledge (as
    /// Pulsar does: a consumer that has read everything but still holds
    /// unacknowledged messages may get them again).
    pub(super) fn announce_end_of_topic(&self, subscription: &str) {
        let Some(log) = self.log.as_ref().filter(|l| l.is_terminated()) else {
            return;
        };
        let Some(sub) = self.subscriptions.get(subscription) else {
            return;
        };
        let done = log
            .cursor_info(subscription)
            .is_ok_and(|i| i.backlog_entries == 0);
        if !done {
            return;
        }
        for c in sub.consumers.iter().filter(|c| c.hears_end_of_topic) {
            c.out.command(commands::reached_end_of_topic(c.key.id));
        }
    }
}

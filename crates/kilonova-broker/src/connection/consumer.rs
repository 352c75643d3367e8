//! Consumers: SUBSCRIBE opens one on a topic (after authorization and the
//! schema's registration); FLOW, ACK, REDELIVER_UNACKNOWLEDGED_MESSAGES,
//! SEEK, GET_LAST_MESSAGE_ID, UNSUBSCRIBE and CLOSE_CONSUMER go to the
//! consumer's topic, which answers them.

use kilonova_pulsar_protocol::proto::{
    CommandAck, CommandCloseConsumer, CommandFlow, CommandGetLastMessageId,
    CommandRedeliverUnacknowledgedMessages, CommandSeek, CommandSubscribe, CommandUnsubscribe,
    ServerError,
};

use super::{Connection, Side};
use crate::commands;
use crate::subscription::ConsumerKey;
use crate::topic::TopicCommand;

impl Connection {
    pub(super) async fn subscribe(&mut self, s: Box<CommandSubscribe>) {
        let schema = s.schema.as_ref();
        let opened = self
            .open_for(
                Side::Consumer,
                s.consumer_id,
                s.request_id,
                &s.topic,
                schema,
            )
            .await;
        let Some((topic, _)) = opened else {
            return;
        };
        self.consumers.insert(s.consumer_id, topic.clone());
        let request_id = s.request_id;
        let cmd = TopicCommand::Subscribe {
            conn: self.ctx(),
            command: s,
        };
        self.to_topic(&topic, cmd, Some(request_id)).await;
    }

    pub(super) async fn flow(&self, f: CommandFlow) {
        let cmd = TopicCommand::Flow {
            key: self.key(f.consumer_id),
            permits: f.message_permits,
        };
        self.to_consumer(f.consumer_id, cmd, None).await;
    }

    pub(super) async fn ack(&self, a: CommandAck) {
        let (id, request_id) = (a.consumer_id, a.request_id);
        let cmd = TopicCommand::Ack {
            key: self.key(id),
            ack: a,
        };
        self.to_consumer(id, cmd, request_id).await;
    }

    pub(super) async fn redeliver(&self, r: CommandRedeliverUnacknowledgedMessages) {
        let cmd = TopicCommand::Redeliver {
            key: self.key(r.consumer_id),
            ids: r.message_ids,
            epoch: r.consumer_epoch,
        };
        self.to_consumer(r.consumer_id, cmd, None).await;
    }

    pub(super) async fn seek(&self, s: CommandSeek) {
        let cmd = TopicCommand::Seek {
            key: self.key(s.consumer_id),
            request_id: s.request_id,
            message_id: s.message_id,
            publish_time_ms: s.message_publish_time,
        };
        self.to_consumer(s.consumer_id, cmd, Some(s.request_id))
            .await;
    }

    pub(super) async fn last_message_id(&self, g: CommandGetLastMessageId) {
        let cmd = TopicCommand::GetLastMessageId {
            key: self.key(g.consumer_id),
            request_id: g.request_id,
        };
        self.to_consumer(g.consumer_id, cmd, Some(g.request_id))
            .await;
    }

    pub(super) async fn unsubscribe(&self, u: CommandUnsubscribe) {
        let cmd = TopicCommand::Unsubscribe {
            key: self.key(u.consumer_id),
            request_id: u.request_id,
        };
        self.to_consumer(u.consumer_id, cmd, Some(u.request_id))
            .await;
    }

    pub(super) async fn close_consumer(&mut self, c: CommandCloseConsumer) {
        // The removal is queued before the answer goes out, so this
        // connection's later commands see the consumer gone. A topic that
        // closed or already dropped the consumer (an unload, a forced
        // delete) has nothing left to remove: closing still succeeds.
        if let Some(h) = self.consumers.remove(&c.consumer_id) {
            let key = self.key(c.consumer_id);
            let cmd = TopicCommand::RemoveConsumer { key };
            let _ = h.send(cmd).await;
        }
        self.out.command(commands::success(c.request_id));
    }

    fn key(&self, consumer_id: u64) -> ConsumerKey {
        ConsumerKey {
            conn: self.id,
            id: consumer_id,
        }
    }

    /// Queues a command for a consumer's topic; answers the request if this
    /// connection has no such consumer.
    async fn to_consumer(&self, consumer_id: u64, cmd: TopicCommand, request_id: Option<u64>) {
        match self.consumers.get(&consumer_id) {
            Some(h) => self.to_topic(h, cmd, request_id).await,
            None => {
                if let Some(r) = request_id {
                    self.out.command(commands::error(
                        r,
                        ServerError::ConsumerNotFound,
                        format!("consumer {consumer_id} not found"),
                    ));
                }
            }
        }
    }
}

//! Producers: PRODUCER opens one on a topic (after authorization and the
//! schema's registration), SEND charges the topic's publish rate (a rate
//! reached pauses the reading) and is appended here when the topic's lane
//! takes it (ADR 0026), else goes to its topic; CLOSE_PRODUCER detaches it.

use std::sync::Arc;

use kilonova_pulsar_protocol::frame::Payload;
use kilonova_pulsar_protocol::proto::{
    CommandCloseProducer, CommandProducer, CommandSend, ServerError,
};

use super::{pause_until, Connection, End, Side};
use crate::commands;
use crate::topic::{AnswerTo, NewProducer, ProducerLane, SendPayload, TopicCommand, TopicHandle};

/// A producer of this connection: its topic, and its part in the topic's lane.
pub(super) struct ProducerOnConn {
    pub(super) topic: TopicHandle,
    lane: Arc<ProducerLane>,
}

impl Connection {
    pub(super) async fn producer(&mut self, p: CommandProducer) {
        let schema = p.schema.as_ref();
        let opened = self
            .open_for(
                Side::Producer,
                p.producer_id,
                p.request_id,
                &p.topic,
                schema,
            )
            .await;
        let Some((topic, schema_version)) = opened else {
            return;
        };
        // A PRODUCER retried on this connection (its client stopped waiting
        // for the answer) keeps the first one's lane: its count of SENDs
        // routed to the task and not answered goes on (a fresh count of 0
        // would let a SEND overtake them), and so do its lane's stats.
        let lane = match self.producers.get(&p.producer_id) {
            Some(first) if Arc::ptr_eq(&first.topic.lane, &topic.lane) => first.lane.clone(),
            _ => Arc::new(ProducerLane::default()),
        };
        let producer = ProducerOnConn {
            topic: topic.clone(),
            lane: lane.clone(),
        };
        self.producers.insert(p.producer_id, producer);
        let access_mode = p.producer_access_mode();
        let cmd = TopicCommand::AddProducer(Box::new(NewProducer {
            conn: self.ctx(),
            producer_id: p.producer_id,
            request_id: p.request_id,
            name: p.producer_name,
            access_mode,
            topic_epoch: p.topic_epoch,
            schema_version,
            lane: Some(lane),
        }));
        self.to_topic(&topic, cmd, Some(p.request_id)).await;
    }

    pub(super) async fn send(
        &mut self,
        s: CommandSend,
        payload: Option<Payload>,
    ) -> Result<(), End> {
        // The frame was decoded just now: a publish's first stage begins.
        let read_at = self.now();
        let payload = payload.ok_or_else(|| End::Violation("SEND without a payload".into()))?;
        // Borrowed, not cloned: a clone and drop of the handle per SEND
        // touch a cold cache line of each of 10,000 topics.
        let Some(producer) = self.producers.get(&s.producer_id) else {
            return Err(End::Violation(format!(
                "SEND for producer {} that this connection did not create",
                s.producer_id
            )));
        };
        let topic = &producer.topic;
        let payload = SendPayload::new(payload, self.broker.max_uncompressed_batch_bytes());
        // A batch whose count its bytes cannot hold is refused by the
        // topic; here it costs one message, not the count it claims.
        let messages = *payload.count.as_ref().unwrap_or(&1);
        let wait =
            topic
                .publish_gate
                .charge(u64::from(messages), payload.raw.len() as u64, read_at);
        if let Some(until) = pause_until(read_at, wait) {
            self.broker.metrics().count_publish_throttled();
            self.throttled_until = Some(until);
        }
        let highest_sequence_id = s.highest_sequence_id.unwrap_or(0).max(s.sequence_id);
        let to = |routed| AnswerTo {
            out: self.out.clone(),
            producer_id: s.producer_id,
            sequence_id: s.sequence_id,
            highest_sequence_id,
            routed,
        };
        if topic
            .lane
            .try_append(&producer.lane, &payload, read_at, || to(None))
        {
            return Ok(());
        }
        // The task's way: the producer's next SENDs follow it there until
        // it is answered.
        producer.lane.routed();
        let cmd = TopicCommand::Send {
            conn: self.id,
            producer_id: s.producer_id,
            sequence_id: s.sequence_id,
            highest_sequence_id,
            payload,
            read_at,
        };
        if topic.send(cmd).await.is_err() {
            to(Some(producer.lane.clone()))
                .error(ServerError::ServiceNotReady, "topic is not available");
        }
        Ok(())
    }

    pub(super) async fn close_producer(&mut self, c: CommandCloseProducer) {
        // As for CLOSE_CONSUMER: queue the removal, then answer.
        if let Some(p) = self.producers.remove(&c.producer_id) {
            let cmd = TopicCommand::RemoveProducer {
                conn: self.id,
                producer_id: c.producer_id,
            };
            let _ = p.topic.send(cmd).await;
        }
        self.out.command(commands::success(c.request_id));
    }
}

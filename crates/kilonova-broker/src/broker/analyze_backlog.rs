//! Pulsar's analyze-backlog: a subscription's backlog counted by reading it,
//! as entries and as messages, within the broker's scan limits
//! (`subscription_backlog_scan_max_entries`, `…_max_time_ms`; past either the
//! answer says `aborted`). The topic's task reads `dispatch_batch_entries` at
//! a time and serves its clients between steps; the scan travels between
//! steps as a value ([`kilonova_storage::BacklogScan`]).

use serde::Serialize;

use kilonova_metadata::names::TopicName;
use kilonova_storage::{BacklogCounts, Position};

use super::Broker;
use crate::error::BrokerError;
use crate::topic::{AdminReply, AdminRequest, BacklogStep};

/// The answer, in Pulsar's `AnalyzeSubscriptionBacklogResult` shape. Kilonova
/// has no entry filters: every entry is accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BacklogAnalysis {
    pub entries: u64,
    pub messages: u64,
    pub filter_rejected_entries: u64,
    pub filter_accepted_entries: u64,
    pub filter_rescheduled_entries: u64,
    pub filter_rejected_messages: u64,
    pub filter_accepted_messages: u64,
    pub filter_rescheduled_messages: u64,
    /// The scan stopped at a limit before the end of the backlog.
    pub aborted: bool,
    /// The first and last entries counted, `ledgerId:entryId`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<String>,
}

impl BacklogAnalysis {
    fn new(c: BacklogCounts, aborted: bool) -> Self {
        let id = |p: Option<Position>| p.map(|p| format!("{}:{}", p.segment, p.entry));
        BacklogAnalysis {
            entries: c.entries,
            messages: c.messages,
            filter_accepted_entries: c.entries,
            filter_accepted_messages: c.messages,
            aborted,
            first_message_id: id(c.first),
            last_message_id: id(c.last),
            ..Default::default()
        }
    }
}

impl Broker {
    /// Counts `subscription`'s backlog on `topic` from its first
    /// unacknowledged entry (or `start`) to the end of the topic as the scan
    /// began, acknowledged entries left out.
    pub async fn analyze_backlog(
        &self,
        topic: &TopicName,
        subscription: &str,
        start: Option<Position>,
    ) -> Result<BacklogAnalysis, BrokerError> {
        let config = self.config();
        let max_entries = config.subscription_backlog_scan_max_entries;
        let step_entries = (config.dispatch_batch_entries as u64).max(1);
        let deadline = self.clock().now()
            + std::time::Duration::from_millis(config.subscription_backlog_scan_max_time_ms);
        let mut step = BacklogStep::Start(start);
        loop {
            let counted = match &step {
                BacklogStep::Start(_) => 0,
                BacklogStep::Continue(scan) => scan.counts().entries,
            };
            let request = AdminRequest::AnalyzeBacklog {
                subscription: subscription.to_owned(),
                step,
                max_entries: step_entries.min(max_entries.saturating_sub(counted)),
            };
            let AdminReply::BacklogScan { scan, done } = self.topic_admin(topic, request).await?
            else {
                // A topic answers a scan step with the scan.
                return Err(BrokerError::Metadata(
                    "analyze-backlog: the topic answered something else".into(),
                ));
            };
            let counts = scan.counts();
            if done {
                return Ok(BacklogAnalysis::new(counts, false));
            }
            if counts.entries >= max_entries || self.clock().now() >= deadline {
                tracing::info!(topic = %topic, subscription, entries = counts.entries,
                    "analyze-backlog stopped at its limit");
                return Ok(BacklogAnalysis::new(counts, true));
            }
            step = BacklogStep::Continue(scan);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_has_pulsars_field_names_and_accepts_every_entry() {
        let counts = BacklogCounts {
            entries: 3,
            messages: 7,
            first: Some(Position::new(4, 0)),
            last: Some(Position::new(5, 1)),
        };
        let json = serde_json::to_value(BacklogAnalysis::new(counts, true)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "entries": 3, "messages": 7,
                "filterAcceptedEntries": 3, "filterAcceptedMessages": 7,
                "filterRejectedEntries": 0, "filterRejectedMessages": 0,
                "filterRescheduledEntries": 0, "filterRescheduledMessages": 0,
                "aborted": true, "firstMessageId": "4:0", "lastMessageId": "5:1",
            })
        );
        let empty = serde_json::to_value(BacklogAnalysis::new(BacklogCounts::default(), false));
        assert!(empty.unwrap().get("firstMessageId").is_none());
    }
}

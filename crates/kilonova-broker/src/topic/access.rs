//! Producer access modes (Pulsar's PIP-68): whether a new producer gets the
//! topic, waits for it, takes it by fencing the others, or is refused, and
//! with which error. A pure decision over the topic's producers; the topic
//! ([`super::publish`]) acts on it.

use kilonova_pulsar_protocol::proto::ProducerAccessMode;

use crate::error::BrokerError;

/// What the topic's producers are when a new one arrives.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Holders {
    /// An exclusive producer (Exclusive, ExclusiveWithFencing, or a
    /// WaitForExclusive one that got the topic) is connected.
    pub exclusive: bool,
    /// Producers of any mode are connected.
    pub any: bool,
    /// WaitForExclusive producers are queued.
    pub waiting: bool,
    /// The topic's epoch (bumped each time an exclusive producer gets it).
    pub epoch: u64,
}

/// What to do with a new producer.
#[derive(Debug)]
pub(super) enum Admission {
    /// Registered now.
    Ready,
    /// Queued until every producer has left (WaitForExclusive).
    Wait,
    /// The current producers and the waiting ones are fenced out first
    /// (ExclusiveWithFencing), then it is registered.
    FenceOthers,
    Refused(BrokerError),
}

/// Decides as Pulsar's broker does (`AbstractTopic.incrementTopicEpochIfNeeded`):
/// a Shared producer is busy while an exclusive one holds or waits for the
/// topic (its client retries); an Exclusive one is fenced by any other
/// producer or waiter (its client gives up); an exclusive producer that
/// comes back with an epoch older than the topic's was fenced out meanwhile
/// and is refused as fenced, which is how a producer closed by
/// ExclusiveWithFencing learns it is fenced.
pub(super) fn admit(
    mode: ProducerAccessMode,
    producer_epoch: Option<u64>,
    topic: &str,
    h: Holders,
) -> Admission {
    let stale = producer_epoch.is_some_and(|e| e < h.epoch);
    let fenced_by_epoch = || {
        Admission::Refused(BrokerError::ProducerFenced(format!(
            "topic {topic}: its epoch has moved on to {} past the producer's {} (fenced by another exclusive producer)",
            h.epoch,
            producer_epoch.unwrap_or_default()
        )))
    };
    match mode {
        ProducerAccessMode::Shared if h.exclusive || h.waiting => Admission::Refused(
            BrokerError::ProducerBusy(format!("topic {topic} has an exclusive producer")),
        ),
        ProducerAccessMode::Shared => Admission::Ready,
        ProducerAccessMode::Exclusive if h.exclusive || h.waiting => Admission::Refused(
            BrokerError::ProducerFenced(format!("topic {topic} has an exclusive producer")),
        ),
        ProducerAccessMode::Exclusive if h.any => Admission::Refused(BrokerError::ProducerFenced(
            format!("topic {topic} has shared producers"),
        )),
        ProducerAccessMode::WaitForExclusive if h.exclusive || h.any => Admission::Wait,
        ProducerAccessMode::Exclusive | ProducerAccessMode::WaitForExclusive if stale => {
            fenced_by_epoch()
        }
        ProducerAccessMode::Exclusive | ProducerAccessMode::WaitForExclusive => Admission::Ready,
        ProducerAccessMode::ExclusiveWithFencing if stale => fenced_by_epoch(),
        ProducerAccessMode::ExclusiveWithFencing if h.any || h.waiting => Admission::FenceOthers,
        ProducerAccessMode::ExclusiveWithFencing => Admission::Ready,
    }
}

/// The epoch a producer that gets the topic exclusively sets: the one it
/// brings back (it was not fenced, so it is not older), else the next one.
pub(super) fn next_epoch(current: u64, producer_epoch: Option<u64>) -> u64 {
    match producer_epoch {
        Some(e) if e >= current => e,
        _ => current + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kilonova_pulsar_protocol::proto::ServerError;

    const EXCLUSIVE: Holders = Holders {
        exclusive: true,
        any: true,
        waiting: false,
        epoch: 3,
    };
    const SHARED: Holders = Holders {
        exclusive: false,
        any: true,
        waiting: false,
        epoch: 3,
    };
    const WAITER: Holders = Holders {
        exclusive: false,
        any: true,
        waiting: true,
        epoch: 3,
    };
    const FREE: Holders = Holders {
        exclusive: false,
        any: false,
        waiting: false,
        epoch: 3,
    };

    fn refusal(a: Admission) -> Option<ServerError> {
        match a {
            Admission::Refused(e) => Some(e.server_error()),
            _ => None,
        }
    }

    #[test]
    fn an_exclusive_producer_is_fenced_by_any_other_producer_or_waiter() {
        for h in [EXCLUSIVE, SHARED, WAITER] {
            let a = admit(ProducerAccessMode::Exclusive, None, "t", h);
            assert_eq!(refusal(a), Some(ServerError::ProducerFenced), "{h:?}");
        }
        assert!(matches!(
            admit(ProducerAccessMode::Exclusive, None, "t", FREE),
            Admission::Ready
        ));
    }

    #[test]
    fn a_shared_producer_is_busy_while_an_exclusive_one_holds_or_waits() {
        for h in [EXCLUSIVE, WAITER] {
            let a = admit(ProducerAccessMode::Shared, None, "t", h);
            assert_eq!(refusal(a), Some(ServerError::ProducerBusy), "{h:?}");
        }
        assert!(matches!(
            admit(ProducerAccessMode::Shared, Some(0), "t", SHARED),
            Admission::Ready
        ));
    }

    #[test]
    fn an_exclusive_producer_behind_the_topic_epoch_is_fenced() {
        for mode in [
            ProducerAccessMode::Exclusive,
            ProducerAccessMode::WaitForExclusive,
            ProducerAccessMode::ExclusiveWithFencing,
        ] {
            let a = admit(mode, Some(2), "t", FREE);
            assert_eq!(refusal(a), Some(ServerError::ProducerFenced), "{mode:?}");
            assert!(
                refusal(admit(mode, Some(3), "t", FREE)).is_none(),
                "{mode:?} at the topic's epoch"
            );
        }
    }

    #[test]
    fn fencing_takes_a_held_topic_and_waiting_waits_for_every_producer() {
        for h in [EXCLUSIVE, SHARED, WAITER] {
            assert!(matches!(
                admit(ProducerAccessMode::ExclusiveWithFencing, None, "t", h),
                Admission::FenceOthers
            ));
            assert!(matches!(
                admit(ProducerAccessMode::WaitForExclusive, None, "t", h),
                Admission::Wait
            ));
        }
    }

    #[test]
    fn a_producer_keeps_its_epoch_a_new_one_moves_it() {
        assert_eq!(next_epoch(3, None), 4);
        assert_eq!(next_epoch(3, Some(3)), 3);
        assert_eq!(next_epoch(3, Some(7)), 7);
        assert_eq!(next_epoch(3, Some(1)), 4);
    }
}

//! Policy decisions driven by a manual clock: when TTL and quota checks run,
//! when an idle topic is deleted for inactivity, when a backlog is over its
//! quota and how much is evicted.

use std::time::Duration;

use kilonova_metadata::policies::{BacklogQuotaPolicy, InactiveTopicDeleteMode};

use super::*;
use crate::clock::{Clock, ManualClock};

const SECOND: Duration = Duration::from_secs(1);

fn rule(max_inactive_secs: u64) -> InactiveRule {
    InactiveRule {
        mode: InactiveTopicDeleteMode::DeleteWhenNoSubscriptions,
        max_inactive: Duration::from_secs(max_inactive_secs),
    }
}

#[test]
fn ttl_and_quota_checks_run_once_per_interval() {
    let clock = ManualClock::at_ms(0);
    let mut checks = Checks::new(clock.now());
    let every = 5 * SECOND;
    assert!(
        checks.expiry_due(clock.now(), every),
        "the first check runs at load"
    );
    assert!(!checks.expiry_due(clock.now(), every));
    clock.advance(every - Duration::from_millis(1));
    assert!(!checks.expiry_due(clock.now(), every));
    clock.advance(Duration::from_millis(1));
    assert!(checks.expiry_due(clock.now(), every));
    // The quota check keeps its own schedule.
    assert!(checks.quota_due(clock.now(), 60 * SECOND));
    assert!(!checks.quota_due(clock.now(), 60 * SECOND));
}

#[test]
fn an_idle_topic_is_deleted_once_inactive_for_the_rule_s_time() {
    let clock = ManualClock::at_ms(0);
    let since = clock.now();
    let mut checks = Checks::new(since);
    let every = SECOND;
    assert!(matches!(
        checks.inactive(rule(60), since, clock.now(), every),
        Inactive::Keep
    ));
    clock.advance(59 * SECOND);
    assert!(matches!(
        checks.inactive(rule(60), since, clock.now(), every),
        Inactive::Keep
    ));
    clock.advance(SECOND);
    assert!(matches!(
        checks.inactive(rule(60), since, clock.now(), every),
        Inactive::Delete
    ));
}

#[test]
fn inactivity_is_looked_at_no_more_often_than_the_check_frequency() {
    let clock = ManualClock::at_ms(0);
    let since = clock.now();
    let mut checks = Checks::new(since);
    let every = 30 * SECOND;
    clock.advance(50 * SECOND);
    // Looked at (50 s < 60 s): the next look is 30 s later.
    assert!(matches!(
        checks.inactive(rule(60), since, clock.now(), every),
        Inactive::Keep
    ));
    clock.advance(20 * SECOND);
    assert!(
        matches!(
            checks.inactive(rule(60), since, clock.now(), every),
            Inactive::Keep
        ),
        "70 s inactive, but the next look is at 80 s"
    );
    clock.advance(10 * SECOND);
    assert!(matches!(
        checks.inactive(rule(60), since, clock.now(), every),
        Inactive::Delete
    ));
}

#[test]
fn a_partition_asks_for_its_partitioned_topic_s_deletion_at_most_once_per_interval() {
    let clock = ManualClock::at_ms(0);
    let mut checks = Checks::new(clock.now());
    let every = 10 * SECOND;
    assert!(checks.partitioned_attempt_due(clock.now(), every));
    clock.advance(9 * SECOND);
    assert!(!checks.partitioned_attempt_due(clock.now(), every));
    clock.advance(SECOND);
    assert!(checks.partitioned_attempt_due(clock.now(), every));
}

#[test]
fn a_message_is_over_the_age_quota_only_once_strictly_older_than_it() {
    let clock = ManualClock::at_ms(1_000_000);
    let published = clock.now_ms();
    let q = Quota {
        limit: 60,
        policy: BacklogQuotaPolicy::ProducerRequestHold,
    };
    clock.advance(60 * SECOND);
    assert!(!older_than_quota(published, clock.now_ms(), q));
    clock.advance(Duration::from_millis(1));
    assert!(older_than_quota(published, clock.now_ms(), q));
    // A publish time from the future (a client's clock) is not old.
    assert!(!older_than_quota(clock.now_ms() + 5_000, clock.now_ms(), q));
}

#[test]
fn eviction_skips_entries_in_proportion_to_the_excess() {
    assert_eq!(entries_to_evict(100, 1000, 600), 40);
    assert_eq!(
        entries_to_evict(3, 1000, 999),
        1,
        "at least one, rounded up"
    );
    assert_eq!(
        entries_to_evict(10, 1000, 0),
        10,
        "a zero quota evicts everything"
    );
    assert_eq!(
        entries_to_evict(u64::MAX, u64::MAX, 0),
        u64::MAX,
        "no overflow"
    );
}

#[test]
fn an_exceeded_quota_refuses_producers_retriably_only_under_producer_request_hold() {
    let hold = Exceeded::of(
        Quota {
            limit: 1,
            policy: BacklogQuotaPolicy::ProducerRequestHold,
        },
        "x".into(),
    );
    let exception = Exceeded::of(
        Quota {
            limit: 1,
            policy: BacklogQuotaPolicy::ProducerException,
        },
        "x".into(),
    );
    assert!(matches!(
        hold.error(),
        BrokerError::BacklogQuotaExceeded { hold: true, .. }
    ));
    assert!(matches!(
        exception.error(),
        BrokerError::BacklogQuotaExceeded { hold: false, .. }
    ));
    assert!(hold.error().to_string().contains("backlog quota exceeded"));
}

//! Dispatch, redelivery and delayed delivery of a subscription over an
//! in-memory log, with a manual clock: no sockets, no disk.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::sync::Notify;

use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{BaseCommand, MessageMetadata};
use kilonova_storage::Position;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::entry_source::memory::MemoryLog;
use crate::error::BrokerError;
use crate::outbound::{MessageHead, Out, Outbound, OutboundReceiver, FRAME_OVERHEAD_BYTES};

const SUB: &str = "sub";
const T0_MS: u64 = 1_700_000_000_000;

/// A log with `n` single-message entries; entry `i` has key `keys[i % len]`.
fn log_with(n: usize, keys: &[&str]) -> MemoryLog {
    let mut log = MemoryLog::default();
    for i in 0..n {
        let key = keys.get(i % keys.len().max(1)).copied();
        log.append(payload(key, None), 1, T0_MS);
    }
    log.open_cursor(SUB);
    log
}

fn payload(key: Option<&str>, deliver_at_ms: Option<u64>) -> Bytes {
    let meta = MessageMetadata {
        producer_name: "p".into(),
        sequence_id: 0,
        publish_time: T0_MS,
        partition_key: key.map(str::to_owned),
        deliver_at_time: deliver_at_ms.map(|t| t as i64),
        ..Default::default()
    };
    frame::build_payload(&meta, b"x")
}

struct Client {
    key: ConsumerKey,
    rx: OutboundReceiver,
}

impl Client {
    /// MESSAGE frames queued for this consumer since last asked: (entry, redelivery count).
    fn received(&mut self) -> Vec<(u64, u32)> {
        let mut got = Vec::new();
        while let Some(out) = self.rx.try_recv() {
            // As the writer does once it wrote the frame to the socket.
            let cost = out.cost();
            self.rx
                .written(cost, cost.saturating_sub(FRAME_OVERHEAD_BYTES));
            let Out::Message {
                head,
                prefix,
                payload,
            } = out
            else {
                continue;
            };
            let cmd = decode_header(&encoded_head(head, prefix, payload));
            let m = cmd.message.expect("a MESSAGE command");
            assert_eq!(m.consumer_id, self.key.id, "sent to the wrong consumer");
            got.push((m.message_id.entry_id, m.redelivery_count.unwrap_or(0)));
        }
        got
    }

    fn entries(&mut self) -> Vec<u64> {
        self.received().into_iter().map(|(e, _)| e).collect()
    }
}

/// A MESSAGE's header as the writer sends it.
fn encoded_head(head: MessageHead, prefix: Option<Bytes>, payload: Bytes) -> Bytes {
    match head {
        MessageHead::Encoded(b) => b,
        MessageHead::Fields(m) => {
            let mut b = BytesMut::new();
            let raw_len = prefix.as_ref().map_or(0, Bytes::len) + payload.len();
            frame::encode_message_header(&m, raw_len, &mut b);
            b.freeze()
        }
    }
}

/// The command of an encoded payload frame header: total size, command size, command.
fn decode_header(header: &[u8]) -> BaseCommand {
    let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    BaseCommand::decode(&header[8..8 + size]).expect("a well-formed command")
}

fn consumer(id: u64, name: &str, priority: i32, permits: i64) -> (Consumer, Client) {
    consumer_with_queue(id, name, priority, permits, 1 << 20)
}

fn consumer_with_queue(
    id: u64,
    name: &str,
    priority: i32,
    permits: i64,
    queue_bytes: usize,
) -> (Consumer, Client) {
    let key = ConsumerKey { conn: 1, id };
    let (out, rx) = Outbound::new(queue_bytes);
    let c = Consumer {
        key,
        name: name.into(),
        priority,
        permits,
        out,
        epoch: None,
        wants_entry_metadata: false,
        hears_end_of_topic: true,
        joined_at: None,
        sticky_ranges: Vec::new(),
        msg_out: 0,
        bytes_out: 0,
        msg_redeliver: 0,
        unacked: 0,
        client: Default::default(),
        meter_out: Default::default(),
        meter_redeliver: Default::default(),
        max_unacked: None,
        held: false,
    };
    (c, Client { key, rx })
}

fn subscription(kind: SubKind) -> Subscription {
    Subscription::new(SUB.into(), kind, true, None, Arc::default())
}

fn limits(clock: &ManualClock) -> DispatchLimits {
    DispatchLimits {
        batch_entries: 100,
        max_redelivery_backlog: 1000,
        delayed_delivery: true,
        max_delayed: 1000,
        now_ms: clock.now_ms(),
        drained: Arc::new(Notify::new()),
        max_unacked_per_consumer: None,
        max_unacked_per_subscription: None,
        compacted: None,
        max_cached_snapshots: 10,
    }
}

fn join(sub: &mut Subscription, log: &mut MemoryLog, c: Consumer) -> Result<(), BrokerError> {
    let kind = sub.kind;
    sub.add_consumer(kind, c, Some(log.read_position(SUB)))
}

fn dispatch(sub: &mut Subscription, log: &mut MemoryLog, clock: &ManualClock) -> usize {
    sub.dispatch(log, &limits(clock), Budget::UNLIMITED)
        .expect("dispatch over an in-memory log")
}

fn permits(sub: &mut Subscription, c: &Client, n: i64) {
    if let Some(x) = sub.consumer_mut(c.key) {
        x.permits += n;
    }
}

#[test]
fn exclusive_sends_in_order_up_to_the_permits_and_refuses_a_second_consumer() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = log_with(10, &["a"]);
    let mut sub = subscription(SubKind::Exclusive);
    let (c, mut a) = consumer(1, "a", 0, 4);
    join(&mut sub, &mut log, c).unwrap();
    assert_eq!(dispatch(&mut sub, &mut log, &clock), 4);
    assert_eq!(a.entries(), vec![0, 1, 2, 3]);
    permits(&mut sub, &a, 100);
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(a.entries(), (4..10).collect::<Vec<_>>());
    let (c2, _b) = consumer(2, "b", 0, 10);
    let e = sub.add_consumer(SubKind::Exclusive, c2, None).unwrap_err();
    assert!(matches!(e, BrokerError::ConsumerBusy(_)), "{e:?}");
}

#[test]
fn failover_hands_unacknowledged_entries_to_the_next_consumer_when_the_active_one_leaves() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = log_with(6, &["a"]);
    let mut sub = subscription(SubKind::Failover);
    // Same priority: the active consumer is the first by name.
    let (cb, mut b) = consumer(2, "b", 0, 100);
    let (ca, mut a) = consumer(1, "a", 0, 100);
    join(&mut sub, &mut log, cb).unwrap();
    join(&mut sub, &mut log, ca).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(a.entries(), (0..6).collect::<Vec<_>>());
    assert!(b.entries().is_empty(), "only the active consumer reads");
    sub.ack(&mut log, Position::new(0, 0), &[]).unwrap();
    sub.ack(&mut log, Position::new(0, 1), &[]).unwrap();
    sub.remove_consumer(a.key);
    dispatch(&mut sub, &mut log, &clock);
    // Entries 2..6 were in flight at `a`: `b` gets them again, counted as redelivered.
    assert_eq!(
        b.received(),
        vec![(2, 1), (3, 1), (4, 1), (5, 1)],
        "the unacknowledged entries go to the new active consumer"
    );
}

#[test]
fn shared_round_robins_over_consumers_with_permits() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = log_with(6, &["a"]);
    let mut sub = subscription(SubKind::Shared);
    let (ca, mut a) = consumer(1, "a", 0, 100);
    let (cb, mut b) = consumer(2, "b", 0, 1);
    join(&mut sub, &mut log, ca).unwrap();
    join(&mut sub, &mut log, cb).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    let (ea, eb) = (a.entries(), b.entries());
    assert_eq!(eb, vec![1], "b takes its one permit's worth in turn");
    assert_eq!(ea, vec![0, 2, 3, 4, 5]);
}

#[test]
fn shared_serves_the_higher_priority_consumer_first() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = log_with(5, &["a"]);
    let mut sub = subscription(SubKind::Shared);
    let (low, mut l) = consumer(1, "low", 5, 100);
    let (high, mut h) = consumer(2, "high", 0, 3);
    join(&mut sub, &mut log, low).unwrap();
    join(&mut sub, &mut log, high).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(h.entries(), vec![0, 1, 2]);
    assert_eq!(l.entries(), vec![3, 4], "the lower level gets what is left");
}

#[test]
fn a_negative_ack_sends_the_entry_again_first_with_its_redelivery_count() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = log_with(4, &["a"]);
    let mut sub = subscription(SubKind::Shared);
    let (ca, mut a) = consumer(1, "a", 0, 3);
    join(&mut sub, &mut log, ca).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(a.entries(), vec![0, 1, 2]);
    sub.ack(&mut log, Position::new(0, 0), &[]).unwrap();
    sub.redeliver(a.key, &[Position::new(0, 1)], Some(&mut log));
    permits(&mut sub, &a, 2);
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(
        a.received(),
        vec![(1, 1), (3, 0)],
        "redelivery first, then new entries"
    );
    // A redelivery of an acknowledged entry (or another consumer's) is ignored.
    sub.redeliver(a.key, &[Position::new(0, 0)], Some(&mut log));
    permits(&mut sub, &a, 5);
    dispatch(&mut sub, &mut log, &clock);
    assert!(a.received().is_empty());
}

#[test]
fn redelivering_everything_of_a_consumer_resends_only_its_own_entries() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = log_with(4, &["a"]);
    let mut sub = subscription(SubKind::Shared);
    let (ca, mut a) = consumer(1, "a", 0, 2);
    let (cb, mut b) = consumer(2, "b", 0, 2);
    join(&mut sub, &mut log, ca).unwrap();
    join(&mut sub, &mut log, cb).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!((a.entries(), b.entries()), (vec![0, 2], vec![1, 3]));
    // An ack timeout on the client: REDELIVER with no ids.
    sub.redeliver(a.key, &[], Some(&mut log));
    permits(&mut sub, &a, 5);
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(a.received(), vec![(0, 1), (2, 1)]);
    assert!(b.received().is_empty());
}

#[test]
fn a_closed_shared_consumer_s_entries_go_to_the_others() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = log_with(4, &["a"]);
    let mut sub = subscription(SubKind::Shared);
    let (ca, mut a) = consumer(1, "a", 0, 2);
    let (cb, mut b) = consumer(2, "b", 0, 2);
    join(&mut sub, &mut log, ca).unwrap();
    join(&mut sub, &mut log, cb).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(a.entries(), vec![0, 2]);
    b.received();
    sub.remove_consumer(a.key);
    permits(&mut sub, &b, 10);
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(b.received(), vec![(0, 1), (2, 1)]);
}

#[test]
fn key_shared_keeps_a_key_on_one_consumer_and_in_order() {
    let clock = ManualClock::at_ms(T0_MS);
    let keys = ["k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8"];
    let mut log = log_with(64, &keys);
    let mut sub = subscription(SubKind::KeyShared);
    let (ca, mut a) = consumer(1, "a", 0, 1000);
    let (cb, mut b) = consumer(2, "b", 0, 1000);
    join(&mut sub, &mut log, ca).unwrap();
    join(&mut sub, &mut log, cb).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    let (ea, eb) = (a.entries(), b.entries());
    assert_eq!(ea.len() + eb.len(), 64);
    let key_of = |e: &u64| keys[*e as usize % keys.len()];
    for k in keys {
        let at_a = ea.iter().any(|e| key_of(e) == k);
        let at_b = eb.iter().any(|e| key_of(e) == k);
        assert!(at_a != at_b, "key {k} went to both consumers or to none");
    }
    assert!(ea.windows(2).all(|w| w[0] < w[1]) && eb.windows(2).all(|w| w[0] < w[1]));
}

/// A key whose slot is in `lo..=hi`.
fn key_in(lo: u32, hi: u32) -> String {
    (0..10_000)
        .map(|i| format!("k{i}"))
        .find(|k| (lo..=hi).contains(&crate::key_shared::slot(k.as_bytes())))
        .expect("some key hashes into half of the range")
}

#[test]
fn key_shared_holds_later_entries_of_a_key_behind_one_its_owner_cannot_take() {
    let clock = ManualClock::at_ms(T0_MS);
    let (ka, kb) = (key_in(0, 32767), key_in(32768, 65535));
    let mut log = MemoryLog::default();
    for k in [&ka, &ka, &kb, &ka, &kb] {
        log.append(payload(Some(k), None), 1, T0_MS);
    }
    log.open_cursor(SUB);
    let mut sub = subscription(SubKind::KeyShared);
    let (mut ca, mut a) = consumer(1, "a", 0, 1);
    let (mut cb, mut b) = consumer(2, "b", 0, 100);
    ca.sticky_ranges = vec![(0, 32767)];
    cb.sticky_ranges = vec![(32768, 65535)];
    join(&mut sub, &mut log, ca).unwrap();
    join(&mut sub, &mut log, cb).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(a.entries(), vec![0], "one permit");
    assert_eq!(b.entries(), vec![2, 4], "the other key is not blocked");
    permits(&mut sub, &a, 10);
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(a.entries(), vec![1, 3], "the held entries, in order");
}

#[test]
fn a_key_shared_newcomer_waits_until_entries_before_its_join_are_acknowledged() {
    let clock = ManualClock::at_ms(T0_MS);
    let k = key_in(0, 32767);
    let mut log = MemoryLog::default();
    for _ in 0..4 {
        log.append(payload(Some(&k), None), 1, T0_MS);
    }
    log.open_cursor(SUB);
    let mut sub = subscription(SubKind::KeyShared);
    let (mut ca, mut a) = consumer(1, "a", 0, 2);
    ca.sticky_ranges = vec![(0, 65535)];
    join(&mut sub, &mut log, ca).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(a.entries(), vec![0, 1]);
    // `a` leaves; `c` (the other half) joins first, then `b` takes k's half
    // while entries 0 and 1 are still unacknowledged: it joined at entry 2.
    sub.remove_consumer(a.key);
    let (mut cc, mut c) = consumer(3, "c", 0, 100);
    cc.sticky_ranges = vec![(32768, 65535)];
    join(&mut sub, &mut log, cc).unwrap();
    let (mut cb, mut b) = consumer(2, "b", 0, 100);
    cb.sticky_ranges = vec![(0, 32767)];
    join(&mut sub, &mut log, cb).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(
        b.received(),
        vec![(0, 1), (1, 1)],
        "only what came before its join"
    );
    assert!(c.entries().is_empty());
    sub.ack(&mut log, Position::new(0, 0), &[]).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    assert!(b.entries().is_empty(), "entry 1 is still unacknowledged");
    sub.ack(&mut log, Position::new(0, 1), &[]).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(b.entries(), vec![2, 3]);
}

#[test]
fn a_delayed_message_is_held_until_its_time_then_sent() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = MemoryLog::default();
    log.append(payload(None, Some(T0_MS + 5_000)), 1, T0_MS);
    log.append(payload(None, None), 1, T0_MS);
    log.open_cursor(SUB);
    let mut sub = subscription(SubKind::Shared);
    let (ca, mut a) = consumer(1, "a", 0, 100);
    join(&mut sub, &mut log, ca).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(a.entries(), vec![1], "the delayed entry is held");
    assert_eq!(sub.next_delayed_ms(), Some(T0_MS + 5_000));
    clock.advance(Duration::from_millis(4_999));
    dispatch(&mut sub, &mut log, &clock);
    assert!(a.entries().is_empty(), "not yet due");
    clock.advance(Duration::from_millis(1));
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(a.entries(), vec![0]);
    assert_eq!(sub.delayed_count(), 0);
}

#[test]
fn over_the_delayed_cap_the_message_due_last_is_sent_early() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = MemoryLog::default();
    for due_s in [30, 10, 20] {
        log.append(payload(None, Some(T0_MS + due_s * 1000)), 1, T0_MS);
    }
    log.open_cursor(SUB);
    let mut sub = subscription(SubKind::Shared);
    let (ca, mut a) = consumer(1, "a", 0, 100);
    join(&mut sub, &mut log, ca).unwrap();
    let l = DispatchLimits {
        max_delayed: 2,
        ..limits(&clock)
    };
    sub.dispatch(&mut log, &l, Budget::UNLIMITED).unwrap();
    sub.dispatch(&mut log, &l, Budget::UNLIMITED).unwrap();
    assert_eq!(a.entries(), vec![0], "the one due at 30 s goes early");
    assert_eq!(sub.delayed_count(), 2);
    assert_eq!(sub.next_delayed_ms(), Some(T0_MS + 10_000));
}

#[test]
fn delayed_delivery_off_sends_at_once() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = MemoryLog::default();
    log.append(payload(None, Some(T0_MS + 60_000)), 1, T0_MS);
    log.open_cursor(SUB);
    let mut sub = subscription(SubKind::Shared);
    let (ca, mut a) = consumer(1, "a", 0, 100);
    join(&mut sub, &mut log, ca).unwrap();
    let l = DispatchLimits {
        delayed_delivery: false,
        ..limits(&clock)
    };
    sub.dispatch(&mut log, &l, Budget::UNLIMITED).unwrap();
    assert_eq!(a.entries(), vec![0]);
}

#[test]
fn a_budget_stops_the_pass_and_what_was_read_is_read_again() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = log_with(10, &["a"]);
    let mut sub = subscription(SubKind::Exclusive);
    let (ca, mut a) = consumer(1, "a", 0, 100);
    join(&mut sub, &mut log, ca).unwrap();
    let budget = Budget {
        messages: Some(3),
        bytes: None,
    };
    assert_eq!(sub.dispatch(&mut log, &limits(&clock), budget).unwrap(), 3);
    assert_eq!(a.entries(), vec![0, 1, 2]);
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(a.entries(), (3..10).collect::<Vec<_>>(), "nothing skipped");
}

#[test]
fn a_consumer_whose_connection_is_full_gets_nothing_until_it_drains() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = log_with(50, &["a"]);
    let mut sub = subscription(SubKind::Shared);
    // Room for two or three messages.
    let (ca, mut a) = consumer_with_queue(1, "a", 0, 1000, 400);
    join(&mut sub, &mut log, ca).unwrap();
    let sent = dispatch(&mut sub, &mut log, &clock);
    assert!((1..=3).contains(&sent), "{sent}");
    assert_eq!(
        dispatch(&mut sub, &mut log, &clock),
        0,
        "the queue is still full"
    );
    // The writer drains the queue: everything else goes, in order, nothing lost.
    let mut all = a.entries();
    assert_eq!(all.len(), sent);
    for _ in 0..100 {
        if all.len() == 50 {
            break;
        }
        assert!(dispatch(&mut sub, &mut log, &clock) <= 3);
        all.extend(a.entries());
    }
    assert_eq!(all, (0..50).collect::<Vec<_>>());
}

#[test]
fn acknowledging_every_message_of_a_batch_acknowledges_the_entry() {
    let mut log = log_with(2, &["a"]);
    let mut sub = subscription(SubKind::Shared);
    let p = Position::new(0, 0);
    // 3 messages: the ack sets name the ones still unacknowledged.
    sub.ack(&mut log, p, &[0b110]).unwrap();
    assert_eq!(log.ack_floor(SUB).unwrap(), p, "two messages left");
    sub.ack(&mut log, p, &[0b011]).unwrap();
    assert_eq!(log.ack_floor(SUB).unwrap(), p, "one message left");
    sub.ack(&mut log, p, &[0b101]).unwrap();
    assert_eq!(log.ack_floor(SUB).unwrap(), Position::new(0, 1));
}

#[test]
fn a_cumulative_ack_settles_everything_up_to_it() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = log_with(5, &["a"]);
    let mut sub = subscription(SubKind::Exclusive);
    let (ca, mut a) = consumer(1, "a", 0, 100);
    join(&mut sub, &mut log, ca).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    a.entries();
    sub.ack_cumulative(&mut log, Position::new(0, 2)).unwrap();
    assert_eq!(log.ack_floor(SUB).unwrap(), Position::new(0, 3));
    // A rewind (the client asked for redelivery) resends only what is unacknowledged.
    sub.redeliver(a.key, &[], Some(&mut log));
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(a.received(), vec![(3, 1), (4, 1)]);
}

#[test]
fn a_consumer_at_its_unacked_maximum_gets_nothing_until_it_acknowledges() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = log_with(10, &["a"]);
    let mut sub = subscription(SubKind::Shared);
    let (ca, mut a) = consumer(1, "a", 0, 100);
    let (cb, mut b) = consumer(2, "b", 0, 100);
    join(&mut sub, &mut log, ca).unwrap();
    join(&mut sub, &mut log, cb).unwrap();
    let l = DispatchLimits {
        max_unacked_per_consumer: Some(2),
        ..limits(&clock)
    };
    sub.dispatch(&mut log, &l, Budget::UNLIMITED).unwrap();
    let (got_a, got_b) = (a.entries(), b.entries());
    assert_eq!((got_a.len(), got_b.len()), (2, 2), "{got_a:?} {got_b:?}");
    assert_eq!(sub.unacked(), 4);
    assert!(sub.consumers.iter().all(Consumer::blocked_on_unacked));
    sub.dispatch(&mut log, &l, Budget::UNLIMITED).unwrap();
    assert!(a.entries().is_empty() && b.entries().is_empty(), "blocked");
    let first = Position::new(0, got_a[0]);
    sub.ack(&mut log, first, &[]).unwrap();
    sub.dispatch(&mut log, &l, Budget::UNLIMITED).unwrap();
    assert_eq!(
        a.entries().len(),
        1,
        "one acknowledgement makes room for one"
    );
    assert!(b.entries().is_empty());
}

#[test]
fn a_subscription_at_its_unacked_maximum_stops_within_the_pass() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = log_with(10, &["a"]);
    let mut sub = subscription(SubKind::Shared);
    let (ca, mut a) = consumer(1, "a", 0, 100);
    let (cb, mut b) = consumer(2, "b", 0, 100);
    join(&mut sub, &mut log, ca).unwrap();
    join(&mut sub, &mut log, cb).unwrap();
    let l = DispatchLimits {
        max_unacked_per_subscription: Some(3),
        ..limits(&clock)
    };
    sub.dispatch(&mut log, &l, Budget::UNLIMITED).unwrap();
    assert_eq!(a.entries().len() + b.entries().len(), 3);
    assert!(sub.blocked_on_unacked());
    sub.redeliver(a.key, &[], Some(&mut log));
    assert!(!sub.blocked_on_unacked(), "a redelivery frees the count");
}

/// A replicated-subscription snapshot marker whose local position is entry `at`.
fn snapshot_marker(id: &str, at: u64) -> Bytes {
    use kilonova_pulsar_protocol::markers::{self, cluster_position, Marker};
    use kilonova_pulsar_protocol::proto::{MarkersMessageIdData, ReplicatedSubscriptionsSnapshot};
    let snapshot = ReplicatedSubscriptionsSnapshot {
        snapshot_id: id.into(),
        local_message_id: Some(MarkersMessageIdData {
            ledger_id: 0,
            entry_id: at,
        }),
        clusters: vec![cluster_position("b", 7, at * 100)],
    };
    markers::build(&Marker::Snapshot(snapshot), T0_MS, vec!["a".into()])
}

#[test]
fn markers_are_never_sent_and_hold_no_backlog_for_any_kind_of_subscription() {
    for kind in [SubKind::Exclusive, SubKind::Shared, SubKind::KeyShared] {
        let clock = ManualClock::at_ms(T0_MS);
        let mut log = MemoryLog::default();
        log.append(payload(Some("k"), None), 1, T0_MS);
        log.append(snapshot_marker("s1", 0), 1, T0_MS);
        log.append(payload(Some("k"), None), 1, T0_MS);
        log.append(snapshot_marker("s2", 2), 1, T0_MS);
        log.open_cursor(SUB);
        let mut sub = subscription(kind);
        let (c, mut a) = consumer(1, "a", 0, 2);
        join(&mut sub, &mut log, c).unwrap();
        dispatch(&mut sub, &mut log, &clock);
        assert_eq!(a.entries(), vec![0, 2], "{kind:?}: markers went out");
        assert_eq!(
            sub.unacked(),
            2,
            "{kind:?}: markers count as unacknowledged"
        );
        sub.ack(&mut log, Position::new(0, 0), &[]).unwrap();
        sub.ack(&mut log, Position::new(0, 2), &[]).unwrap();
        // The marker after the last message is read with the next permits.
        permits(&mut sub, &a, 10);
        dispatch(&mut sub, &mut log, &clock);
        assert!(a.entries().is_empty());
        assert_eq!(
            log.ack_floor(SUB).unwrap(),
            Position::new(0, 4),
            "{kind:?}: the markers were acknowledged when read"
        );
        assert_eq!(sub.snapshots.len(), 0, "{kind:?}: not replicated");
    }
}

#[test]
fn a_replicated_subscription_keeps_the_snapshots_it_reads() {
    let clock = ManualClock::at_ms(T0_MS);
    let mut log = MemoryLog::default();
    log.append(payload(None, None), 1, T0_MS);
    log.append(snapshot_marker("s1", 0), 1, T0_MS);
    log.open_cursor(SUB);
    let mut sub = subscription(SubKind::Exclusive);
    sub.replicated = true;
    let (c, mut a) = consumer(1, "a", 0, 10);
    join(&mut sub, &mut log, c).unwrap();
    dispatch(&mut sub, &mut log, &clock);
    assert_eq!(a.entries(), vec![0]);
    assert_eq!(sub.snapshots.len(), 1);
    assert_eq!(
        sub.snapshots
            .passed(Position::new(0, 0))
            .map(|s| s.snapshot_id),
        Some("s1".into())
    );
}

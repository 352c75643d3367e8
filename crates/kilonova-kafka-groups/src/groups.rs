//! Kafka's classic consumer-group protocol, as a state machine: members
//! join, the group waits for every member to (re)join, a generation forms
//! with a leader, the leader's assignment is handed out at SyncGroup,
//! heartbeats keep members in, and a member that leaves or goes silent
//! makes the others rejoin. The assignment itself is the clients' (range,
//! roundrobin, cooperative-sticky run in the leader).
//!
//! Time is passed in (`now`), so the machine is tested without a clock;
//! answers that must wait (a join until the generation forms, a follower's
//! sync until the leader's) are oneshot channels. The broker's Kafka
//! listener runs [`Coordinator::tick`] every [`TICK`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kilonova_kafka::kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;

/// How often the coordinator looks for expired members and overdue rebalances.
pub const TICK: Duration = Duration::from_millis(100);

/// The most groups and members kept: past them a join is refused
/// (`GROUP_MAX_SIZE_REACHED` / `COORDINATOR_NOT_AVAILABLE`), so a client
/// inventing group or member ids cannot grow the broker without bound.
const MAX_GROUPS: usize = 10_000;
const MAX_MEMBERS: usize = 1_000;

fn code(e: ResponseError) -> i16 {
    e.code()
}

/// A JoinGroup, as the machine needs it.
#[derive(Debug, Clone)]
pub struct Join {
    pub group: String,
    /// Empty: a new member.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    /// The client's address, for DescribeGroups.
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    /// (name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// Version 4 and later: a new member first gets its id with
    /// `MEMBER_ID_REQUIRED` and joins again with it.
    pub id_required: bool,
}

/// The answer to a join.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Joined {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// The members and their metadata (for the leader only).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

/// The answer to a sync.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Synced {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

/// An answer now, or one to wait for.
pub enum Answer<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

/// A group as DescribeGroups shows it.
pub struct Described {
    pub state: State,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub members: Vec<DescribedMember>,
}

pub struct DescribedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Its metadata for the group's protocol, and its assignment.
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A group state as Kafka names it.
pub fn state_name(state: State) -> &'static str {
    match state {
        State::Empty => "Empty",
        State::PreparingRebalance => "PreparingRebalance",
        State::CompletingRebalance => "CompletingRebalance",
        State::Stable => "Stable",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    last_seen: Instant,
}

struct Group {
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Ids handed out with MEMBER_ID_REQUIRED, not joined yet, and until when.
    pending_ids: HashMap<String, Instant>,
    /// When a rebalance in preparation completes at the latest.
    deadline: Option<Instant>,
    joins: HashMap<String, oneshot::Sender<Joined>>,
    syncs: HashMap<String, oneshot::Sender<Synced>>,
    assignment: HashMap<String, Bytes>,
    /// Rebalances completed with members, counted for every group.
    rebalances: Arc<AtomicU64>,
}

impl Group {
    fn new(rebalances: Arc<AtomicU64>) -> Self {
        Group {
            rebalances,
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending_ids: HashMap::new(),
            deadline: None,
            joins: HashMap::new(),
            syncs: HashMap::new(),
            assignment: HashMap::new(),
        }
    }

    /// Starts a rebalance: every member must join again (followers waiting
    /// for their assignment are told to).
    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        let wait = match self.state {
            State::Empty => initial_delay,
            _ => self
                .members
                .values()
                .map(|m| m.rebalance_timeout)
                .max()
                .unwrap_or(initial_delay),
        };
        if self.state != State::PreparingRebalance {
            self.deadline = Some(now + wait);
        }
        self.state = State::PreparingRebalance;
        self.assignment.clear();
        for (_, tx) in self.syncs.drain() {
            let _ = tx.send(Synced {
                error: code(ResponseError::RebalanceInProgress),
                ..Default::default()
            });
        }
    }

    /// Completes the rebalance when every member joined again (and an empty
    /// group's first wait is over), or when the deadline passed (members
    /// that did not join again are dropped).
    fn maybe_complete(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let overdue = self.deadline.is_none_or(|d| now >= d);
        let all_joined =
            !self.members.is_empty() && self.members.keys().all(|m| self.joins.contains_key(m));
        // The first generation waits out its delay (more members may come);
        // a running group completes as soon as everyone is back.
        if !(overdue || (all_joined && self.generation > 0)) {
            return;
        }
        let joined: Vec<String> = self.joins.keys().cloned().collect();
        self.members.retain(|id, _| joined.contains(id));
        self.generation += 1;
        self.deadline = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.leader = None;
            self.protocol = None;
            return;
        }
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.pick_protocol(&leader);
        self.protocol = protocol.clone();
        self.state = State::CompletingRebalance;
        let error = match protocol {
            Some(_) => 0,
            None => code(ResponseError::InconsistentGroupProtocol),
        };
        let everyone: Vec<(String, Option<String>, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let meta = protocol
                    .as_ref()
                    .and_then(|p| m.protocols.iter().find(|(n, _)| n == p))
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (id.clone(), m.instance_id.clone(), meta)
            })
            .collect();
        for (id, tx) in self.joins.drain() {
            let _ = tx.send(Joined {
                error,
                generation: self.generation,
                protocol_type: self.protocol_type.clone(),
                protocol: self.protocol.clone(),
                leader: leader.clone(),
                members: match id == leader {
                    true => everyone.clone(),
                    false => Vec::new(),
                },
                member_id: id,
            });
        }
    }

    /// The leader's most preferred protocol that every member speaks.
    fn pick_protocol(&self, leader: &str) -> Option<String> {
        let prefs = &self.members.get(leader)?.protocols;
        prefs
            .iter()
            .map(|(n, _)| n)
            .find(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == *n))
            })
            .cloned()
    }

    fn remove_member(&mut self, id: &str, now: Instant, initial_delay: Duration) {
        self.members.remove(id);
        if let Some(tx) = self.joins.remove(id) {
            let _ = tx.send(Joined {
                error: code(ResponseError::UnknownMemberId),
                member_id: id.to_string(),
                ..Default::default()
            });
        }
        self.syncs.remove(id);
        if self.members.is_empty() && self.joins.is_empty() {
            self.generation += 1;
            self.state = State::Empty;
            self.leader = None;
            self.protocol = None;
            self.deadline = None;
            self.assignment.clear();
        } else {
            self.prepare_rebalance(now, initial_delay);
            self.maybe_complete(now);
        }
    }
}

/// Every consumer group of one Kafka listener.
pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    /// How long an empty group's first rebalance waits for more members
    /// (Kafka's `group.initial.rebalance.delay.ms`).
    initial_delay: Duration,
    next_member: std::sync::atomic::AtomicU64,
    /// Rebalances completed with members, over every group.
    rebalances: Arc<AtomicU64>,
}

impl Coordinator {
    /// Groups that count their rebalances in `rebalances`.
    pub fn new(initial_delay: Duration, rebalances: Arc<AtomicU64>) -> Self {
        Coordinator {
            groups: Mutex::new(HashMap::new()),
            initial_delay,
            rebalances,
            next_member: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        // Groups are whole values between calls: a panicked holder left none half-changed.
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn join(&self, j: Join, now: Instant) -> Answer<Joined> {
        let refuse = |e: ResponseError, member_id: &str| {
            Answer::Now(Joined {
                error: code(e),
                member_id: member_id.to_string(),
                ..Default::default()
            })
        };
        if j.protocols.is_empty() || j.protocol_type.is_empty() {
            return refuse(ResponseError::InconsistentGroupProtocol, &j.member_id);
        }
        let mut groups = self.groups();
        if !groups.contains_key(&j.group) && groups.len() >= MAX_GROUPS {
            return refuse(ResponseError::CoordinatorNotAvailable, &j.member_id);
        }
        let g = groups
            .entry(j.group.clone())
            .or_insert_with(|| Group::new(self.rebalances.clone()));
        if g.protocol_type
            .as_ref()
            .is_some_and(|t| *t != j.protocol_type)
            && g.state != State::Empty
        {
            return refuse(ResponseError::InconsistentGroupProtocol, &j.member_id);
        }
        let member_id = if j.member_id.is_empty() {
            if g.members.len() + g.pending_ids.len() >= MAX_MEMBERS {
                return refuse(ResponseError::GroupMaxSizeReached, "");
            }
            let n = self
                .next_member
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = format!("{}-{n}", j.client_id);
            if j.id_required {
                g.pending_ids.insert(id.clone(), now + j.session_timeout);
                return refuse(ResponseError::MemberIdRequired, &id);
            }
            id
        } else {
            if !g.members.contains_key(&j.member_id) && g.pending_ids.remove(&j.member_id).is_none()
            {
                return refuse(ResponseError::UnknownMemberId, &j.member_id);
            }
            j.member_id.clone()
        };
        g.protocol_type = Some(j.protocol_type.clone());
        g.members.insert(
            member_id.clone(),
            Member {
                instance_id: j.instance_id.clone(),
                client_id: j.client_id.clone(),
                client_host: j.client_host.clone(),
                session_timeout: j.session_timeout,
                rebalance_timeout: j.rebalance_timeout,
                protocols: j.protocols.clone(),
                last_seen: now,
            },
        );
        let (tx, rx) = oneshot::channel();
        if let Some(old) = g.joins.insert(member_id.clone(), tx) {
            // The same member joining twice: the older request is answered.
            let _ = old.send(Joined {
                error: code(ResponseError::UnknownMemberId),
                member_id: member_id.clone(),
                ..Default::default()
            });
        }
        if g.state != State::PreparingRebalance {
            g.prepare_rebalance(now, self.initial_delay);
        }
        g.maybe_complete(now);
        Answer::Later(rx)
    }

    pub fn sync(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Answer<Synced> {
        let err = |e: ResponseError| {
            Answer::Now(Synced {
                error: code(e),
                ..Default::default()
            })
        };
        let mut groups = self.groups();
        let Some(g) = groups.get_mut(group) else {
            return err(ResponseError::UnknownMemberId);
        };
        let Some(m) = g.members.get_mut(member_id) else {
            return err(ResponseError::UnknownMemberId);
        };
        m.last_seen = now;
        if generation != g.generation {
            return err(ResponseError::IllegalGeneration);
        }
        let done = |g: &Group, id: &str| Synced {
            error: 0,
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone(),
            assignment: g.assignment.get(id).cloned().unwrap_or_default(),
        };
        match g.state {
            State::PreparingRebalance => err(ResponseError::RebalanceInProgress),
            State::Empty => err(ResponseError::UnknownMemberId),
            State::Stable => Answer::Now(done(g, member_id)),
            State::CompletingRebalance => {
                if g.leader.as_deref() == Some(member_id) {
                    g.assignment = assignments
                        .into_iter()
                        .filter(|(id, _)| g.members.contains_key(id))
                        .collect();
                    g.state = State::Stable;
                    for (id, tx) in std::mem::take(&mut g.syncs) {
                        let _ = tx.send(done(g, &id));
                    }
                    Answer::Now(done(g, member_id))
                } else {
                    let (tx, rx) = oneshot::channel();
                    g.syncs.insert(member_id.to_string(), tx);
                    Answer::Later(rx)
                }
            }
        }
    }

    pub fn heartbeat(&self, group: &str, generation: i32, member_id: &str, now: Instant) -> i16 {
        let mut groups = self.groups();
        let Some(g) = groups.get_mut(group) else {
            return code(ResponseError::UnknownMemberId);
        };
        let Some(m) = g.members.get_mut(member_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        m.last_seen = now;
        match g.state {
            State::PreparingRebalance => code(ResponseError::RebalanceInProgress),
            _ if generation != g.generation => code(ResponseError::IllegalGeneration),
            _ => 0,
        }
    }

    /// Members leave; one error code per member id given.
    pub fn leave(&self, group: &str, member_ids: &[String], now: Instant) -> Vec<i16> {
        let mut groups = self.groups();
        let Some(g) = groups.get_mut(group) else {
            return vec![code(ResponseError::UnknownMemberId); member_ids.len()];
        };
        member_ids
            .iter()
            .map(|id| {
                if !g.members.contains_key(id) {
                    return code(ResponseError::UnknownMemberId);
                }
                g.remove_member(id, now, self.initial_delay);
                0
            })
            .collect()
    }

    /// Whether an OffsetCommit of `member_id` in `generation` is taken: a
    /// commit without a generation (-1) only for a group with no members
    /// (Kafka's rule for consumers that assign partitions themselves); a
    /// member's in its current generation, except while that generation's
    /// assignment is being handed out.
    pub fn commit_allowed(&self, group: &str, generation: i32, member_id: &str) -> i16 {
        let groups = self.groups();
        let Some(g) = groups.get(group) else {
            return match generation < 0 {
                true => 0,
                false => code(ResponseError::IllegalGeneration),
            };
        };
        if generation < 0 {
            return match g.members.is_empty() {
                true => 0,
                false => code(ResponseError::UnknownMemberId),
            };
        }
        if !g.members.contains_key(member_id) {
            return code(ResponseError::UnknownMemberId);
        }
        if generation != g.generation {
            return code(ResponseError::IllegalGeneration);
        }
        // While a rebalance is prepared the current generation still holds
        // its partitions: its commits are taken (a member commits what it
        // processed before it gives its partitions up, as Kafka allows).
        // Between the join's answer and the assignment they are not.
        match g.state {
            State::CompletingRebalance => code(ResponseError::RebalanceInProgress),
            _ => 0,
        }
    }

    /// Expires silent members and completes overdue rebalances.
    pub fn tick(&self, now: Instant) {
        let delay = self.initial_delay;
        let mut groups = self.groups();
        for g in groups.values_mut() {
            g.pending_ids.retain(|_, until| *until > now);
            if matches!(g.state, State::Stable | State::CompletingRebalance) {
                let expired: Vec<String> = g
                    .members
                    .iter()
                    .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > m.session_timeout)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    tracing::info!(member = %id, "Kafka group member expired (no heartbeat within its session timeout)");
                    g.remove_member(&id, now, delay);
                }
            }
            g.maybe_complete(now);
        }
        // Empty groups with nothing pending are forgotten (their offsets stay
        // in the metadata store).
        groups.retain(|_, g| {
            g.state != State::Empty || !g.pending_ids.is_empty() || !g.joins.is_empty()
        });
    }

    /// A group as DescribeGroups shows it (none: the coordinator does not
    /// know it, so it is Empty or Dead in Kafka's words).
    pub fn describe(&self, group: &str) -> Option<Described> {
        let groups = self.groups();
        let g = groups.get(group)?;
        let members = g
            .members
            .iter()
            .map(|(id, m)| DescribedMember {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: g
                    .protocol
                    .as_ref()
                    .and_then(|p| m.protocols.iter().find(|(n, _)| n == p))
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default(),
                assignment: g.assignment.get(id).cloned().unwrap_or_default(),
            })
            .collect();
        Some(Described {
            state: g.state,
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone(),
            members,
        })
    }

    /// Forgets a group with no members (DeleteGroups); false if it has some.
    pub fn forget_if_empty(&self, group: &str) -> bool {
        let mut groups = self.groups();
        match groups.get(group) {
            Some(g) if !g.members.is_empty() || !g.joins.is_empty() => false,
            _ => {
                groups.remove(group);
                true
            }
        }
    }

    /// (group, state, members) of every group, for ListGroups and admin.
    pub fn list(&self) -> Vec<(String, State, usize, Option<String>)> {
        self.groups()
            .iter()
            .map(|(name, g)| {
                (
                    name.clone(),
                    g.state,
                    g.members.len(),
                    g.protocol_type.clone(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(group: &str, member: &str) -> Join {
        Join {
            group: group.into(),
            member_id: member.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            id_required: true,
        }
    }

    fn now_of(a: Answer<Joined>) -> Joined {
        match a {
            Answer::Now(j) => j,
            Answer::Later(_) => panic!("answered later"),
        }
    }

    fn later<T: std::fmt::Debug>(a: Answer<T>) -> oneshot::Receiver<T> {
        match a {
            Answer::Later(rx) => rx,
            Answer::Now(t) => panic!("answered now: {t:?}"),
        }
    }

    /// Joins a new member (two steps, as clients of version 4 and later do).
    fn join_new(c: &Coordinator, group: &str, now: Instant) -> (String, oneshot::Receiver<Joined>) {
        let first = now_of(c.join(join(group, ""), now));
        assert_eq!(first.error, code(ResponseError::MemberIdRequired));
        let id = first.member_id;
        (id.clone(), later(c.join(join(group, &id), now)))
    }

    #[test]
    fn three_members_form_one_generation_after_the_initial_delay() {
        let t0 = Instant::now();
        let c = Coordinator::new(Duration::from_secs(3), Default::default());
        let mut waiting: Vec<_> = (0..3).map(|_| join_new(&c, "g", t0)).collect();
        // Within the delay nobody is answered: more may come.
        c.tick(t0 + Duration::from_secs(1));
        assert!(waiting.iter_mut().all(|(_, rx)| rx.try_recv().is_err()));
        c.tick(t0 + Duration::from_secs(3));
        let answers: Vec<Joined> = waiting
            .iter_mut()
            .map(|(_, rx)| rx.try_recv().unwrap())
            .collect();
        assert!(answers.iter().all(|a| a.error == 0 && a.generation == 1));
        let leaders: Vec<&Joined> = answers.iter().filter(|a| a.member_id == a.leader).collect();
        assert_eq!(leaders.len(), 1);
        assert_eq!(
            leaders[0].members.len(),
            3,
            "the leader gets everyone's metadata"
        );
        assert_eq!(answers.iter().filter(|a| a.members.is_empty()).count(), 2);
        assert_eq!(answers[0].protocol.as_deref(), Some("range"));
        // The followers' sync waits for the leader's assignment.
        let leader = leaders[0].member_id.clone();
        let followers: Vec<String> = waiting
            .iter()
            .map(|(id, _)| id.clone())
            .filter(|id| *id != leader)
            .collect();
        let mut f = later(c.sync("g", 1, &followers[0], vec![], t0));
        let assignments = waiting
            .iter()
            .map(|(id, _)| (id.clone(), Bytes::from(format!("for {id}"))))
            .collect();
        let Answer::Now(l) = c.sync("g", 1, &leader, assignments, t0) else {
            panic!("leader waits")
        };
        assert_eq!(l.assignment, Bytes::from(format!("for {leader}")));
        assert_eq!(
            f.try_recv().unwrap().assignment,
            Bytes::from(format!("for {}", followers[0]))
        );
        assert_eq!(c.heartbeat("g", 1, &followers[1], t0), 0);
        let d = c.describe("g").unwrap();
        assert_eq!((d.state, d.members.len()), (State::Stable, 3));
        assert!(d
            .members
            .iter()
            .all(|m| m.assignment == format!("for {}", m.member_id)));
        assert!(
            !c.forget_if_empty("g"),
            "a group with members is not deleted"
        );
        assert!(c.forget_if_empty("unknown"));
    }

    #[test]
    fn a_new_member_makes_the_others_rejoin_and_a_silent_one_is_dropped() {
        let t0 = Instant::now();
        let c = Coordinator::new(Duration::ZERO, Default::default());
        let (a, mut ra) = join_new(&c, "g", t0);
        c.tick(t0);
        assert_eq!(ra.try_recv().unwrap().generation, 1);
        let Answer::Now(_) = c.sync(
            "g",
            1,
            &a,
            vec![(a.clone(), Bytes::from_static(b"all"))],
            t0,
        ) else {
            panic!()
        };
        // b joins: a is told by its heartbeat to rejoin.
        let (b, mut rb) = join_new(&c, "g", t0);
        assert_eq!(
            c.heartbeat("g", 1, &a, t0),
            code(ResponseError::RebalanceInProgress)
        );
        assert!(rb.try_recv().is_err(), "waits for a to rejoin");
        // Until it rejoins, a's generation still commits what it processed.
        assert_eq!(c.commit_allowed("g", 1, &a), 0);
        let mut ra = later(c.join(join("g", &a), t0));
        let (ja, jb) = (ra.try_recv().unwrap(), rb.try_recv().unwrap());
        assert_eq!((ja.generation, jb.generation), (2, 2));
        // Commits name the generation: an old one is refused, and the new
        // one's only once its assignment is handed out.
        assert_eq!(
            c.commit_allowed("g", 1, &a),
            code(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            c.commit_allowed("g", 2, &a),
            code(ResponseError::RebalanceInProgress)
        );
        // b goes silent past its session timeout: a rebalance drops it.
        let leader = ja.leader.clone();
        let Answer::Now(_) = c.sync("g", 2, &leader, vec![], t0) else {
            panic!()
        };
        assert_eq!(c.commit_allowed("g", 2, &a), 0);
        let later_t = t0 + Duration::from_secs(11);
        assert_eq!(c.heartbeat("g", 2, &a, later_t - Duration::from_secs(1)), 0);
        c.tick(later_t);
        assert_eq!(
            c.heartbeat("g", 2, &b, later_t),
            code(ResponseError::UnknownMemberId),
            "b expired"
        );
        assert_eq!(
            c.heartbeat("g", 2, &a, later_t),
            code(ResponseError::RebalanceInProgress)
        );
        let mut ra = later(c.join(join("g", &a), later_t));
        let j = ra.try_recv().unwrap();
        assert_eq!((j.generation, j.leader.as_str()), (3, a.as_str()));
        assert_eq!(j.members.len(), 1);
    }

    #[test]
    fn leaving_unknown_members_and_free_commits() {
        let t0 = Instant::now();
        let c = Coordinator::new(Duration::ZERO, Default::default());
        assert_eq!(
            c.heartbeat("none", 1, "x", t0),
            code(ResponseError::UnknownMemberId)
        );
        assert_eq!(
            now_of(c.join(join("g", "made-up"), t0)).error,
            code(ResponseError::UnknownMemberId)
        );
        // A consumer that assigns its own partitions commits with generation -1.
        assert_eq!(c.commit_allowed("solo", -1, ""), 0);
        let (a, mut ra) = join_new(&c, "g", t0);
        c.tick(t0);
        ra.try_recv().unwrap();
        assert_eq!(
            c.commit_allowed("g", -1, ""),
            code(ResponseError::UnknownMemberId)
        );
        assert_eq!(
            c.leave("g", &[a.clone(), "x".into()], t0),
            vec![0, code(ResponseError::UnknownMemberId)]
        );
        assert_eq!(
            c.commit_allowed("g", -1, ""),
            0,
            "an empty group takes free commits again"
        );
        c.tick(t0);
        assert!(c.list().is_empty(), "an empty group is forgotten");
    }
}

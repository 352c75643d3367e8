#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Cluster membership in-process: brokers sharing one metadata store (the
//! embedded one; the end-to-end tests run real processes on etcd) — where
//! lookups place bundles, what a broker that does not own a topic answers,
//! what unloading and restarting do to ownership.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cmd, start_cluster_member, start_cluster_member_listening, Raw, Server, WAIT};
use kilonova_broker::{BrokerError, TopicName};
use kilonova_metadata::bundles::{self, BundleRange};
use kilonova_metadata::{EmbeddedStore, NamespaceName, Resources};
use kilonova_pulsar_protocol::proto::{
    base_command::Type, CommandLookupTopic, CommandProducer, ServerError,
};

const TTL: Duration = Duration::from_secs(30);

fn shared_metadata(dir: &tempfile::TempDir) -> Resources {
    let store = EmbeddedStore::open(&dir.path().join("metadata.redb")).unwrap();
    Resources::new(Arc::new(store))
}

fn default_ns() -> NamespaceName {
    NamespaceName::new("public", "default").unwrap()
}

/// One topic name in each of `public/default`'s bundles, in bundle order.
async fn topic_per_bundle(r: &Resources) -> Vec<(BundleRange, TopicName)> {
    let policies = r.namespace(&default_ns()).await.unwrap();
    let ranges = bundles::ranges(&policies.bundles).unwrap();
    let mut out = Vec::new();
    for range in ranges {
        let name = (0..)
            .map(|i| TopicName::parse(&format!("persistent://public/default/t{i}")).unwrap())
            .find(|t| bundles::bundle_of(&policies.bundles, t).unwrap() == range)
            .unwrap();
        out.push((range, name));
    }
    out
}

/// Looks `topic` up on `via`, following a redirect as clients do; returns
/// the Pulsar URL to connect to and whether a redirect was followed.
async fn lookup(members: &[&Server], via: usize, topic: &TopicName) -> (String, bool) {
    let first = members[via]
        .broker
        .lookup_topic(topic, None, false)
        .await
        .unwrap();
    if !first.redirect {
        return (first.urls.plain.unwrap(), false);
    }
    let to = first.urls.plain.unwrap();
    let next = members
        .iter()
        .find(|m| format!("pulsar://{}", m.addr) == to)
        .expect("a redirect names a member");
    let second = next.broker.lookup_topic(topic, None, true).await.unwrap();
    assert!(
        !second.redirect,
        "an authoritative lookup is not redirected again"
    );
    (second.urls.plain.unwrap(), true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_spread_bundles_over_the_least_loaded_brokers_and_redirect_there() {
    let dir = tempfile::tempdir().unwrap();
    let r = shared_metadata(&dir);
    let a = start_cluster_member(r.clone(), "a:8080", TTL).await;
    let b = start_cluster_member(r.clone(), "b:8080", TTL).await;
    let members = [&a, &b];
    let mut redirects = 0;
    let mut placed = Vec::new();
    for (range, topic) in topic_per_bundle(&r).await {
        let (url, redirected) = lookup(&members, 0, &topic).await;
        redirects += usize::from(redirected);
        let owner = r.bundle_owner(&default_ns(), range).await.unwrap().unwrap();
        assert_eq!(owner.native_url, url, "the answer names the bundle's owner");
        assert_eq!(
            redirected,
            owner.broker == "b:8080",
            "only placing on b redirects"
        );
        placed.push(owner.broker);
        // Asked again, anywhere: the owner, connected to directly.
        for via in 0..2 {
            assert_eq!(lookup(&members, via, &topic).await, (url.clone(), false));
        }
    }
    placed.sort();
    assert_eq!(placed, ["a:8080", "a:8080", "b:8080", "b:8080"]);
    assert_eq!(redirects, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_on_a_broker_not_owning_the_topic_gets_service_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let r = shared_metadata(&dir);
    let a = start_cluster_member(r.clone(), "a:8080", TTL).await;
    let b = start_cluster_member(r.clone(), "b:8080", TTL).await;
    let (_, topic) = topic_per_bundle(&r).await.remove(0);
    // b takes the bundle (an authoritative lookup: it was chosen).
    let on_b = b.broker.lookup_topic(&topic, None, true).await.unwrap();
    assert_eq!(on_b.urls.plain, Some(format!("pulsar://{}", b.addr)));
    let mut raw = Raw::connect(a.addr).await;
    raw.send(cmd(Type::Producer, |c| {
        c.producer = Some(Box::new(CommandProducer {
            topic: topic.to_string(),
            producer_id: 1,
            request_id: 7,
            ..Default::default()
        }))
    }))
    .await;
    let f = tokio::time::timeout(WAIT, raw.recv()).await.unwrap();
    let e = f.command.error.expect("an error answer");
    assert_eq!(e.error, ServerError::ServiceNotReady as i32, "{e:?}");
    assert!(e.message.contains("b:8080"), "{e:?}");
    // The owner serves it.
    let mut raw = Raw::connect(b.addr).await;
    raw.producer(&topic.to_string(), 1).await;
    // And an admin request on a reaches b's admin URL.
    let request = kilonova_broker::AdminRequest::Stats;
    match a.broker.topic_admin(&topic, request).await {
        Err(BrokerError::ServedElsewhere { http_url, .. }) => {
            assert_eq!(http_url, "http://b:8080")
        }
        Err(e) => panic!("expected ServedElsewhere, got {e}"),
        Ok(_) => panic!("expected ServedElsewhere, got an answer"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_naming_a_listener_the_chosen_broker_lacks_is_refused_and_places_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = shared_metadata(&dir);
    // Neither member has advertised listeners: every name is unknown.
    let a = start_cluster_member(r.clone(), "a:8080", TTL).await;
    let b = start_cluster_member(r.clone(), "b:8080", TTL).await;
    let ns = default_ns();
    for (range, topic) in topic_per_bundle(&r).await {
        // Placed on a or redirected to b, and a taking it itself when asked
        // authoritatively: each is refused with Pulsar's error.
        for authoritative in [false, true] {
            match a
                .broker
                .lookup_topic(&topic, Some("nope"), authoritative)
                .await
            {
                Err(e @ BrokerError::UnknownListener(_)) => {
                    assert_eq!(e.to_string(), "the broker do not have nope listener");
                    assert_eq!(e.server_error(), ServerError::ServiceNotReady);
                }
                other => panic!("expected UnknownListener, got {other:?}"),
            }
            assert_eq!(
                r.bundle_owner(&ns, range).await.unwrap(),
                None,
                "a refused lookup (authoritative: {authoritative}) took bundle {range}"
            );
        }
    }
    // Owned by b: refused on a too (b's registered listeners decide).
    let (range, topic) = topic_per_bundle(&r).await.remove(0);
    b.broker.lookup_topic(&topic, None, true).await.unwrap();
    assert!(matches!(
        a.broker.lookup_topic(&topic, Some("nope"), false).await,
        Err(BrokerError::UnknownListener(_))
    ));
    assert_eq!(
        r.bundle_owner(&ns, range).await.unwrap().unwrap().broker,
        "b:8080"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// With no other broker to hand it to, an unloaded bundle is released.
async fn an_unloaded_bundle_is_released_and_its_producers_closed() {
    let dir = tempfile::tempdir().unwrap();
    let r = shared_metadata(&dir);
    let a = start_cluster_member(r.clone(), "a:8080", TTL).await;
    let (range, topic) = topic_per_bundle(&r).await.remove(0);
    a.broker.lookup_topic(&topic, None, true).await.unwrap();
    let mut raw = Raw::connect(a.addr).await;
    raw.producer(&topic.to_string(), 1).await;
    let ns = default_ns();
    assert!(a.broker.unload_bundle(&ns, range).await.unwrap());
    raw.recv_type(Type::CloseProducer).await;
    assert_eq!(r.bundle_owner(&ns, range).await.unwrap(), None);
    // Not served any more: unloading it again finds nothing to do.
    assert!(!a.broker.unload_bundle(&ns, range).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unloaded_bundle_is_handed_to_the_next_broker_before_its_clients_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let r = shared_metadata(&dir);
    let a = start_cluster_member(r.clone(), "a:8080", TTL).await;
    let b = start_cluster_member(r.clone(), "b:8080", TTL).await;
    let (range, topic) = topic_per_bundle(&r).await.remove(0);
    a.broker.lookup_topic(&topic, None, true).await.unwrap();
    let ns = default_ns();
    let before = r.bundle_owner(&ns, range).await.unwrap().unwrap();
    let mut raw = Raw::connect(a.addr).await;
    raw.producer(&topic.to_string(), 1).await;
    assert!(a.broker.unload_bundle(&ns, range).await.unwrap());
    let close = raw.recv_type(Type::CloseProducer).await;
    let named = close.command.close_producer.unwrap();
    assert_eq!(
        named.assigned_broker_service_url,
        Some(format!("pulsar://{}", b.addr))
    );
    // b owns it already, before any client of it arrives: a lookup now,
    // anywhere, sends the client to b rather than placing the bundle anew.
    let owner = r.bundle_owner(&ns, range).await.unwrap().unwrap();
    assert_eq!(owner.broker, "b:8080");
    assert!(owner.epoch > before.epoch);
    for via in [&a, &b] {
        let answer = via.broker.lookup_topic(&topic, None, false).await.unwrap();
        assert_eq!(answer.urls.plain, Some(format!("pulsar://{}", b.addr)));
        assert!(!answer.redirect);
    }
    // The producer reconnects to b, which serves the bundle as its own:
    // unloading it there hands it back to a.
    let mut raw = Raw::connect(b.addr).await;
    raw.producer(&topic.to_string(), 1).await;
    assert!(b.broker.unload_bundle(&ns, range).await.unwrap());
    let back = r.bundle_owner(&ns, range).await.unwrap().unwrap();
    assert_eq!(back.broker, "a:8080");
    assert!(back.epoch > owner.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_names_the_next_owners_urls_of_the_listener_a_connection_looked_up_with() {
    let dir = tempfile::tempdir().unwrap();
    let r = shared_metadata(&dir);
    let a =
        start_cluster_member_listening(r.clone(), "a:8080", TTL, "pulsar://a.example:16650").await;
    let b =
        start_cluster_member_listening(r.clone(), "b:8080", TTL, "pulsar://b.example:16650").await;
    let (range, topic) = topic_per_bundle(&r).await.remove(0);
    a.broker.lookup_topic(&topic, None, true).await.unwrap();
    // One client looks the topic up here naming `external`, one names
    // none, one looks nothing up (another broker sent it here).
    let mut clients = Vec::new();
    for listener in [Some("external"), Some(""), None] {
        let mut raw = Raw::connect(a.addr).await;
        if let Some(name) = listener {
            raw.send(cmd(Type::Lookup, |c| {
                c.lookup_topic = Some(Box::new(CommandLookupTopic {
                    topic: topic.to_string(),
                    request_id: 1,
                    advertised_listener_name: Some(name.to_owned()),
                    ..Default::default()
                }))
            }))
            .await;
            raw.recv_type(Type::LookupResponse).await;
        }
        raw.producer(&topic.to_string(), 1).await;
        clients.push(raw);
    }
    assert!(a.broker.unload_bundle(&default_ns(), range).await.unwrap());
    assert_eq!(
        r.bundle_owner(&default_ns(), range)
            .await
            .unwrap()
            .unwrap()
            .broker,
        "b:8080"
    );
    let mut named = Vec::new();
    for raw in &mut clients {
        let close = raw.recv_type(Type::CloseProducer).await;
        named.push(
            close
                .command
                .close_producer
                .unwrap()
                .assigned_broker_service_url,
        );
    }
    assert_eq!(
        named,
        [
            Some("pulsar://b.example:16650".to_owned()),
            Some(format!("pulsar://{}", b.addr)),
            // a has two listeners: which one this client uses is unknown,
            // so it is named none and looks the topic up again.
            None,
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_ends_its_predecessors_session_and_frees_its_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let r = shared_metadata(&dir);
    let old = start_cluster_member(r.clone(), "a:8080", TTL).await;
    let (range, topic) = topic_per_bundle(&r).await.remove(0);
    old.broker.lookup_topic(&topic, None, true).await.unwrap();
    let ns = default_ns();
    let before = r.bundle_owner(&ns, range).await.unwrap().unwrap();
    assert_eq!(before.broker, "a:8080");
    // The same id joins again (the process restarted; the old one's
    // session would otherwise live on for its ttl).
    let new = start_cluster_member(r.clone(), "a:8080", TTL).await;
    assert_eq!(r.bundle_owner(&ns, range).await.unwrap(), None);
    let again = new.broker.lookup_topic(&topic, None, true).await.unwrap();
    assert_eq!(again.urls.plain, Some(format!("pulsar://{}", new.addr)));
    let after = r.bundle_owner(&ns, range).await.unwrap().unwrap();
    assert!(
        after.epoch > before.epoch,
        "a new ownership has a higher epoch"
    );
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Cluster mode end to end: three `kilonova broker` processes sharing a real
//! etcd (started on loopback; skipped when no `etcd` binary is installed,
//! unless KILONOVA_REQUIRE_ETCD is set), driven by the `pulsar` crate, a
//! client we did not write, that is given one broker's URL only.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{http_request, within, Broker, STEP};
use futures::StreamExt;
use kilonova_etcd::server::EtcdServer;
use pulsar::consumer::InitialPosition;
use pulsar::ConnectionRetryOptions;
use pulsar::{Consumer, ConsumerOptions, Pulsar, TokioExecutor};

/// A cluster of `n` brokers on `etcd`, under a root of its own.
async fn cluster(etcd: &EtcdServer, n: usize, session_ttl_secs: u64) -> Vec<Broker> {
    cluster_with(etcd, n, session_ttl_secs, "").await
}

/// [`cluster`], with `extra` appended to every broker's configuration.
async fn cluster_with(
    etcd: &EtcdServer,
    n: usize,
    session_ttl_secs: u64,
    extra: &str,
) -> Vec<Broker> {
    let root = format!("/kilonova-test-{}", uuid_like());
    let config = format!(
        "[broker]\ncluster_name = \"c1\"\n\
         [metadata]\nbackend = \"etcd\"\nsession_ttl_secs = {session_ttl_secs}\n\
         [metadata.etcd]\nendpoints = [\"{}\"]\nroot = \"{root}\"\n{extra}",
        etcd.endpoint()
    );
    let mut brokers = Vec::new();
    for _ in 0..n {
        brokers.push(Broker::start_cluster_member(&config).await);
    }
    brokers
}

/// A name no other test run uses.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// The Pulsar URL the HTTP lookup of `topic` (in public/default) answers on `via`.
async fn owner(via: &Broker, topic: &str) -> String {
    let path = format!("/lookup/v2/topic/persistent/public/default/{topic}");
    let (status, body) = http_request(via.http_port, "GET", &path, "")
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["brokerUrl"].as_str().unwrap().to_owned()
}

/// A counter of `broker`'s /metrics.
async fn counter(broker: &Broker, name: &str) -> f64 {
    let (status, body) = http_request(broker.http_port, "GET", "/metrics", "")
        .await
        .unwrap();
    assert_eq!(status, 200);
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

async fn client(url: String) -> Pulsar<TokioExecutor> {
    within(STEP, "connect", Pulsar::builder(url, TokioExecutor).build())
        .await
        .expect("the pulsar crate connects")
}

/// Sends `payload` to `topic` through a new producer and returns once it is acknowledged.
async fn send_one(client: &Pulsar<TokioExecutor>, topic: &str, payload: &str) {
    within(
        STEP,
        format!("send to {topic}"),
        try_send(client, topic, payload),
    )
    .await
    .unwrap_or_else(|e| panic!("send to {topic}: {e}"));
}

/// One attempt to send `payload` to `topic` through a new producer.
async fn try_send(
    client: &Pulsar<TokioExecutor>,
    topic: &str,
    payload: &str,
) -> Result<(), pulsar::Error> {
    let full = format!("persistent://public/default/{topic}");
    let mut producer = client.producer().with_topic(&full).build().await?;
    producer
        .send_non_blocking(payload.to_owned())
        .await?
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_one_brokers_url_reaches_topics_owned_by_all_three() {
    let Some(etcd) = EtcdServer::start_or_skip("cluster e2e").await else {
        return;
    };
    let brokers = cluster(&etcd, 3, 10).await;
    let client = client(brokers[0].service_url()).await;
    let topics: Vec<String> = (0..12).map(|i| format!("spread-{i}")).collect();
    for t in &topics {
        send_one(&client, t, &format!("hello {t}")).await;
    }
    // Every message is read back through the same client.
    for t in &topics {
        let full = format!("persistent://public/default/{t}");
        let mut consumer: Consumer<String, TokioExecutor> = within(STEP, "subscribe", async {
            client
                .consumer()
                .with_topic(&full)
                .with_subscription("s")
                .with_options(
                    ConsumerOptions::default().with_initial_position(InitialPosition::Earliest),
                )
                .build()
                .await
        })
        .await
        .unwrap();
        let msg = within(STEP, format!("receive from {t}"), consumer.next())
            .await
            .expect("a message")
            .expect("no error");
        assert_eq!(msg.deserialize().unwrap(), format!("hello {t}"));
    }
    // Placed on every broker, as any broker's lookup says.
    let mut owners = BTreeSet::new();
    for t in &topics {
        owners.insert(owner(&brokers[2], t).await);
    }
    let urls: BTreeSet<String> = brokers.iter().map(Broker::service_url).collect();
    assert_eq!(
        owners, urls,
        "the namespace's 4 bundles spread over the 3 brokers"
    );
    // The client asked broker 0 only: reaching the others took redirects.
    let mut redirects = 0.0;
    for b in &brokers {
        redirects += counter(b, "pulsar_broker_lookup_redirects").await;
    }
    assert!(redirects >= 2.0, "lookups redirected: {redirects}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_brokers_topics_are_served_by_another_once_its_session_expires() {
    let Some(etcd) = EtcdServer::start_or_skip("cluster e2e").await else {
        return;
    };
    let ttl = Duration::from_secs(2);
    let mut brokers = cluster(&etcd, 3, ttl.as_secs()).await;
    let client0 = client(brokers[0].service_url()).await;
    let topics: Vec<String> = (0..12).map(|i| format!("victim-{i}")).collect();
    for t in &topics {
        send_one(&client0, t, "before").await;
    }
    let dead_url = brokers[2].service_url();
    let mut orphaned = Vec::new();
    for t in &topics {
        if owner(&brokers[0], t).await == dead_url {
            orphaned.push(t.clone());
        }
    }
    assert!(!orphaned.is_empty(), "broker 2 owns some of the topics");
    brokers[2].kill().await;
    let killed = Instant::now();
    // A client given broker 1's URL reaches every orphaned topic once the
    // dead broker's session expired. Until then lookups still name the dead
    // broker, and the pulsar crate retries its URL rather than looking up
    // again: so, as an application would, it creates the producer again
    // (with few connection retries each time) until one works.
    let retry = ConnectionRetryOptions {
        max_retries: 1,
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..ConnectionRetryOptions::default()
    };
    let client1 = within(
        STEP,
        "connect",
        Pulsar::builder(brokers[1].service_url(), TokioExecutor)
            .with_connection_retry_options(retry)
            .build(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in &orphaned {
        loop {
            match tokio::time::timeout(Duration::from_secs(3), try_send(&client1, t, "after")).await
            {
                Ok(Ok(())) => break,
                _ if Instant::now() < deadline => continue,
                failed => panic!("{t} not served within 30 s of the kill: {failed:?}"),
            }
        }
        let now_owner = owner(&brokers[0], t).await;
        assert_ne!(now_owner, dead_url, "{t} is served by a live broker");
    }
    let took = killed.elapsed();
    assert!(
        took >= ttl / 2,
        "the bundles freed only when the session could have expired ({took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_shared_storage_a_killed_brokers_acknowledged_messages_are_delivered_by_the_next_owner(
) {
    let Some(etcd) = EtcdServer::start_or_skip("cluster shared storage").await else {
        return;
    };
    let Some(s3) =
        kilonova_objstore::seaweed::SeaweedServer::start_or_skip("cluster shared storage").await
    else {
        return;
    };
    let store = format!(
        "[offload.store]\ndriver = \"s3\"\nbucket = \"cluster\"\nendpoint = \"{}\"\n\
         region = \"us-east-1\"\npath_style = true\nprefix = \"{}\"\n\
         access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        s3.endpoint(),
        uuid_like(),
        kilonova_objstore::seaweed::ACCESS_KEY,
        kilonova_objstore::seaweed::SECRET_KEY
    );
    let ttl = Duration::from_secs(2);
    let mut brokers = cluster_with(&etcd, 3, ttl.as_secs(), &store).await;
    // A topic broker 2 owns (placed by lookups through broker 0).
    let client0 = client(brokers[0].service_url()).await;
    let dead_url = brokers[2].service_url();
    let mut topic = None;
    for i in 0..32 {
        let t = format!("kept-{}-{i}", uuid_like());
        send_one(&client0, &t, "probe").await;
        if owner(&brokers[0], &t).await == dead_url {
            topic = Some(t);
            break;
        }
    }
    let topic = topic.expect("broker 2 owns one of 32 topics");
    let full = format!("persistent://public/default/{topic}");
    // The subscription exists before the messages: it keeps them.
    let subscribe = |client: &Pulsar<TokioExecutor>| {
        client
            .consumer()
            .with_topic(&full)
            .with_subscription("s")
            .with_options(ConsumerOptions {
                initial_position: InitialPosition::Earliest,
                ..ConsumerOptions::default()
            })
            .build::<String>()
    };
    let mut consumer: Consumer<String, TokioExecutor> =
        within(STEP, "subscribe", subscribe(&client0))
            .await
            .unwrap();
    consumer.close().await.unwrap();
    let mut producer = client0.producer().with_topic(&full).build().await.unwrap();
    for i in 0..20 {
        producer
            .send_non_blocking(format!("m{i}"))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    brokers[2].kill().await;
    // Through broker 1, once the dead broker's session expired: the
    // subscription, with every acknowledged message after the probe.
    let client1 = client(brokers[1].service_url()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut consumer: Consumer<String, TokioExecutor> = loop {
        match tokio::time::timeout(Duration::from_secs(3), subscribe(&client1)).await {
            Ok(Ok(c)) => break c,
            _ if Instant::now() < deadline => continue,
            Ok(Err(e)) => panic!("{full} not served within 30 s of the kill: {e}"),
            Err(_) => panic!("{full} not served within 30 s of the kill: subscribing timed out"),
        }
    };
    let mut got = Vec::new();
    while got.len() < 21 {
        let m = within(STEP, "receive", consumer.next())
            .await
            .expect("a message")
            .unwrap();
        consumer.ack(&m).await.unwrap();
        got.push(m.deserialize().unwrap());
    }
    let want: Vec<String> = std::iter::once("probe".to_owned())
        .chain((0..20).map(|i| format!("m{i}")))
        .collect();
    assert_eq!(got, want);
}

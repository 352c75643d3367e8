#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What only a remote store has to show: sessions lost when keep-alives stop,
//! clear errors while etcd is down and recovery after it restarts, watches
//! resumed past a compaction, endpoints that do not answer skipped, and keys
//! with the layout's special bytes stored and listed as they are.
//! Without an `etcd` binary these skip, or fail with KILONOVA_REQUIRE_ETCD=1.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kilonova_etcd::server::EtcdServer;
use kilonova_etcd::{EtcdConfig, EtcdStore};
use kilonova_metadata::{Expect, MetadataError, MetadataStore, Watch, WatchEvent, Watched};

const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next(w: &mut Watch, what: &str) -> Watched {
    match tokio::time::timeout(EVENT_TIMEOUT, w.next()).await {
        Ok(Some(x)) => x,
        Ok(None) => panic!("watch ended waiting for {what}"),
        Err(_) => panic!("nothing within {EVENT_TIMEOUT:?}: {what}"),
    }
}

async fn next_event(w: &mut Watch, what: &str) -> WatchEvent {
    match next(w, what).await {
        Watched::Event(e) => e,
        Watched::Lagged { missed } => panic!("lagged by {missed} waiting for {what}"),
    }
}

fn unavailable<T: std::fmt::Debug>(r: Result<T, MetadataError>, what: &str) {
    match r {
        Err(MetadataError::Unavailable(msg)) => {
            assert!(!msg.is_empty(), "{what}: an unavailable error says why")
        }
        other => panic!("{what} with etcd down: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_keep_alives_loses_its_keys_and_reports_it() {
    let Some(server) = EtcdServer::start_or_skip("session loss").await else {
        return;
    };
    let s = EtcdStore::connect(&server.config()).await.unwrap();
    let session = s.open_session(Duration::from_secs(1)).await.unwrap();
    s.put("/brokers/b1", b("here"), Expect::Absent, Some(session))
        .await
        .unwrap();
    s.put("/brokers-config", b("stays"), Expect::Absent, None)
        .await
        .unwrap();
    let mut w = s.watch("/brokers");
    // Keep-alives work while the lease lives...
    s.keep_alive(session).await.unwrap();
    // ...then stop: the lease expires and etcd deletes the key.
    let started = Instant::now();
    let e = next_event(&mut w, "the ephemeral key's deletion at expiry").await;
    assert_eq!((e.key.as_str(), e.value), ("/brokers/b1", None));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not deleted before its ttl"
    );
    assert_eq!(s.get("/brokers/b1").await.unwrap(), None);
    assert!(s.get("/brokers-config").await.unwrap().is_some());
    match s.keep_alive(session).await {
        Err(MetadataError::SessionExpired(id)) => assert_eq!(id, session.0),
        other => panic!("keep-alive of a lost session: {other:?}"),
    }
    match s
        .put("/brokers/b1", b("again"), Expect::Any, Some(session))
        .await
    {
        Err(MetadataError::SessionExpired(_)) => {}
        other => panic!("a write bound to a lost session: {other:?}"),
    }
    match s.close_session(session).await {
        Err(MetadataError::SessionExpired(_)) => {}
        other => panic!("closing a lost session: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_gives_unavailable_errors_and_everything_recovers_after_restart() {
    let Some(mut server) = EtcdServer::start_or_skip("etcd restart").await else {
        return;
    };
    let s = EtcdStore::connect(&server.config()).await.unwrap();
    let session = s.open_session(Duration::from_secs(30)).await.unwrap();
    let v1 = s
        .put("/r/durable", b("one"), Expect::Absent, None)
        .await
        .unwrap();
    s.put("/r/ephemeral", b("mine"), Expect::Absent, Some(session))
        .await
        .unwrap();
    let mut w = s.watch("/r");

    server.kill();
    let started = Instant::now();
    unavailable(s.get("/r/durable").await, "get");
    unavailable(
        s.put("/r/durable", b("two"), Expect::Version(v1), None)
            .await,
        "put",
    );
    unavailable(s.delete("/r/durable", Expect::Any).await, "delete");
    unavailable(s.children("/r", None, 10).await, "children");
    unavailable(s.keep_alive(session).await, "keep-alive");
    unavailable(s.open_session(Duration::from_secs(5)).await, "open session");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "errors come quickly, not after long hangs ({:?})",
        started.elapsed()
    );
    match EtcdStore::connect(&server.config()).await {
        Err(MetadataError::Unavailable(_)) => {}
        Err(e) => panic!("connecting to a stopped etcd: {e}"),
        Ok(_) => panic!("connected to a stopped etcd"),
    }

    server.restart().await.unwrap();
    // The first calls after a restart may still find no leader: poll.
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        match s.get("/r/durable").await {
            Ok(got) => break got,
            Err(MetadataError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("etcd did not come back: {e}"),
        }
    };
    let got = got.expect("the durable key survived the restart");
    assert_eq!((got.value, got.version), (b("one"), v1));
    s.keep_alive(session)
        .await
        .expect("the lease outlived a short outage");
    assert!(s.get("/r/ephemeral").await.unwrap().is_some());
    let v2 = s
        .put("/r/durable", b("two"), Expect::Version(v1), None)
        .await
        .unwrap();
    // The watch opened before the outage reconnected and sees the write.
    let e = next_event(&mut w, "a write after the restart").await;
    assert_eq!(
        (e.key.as_str(), e.revision, e.value),
        ("/r/durable", v2, Some(b("two")))
    );
    s.close_session(session).await.unwrap();
    let e = next_event(&mut w, "the ephemeral key's deletion").await;
    assert_eq!((e.key.as_str(), e.value), ("/r/ephemeral", None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_lags_then_goes_on() {
    let Some(server) = EtcdServer::start_or_skip("compacted watch").await else {
        return;
    };
    let s = EtcdStore::connect(&server.config()).await.unwrap();
    let first = s.put("/w/k", b("1"), Expect::Any, None).await.unwrap();
    s.put("/w/k", b("2"), Expect::Any, None).await.unwrap();
    let last = s.put("/w/k", b("3"), Expect::Any, None).await.unwrap();

    // Not compacted: a watch from the past replays every change in order.
    let mut replay = s.watch_from("/w", first);
    for (value, what) in [("1", "first"), ("2", "second"), ("3", "third")] {
        let e = next_event(&mut replay, what).await;
        assert_eq!(e.value, Some(b(value)));
    }

    s.compact(last).await.unwrap();
    let mut w = s.watch_from("/w", first);
    match next(&mut w, "the lag").await {
        Watched::Lagged { missed } => assert!(missed >= 1),
        Watched::Event(e) => panic!("an event from compacted history: {e:?}"),
    }
    // From the compaction point on nothing is lost: the last write (kept at
    // the compaction revision) and everything after.
    let e = next_event(&mut w, "the write at the compaction revision").await;
    assert_eq!((e.revision, e.value), (last, Some(b("3"))));
    let v = s.put("/w/k", b("4"), Expect::Any, None).await.unwrap();
    let e = next_event(&mut w, "a later write").await;
    assert_eq!((e.revision, e.value), (v, Some(b("4"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_does_not_answer_is_skipped() {
    let Some(server) = EtcdServer::start_or_skip("endpoint failover").await else {
        return;
    };
    // A port nothing listens on (bound, then released).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let config = EtcdConfig {
        endpoints: vec![
            dead,
            "http://no-such-etcd.invalid:2379".into(),
            server.endpoint(),
        ],
        ..server.config()
    };
    let s = EtcdStore::connect(&config).await.unwrap();
    let v = s.put("/f/k", b("x"), Expect::Absent, None).await.unwrap();
    assert_eq!(s.get("/f/k").await.unwrap().unwrap().version, v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_the_layouts_special_bytes_are_kept_apart() {
    let Some(server) = EtcdServer::start_or_skip("special bytes").await else {
        return;
    };
    let s = EtcdStore::connect(&server.config()).await.unwrap();
    let mut w = s.watch("/s");
    // 0x01 is the layout's escape (and 0x02 follows it in an escape): keys
    // holding them must not be confused with deeper keys or with each
    // other. NUL, the separator, is no key's byte: refused.
    let names = [
        "a",
        "a\u{1}",
        "a\u{1}b",
        "a\u{1}\u{1}",
        "a\u{2}",
        "a-b",
        "b",
    ];
    for n in names {
        s.put(&format!("/s/{n}"), b(n), Expect::Absent, None)
            .await
            .unwrap();
    }
    s.put("/s/a/deeper", b("d"), Expect::Absent, None)
        .await
        .unwrap();
    for n in names {
        let got = s.get(&format!("/s/{n}")).await.unwrap().unwrap();
        assert_eq!(got.value, b(n), "key {n:?}");
        let e = next_event(&mut w, n).await;
        assert_eq!(e.key, format!("/s/{n}"));
    }
    let page = s.children("/s", None, 100).await.unwrap();
    let mut expected: Vec<&str> = names.to_vec();
    expected.sort_unstable();
    assert_eq!(page.names, expected, "each once, in byte order");
    assert_eq!(
        s.children("/s/a", None, 10).await.unwrap().names,
        ["deeper"]
    );
    assert!(s
        .children("/s/a\u{1}", None, 10)
        .await
        .unwrap()
        .names
        .is_empty());
    for nul in ["/s/a\u{0}", "/s/a\u{0}b"] {
        assert!(
            matches!(
                s.put(nul, b("x"), Expect::Any, None).await,
                Err(MetadataError::InvalidKey(_))
            ),
            "{nul:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_end_when_their_store_goes() {
    let Some(server) = EtcdServer::start_or_skip("store dropped").await else {
        return;
    };
    let s = EtcdStore::connect(&server.config()).await.unwrap();
    let mut w = s.watch("/d");
    s.put("/d/k", b("x"), Expect::Any, None).await.unwrap();
    next_event(&mut w, "the put").await;
    drop(s);
    match tokio::time::timeout(EVENT_TIMEOUT, w.next()).await {
        Ok(None) => {}
        Ok(Some(x)) => panic!("a watch of a dropped store yielded {x:?}"),
        Err(_) => panic!("a watch of a dropped store did not end within {EVENT_TIMEOUT:?}"),
    }
}

/// Retries `f` while it fails with `Unavailable` (a member lost, a new
/// leader being elected), up to a deadline.
async fn until_available<T, F, Fut>(what: &str, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, MetadataError>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(MetadataError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_member_of_three_moves_calls_watches_and_sessions_to_the_others() {
    let Some(mut cluster) = EtcdServer::start_cluster_or_skip("etcd member loss", 3).await else {
        return;
    };
    let s = EtcdStore::connect(&cluster.config()).await.unwrap();
    let session = s.open_session(Duration::from_secs(30)).await.unwrap();
    s.put("/m/owner", b("b1"), Expect::Absent, Some(session))
        .await
        .unwrap();
    let mut w = s.watch("/m");
    let mut expected = 0u64;
    // Each member in turn: the store was talking to it (the first answers
    // first; afterwards whichever took over), and it goes away.
    for lost in 0..3 {
        cluster.kill_member(lost);
        let key = format!("/m/k{lost}");
        let v = until_available("a write with a member down", || {
            s.put(&key, b("v"), Expect::Absent, None)
        })
        .await;
        let e = next_event(&mut w, "the write with a member down").await;
        assert_eq!(
            (e.key.as_str(), e.revision),
            (key.as_str(), v),
            "the watch moved to another member and lost nothing"
        );
        assert!(e.revision > expected, "revisions still increase");
        expected = e.revision;
        until_available("a keep-alive with a member down", || s.keep_alive(session)).await;
        let page = until_available("a listing with a member down", || {
            s.children("/m", None, 10)
        })
        .await;
        assert!(page.names.contains(&format!("k{lost}")));
        cluster.restart_member(lost).await.unwrap();
    }
    assert_eq!(
        s.get("/m/owner").await.unwrap().map(|v| v.session),
        Some(Some(session)),
        "the ephemeral key outlived every member's loss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_etcds_request_limit_is_refused_as_invalid() {
    let Some(server) = EtcdServer::start_or_skip("request limit").await else {
        return;
    };
    let s = EtcdStore::connect(&server.config()).await.unwrap();
    // Over etcd's limit (1.5 MiB), and over gRPC's (etcd's + 512 KiB).
    for size in [7 << 18, 3 << 20] {
        let big = Bytes::from(vec![b'x'; size]);
        match s.put("/big", big, Expect::Any, None).await {
            Err(MetadataError::Invalid(msg)) => assert!(msg.contains("large"), "{msg}"),
            other => panic!("a value of {size} bytes: {other:?}"),
        }
    }
    let fits = Bytes::from(vec![b'x'; 1 << 20]);
    let v = s
        .put("/big", fits.clone(), Expect::Any, None)
        .await
        .unwrap();
    let got = s.get("/big").await.unwrap().unwrap();
    assert_eq!((got.value, got.version), (fits, v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_watch_is_not_lagged_by_a_compaction_of_what_it_never_watched() {
    let Some(mut server) = EtcdServer::start_or_skip("quiet watch").await else {
        return;
    };
    let s = EtcdStore::connect(&server.config()).await.unwrap();
    let mut w = s.watch("/quiet");
    let mut last = 0;
    for i in 0..20 {
        last = s
            .put(&format!("/busy/{i}"), b("x"), Expect::Any, None)
            .await
            .unwrap();
    }
    // The test servers report watch progress every 100 ms: wait for a few
    // reports (time is the input here).
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.compact(last).await.unwrap();
    // Break the watch stream: it is reopened after the restart, from past
    // the progress reported, not from the watch's compacted start.
    server.restart().await.unwrap();
    let v = until_available("a write after the restart", || {
        s.put("/quiet/k", b("y"), Expect::Any, None)
    })
    .await;
    match next(&mut w, "the quiet prefix's first change").await {
        Watched::Event(e) => assert_eq!((e.key.as_str(), e.revision), ("/quiet/k", v)),
        Watched::Lagged { missed } => {
            panic!("lagged by {missed}: nothing under the prefix was ever missed")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_across_an_etcd_restart_loses_and_doubles_nothing() {
    const TASKS: usize = 8;
    const EACH: usize = 15;
    let Some(mut server) = EtcdServer::start_or_skip("CAS across a restart").await else {
        return;
    };
    let s = std::sync::Arc::new(EtcdStore::connect(&server.config()).await.unwrap());
    s.put("/c", b(""), Expect::Absent, None).await.unwrap();
    // Each task appends its own tokens with compare-and-set. A write that
    // fails as Unavailable may or may not have happened: the task re-reads
    // and looks for its token before trying again.
    let outages = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = s.clone();
        let outages = outages.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for n in 0..EACH {
                let token = format!("t{t}-{n};");
                loop {
                    assert!(Instant::now() < deadline, "task {t} made no progress");
                    let cur = match s.get("/c").await {
                        Ok(v) => v.expect("the key stays"),
                        Err(MetadataError::Unavailable(_)) => {
                            outages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        Err(e) => panic!("read: {e}"),
                    };
                    let value = String::from_utf8(cur.value.to_vec()).unwrap();
                    if value.contains(&token) {
                        break; // an earlier attempt that failed as Unavailable did happen
                    }
                    let next = Bytes::from(format!("{value}{token}"));
                    match s.put("/c", next, Expect::Version(cur.version), None).await {
                        Ok(_) => break,
                        Err(MetadataError::BadVersion { .. }) => {}
                        Err(MetadataError::Unavailable(_)) => {
                            outages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        Err(e) => panic!("write: {e}"),
                    }
                }
            }
        }));
    }
    // Restart etcd once the writers are under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = s.get("/c").await.unwrap().unwrap();
        if v.value.len() >= 20 * "t0-0;".len() {
            break;
        }
        assert!(Instant::now() < deadline, "the writers made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    server.restart().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let value = String::from_utf8(s.get("/c").await.unwrap().unwrap().value.to_vec()).unwrap();
    let tokens: Vec<&str> = value.split_terminator(';').collect();
    let unique: std::collections::BTreeSet<&str> = tokens.iter().copied().collect();
    assert_eq!(tokens.len(), unique.len(), "no token twice: {value}");
    assert_eq!(tokens.len(), TASKS * EACH, "every token once: {value}");
    assert!(
        outages.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the restart happened while the writers wrote"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_etcd_gives_unavailable_within_the_request_timeout_and_recovers() {
    let Some(server) = EtcdServer::start_or_skip("hung etcd").await else {
        return;
    };
    let config = server.config();
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let s = EtcdStore::connect(&config).await.unwrap();
    let session = s.open_session(Duration::from_secs(30)).await.unwrap();
    let v1 = s.put("/h/k", b("1"), Expect::Absent, None).await.unwrap();
    let mut w = s.watch("/h");

    server.pause().unwrap();
    let started = Instant::now();
    unavailable(s.get("/h/k").await, "get from a hung etcd");
    unavailable(
        s.put("/h/k", b("2"), Expect::Version(v1), None).await,
        "put to a hung etcd",
    );
    unavailable(s.keep_alive(session).await, "keep-alive with a hung etcd");
    let took = started.elapsed();
    assert!(
        took >= timeout && took < 3 * timeout + Duration::from_secs(2),
        "each call waits its timeout ({timeout:?}), no longer: {took:?} for three"
    );
    server.resume().unwrap();

    // The put that timed out may or may not have happened — and may land
    // only now, after a read: re-read until a conditional write goes in.
    let mut v = 0;
    for _ in 0..10 {
        let cur = until_available("a read after resuming", || s.get("/h/k"))
            .await
            .unwrap();
        match s
            .put("/h/k", b("3"), Expect::Version(cur.version), None)
            .await
        {
            Ok(version) => {
                v = version;
                break;
            }
            Err(MetadataError::BadVersion { .. }) => continue,
            Err(e) => panic!("a write after resuming: {e}"),
        }
    }
    assert!(v > 0, "a conditional write after resuming went in");
    s.keep_alive(session).await.unwrap();
    // The watch stream lived through the pause: it has every change, in order.
    loop {
        let e = next_event(&mut w, "the write after resuming").await;
        assert!(e.revision <= v, "no event past the last write");
        if e.revision == v {
            assert_eq!(e.value, Some(b("3")));
            break;
        }
        assert_eq!(e.value, Some(b("2")), "only the timed-out put came before");
    }
}

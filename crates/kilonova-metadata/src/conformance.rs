//! The `MetadataStore` conformance suite: the trait's behaviour, written down
//! once as tests that every backend must pass.
//!
//! Run it for a backend with [`conformance_tests!`](crate::conformance_tests)
//! and a future that makes a store; every case works under its own prefix, so
//! one store (say, an etcd cluster) may serve them all.

// Test code: a failed expectation is a panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::MetadataError;
use crate::store::{Expect, MetadataStore, Watch, Watched};

/// How long a case waits for an event before failing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn prefix(case: &str) -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("/conformance/{case}-{nonce:x}")
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_event(w: &mut Watch, what: &str) -> crate::WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, w.next()).await {
        Ok(Some(Watched::Event(e))) => e,
        Ok(Some(Watched::Lagged { missed })) => {
            panic!("watch lagged by {missed} waiting for {what}")
        }
        Ok(None) => panic!("watch ended waiting for {what}"),
        Err(_) => panic!("no event within {EVENT_TIMEOUT:?}: {what}"),
    }
}

/// Put, get, overwrite, delete; versions only grow, also across re-creation.
pub async fn round_trip(s: Arc<dyn MetadataStore>) {
    let k = format!("{}/k", prefix("round-trip"));
    assert_eq!(s.get(&k).await.unwrap(), None, "a fresh key is absent");
    let v1 = s.put(&k, b("one"), Expect::Any, None).await.unwrap();
    let got = s.get(&k).await.unwrap().expect("the key after put");
    assert_eq!((got.value, got.version, got.session), (b("one"), v1, None));
    let v2 = s.put(&k, b("two"), Expect::Any, None).await.unwrap();
    assert!(v2 > v1, "overwriting raises the version ({v1} -> {v2})");
    assert!(
        s.delete(&k, Expect::Any).await.unwrap(),
        "delete finds the key"
    );
    assert_eq!(s.get(&k).await.unwrap(), None, "deleted");
    assert!(
        !s.delete(&k, Expect::Any).await.unwrap(),
        "deleting again finds nothing"
    );
    let v3 = s.put(&k, b("three"), Expect::Absent, None).await.unwrap();
    assert!(v3 > v2, "a re-created key's version is above the old one's");
}

fn conflict<T: std::fmt::Debug>(r: Result<T, MetadataError>, what: &str) {
    match r {
        Err(MetadataError::BadVersion { .. }) => {}
        other => panic!("{what}: expected BadVersion, got {other:?}"),
    }
}

/// Conditional writes fail with `BadVersion` and change nothing when the
/// expectation does not hold.
pub async fn conditional_writes_conflict(s: Arc<dyn MetadataStore>) {
    let k = format!("{}/k", prefix("cas"));
    let v1 = s.put(&k, b("a"), Expect::Absent, None).await.unwrap();
    conflict(
        s.put(&k, b("x"), Expect::Absent, None).await,
        "create over an existing key",
    );
    let v2 = s.put(&k, b("b"), Expect::Version(v1), None).await.unwrap();
    conflict(
        s.put(&k, b("x"), Expect::Version(v1), None).await,
        "write at a stale version",
    );
    conflict(
        s.delete(&k, Expect::Version(v1)).await,
        "delete at a stale version",
    );
    conflict(
        s.delete(&k, Expect::Absent).await,
        "delete expecting no key",
    );
    let got = s.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (got.value, got.version),
        (b("b"), v2),
        "failed writes changed nothing"
    );
    conflict(
        s.put(&format!("{k}-missing"), b("x"), Expect::Version(v2), None)
            .await,
        "write at a version of a missing key",
    );
    assert!(s.delete(&k, Expect::Version(v2)).await.unwrap());
}

/// Concurrent read-modify-write loops with compare-and-set lose no update.
pub async fn concurrent_increments_lose_nothing(s: Arc<dyn MetadataStore>) {
    const TASKS: u64 = 8;
    const EACH: u64 = 25;
    let k = format!("{}/counter", prefix("increments"));
    s.put(&k, b("0"), Expect::Absent, None).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let s = s.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..EACH {
                loop {
                    let cur = s.get(&k).await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                    match s
                        .put(
                            &k,
                            b(&(n + 1).to_string()),
                            Expect::Version(cur.version),
                            None,
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(MetadataError::BadVersion { .. }) => conflicts += 1,
                        Err(e) => panic!("increment failed: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = s.get(&k).await.unwrap().unwrap();
    assert_eq!(
        end.value,
        b(&(TASKS * EACH).to_string()),
        "every increment counted once"
    );
}

/// A watch sees every change under its prefix, in revision order, with the
/// versions the writes returned, and nothing outside it.
pub async fn watch_sees_changes_in_order(s: Arc<dyn MetadataStore>) {
    let p = prefix("watch");
    let mut w = s.watch(&p);
    let a = format!("{p}/a");
    let deep = format!("{p}/b/c");
    let va = s.put(&a, b("1"), Expect::Any, None).await.unwrap();
    s.put(&format!("{p}-sibling/x"), b("no"), Expect::Any, None)
        .await
        .unwrap();
    let vd = s.put(&deep, b("2"), Expect::Any, None).await.unwrap();
    s.delete(&a, Expect::Any).await.unwrap();
    let e1 = next_event(&mut w, "put of a").await;
    assert_eq!(
        (e1.key.as_str(), e1.revision, e1.value),
        (a.as_str(), va, Some(b("1")))
    );
    let e2 = next_event(&mut w, "put of b/c").await;
    assert_eq!(
        (e2.key.as_str(), e2.revision, e2.value),
        (deep.as_str(), vd, Some(b("2"))),
        "the sibling prefix's key is not under the watch"
    );
    let e3 = next_event(&mut w, "delete of a").await;
    assert_eq!((e3.key.as_str(), e3.value), (a.as_str(), None));
    assert!(e3.revision > e2.revision, "revisions increase");

    // Many concurrent writers: the watch still sees increasing revisions.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        let k = format!("{p}/many/{i}");
        tasks.push(tokio::spawn(async move {
            s.put(&k, b("x"), Expect::Any, None).await.unwrap()
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    let mut last = e3.revision;
    for v in versions {
        let e = next_event(&mut w, "a concurrent put").await;
        assert!(e.revision > last, "revision {} after {last}", e.revision);
        assert_eq!(e.revision, v, "events come in revision order");
        last = e.revision;
    }
}

/// A watch reports the changes made after it was opened, none from before:
/// not even writes whose events a backend may still be delivering.
pub async fn watch_starts_after_returned_writes(s: Arc<dyn MetadataStore>) {
    let p = prefix("watch-start");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = s.clone();
        let k = format!("{p}/before/{i}");
        tasks.push(tokio::spawn(async move {
            s.put(&k, b("old"), Expect::Any, None).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut w = s.watch(&p);
    let after = format!("{p}/after");
    let v = s.put(&after, b("new"), Expect::Any, None).await.unwrap();
    let e = next_event(&mut w, "the write after the watch").await;
    assert_eq!(
        (e.key.as_str(), e.revision),
        (after.as_str(), v),
        "the first event is the first write after the watch opened"
    );
}

/// Closing a session deletes its ephemeral keys (watchers see it) and the
/// session can bind no more keys.
pub async fn ephemeral_keys_die_with_their_session(s: Arc<dyn MetadataStore>) {
    let p = prefix("ephemeral");
    let session = s.open_session(Duration::from_secs(30)).await.unwrap();
    let eph = format!("{p}/broker-1");
    let durable = format!("{p}/durable");
    s.put(&eph, b("here"), Expect::Absent, Some(session))
        .await
        .unwrap();
    s.put(&durable, b("stays"), Expect::Absent, None)
        .await
        .unwrap();
    assert_eq!(s.get(&eph).await.unwrap().unwrap().session, Some(session));
    let mut w = s.watch(&p);
    s.close_session(session).await.unwrap();
    let e = next_event(&mut w, "the ephemeral key's deletion").await;
    assert_eq!((e.key.as_str(), e.value), (eph.as_str(), None));
    assert_eq!(
        s.get(&eph).await.unwrap(),
        None,
        "the ephemeral key is gone"
    );
    assert!(
        s.get(&durable).await.unwrap().is_some(),
        "durable keys stay"
    );
    match s.put(&eph, b("again"), Expect::Any, Some(session)).await {
        Err(MetadataError::SessionExpired(_)) => {}
        other => panic!("a closed session bound a key: {other:?}"),
    }
    // A key rewritten without the session no longer belongs to it.
    let other = s.open_session(Duration::from_secs(30)).await.unwrap();
    s.put(&eph, b("mine"), Expect::Any, Some(other))
        .await
        .unwrap();
    s.put(&eph, b("durable now"), Expect::Any, None)
        .await
        .unwrap();
    s.close_session(other).await.unwrap();
    assert_eq!(
        s.get(&eph).await.unwrap().map(|v| v.value),
        Some(b("durable now")),
        "a key rewritten as durable survives its old session"
    );
}

/// A session not kept alive expires after its ttl, and its keys with it.
pub async fn expired_sessions_lose_their_keys(s: Arc<dyn MetadataStore>) {
    let p = prefix("expiry");
    let session = s.open_session(Duration::from_millis(300)).await.unwrap();
    let k = format!("{p}/lease");
    let mut w = s.watch(&p);
    s.put(&k, b("x"), Expect::Any, Some(session)).await.unwrap();
    next_event(&mut w, "the put").await;
    let e = next_event(&mut w, "the key's deletion at expiry").await;
    assert_eq!((e.key.as_str(), e.value), (k.as_str(), None));
    match s.keep_alive(session).await {
        Err(MetadataError::SessionExpired(_)) => {}
        other => panic!("an expired session was kept alive: {other:?}"),
    }
}

/// Keep-alives hold a session (and its keys) well past its ttl.
pub async fn kept_alive_sessions_keep_their_keys(s: Arc<dyn MetadataStore>) {
    let p = prefix("keepalive");
    let ttl = Duration::from_millis(500);
    let session = s.open_session(ttl).await.unwrap();
    let k = format!("{p}/lease");
    s.put(&k, b("x"), Expect::Any, Some(session)).await.unwrap();
    // The keep-alive schedule is the behaviour under test, so time is the input.
    for _ in 0..20 {
        tokio::time::sleep(ttl / 5).await;
        s.keep_alive(session).await.unwrap();
    }
    assert!(
        s.get(&k).await.unwrap().is_some(),
        "the key outlived 4 ttls with keep-alives"
    );
    s.close_session(session).await.unwrap();
}

/// Children come in pages, each child once, in order, with nothing from
/// deeper levels or sibling prefixes; 100,000 of them.
pub async fn children_page_over_100k(s: Arc<dyn MetadataStore>) {
    const N: usize = 100_000;
    const WRITERS: usize = 64;
    let p = prefix("children");
    let name = |i: usize| format!("c{i:06}");
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let s = s.clone();
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..N).step_by(WRITERS) {
                s.put(&format!("{p}/{}", name(i)), b("v"), Expect::Absent, None)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A child that is only a path to deeper keys, deeper keys of a child, and
    // a sibling prefix sorting right after.
    for extra in [
        format!("{p}/{}/deeper", name(N)),
        format!("{p}/{}/deeper", name(0)),
        format!("{p}/{}/deeper/still", name(5)),
        format!("{p}-x/c000001"),
        format!("{p}/c000001-and-more"),
    ] {
        s.put(&extra, b("v"), Expect::Any, None).await.unwrap();
    }
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = s.children(&p, after.as_deref(), 1000).await.unwrap();
        pages += 1;
        assert!(page.names.len() <= 1000, "a page holds at most its limit");
        all.extend(page.names.iter().cloned());
        if !page.more {
            break;
        }
        after = Some(
            page.names
                .last()
                .cloned()
                .expect("a page with more is not empty"),
        );
        assert!(pages < 200, "paging does not end");
    }
    let mut expected: Vec<String> = (0..=N).map(name).collect();
    expected.push("c000001-and-more".into());
    expected.sort();
    assert_eq!(all.len(), expected.len(), "every child once");
    assert_eq!(all, expected, "children in byte order");
    let empty = s
        .children(&format!("{p}/nothing-here"), None, 10)
        .await
        .unwrap();
    assert_eq!(empty, crate::Page::default(), "a key without children");
    let deeper = s
        .children(&format!("{p}/{}", name(5)), None, 10)
        .await
        .unwrap();
    assert_eq!(deeper.names, ["deeper"]);
}

/// Malformed keys are refused with `InvalidKey`.
pub async fn invalid_keys_are_refused(s: Arc<dyn MetadataStore>) {
    for bad in ["", "no-slash", "/trailing/", "/a//b"] {
        match s.put(bad, b("x"), Expect::Any, None).await {
            Err(MetadataError::InvalidKey(_)) => {}
            other => panic!("key {bad:?} accepted: {other:?}"),
        }
        assert!(s.get(bad).await.is_err(), "get {bad:?}");
    }
}

/// Generates one `#[tokio::test]` per conformance case; `$make` is an
/// expression giving a future of `Arc<dyn MetadataStore>`. With `optional`
/// first, the future gives an `Option`, and `None` skips the case (the maker
/// says why: a backend whose server is not installed).
#[macro_export]
macro_rules! conformance_tests {
    (@list @$arm:ident $make:expr) => {
        $crate::conformance_tests!(@$arm $make;
            round_trip,
            conditional_writes_conflict,
            concurrent_increments_lose_nothing,
            watch_sees_changes_in_order,
            watch_starts_after_returned_writes,
            ephemeral_keys_die_with_their_session,
            expired_sessions_lose_their_keys,
            kept_alive_sessions_keep_their_keys,
            children_page_over_100k,
            invalid_keys_are_refused
        );
    };
    (@optional $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(store) = $make.await {
                    $crate::conformance::$case(store).await;
                }
            }
        )*
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                $crate::conformance::$case(store).await;
            }
        )*
    };
    (optional $make:expr) => {
        $crate::conformance_tests!(@list @optional $make);
    };
    ($make:expr) => {
        $crate::conformance_tests!(@list @cases $make);
    };
}

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
use crate::store::{Expect, MetadataStore, SessionId, TxnOp, Watch, Watched, MAX_TXN_OPS};

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

fn invalid_key<T: std::fmt::Debug>(r: Result<T, MetadataError>, what: &str) {
    match r {
        Err(MetadataError::InvalidKey(_)) => {}
        other => panic!("{what}: expected InvalidKey, got {other:?}"),
    }
}

/// Malformed keys are refused with `InvalidKey`.
pub async fn invalid_keys_are_refused(s: Arc<dyn MetadataStore>) {
    for bad in ["", "no-slash", "/trailing/", "/a//b", "/a\0b"] {
        invalid_key(s.put(bad, b("x"), Expect::Any, None).await, "put");
        assert!(s.get(bad).await.is_err(), "get {bad:?}");
    }
}

/// A key with a NUL byte is refused everywhere: backends separate a key's
/// components with NUL internally, so `/a\0b` would alias `/a/b`.
pub async fn keys_with_nul_are_refused(s: Arc<dyn MetadataStore>) {
    let p = prefix("nul");
    let slash = format!("{p}/a/b");
    let nul = format!("{p}/a\0b");
    s.put(&slash, b("slash"), Expect::Absent, None)
        .await
        .unwrap();
    invalid_key(s.get(&nul).await, "get of the NUL key");
    invalid_key(
        s.put(&nul, b("nul"), Expect::Any, None).await,
        "put of the NUL key",
    );
    invalid_key(s.delete(&nul, Expect::Any).await, "delete of the NUL key");
    invalid_key(
        s.txn(vec![TxnOp::Check {
            key: nul.clone(),
            expect: Expect::Absent,
        }])
        .await,
        "a transaction checking the NUL key",
    );
    invalid_key(s.children(&nul, None, 10).await, "children of the NUL key");
    invalid_key(
        s.children(&p, Some("a\0"), 10).await,
        "children after a name with NUL",
    );
    let got = s.get(&slash).await.unwrap().expect("the key with a slash");
    assert_eq!(got.value, b("slash"), "untouched by the refused writes");
    assert_eq!(s.children(&p, None, 10).await.unwrap().names, ["a"]);
}

fn put_op(key: &str, value: &str, expect: Expect) -> TxnOp {
    TxnOp::Put {
        key: key.to_owned(),
        value: b(value),
        expect,
        session: None,
    }
}

fn check_op(key: &str, expect: Expect) -> TxnOp {
    TxnOp::Check {
        key: key.to_owned(),
        expect,
    }
}

fn delete_op(key: &str, expect: Expect) -> TxnOp {
    TxnOp::Delete {
        key: key.to_owned(),
        expect,
    }
}

/// A `BadVersion` naming `key`.
fn conflict_on<T: std::fmt::Debug>(r: Result<T, MetadataError>, key: &str, what: &str) {
    match r {
        Err(MetadataError::BadVersion { key: k, .. }) if k == key => {}
        other => panic!("{what}: expected BadVersion on {key}, got {other:?}"),
    }
}

/// What `keys` hold: (value, version) each.
async fn snapshot(s: &dyn MetadataStore, keys: &[&str]) -> Vec<Option<(Bytes, u64)>> {
    let mut out = Vec::new();
    for k in keys {
        out.push(s.get(k).await.unwrap().map(|v| (v.value, v.version)));
    }
    out
}

/// A transaction with one failing condition, anywhere among its operations,
/// applies none of its writes; the error names the first failing key in the
/// caller's order, with what it found.
pub async fn txn_is_all_or_nothing(s: Arc<dyn MetadataStore>) {
    let p = prefix("txn-atomic");
    let (a, bk, c, d) = (
        format!("{p}/a"),
        format!("{p}/b"),
        format!("{p}/c"),
        format!("{p}/d"),
    );
    let va = s.put(&a, b("a1"), Expect::Absent, None).await.unwrap();
    let vb = s.put(&bk, b("b1"), Expect::Absent, None).await.unwrap();
    let keys = [a.as_str(), bk.as_str(), c.as_str(), d.as_str()];
    let before = snapshot(&*s, &keys).await;
    let stale = Expect::Version(va - 1);

    // A failing check after several puts.
    let r = s
        .txn(vec![
            put_op(&a, "a2", Expect::Version(va)),
            put_op(&bk, "b2", Expect::Any),
            put_op(&c, "c1", Expect::Absent),
            check_op(&d, Expect::Version(vb)),
        ])
        .await;
    conflict_on(r, &d, "a check of a missing key at a version");
    // A put's own condition failing between two writes.
    let r = s
        .txn(vec![
            put_op(&c, "c1", Expect::Absent),
            put_op(&a, "a2", stale),
            delete_op(&bk, Expect::Any),
        ])
        .await;
    match r {
        Err(MetadataError::BadVersion {
            key,
            expected,
            found,
        }) => {
            assert_eq!(key, a, "the failing put's key");
            assert_eq!(expected, format!("version {}", va - 1));
            assert_eq!(found, format!("version {va}"), "what it found");
        }
        other => panic!("a put at a stale version: expected BadVersion, got {other:?}"),
    }
    // A delete's condition failing.
    let r = s
        .txn(vec![
            put_op(&c, "c1", Expect::Any),
            delete_op(&bk, Expect::Absent),
        ])
        .await;
    conflict_on(r, &bk, "a delete expecting no key");
    // Two failing conditions: the first in the caller's order is named.
    for (first, second) in [(&a, &bk), (&bk, &a)] {
        let r = s
            .txn(vec![
                put_op(&c, "c1", Expect::Any),
                check_op(first, Expect::Absent),
                check_op(second, Expect::Absent),
            ])
            .await;
        conflict_on(r, first, "two failing checks");
    }
    assert_eq!(
        snapshot(&*s, &keys).await,
        before,
        "failed transactions changed nothing"
    );
}

/// Every write of a transaction takes the same new revision, which it
/// returns and which is each key's version; a transaction that changes
/// nothing takes none.
pub async fn txn_writes_share_one_revision(s: Arc<dyn MetadataStore>) {
    let p = prefix("txn-revision");
    let (a, bk, c, d) = (
        format!("{p}/a"),
        format!("{p}/b"),
        format!("{p}/c"),
        format!("{p}/d"),
    );
    let va = s.put(&a, b("a1"), Expect::Absent, None).await.unwrap();
    let vc = s.put(&c, b("c1"), Expect::Absent, None).await.unwrap();
    let rev = s
        .txn(vec![
            put_op(&a, "a2", Expect::Version(va)),
            put_op(&bk, "b1", Expect::Absent),
            delete_op(&c, Expect::Version(vc)),
            delete_op(&d, Expect::Any),
        ])
        .await
        .unwrap();
    assert!(rev > vc, "the transaction's revision {rev} is new");
    let (ga, gb) = (
        s.get(&a).await.unwrap().unwrap(),
        s.get(&bk).await.unwrap().unwrap(),
    );
    assert_eq!((ga.value, ga.version), (b("a2"), rev));
    assert_eq!((gb.value, gb.version), (b("b1"), rev));
    assert_eq!(s.get(&c).await.unwrap(), None, "deleted in the transaction");
    assert_eq!(
        s.get(&d).await.unwrap(),
        None,
        "a delete of nothing is no error"
    );

    // Conditions only, and deletes of absent keys: nothing changes.
    let idle = s
        .txn(vec![
            check_op(&a, Expect::Version(rev)),
            delete_op(&c, Expect::Absent),
        ])
        .await
        .unwrap();
    assert!(idle >= rev, "the current revision {idle}, not below {rev}");
    let next = s
        .put(&a, b("a3"), Expect::Version(rev), None)
        .await
        .unwrap();
    assert!(next > idle, "a later write {next} is above {idle}");
    assert!(
        s.txn(Vec::new()).await.unwrap() >= next,
        "an empty transaction answers the current revision"
    );
}

/// A watch sees a transaction's writes together, under its one revision,
/// in the order of its operations (a key written at that revision is never
/// missed, and nothing is reported for checks or deletes of nothing).
pub async fn txn_watch_sees_one_revision_in_op_order(s: Arc<dyn MetadataStore>) {
    let p = prefix("txn-watch");
    let (a, bk, c, x) = (
        format!("{p}/a"),
        format!("{p}/b"),
        format!("{p}/c"),
        format!("{p}/x"),
    );
    let vc = s.put(&c, b("c1"), Expect::Absent, None).await.unwrap();
    let mut w = s.watch(&p);
    let rev = s
        .txn(vec![
            put_op(&bk, "b1", Expect::Absent),
            check_op(&x, Expect::Absent),
            delete_op(&c, Expect::Version(vc)),
            delete_op(&x, Expect::Any),
            put_op(&a, "a1", Expect::Any),
        ])
        .await
        .unwrap();
    let after = s.put(&x, b("x1"), Expect::Absent, None).await.unwrap();
    let mut seen = Vec::new();
    for what in ["put of b", "delete of c", "put of a", "the put after"] {
        let e = next_event(&mut w, what).await;
        seen.push((e.key, e.revision, e.value));
    }
    assert_eq!(
        seen,
        vec![
            (bk.clone(), rev, Some(b("b1"))),
            (c.clone(), rev, None),
            (a.clone(), rev, Some(b("a1"))),
            (x.clone(), after, Some(b("x1"))),
        ],
        "one revision for the transaction, its writes in operation order"
    );
}

/// Ephemeral keys put in a transaction belong to their session and die
/// with it; a transaction binding a key to a closed or unknown session
/// applies nothing (a failing condition is reported before a dead session).
pub async fn txn_ephemeral_puts_die_with_their_session(s: Arc<dyn MetadataStore>) {
    let p = prefix("txn-ephemeral");
    let (e1, e2, durable, other) = (
        format!("{p}/e1"),
        format!("{p}/e2"),
        format!("{p}/durable"),
        format!("{p}/other"),
    );
    let session = s.open_session(Duration::from_secs(30)).await.unwrap();
    let eph = |key: &str, session: SessionId| TxnOp::Put {
        key: key.to_owned(),
        value: b("here"),
        expect: Expect::Absent,
        session: Some(session),
    };
    let rev = s
        .txn(vec![
            eph(&e1, session),
            put_op(&durable, "stays", Expect::Absent),
            eph(&e2, session),
        ])
        .await
        .unwrap();
    for k in [&e1, &e2] {
        let got = s.get(k).await.unwrap().expect("an ephemeral key");
        assert_eq!((got.version, got.session), (rev, Some(session)), "{k}");
    }
    assert_eq!(s.get(&durable).await.unwrap().unwrap().session, None);
    let mut w = s.watch(&p);
    s.close_session(session).await.unwrap();
    let mut gone = [
        next_event(&mut w, "a deletion").await,
        next_event(&mut w, "the other deletion").await,
    ];
    gone.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(
        gone.iter()
            .map(|e| (e.key.as_str(), e.value.is_none()))
            .collect::<Vec<_>>(),
        [(e1.as_str(), true), (e2.as_str(), true)],
        "both ephemeral keys deleted"
    );
    assert_eq!(s.get(&e1).await.unwrap(), None);
    assert_eq!(s.get(&e2).await.unwrap(), None);
    assert!(
        s.get(&durable).await.unwrap().is_some(),
        "the durable key stays"
    );

    let closed = s
        .txn(vec![
            put_op(&other, "no", Expect::Absent),
            eph(&e1, session),
        ])
        .await;
    match closed {
        Err(MetadataError::SessionExpired(id)) => assert_eq!(id, session.0),
        other => panic!("a closed session bound a key: {other:?}"),
    }
    // A session never opened is refused as well.
    let unknown = SessionId(0x7fff_ffff_0000_0001);
    match s
        .txn(vec![
            put_op(&other, "no", Expect::Absent),
            eph(&e2, unknown),
        ])
        .await
    {
        Err(MetadataError::SessionExpired(id)) => assert_eq!(id, unknown.0),
        other => panic!("an unknown session bound a key: {other:?}"),
    }
    let conflicted = s
        .txn(vec![eph(&e1, session), check_op(&durable, Expect::Absent)])
        .await;
    conflict_on(conflicted, &durable, "a conflict and a closed session");
    assert_eq!(s.get(&other).await.unwrap(), None, "nothing applied");
    assert_eq!(s.get(&e1).await.unwrap(), None, "nothing applied");
    assert_eq!(s.get(&e2).await.unwrap(), None, "nothing applied");
}

/// A key may be deleted and another created in one step, and a key checked
/// and written in the same transaction.
pub async fn txn_deletes_and_puts_together(s: Arc<dyn MetadataStore>) {
    let p = prefix("txn-move");
    let (old, new) = (format!("{p}/old"), format!("{p}/new"));
    let v = s
        .put(&old, b("record"), Expect::Absent, None)
        .await
        .unwrap();
    let rev = s
        .txn(vec![
            delete_op(&old, Expect::Version(v)),
            put_op(&new, "record", Expect::Absent),
        ])
        .await
        .unwrap();
    assert_eq!(s.get(&old).await.unwrap(), None, "moved away");
    assert_eq!(s.get(&new).await.unwrap().unwrap().version, rev);
    // Replaying the move finds the old key gone.
    let r = s
        .txn(vec![
            delete_op(&old, Expect::Version(v)),
            put_op(&new, "record", Expect::Absent),
        ])
        .await;
    conflict_on(r, &old, "the move replayed");
    let rev2 = s
        .txn(vec![
            check_op(&new, Expect::Version(rev)),
            put_op(&new, "updated", Expect::Version(rev)),
            check_op(&old, Expect::Absent),
        ])
        .await
        .unwrap();
    let got = s.get(&new).await.unwrap().unwrap();
    assert_eq!((got.value, got.version), (b("updated"), rev2));
}

/// Checks of absent keys: `Absent` holds, a version does not, and a check
/// of a present key expecting it absent fails.
pub async fn txn_checks_on_absent_keys(s: Arc<dyn MetadataStore>) {
    let p = prefix("txn-absent");
    let (missing, present, out) = (
        format!("{p}/missing"),
        format!("{p}/present"),
        format!("{p}/out"),
    );
    let v = s.put(&present, b("x"), Expect::Absent, None).await.unwrap();
    let r = s
        .txn(vec![
            check_op(&missing, Expect::Version(v)),
            put_op(&out, "no", Expect::Any),
        ])
        .await;
    match r {
        Err(MetadataError::BadVersion { key, found, .. }) => {
            assert_eq!((key, found.as_str()), (missing.clone(), "no key"));
        }
        other => panic!("a version of a missing key held: {other:?}"),
    }
    let r = s
        .txn(vec![
            check_op(&present, Expect::Absent),
            put_op(&out, "no", Expect::Any),
        ])
        .await;
    conflict_on(r, &present, "a present key expected absent");
    assert_eq!(s.get(&out).await.unwrap(), None);
    s.txn(vec![
        check_op(&missing, Expect::Absent),
        check_op(&present, Expect::Version(v)),
        check_op(&present, Expect::Any),
        put_op(&out, "yes", Expect::Any),
    ])
    .await
    .unwrap();
    assert_eq!(s.get(&out).await.unwrap().unwrap().value, b("yes"));
}

/// At most `MAX_TXN_OPS` operations (etcd's default `--max-txn-ops`); more
/// are refused with `Invalid` and nothing applies.
pub async fn txn_op_limit(s: Arc<dyn MetadataStore>) {
    let p = prefix("txn-limit");
    let key = |i: usize| format!("{p}/k{i:03}");
    let full: Vec<TxnOp> = (0..MAX_TXN_OPS)
        .map(|i| put_op(&key(i), "v", Expect::Absent))
        .collect();
    let rev = s.txn(full).await.unwrap();
    let page = s.children(&p, None, 1000).await.unwrap();
    assert_eq!(page.names.len(), MAX_TXN_OPS, "every put applied");
    let last = s.get(&key(MAX_TXN_OPS - 1)).await.unwrap().unwrap();
    assert_eq!(last.version, rev, "all at one revision");
    let over: Vec<TxnOp> = (0..=MAX_TXN_OPS)
        .map(|i| put_op(&key(i + 1000), "v", Expect::Any))
        .collect();
    match s.txn(over).await {
        Err(MetadataError::Invalid(_)) => {}
        other => panic!("{} operations accepted: {other:?}", MAX_TXN_OPS + 1),
    }
    assert_eq!(s.get(&key(1000)).await.unwrap(), None, "nothing applied");
}

/// A key written twice in one transaction is refused with `Invalid` (as
/// etcd refuses duplicate keys), and nothing applies.
pub async fn txn_duplicate_writes_are_refused(s: Arc<dyn MetadataStore>) {
    let p = prefix("txn-duplicate");
    let (a, other) = (format!("{p}/a"), format!("{p}/other"));
    for ops in [
        vec![
            put_op(&other, "no", Expect::Any),
            put_op(&a, "1", Expect::Any),
            put_op(&a, "2", Expect::Any),
        ],
        vec![
            put_op(&other, "no", Expect::Any),
            put_op(&a, "1", Expect::Any),
            delete_op(&a, Expect::Any),
        ],
    ] {
        match s.txn(ops).await {
            Err(MetadataError::Invalid(_)) => {}
            other => panic!("a key written twice: {other:?}"),
        }
    }
    assert_eq!(s.get(&other).await.unwrap(), None, "nothing applied");
    assert_eq!(s.get(&a).await.unwrap(), None, "nothing applied");
}

/// Concurrent transactions moving units between two counters, each
/// conditioned on both versions, keep the sum: no transaction applies half.
pub async fn txn_concurrent_transfers_keep_the_sum(s: Arc<dyn MetadataStore>) {
    const TASKS: usize = 6;
    const EACH: usize = 15;
    let p = prefix("txn-transfer");
    let (x, y) = (format!("{p}/x"), format!("{p}/y"));
    s.txn(vec![
        put_op(&x, "100", Expect::Absent),
        put_op(&y, "100", Expect::Absent),
    ])
    .await
    .unwrap();
    let number = |v: &Bytes| -> i64 { std::str::from_utf8(v).unwrap().parse().unwrap() };
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (s, x, y) = (s.clone(), x.clone(), y.clone());
        tasks.push(tokio::spawn(async move {
            let (from, to) = if t % 2 == 0 { (x, y) } else { (y, x) };
            for _ in 0..EACH {
                loop {
                    let f = s.get(&from).await.unwrap().unwrap();
                    let g = s.get(&to).await.unwrap().unwrap();
                    let ops = vec![
                        put_op(
                            &from,
                            &(number(&f.value) - 1).to_string(),
                            Expect::Version(f.version),
                        ),
                        put_op(
                            &to,
                            &(number(&g.value) + 1).to_string(),
                            Expect::Version(g.version),
                        ),
                    ];
                    match s.txn(ops).await {
                        Ok(_) => break,
                        Err(MetadataError::BadVersion { .. }) => {}
                        Err(e) => panic!("transfer failed: {e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (gx, gy) = (
        s.get(&x).await.unwrap().unwrap(),
        s.get(&y).await.unwrap().unwrap(),
    );
    assert_eq!(
        number(&gx.value) + number(&gy.value),
        200,
        "the sum is kept"
    );
    assert_eq!(
        gx.version, gy.version,
        "the last transfer wrote both at once"
    );
    assert_eq!(number(&gx.value), 100, "as many transfers each way");
}

/// Random transactions over a few keys, run against the store and against
/// a model of etcd's semantics, agree on every answer and every key's state.
pub async fn txn_matches_a_model(s: Arc<dyn MetadataStore>) {
    const KEYS: usize = 5;
    const ROUNDS: usize = 150;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = Rng(seed);
    let p = prefix("txn-model");
    let keys: Vec<String> = (0..KEYS).map(|i| format!("{p}/k{i}")).collect();
    // key -> (value, version)
    let mut model: std::collections::HashMap<String, (Bytes, u64)> = Default::default();
    let mut last_revision = 0;
    for round in 0..ROUNDS {
        let n = rng.below(5) + 1;
        let mut ops = Vec::new();
        for _ in 0..n {
            let key = keys[rng.below(KEYS)].clone();
            let now = model.get(&key).map(|(_, v)| *v);
            // Mostly what the model holds, sometimes something else.
            let expect = match rng.below(6) {
                0 => Expect::Any,
                1 => Expect::Absent,
                2 => Expect::Version(now.unwrap_or(last_revision).saturating_sub(1).max(1)),
                _ => now.map_or(Expect::Absent, Expect::Version),
            };
            ops.push(match rng.below(3) {
                0 => TxnOp::Check { key, expect },
                1 => TxnOp::Put {
                    key,
                    value: b(&format!("r{round}")),
                    expect,
                    session: None,
                },
                _ => TxnOp::Delete { key, expect },
            });
        }
        let what = format!("seed {seed:#x}, round {round}: {ops:?}");
        let mut written = std::collections::HashSet::new();
        let duplicate = ops
            .iter()
            .any(|op| op.writes() && !written.insert(op.key().to_owned()));
        let failing = ops.iter().find(|op| {
            let found = model.get(op.key()).map(|(_, v)| *v);
            op.expect().check(op.key(), found).is_err()
        });
        let r = s.txn(ops.clone()).await;
        match (duplicate, failing, r) {
            (true, _, Err(MetadataError::Invalid(_))) => {}
            (false, Some(op), Err(MetadataError::BadVersion { key, .. })) => {
                assert_eq!(key, op.key(), "{what}");
            }
            (false, None, Ok(rev)) => {
                let changes = ops.iter().any(|op| match op {
                    TxnOp::Put { .. } => true,
                    TxnOp::Delete { key, .. } => model.contains_key(key),
                    TxnOp::Check { .. } => false,
                });
                if changes {
                    assert!(
                        rev > last_revision,
                        "{what}: revision {rev} after {last_revision}"
                    );
                    last_revision = rev;
                }
                for op in ops {
                    match op {
                        TxnOp::Put { key, value, .. } => {
                            model.insert(key, (value, rev));
                        }
                        TxnOp::Delete { key, .. } => {
                            model.remove(&key);
                        }
                        TxnOp::Check { .. } => {}
                    }
                }
            }
            (duplicate, failing, r) => {
                panic!("{what}: duplicate {duplicate}, failing {failing:?}, got {r:?}")
            }
        }
        for k in &keys {
            let got = s.get(k).await.unwrap().map(|v| (v.value, v.version));
            assert_eq!(got.as_ref(), model.get(k), "{what}: {k}");
        }
    }
}

/// A small xorshift generator: the model test's sequence replays from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

// ------------------------------------------------------------ flush commits
//
// The flush index (`crate::wal_index`) relies on the backend's transactions:
// ownership checks and record writes together, all or nothing. Checked here
// on every backend, through `Resources`.

mod flush {
    use super::*;
    use crate::bundles::{Acquired, BundleOwner, BundleRange, Commit, Held};
    use crate::names::{NamespaceName, TopicName};
    use crate::wal_index::{FlushRecord, FlushRecords};
    use crate::Resources;

    /// A namespace of its own for a case (the store may be shared).
    pub(super) fn namespace(case: &str) -> NamespaceName {
        let p = prefix(case);
        let nonce = p.rsplit('-').next().unwrap_or("0");
        NamespaceName::new(&format!("fc{nonce}"), case).unwrap()
    }

    pub(super) fn owner(name: &str) -> BundleOwner {
        BundleOwner {
            broker: name.into(),
            native_url: format!("pulsar://{name}"),
            http_url: format!("http://{name}"),
            ..Default::default()
        }
    }

    pub(super) async fn acquire(
        r: &Resources,
        ns: &NamespaceName,
        range: BundleRange,
        me: &str,
        session: SessionId,
    ) -> Held {
        match r
            .acquire_bundle(ns, range, &owner(me), session)
            .await
            .unwrap()
        {
            Acquired::Owned { epoch } => Held {
                ns: ns.clone(),
                range,
                epoch,
            },
            other => panic!("{me} could not take {ns}/{range}: {other:?}"),
        }
    }

    /// A flush of `topics` entries, one each, at `index` (and places in order).
    pub(super) fn records(
        object: &str,
        topics: &[(&TopicName, BundleRange)],
        index: u64,
    ) -> Vec<(NamespaceName, BundleRange, FlushRecord)> {
        let mut f = FlushRecords::new(object);
        for (i, (t, range)) in topics.iter().enumerate() {
            f.push(t, *range, i as u64, index, i as u32).unwrap();
        }
        f.finish()
    }

    /// A topic of `ns` in bundle `range`.
    pub(super) fn topic_in(ns: &NamespaceName, range: BundleRange) -> TopicName {
        (0..10_000)
            .map(|i| TopicName::parse(&format!("persistent://{ns}/t{i}")).unwrap())
            .find(|t| range.contains(crate::bundles::topic_hash(t)))
            .expect("a topic in each half of the hash space")
    }

    pub(super) fn halves() -> (BundleRange, BundleRange) {
        (
            "0x00000000_0x80000000".parse().unwrap(),
            "0x80000000_0xffffffff".parse().unwrap(),
        )
    }

    pub(super) fn committed(c: Commit) {
        assert!(
            matches!(c, Commit::Committed { .. }),
            "not committed: {c:?}"
        );
    }

    /// The objects the bundle's flush records name, in commit order.
    pub(super) async fn objects(
        r: &Resources,
        ns: &NamespaceName,
        range: BundleRange,
    ) -> Vec<String> {
        r.flush_records(ns, range)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, rec)| rec.object)
            .collect()
    }
}

/// A flush touching two bundles writes one record in each, in one
/// transaction (one revision); a bundle's records read back in commit order
/// (epoch, then sequence, numerically); more bundles than a transaction
/// holds, a bundle not held and a flush recorded twice are refused whole.
pub async fn flush_commits_write_one_record_per_bundle_in_one_transaction(
    s: Arc<dyn MetadataStore>,
) {
    use crate::bundles::{BundleRange, Held};
    use crate::wal_index::{flush_record_key, FlushIndexError, MAX_FLUSH_BUNDLES};
    let r = crate::Resources::new(s.clone());
    let ns = flush::namespace("one-txn");
    let (low, high) = flush::halves();
    let session = s.open_session(Duration::from_secs(30)).await.unwrap();
    let held = vec![
        flush::acquire(&r, &ns, low, "a:8080", session).await,
        flush::acquire(&r, &ns, high, "a:8080", session).await,
    ];
    // Topics on each side of the hash space.
    let topics: Vec<crate::TopicName> = (0..40)
        .map(|i| crate::TopicName::parse(&format!("persistent://{ns}/t{i}")).unwrap())
        .collect();
    let placed: Vec<(&crate::TopicName, BundleRange)> = topics
        .iter()
        .map(|t| {
            (
                t,
                if low.contains(crate::bundles::topic_hash(t)) {
                    low
                } else {
                    high
                },
            )
        })
        .collect();
    assert!(placed.iter().any(|(_, b)| *b == low) && placed.iter().any(|(_, b)| *b == high));
    for sequence in [1u64, 2, 10] {
        let records = flush::records(&format!("wal/x/{sequence}.wal"), &placed, sequence);
        assert_eq!(records.len(), 2, "one record per bundle touched");
        flush::committed(r.commit_flush(&held, sequence, records).await.unwrap());
    }
    let mut versions = Vec::new();
    for h in &held {
        let key = flush_record_key(&ns, h.range, h.epoch, 1);
        versions.push(s.get(&key).await.unwrap().expect("the record").version);
        let listed = r.flush_records(&ns, h.range).await.unwrap();
        let sequences: Vec<u64> = listed
            .iter()
            .map(|(k, _)| crate::wal_index::parse_flush_record_key(k).unwrap().1)
            .collect();
        assert_eq!(sequences, vec![1, 2, 10], "commit order, numerically");
        let (_, rec) = &listed[2];
        assert_eq!(rec.object, "wal/x/10.wal");
        let mine: Vec<_> = placed.iter().filter(|(_, b)| *b == h.range).collect();
        assert_eq!(rec.topics.len(), mine.len());
        assert!(rec
            .topics
            .iter()
            .zip(&mine)
            .all(|(t, (name, _))| t.topic == name.to_string()
                && t.first_index == 10
                && t.count == 1));
    }
    assert_eq!(versions[0], versions[1], "both records in one transaction");

    // Refused whole: nothing of these is written.
    match r
        .commit_flush(&held, 1, flush::records("wal/x/1b.wal", &placed, 1))
        .await
    {
        Err(FlushIndexError::AlreadyRecorded { sequence: 1, .. }) => {}
        other => panic!("a flush recorded twice: {other:?}"),
    }
    let many: Vec<Held> = (0..=MAX_FLUSH_BUNDLES as u32)
        .map(|i| Held {
            ns: ns.clone(),
            range: BundleRange {
                lower: i * 16,
                upper: i * 16 + 16,
            },
            epoch: 1,
        })
        .collect();
    let too_many = many
        .iter()
        .map(|h| (h.ns.clone(), h.range, Default::default()))
        .collect();
    assert!(matches!(
        r.commit_flush(&many, 3, too_many).await,
        Err(FlushIndexError::TooManyBundles { .. })
    ));
    let huge = crate::wal_index::FlushRecord {
        object: "wal/x/3.wal".into(),
        topics: vec![crate::wal_index::FlushTopic {
            topic: placed[0].0.to_string(),
            log: 0,
            first_index: 3,
            count: 300_000,
            positions: (0..300_000).collect(),
        }],
    };
    assert!(matches!(
        r.commit_flush(&held, 3, vec![(ns.clone(), placed[0].1, huge)])
            .await,
        Err(FlushIndexError::TooLarge { .. })
    ));
    assert!(matches!(
        r.commit_flush(&held[..1], 3, flush::records("wal/x/3.wal", &placed, 3))
            .await,
        Err(FlushIndexError::NotHeld { .. })
    ));
    for h in &held {
        assert_eq!(r.flush_records(&ns, h.range).await.unwrap().len(), 3);
    }
}

/// A bundle handed straight to another broker is never unowned: the new
/// owner holds it under its own session at a new epoch, the old owner's
/// epoch is deposed, a second handover with that epoch does nothing, a
/// handover to a dead session is refused, and the bundle frees when the new
/// owner's session ends.
pub async fn a_bundle_handed_over_keeps_an_owner(s: Arc<dyn MetadataStore>) {
    use crate::bundles::Commit;
    let r = crate::Resources::new(s.clone());
    let ns = flush::namespace("handover");
    let (low, _) = flush::halves();
    let ttl = Duration::from_secs(30);
    let (sa, sb, sc) = (
        s.open_session(ttl).await.unwrap(),
        s.open_session(ttl).await.unwrap(),
        s.open_session(ttl).await.unwrap(),
    );
    let a = flush::acquire(&r, &ns, low, "a:8080", sa).await;
    let to_b = r
        .transfer_bundle(&ns, low, ("a:8080", a.epoch), &flush::owner("b:8080"), sb)
        .await
        .unwrap()
        .expect("a owned the bundle at its epoch");
    assert!(to_b > a.epoch);
    let owner = r.bundle_owner(&ns, low).await.unwrap().unwrap();
    assert_eq!(
        (owner.broker.as_str(), owner.epoch, owner.session),
        ("b:8080", to_b, sb.0)
    );
    // a's epoch no longer holds: no commit, no second handover.
    assert!(matches!(
        r.commit_flush(
            std::slice::from_ref(&a),
            1,
            flush::records("a/1", &[(&flush::topic_in(&ns, low), low)], 0)
        )
        .await
        .unwrap(),
        Commit::Deposed { .. }
    ));
    assert_eq!(
        r.transfer_bundle(&ns, low, ("a:8080", a.epoch), &flush::owner("c:8080"), sc)
            .await
            .unwrap(),
        None
    );
    // A handover to a session that is gone is refused; b keeps the bundle.
    s.close_session(sc).await.unwrap();
    assert!(matches!(
        r.transfer_bundle(&ns, low, ("b:8080", to_b), &flush::owner("c:8080"), sc)
            .await,
        Err(MetadataError::SessionExpired(_))
    ));
    assert_eq!(
        r.bundle_owner(&ns, low).await.unwrap().map(|o| o.broker),
        Some("b:8080".to_owned())
    );
    // b's session ends: the bundle is free.
    s.close_session(sb).await.unwrap();
    assert_eq!(r.bundle_owner(&ns, low).await.unwrap(), None);
    s.close_session(sa).await.unwrap();
}

/// A broker that lost a bundle (released, its session gone, or re-acquired
/// at a higher epoch) commits nothing with its old epoch — not even the
/// records of the bundles it still holds — and gets `Deposed`; the new
/// owner's records sort after the old owner's.
pub async fn a_deposed_owners_flush_commit_writes_nothing(s: Arc<dyn MetadataStore>) {
    use crate::bundles::Commit;
    let r = crate::Resources::new(s.clone());
    let ns = flush::namespace("deposed");
    let (low, high) = flush::halves();
    let ttl = Duration::from_secs(30);
    let (sa, sb) = (
        s.open_session(ttl).await.unwrap(),
        s.open_session(ttl).await.unwrap(),
    );
    let (tl, th) = (flush::topic_in(&ns, low), flush::topic_in(&ns, high));
    let a_low = flush::acquire(&r, &ns, low, "a:8080", sa).await;
    let a_high = flush::acquire(&r, &ns, high, "a:8080", sa).await;
    let a = vec![a_low.clone(), a_high.clone()];
    flush::committed(
        r.commit_flush(&a, 1, flush::records("a/1", &[(&tl, low), (&th, high)], 0))
            .await
            .unwrap(),
    );

    // a gives `low` up, b takes it: a's commit touching both lands nowhere.
    assert!(r
        .release_bundle(&ns, low, "a:8080", a_low.epoch)
        .await
        .unwrap());
    let b_low = flush::acquire(&r, &ns, low, "b:8080", sb).await;
    assert!(b_low.epoch > a_low.epoch);
    assert_eq!(
        r.commit_flush(&a, 2, flush::records("a/2", &[(&tl, low), (&th, high)], 1))
            .await
            .unwrap(),
        Commit::Deposed {
            ns: ns.clone(),
            range: low
        }
    );
    for range in [low, high] {
        assert_eq!(
            r.flush_records(&ns, range).await.unwrap().len(),
            1,
            "a's second flush wrote nothing in {range}"
        );
    }
    // a still commits what only touches the bundle it holds.
    flush::committed(
        r.commit_flush(&a, 3, flush::records("a/3", &[(&th, high)], 1))
            .await
            .unwrap(),
    );
    // b's records come after a's.
    flush::committed(
        r.commit_flush(
            std::slice::from_ref(&b_low),
            1,
            flush::records("b/1", &[(&tl, low)], 1),
        )
        .await
        .unwrap(),
    );
    assert_eq!(flush::objects(&r, &ns, low).await, vec!["a/1", "b/1"]);

    // b's session ends: its epoch no longer holds, even with nobody owning.
    s.close_session(sb).await.unwrap();
    assert_eq!(
        r.commit_flush(
            std::slice::from_ref(&b_low),
            2,
            flush::records("b/2", &[(&tl, low)], 2)
        )
        .await
        .unwrap(),
        Commit::Deposed {
            ns: ns.clone(),
            range: low
        }
    );
    // a takes it again: a new epoch; a's old one stays deposed.
    let a_low2 = flush::acquire(&r, &ns, low, "a:8080", sa).await;
    assert!(a_low2.epoch > b_low.epoch);
    assert!(matches!(
        r.commit_flush(
            std::slice::from_ref(&a_low),
            4,
            flush::records("a/4", &[(&tl, low)], 2)
        )
        .await
        .unwrap(),
        Commit::Deposed { .. }
    ));
    flush::committed(
        r.commit_flush(&[a_low2], 1, flush::records("a2/1", &[(&tl, low)], 2))
            .await
            .unwrap(),
    );
    assert_eq!(
        flush::objects(&r, &ns, low).await,
        vec!["a/1", "b/1", "a2/1"]
    );
}

/// Records are deleted up to a key, in transactions of at most
/// `MAX_TXN_OPS` deletes; the later ones stay.
pub async fn flush_records_are_deleted_up_to_a_key(s: Arc<dyn MetadataStore>) {
    let r = crate::Resources::new(s.clone());
    let ns = flush::namespace("gc");
    let range = crate::bundles::BundleRange::FULL;
    let session = s.open_session(Duration::from_secs(30)).await.unwrap();
    let held = [flush::acquire(&r, &ns, range, "a:8080", session).await];
    let t = crate::TopicName::parse(&format!("persistent://{ns}/t")).unwrap();
    let n = MAX_TXN_OPS as u64 + 5;
    for sequence in 1..=n {
        flush::committed(
            r.commit_flush(
                &held,
                sequence,
                flush::records(&format!("o/{sequence}"), &[(&t, range)], sequence),
            )
            .await
            .unwrap(),
        );
    }
    let all = r.flush_records(&ns, range).await.unwrap();
    assert_eq!(all.len() as u64, n);
    let up_to = &all[all.len() - 3].0;
    assert_eq!(
        r.delete_flush_records(&ns, range, up_to).await.unwrap() as u64,
        n - 2
    );
    let left: Vec<String> = r
        .flush_records(&ns, range)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, rec)| rec.object)
        .collect();
    assert_eq!(left, vec![format!("o/{}", n - 1), format!("o/{n}")]);
    assert!(matches!(
        r.delete_flush_records(&ns, range, "/elsewhere/x").await,
        Err(MetadataError::Invalid(_))
    ));
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
            invalid_keys_are_refused,
            keys_with_nul_are_refused,
            txn_is_all_or_nothing,
            txn_writes_share_one_revision,
            txn_watch_sees_one_revision_in_op_order,
            txn_ephemeral_puts_die_with_their_session,
            txn_deletes_and_puts_together,
            txn_checks_on_absent_keys,
            txn_op_limit,
            txn_duplicate_writes_are_refused,
            txn_concurrent_transfers_keep_the_sum,
            txn_matches_a_model,
            flush_commits_write_one_record_per_bundle_in_one_transaction,
            a_deposed_owners_flush_commit_writes_nothing,
            a_bundle_handed_over_keeps_an_owner,
            flush_records_are_deleted_up_to_a_key
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

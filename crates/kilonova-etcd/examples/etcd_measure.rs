//! Measures the etcd backend against a running etcd: get latency, sequential
//! compare-and-set latency and throughput, and compare-and-set throughput
//! with concurrent writers; and transactions shaped like a flush commit (an
//! ownership check and 16 records). The figures in
//! docs/adr/0014-metadata-on-etcd.md.
//!
//! `cargo run --release -p kilonova-etcd --example etcd_measure -- http://127.0.0.1:2379 [ops] [writers]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kilonova_etcd::{EtcdConfig, EtcdStore};
use kilonova_metadata::{Expect, MetadataStore, TxnOp};

fn summary(what: &str, mut times: Vec<Duration>, total: Duration) {
    times.sort_unstable();
    let at = |q: f64| {
        let i = ((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1));
        times.get(i).copied().unwrap_or_default()
    };
    println!(
        "{what:<34} {:>6} ops  {:>8.0} ops/s  p50 {:>7.0} us  p99 {:>7.0} us",
        times.len(),
        times.len() as f64 / total.as_secs_f64(),
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let ops: usize = args.next().map_or(Ok(2000), |a| a.parse())?;
    let writers: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let config = EtcdConfig {
        root: format!("/kilonova-measure-{}", std::process::id()),
        ..EtcdConfig::new(endpoint)
    };
    let store = Arc::new(EtcdStore::connect(&config).await?);
    let value = Bytes::from(vec![b'x'; 256]);

    // Sequential compare-and-set: each write expects the version the last returned.
    let mut version = store
        .put("/cas", value.clone(), Expect::Absent, None)
        .await?;
    let mut times = Vec::with_capacity(ops);
    let start = Instant::now();
    for _ in 0..ops {
        let t = Instant::now();
        version = store
            .put("/cas", value.clone(), Expect::Version(version), None)
            .await?;
        times.push(t.elapsed());
    }
    summary("CAS put, 1 writer", times, start.elapsed());

    let mut times = Vec::with_capacity(ops);
    let start = Instant::now();
    for _ in 0..ops {
        let t = Instant::now();
        store.get("/cas").await?;
        times.push(t.elapsed());
    }
    summary("get (linearizable), 1 reader", times, start.elapsed());

    // Concurrent writers, each its own key (as brokers committing flushes).
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("/writers/{w}");
            let mut times = Vec::new();
            let mut v = store.put(&key, value.clone(), Expect::Any, None).await?;
            for _ in 0..ops / writers {
                let t = Instant::now();
                v = store
                    .put(&key, value.clone(), Expect::Version(v), None)
                    .await?;
                times.push(t.elapsed());
            }
            anyhow::Ok(times)
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.extend(t.await??);
    }
    summary(
        &format!("CAS put, {writers} writers"),
        times,
        start.elapsed(),
    );

    // Paging children: 'ops' leaf children of one prefix, in pages of 1,000.
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..ops).step_by(writers) {
                let key = format!("/many/c{i:08}");
                store.put(&key, value.clone(), Expect::Any, None).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    let mut after: Option<String> = None;
    let mut listed = 0;
    loop {
        let t = Instant::now();
        let page = store.children("/many", after.as_deref(), 1000).await?;
        times.push(t.elapsed());
        listed += page.names.len();
        if !page.more {
            break;
        }
        after = page.names.last().cloned();
    }
    let total = start.elapsed();
    summary(&format!("children, pages of 1000 ({listed})"), times, total);

    // Watch delay: from a write's start until a watcher of its prefix has it.
    let mut watch = store.watch("/watched");
    let mut times = Vec::with_capacity(ops);
    let start = Instant::now();
    for i in 0..ops {
        let t = Instant::now();
        let v = store
            .put("/watched/k", value.clone(), Expect::Any, None)
            .await?;
        loop {
            match watch.next().await {
                Some(kilonova_metadata::Watched::Event(e)) if e.revision == v => break,
                Some(_) => {}
                None => anyhow::bail!("the watch ended at write {i}"),
            }
        }
        times.push(t.elapsed());
    }
    summary("put, then its watch event", times, start.elapsed());

    // Flush-commit-shaped transactions: a check of an ownership key at its
    // version and `records` new keys, sequential and with concurrent writers.
    let owner = store
        .put("/ownership", value.clone(), Expect::Any, None)
        .await?;
    for records in [1, 16] {
        let txn = |w: usize, i: usize| {
            let mut ops = vec![TxnOp::Check {
                key: "/ownership".into(),
                expect: Expect::Version(owner),
            }];
            ops.extend((0..records).map(|r| TxnOp::Put {
                key: format!("/flushes/{records}/{w}/{i}/{r}"),
                value: value.clone(),
                expect: Expect::Absent,
                session: None,
            }));
            ops
        };
        let mut times = Vec::with_capacity(ops);
        let start = Instant::now();
        for i in 0..ops {
            let t = Instant::now();
            store.txn(txn(writers, i)).await?;
            times.push(t.elapsed());
        }
        summary(
            &format!("txn check+{records} puts, 1 writer"),
            times,
            start.elapsed(),
        );
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let store = store.clone();
            let ops: Vec<Vec<TxnOp>> = (0..ops / writers).map(|i| txn(w, i)).collect();
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::new();
                for t_ops in ops {
                    let t = Instant::now();
                    store.txn(t_ops).await?;
                    times.push(t.elapsed());
                }
                anyhow::Ok(times)
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.extend(t.await??);
        }
        summary(
            &format!("txn check+{records} puts, {writers} writers"),
            times,
            start.elapsed(),
        );
    }
    Ok(())
}

//! Audit log benchmarks: append throughput (single and batched), integration into the Merkle tree,
//! and proof generation. SQLite always; PostgreSQL too when MYDATA_TEST_POSTGRES_URL is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mydata_core::Timestamp;
use mydata_store::NewAuditEvent;
use mydata_store::testing::{TestDatabase, fresh_postgres, fresh_sqlite};

fn events(n: usize) -> Vec<NewAuditEvent> {
    (0..n)
        .map(|i| NewAuditEvent {
            at: Timestamp::from_millis(1_790_000_000_000 + i as i64),
            kind: "transfer.created".into(),
            subject: Some(format!("{:064x}", i % 5000)),
            transfer_id: Some(format!("tr-{i:012}")),
            actor: "system".into(),
            detail: serde_json::json!({"datasets": ["low-income-household"], "purpose": "self download"}),
        })
        .collect()
}

fn backends(rt: &tokio::runtime::Runtime) -> Vec<(&'static str, TestDatabase)> {
    let mut out = vec![("sqlite", rt.block_on(fresh_sqlite()).unwrap())];
    if std::env::var(mydata_store::testing::POSTGRES_URL_VAR).is_ok() {
        out.push(("postgres", rt.block_on(fresh_postgres()).unwrap()));
    }
    out
}

/// Events already in the log before measuring: append cost depends on the size of its indexes.
const PREFILL: usize = 100_000;

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for (name, db) in backends(&rt) {
        let store = db.store.clone();
        rt.block_on(async {
            for chunk in events(PREFILL).chunks(10_000) {
                store.append_audit_batch(chunk).await.unwrap();
            }
            store
                .integrate_audit(u32::MAX, Timestamp::from_millis(0))
                .await
                .unwrap();
        });
        let mut g = c.benchmark_group(format!("audit_append/{name}"));
        g.sample_size(10);
        for batch in [1_000usize, 10_000] {
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_function(format!("batch_{batch}"), |b| {
                b.iter_batched(
                    || events(batch),
                    |ev| rt.block_on(store.append_audit_batch(&ev)).unwrap(),
                    BatchSize::LargeInput,
                )
            });
        }
        g.throughput(Throughput::Elements(1));
        let one = events(1).remove(0);
        g.bench_function("single", |b| {
            b.iter(|| rt.block_on(store.append_audit(&one)).unwrap())
        });
        g.throughput(Throughput::Elements(10_000));
        g.bench_function("integrate_10000", |b| {
            b.iter_batched(
                || {
                    rt.block_on(store.append_audit_batch(&events(10_000)))
                        .unwrap()
                },
                |_| {
                    rt.block_on(store.integrate_audit(u32::MAX, Timestamp::from_millis(0)))
                        .unwrap()
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }
}

fn proofs(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(fresh_sqlite()).unwrap();
    let store = db.store.clone();
    const N: usize = 100_000;
    rt.block_on(async {
        for chunk in events(N).chunks(10_000) {
            store.append_audit_batch(chunk).await.unwrap();
        }
        store
            .integrate_audit(u32::MAX, Timestamp::from_millis(0))
            .await
            .unwrap();
    });
    let seq = rt.block_on(store.audit_leaves()).unwrap()[N / 3].event.seq;
    let mut g = c.benchmark_group("audit_proofs/sqlite_100k");
    g.sample_size(10);
    g.bench_function("inclusion_proof", |b| {
        b.iter(|| {
            rt.block_on(store.audit_inclusion_proof(seq, N as u64))
                .unwrap()
        })
    });
    g.bench_function("consistency_proof", |b| {
        b.iter(|| {
            rt.block_on(store.audit_consistency_proof(N as u64 / 2, N as u64))
                .unwrap()
        })
    });
    g.bench_function("verify_whole_log", |b| {
        b.iter(|| rt.block_on(store.verify_audit_log()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, append, proofs);
criterion_main!(benches);

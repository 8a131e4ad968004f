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

/// Events as a platform writes them: about 8 per transfer, each with the transfer's ID and its
/// person's pseudonym (64 random-looking hex digits, as the keyed hash gives). Transfer IDs are
/// UUIDv4 (random) or UUIDv7 (time-ordered), to show what their order costs the indexes.
fn realistic(n: usize, offset: usize, v7: bool) -> Vec<NewAuditEvent> {
    let mut out = Vec::with_capacity(n);
    let mut transfer = String::new();
    for i in offset..offset + n {
        if i % 8 == 0 || transfer.is_empty() {
            transfer = if v7 {
                uuid::Uuid::now_v7().to_string()
            } else {
                uuid::Uuid::new_v4().to_string()
            };
        }
        let person = (i / 8).wrapping_mul(7919) % 5000;
        out.push(NewAuditEvent {
            at: Timestamp::from_millis(1_790_000_000_000 + i as i64),
            kind: "agency.outcome".into(),
            subject: Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                person.to_le_bytes(),
            ))),
            transfer_id: Some(transfer.clone()),
            actor: "system".into(),
            detail: serde_json::json!({"dataset": "low-income-household", "outcome": "succeeded"}),
        });
    }
    out
}

/// Batched appends with [`realistic`] events, transfer IDs UUIDv4 against UUIDv7, each on its own
/// log pre-filled the same way.
fn append_realistic(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("audit_append_realistic/sqlite");
    g.sample_size(10);
    for (label, v7) in [("uuid_v4", false), ("uuid_v7", true)] {
        let db = rt.block_on(fresh_sqlite()).unwrap();
        let store = db.store.clone();
        rt.block_on(async {
            for k in 0..PREFILL / 10_000 {
                store
                    .append_audit_batch(&realistic(10_000, k * 10_000, v7))
                    .await
                    .unwrap();
            }
        });
        let mut next = PREFILL;
        for batch in [1_000usize, 10_000] {
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_function(format!("batch_{batch}_{label}"), |b| {
                b.iter_batched(
                    || {
                        next += batch;
                        realistic(batch, next, v7)
                    },
                    |ev| rt.block_on(store.append_audit_batch(&ev)).unwrap(),
                    BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
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

criterion_group!(benches, append, append_realistic, proofs);
criterion_main!(benches);

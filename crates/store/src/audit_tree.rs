//! The audit log's Merkle tree: integrating new events as leaves, tree heads, proofs, and a full
//! verification that names the first entry that does not hold.
//!
//! An event's leaf is the SHA-256 (RFC 9162 leaf hash) of its canonical form, which includes its
//! leaf index and sequence number, so a modified, moved or swapped row no longer matches its hash.

use crate::audit::AuditEvent;
use crate::step::Binder;
use crate::{Db, Result, Store, StoreError, on_pool};
use mydata_core::Timestamp;
use mydata_core::merkle::{self, CompactRange, Hash};
use serde::Serialize;

/// A tree head: the size and root of the log at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeHead {
    pub tree_size: u64,
    pub root_hash: String,
    pub created_at: Timestamp,
    /// The platform's signature over the head, once heads are signed.
    pub signature: Option<String>,
}

impl TreeHead {
    /// The bytes the platform signs for this head (and a verifier recomputes).
    pub fn signing_payload(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "typ": "mydata-tree-head",
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "created_at_ms": self.created_at.millis(),
        }))
        .unwrap_or_default()
    }
}

/// Canonical bytes of an event at a leaf index: what the leaf hash covers.
pub fn canonical_entry(leaf_index: u64, e: &AuditEvent) -> Vec<u8> {
    #[derive(Serialize)]
    struct Canonical<'a> {
        leaf_index: u64,
        seq: i64,
        at: i64,
        kind: &'a str,
        subject: Option<&'a str>,
        transfer_id: Option<&'a str>,
        actor: &'a str,
        detail: &'a serde_json::Value,
    }
    // serde_json writes struct fields in declaration order and object keys sorted, so the bytes are
    // the same whoever computes them.
    serde_json::to_vec(&Canonical {
        leaf_index,
        seq: e.seq,
        at: e.at.millis(),
        kind: &e.kind,
        subject: e.subject.as_deref(),
        transfer_id: e.transfer_id.as_deref(),
        actor: &e.actor,
        detail: &e.detail,
    })
    .unwrap_or_default()
}

/// The leaf hash of an event at a leaf index.
pub fn event_leaf_hash(leaf_index: u64, e: &AuditEvent) -> Hash {
    merkle::leaf_hash(&canonical_entry(leaf_index, e))
}

pub(crate) fn to_hex(h: &Hash) -> String {
    hex::encode(h)
}

pub(crate) fn from_hex(s: &str) -> Result<Hash> {
    let v = hex::decode(s).map_err(|e| StoreError::Corrupt(format!("hash `{s}`: {e}")))?;
    Hash::try_from(v.as_slice())
        .map_err(|_| StoreError::Corrupt(format!("hash `{s}` is not 32 bytes")))
}

/// The sequencer's statements (see `Store::integrate_batch`). On SQLite the transaction holds the
/// database's write lock from its `BEGIN IMMEDIATE`, so the log state is read plainly;
/// PostgreSQL locks the log state row.
const READ_STATE_SQLITE: &str = "SELECT tree_size, peaks FROM audit_log_state WHERE id = 1";
const LOCK_STATE_POSTGRES: &str =
    "SELECT tree_size, peaks FROM audit_log_state WHERE id = 1 FOR UPDATE";
const SELECT_NEW: &str =
    "SELECT seq, at, kind, subject, transfer_id, actor, detail FROM audit_events
    WHERE leaf_index IS NULL ORDER BY seq LIMIT $1";
const INSERT_NODE: &str = "INSERT INTO audit_nodes (level, idx, hash) VALUES ($1, $2, $3)";
const SET_LEAF: &str = "UPDATE audit_events SET leaf_index = $1, leaf_hash = $2 WHERE seq = $3";
const SET_STATE: &str = "UPDATE audit_log_state SET tree_size = $1, peaks = $2 WHERE id = 1";
const LATEST_HEAD_SIZE: &str = "SELECT MAX(tree_size) FROM tree_heads";
const INSERT_HEAD: &str =
    "INSERT INTO tree_heads (tree_size, root_hash, created_at) VALUES ($1, $2, $3)";

/// One batch of new events made into leaves: what the sequencer writes back, the same on both
/// backends.
struct Batch {
    integrated: usize,
    size_before: u64,
    range: CompactRange,
    /// (seq, leaf index, leaf hash) per event.
    updates: Vec<(i64, i64, String)>,
    /// Subtree roots to store (level, index, hash).
    nodes: Vec<(i64, i64, String)>,
}

impl Batch {
    /// Gives `rows` (in sequence order) the next leaf indexes after a tree of `size` leaves
    /// whose right edge is `peaks` (the log state row's JSON).
    fn plan(size: i64, peaks: &str, rows: Vec<crate::audit::AuditRow>) -> Result<Self> {
        let peaks: Vec<String> = serde_json::from_str(peaks)
            .map_err(|e| StoreError::Corrupt(format!("log state: {e}")))?;
        let peaks = peaks
            .iter()
            .map(|p| from_hex(p))
            .collect::<Result<Vec<_>>>()?;
        let size_before =
            u64::try_from(size).map_err(|_| StoreError::Corrupt("negative tree size".into()))?;
        let mut range = CompactRange::from_parts(size_before, peaks)
            .map_err(|e| StoreError::Corrupt(format!("log state: {e}")))?;
        let integrated = rows.len();
        let mut updates = Vec::with_capacity(rows.len());
        let mut nodes = Vec::new();
        for row in rows {
            let event = AuditEvent::try_from(row)?;
            let index = range.size();
            let leaf = event_leaf_hash(index, &event);
            updates.push((
                event.seq,
                i64::try_from(index).unwrap_or(i64::MAX),
                to_hex(&leaf),
            ));
            range.push_with(leaf, |id, h| {
                if id.level >= crate::audit_proofs::MIN_STORED_LEVEL {
                    nodes.push((
                        i64::from(id.level),
                        i64::try_from(id.index).unwrap_or(i64::MAX),
                        to_hex(h),
                    ));
                }
            });
        }
        Ok(Self {
            integrated,
            size_before,
            range,
            updates,
            nodes,
        })
    }

    fn size_after(&self) -> i64 {
        i64::try_from(self.range.size()).unwrap_or(i64::MAX)
    }

    /// The head to record (size and root, hex) when the tree is now larger than the latest head
    /// recorded, of size `latest`.
    fn new_head(&self, latest: Option<i64>) -> Option<(i64, String)> {
        (self.size_after() > latest.unwrap_or(0))
            .then(|| (self.size_after(), to_hex(&self.range.root())))
    }

    /// The log state's new right edge (JSON), if the tree grew.
    fn new_peaks(&self) -> Option<String> {
        (self.range.size() > self.size_before).then(|| {
            let peaks: Vec<String> = self.range.peaks().iter().map(to_hex).collect();
            serde_json::to_string(&peaks).unwrap_or_default()
        })
    }
}

#[derive(sqlx::FromRow)]
struct StateRow {
    tree_size: i64,
    peaks: String,
    #[sqlx(default)]
    pruned_below: i64,
}

#[derive(sqlx::FromRow)]
pub(crate) struct HeadRow {
    tree_size: i64,
    root_hash: String,
    created_at: i64,
    signature: Option<String>,
}

impl From<HeadRow> for TreeHead {
    fn from(r: HeadRow) -> Self {
        TreeHead {
            tree_size: u64::try_from(r.tree_size).unwrap_or(0),
            root_hash: r.root_hash,
            created_at: Timestamp::from_millis(r.created_at),
            signature: r.signature,
        }
    }
}

/// An integrated event with its stored leaf data, as the verifier reads it.
#[derive(Debug, Clone)]
pub struct LeafRow {
    pub leaf_index: u64,
    pub stored_hash: String,
    /// When retention removed the event's details (subject, transfer, actor, detail); the leaf
    /// hash stays, so the tree still verifies, but the entry can no longer be recomputed.
    pub pruned_at: Option<Timestamp>,
    pub event: AuditEvent,
}

#[derive(sqlx::FromRow)]
pub(crate) struct LeafRowRaw {
    leaf_index: i64,
    leaf_hash: Option<String>,
    pruned_at: Option<i64>,
    #[sqlx(flatten)]
    event: crate::audit::AuditRow,
}

impl TryFrom<LeafRowRaw> for LeafRow {
    type Error = StoreError;
    fn try_from(r: LeafRowRaw) -> Result<Self> {
        Ok(LeafRow {
            leaf_index: u64::try_from(r.leaf_index)
                .map_err(|_| StoreError::Corrupt("negative leaf index".into()))?,
            stored_hash: r.leaf_hash.unwrap_or_default(),
            pruned_at: r.pruned_at.map(Timestamp::from_millis),
            event: AuditEvent::try_from(r.event)?,
        })
    }
}

/// One problem found by [`Store::verify_audit_log`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum AuditProblem {
    #[error("entry {index} is missing (the log jumps from entry {before} to entry {index_after})")]
    Missing {
        index: u64,
        before: i64,
        index_after: u64,
    },
    #[error(
        "entry {index} (event {seq}) does not match its recorded hash: it was modified or moved"
    )]
    Modified { index: u64, seq: i64 },
    #[error("entry {index} (event {seq}) has a malformed recorded hash")]
    BadHash { index: u64, seq: i64 },
    #[error(
        "tree head at size {size} does not match the log (root {expected} recorded, {actual} computed)"
    )]
    HeadMismatch {
        size: u64,
        expected: String,
        actual: String,
    },
    #[error("tree head at size {size} is beyond the end of the log ({log_size} entries)")]
    HeadBeyondLog { size: u64, log_size: u64 },
    #[error("the log state records {recorded} entries but {found} were found")]
    StateMismatch { recorded: u64, found: u64 },
    #[error(
        "the stored root of entries {first}..={last} (level {level}) does not match them: proofs over that range would be wrong"
    )]
    NodeMismatch { level: u32, first: u64, last: u64 },
    #[error(
        "entry {index} (event {seq}) is marked pruned although retention has not reached it: its details were removed"
    )]
    PrunedEarly { index: u64, seq: i64 },
}

/// The outcome of verifying the whole stored log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    pub entries: u64,
    /// Entries whose details retention removed (checked through their stored hash).
    pub pruned: u64,
    pub heads_checked: u64,
    pub latest_head: Option<u64>,
    pub problems: Vec<AuditProblem>,
}

impl Store {
    /// Integrates up to `max` new events into the tree (in sequence order), records a tree head
    /// when the tree grew, and returns the latest head. One transaction; safe from several
    /// processes, which take turns on the log state row.
    pub async fn integrate_audit(&self, max: u32, now: Timestamp) -> Result<Option<TreeHead>> {
        self.integrate_batch(max, now, true).await?;
        self.latest_tree_head().await
    }

    /// Integrates the backlog `batch` events at a time, each batch its own transaction (so
    /// writers wait for one batch at most), until a batch comes out short or `rounds` batches have
    /// run, then records one tree head for all of them; returns the latest head. Events can arrive
    /// faster than one batch per round (≈ 11 per transfer), so one batch per round would let the
    /// backlog grow.
    pub async fn integrate_audit_backlog(
        &self,
        batch: u32,
        rounds: u32,
        now: Timestamp,
    ) -> Result<Option<TreeHead>> {
        let batch = batch.max(1);
        let rounds = rounds.max(1);
        let full = usize::try_from(batch).unwrap_or(usize::MAX);
        for round in 1..=rounds {
            // A short batch records the round's head itself; so does the last one allowed.
            if self.integrate_batch(batch, now, round == rounds).await? < full {
                break;
            }
        }
        self.latest_tree_head().await
    }

    /// One batch of [`Store::integrate_audit`]; records a head (when the tree is larger than the
    /// latest head) if the batch came out short of `max` (the backlog is done) or `always_head`.
    /// Returns how many events it integrated.
    async fn integrate_batch(&self, max: u32, now: Timestamp, always_head: bool) -> Result<usize> {
        let head_if_short =
            |n: usize| always_head || n < usize::try_from(max).unwrap_or(usize::MAX);
        match &self.db {
            // SQLite: on the writer's calling-thread handle, one statement per row. Through sqlx
            // each statement is a hand-off to its connection thread and back, and every other write
            // waits for the batch: under load a batch of 100 held the writer ≈ 4.4 ms that way.
            Db::Sqlite { writer, .. } => {
                let mut lease = writer.lease().await?;
                let conn = lease.sync()?;
                let out = conn.transaction(|c| {
                    let state: Vec<(i64, String)> = c.query(&Binder::new(READ_STATE_SQLITE))?;
                    let (size, peaks) = state
                        .into_iter()
                        .next()
                        .ok_or_else(|| StoreError::Corrupt("no log state".into()))?;
                    let rows: Vec<crate::audit::AuditRow> =
                        c.query(&Binder::new(SELECT_NEW).bind(i64::from(max)))?;
                    let batch = Batch::plan(size, &peaks, rows)?;
                    for (level, idx, hash) in &batch.nodes {
                        c.query::<(i64,)>(
                            &Binder::new(INSERT_NODE).bind(*level).bind(*idx).bind(hash),
                        )?;
                    }
                    for (seq, li, lh) in &batch.updates {
                        c.query::<(i64,)>(&Binder::new(SET_LEAF).bind(*li).bind(lh).bind(*seq))?;
                    }
                    if let Some(peaks) = batch.new_peaks() {
                        c.query::<(i64,)>(
                            &Binder::new(SET_STATE).bind(batch.size_after()).bind(peaks),
                        )?;
                    }
                    if head_if_short(batch.integrated) {
                        let last: Vec<(Option<i64>,)> = c.query(&Binder::new(LATEST_HEAD_SIZE))?;
                        if let Some((size, root)) = batch.new_head(last.first().and_then(|l| l.0)) {
                            c.query::<(i64,)>(
                                &Binder::new(INSERT_HEAD)
                                    .bind(size)
                                    .bind(root)
                                    .bind(now.millis()),
                            )?;
                        }
                    }
                    Ok(batch.integrated)
                });
                if out.is_err() && !conn.rolled_back() {
                    lease.drop_sync();
                }
                lease.finish();
                out
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let state: StateRow = sqlx::query_as(LOCK_STATE_POSTGRES)
                    .fetch_one(&mut *tx)
                    .await?;
                let rows: Vec<crate::audit::AuditRow> = sqlx::query_as(SELECT_NEW)
                    .bind(i64::from(max))
                    .fetch_all(&mut *tx)
                    .await?;
                let batch = Batch::plan(state.tree_size, &state.peaks, rows)?;
                for chunk in batch.nodes.chunks(crate::audit::BATCH_ROWS) {
                    let mut q =
                        sqlx::QueryBuilder::new("INSERT INTO audit_nodes (level, idx, hash) ");
                    q.push_values(chunk, |mut b, (level, idx, hash)| {
                        b.push_bind(*level).push_bind(*idx).push_bind(hash.as_str());
                    });
                    q.build().execute(&mut *tx).await?;
                }
                // One statement per chunk instead of one per event, each a round trip.
                for chunk in batch.updates.chunks(crate::audit::BATCH_ROWS) {
                    let mut q = sqlx::QueryBuilder::new("WITH v (seq, li, lh) AS (VALUES ");
                    let mut sep = q.separated(", ");
                    for (seq, li, lh) in chunk {
                        sep.push("(CAST(");
                        sep.push_bind_unseparated(*seq);
                        sep.push_unseparated(" AS BIGINT), CAST(");
                        sep.push_bind_unseparated(*li);
                        sep.push_unseparated(" AS BIGINT), ");
                        sep.push_bind_unseparated(lh.as_str());
                        sep.push_unseparated(")");
                    }
                    q.push(") UPDATE audit_events SET leaf_index = v.li, leaf_hash = v.lh FROM v WHERE audit_events.seq = v.seq");
                    q.build().execute(&mut *tx).await?;
                }
                if let Some(peaks) = batch.new_peaks() {
                    sqlx::query(SET_STATE)
                        .bind(batch.size_after())
                        .bind(peaks)
                        .execute(&mut *tx)
                        .await?;
                }
                if head_if_short(batch.integrated) {
                    // Also after batches that recorded none (see `integrate_audit_backlog`).
                    let last: Option<i64> = sqlx::query_scalar(LATEST_HEAD_SIZE)
                        .fetch_one(&mut *tx)
                        .await?;
                    if let Some((size, root)) = batch.new_head(last) {
                        sqlx::query(INSERT_HEAD)
                            .bind(size)
                            .bind(root)
                            .bind(now.millis())
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
                Ok(batch.integrated)
            }
        }
    }

    /// The most recent tree head, if any.
    pub async fn latest_tree_head(&self) -> Result<Option<TreeHead>> {
        let sql = "SELECT tree_size, root_hash, created_at, signature FROM tree_heads ORDER BY tree_size DESC LIMIT 1";
        let row: Option<HeadRow> =
            on_pool!(self, pool => sqlx::query_as(sql).fetch_optional(pool).await?);
        Ok(row.map(TreeHead::from))
    }

    /// Tree heads not signed yet, smallest first.
    pub async fn unsigned_tree_heads(&self, limit: u32) -> Result<Vec<TreeHead>> {
        let sql = "SELECT tree_size, root_hash, created_at, signature FROM tree_heads WHERE signature IS NULL ORDER BY tree_size LIMIT $1";
        let rows: Vec<HeadRow> = on_pool!(self, pool => sqlx::query_as(sql).bind(i64::from(limit)).fetch_all(pool).await?);
        Ok(rows.into_iter().map(TreeHead::from).collect())
    }

    /// Records the signature of a head; a head is signed once and never re-signed.
    pub async fn set_tree_head_signature(&self, tree_size: u64, signature: &str) -> Result<bool> {
        let sql = "UPDATE tree_heads SET signature = $1 WHERE tree_size = $2 AND signature IS NULL";
        let size = i64::try_from(tree_size).unwrap_or(i64::MAX);
        let n = on_pool!(self, pool => sqlx::query(sql).bind(signature).bind(size).execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    /// Every tree head, smallest first.
    pub async fn tree_heads(&self) -> Result<Vec<TreeHead>> {
        let sql =
            "SELECT tree_size, root_hash, created_at, signature FROM tree_heads ORDER BY tree_size";
        let rows: Vec<HeadRow> = on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(rows.into_iter().map(TreeHead::from).collect())
    }

    /// The integrated events in leaf order with their stored hashes.
    pub async fn audit_leaves(&self) -> Result<Vec<LeafRow>> {
        let sql = "SELECT leaf_index, leaf_hash, pruned_at, seq, at, kind, subject, transfer_id, actor, detail FROM audit_events
                   WHERE leaf_index IS NOT NULL ORDER BY leaf_index";
        let rows: Vec<LeafRowRaw> =
            on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        rows.into_iter().map(LeafRow::try_from).collect()
    }

    /// Re-derives the whole tree from the stored events and checks it against the stored hashes,
    /// the stored subtree roots, every tree head and the log state. Reports every problem, each
    /// naming its entry, subtree or head. Pruned entries (details removed by retention) cannot be
    /// recomputed: their stored hash is used, which the tree heads recorded before still bind.
    pub async fn verify_audit_log(&self) -> Result<AuditReport> {
        let leaves = self.audit_leaves().await?;
        let heads = self.tree_heads().await?;
        let state: StateRow = on_pool!(self, pool => sqlx::query_as("SELECT tree_size, peaks, pruned_below FROM audit_log_state WHERE id = 1").fetch_one(pool).await?);
        let stored_nodes: Vec<(i64, i64, String)> = on_pool!(self, pool => sqlx::query_as("SELECT level, idx, hash FROM audit_nodes").fetch_all(pool).await?);
        let mut nodes: std::collections::HashMap<(i64, i64), String> = stored_nodes
            .into_iter()
            .map(|(l, i, h)| ((l, i), h))
            .collect();
        let pruned_below = u64::try_from(state.pruned_below).unwrap_or(0);
        let mut problems = Vec::new();
        let mut range = CompactRange::default();
        let mut heads_iter = heads.iter().peekable();
        let mut heads_checked = 0;
        let mut pruned = 0;
        let mut check_heads = |range: &CompactRange, problems: &mut Vec<AuditProblem>| {
            while let Some(h) = heads_iter.next_if(|h| h.tree_size <= range.size()) {
                if h.tree_size == range.size() {
                    heads_checked += 1;
                    let actual = to_hex(&range.root());
                    if actual != h.root_hash {
                        problems.push(AuditProblem::HeadMismatch {
                            size: h.tree_size,
                            expected: h.root_hash.clone(),
                            actual,
                        });
                    }
                }
            }
        };
        let mut expected_index = 0u64;
        let mut prev_seq = -1;
        for row in &leaves {
            if row.leaf_index != expected_index {
                problems.push(AuditProblem::Missing {
                    index: expected_index,
                    before: prev_seq,
                    index_after: row.leaf_index,
                });
                // Continue from the row we have, so later problems are still found.
                expected_index = row.leaf_index;
            }
            let (index, seq) = (row.leaf_index, row.event.seq);
            let stored = from_hex(&row.stored_hash);
            let leaf = if row.pruned_at.is_some() {
                pruned += 1;
                let e = &row.event;
                if e.subject.is_some()
                    || e.transfer_id.is_some()
                    || !e.actor.is_empty()
                    || !e.detail.is_null()
                {
                    // Marked pruned but still carrying details: they cannot be checked.
                    problems.push(AuditProblem::Modified { index, seq });
                } else if index >= pruned_below {
                    problems.push(AuditProblem::PrunedEarly { index, seq });
                }
                match stored {
                    Ok(h) => h,
                    Err(_) => {
                        problems.push(AuditProblem::BadHash { index, seq });
                        [0u8; 32]
                    }
                }
            } else {
                let computed = event_leaf_hash(index, &row.event);
                match stored {
                    Ok(stored) if stored == computed => {}
                    Ok(_) => problems.push(AuditProblem::Modified { index, seq }),
                    Err(_) => problems.push(AuditProblem::BadHash { index, seq }),
                }
                // The tree is rebuilt from the recomputed hashes: the stored ones prove nothing.
                computed
            };
            while range.size() < index {
                range.push([0u8; 32]);
            }
            range.push_with(leaf, |id, h| {
                if id.level < crate::audit_proofs::MIN_STORED_LEVEL {
                    return;
                }
                let key = (
                    i64::from(id.level),
                    i64::try_from(id.index).unwrap_or(i64::MAX),
                );
                if let Some(stored) = nodes.remove(&key)
                    && stored != to_hex(h)
                {
                    problems.push(AuditProblem::NodeMismatch {
                        level: id.level,
                        first: id.leaves().0,
                        last: id.leaves().1 - 1,
                    });
                }
            });
            check_heads(&range, &mut problems);
            expected_index += 1;
            prev_seq = seq;
        }
        let log_size = range.size();
        for h in heads.iter().filter(|h| h.tree_size > log_size) {
            problems.push(AuditProblem::HeadBeyondLog {
                size: h.tree_size,
                log_size,
            });
        }
        let recorded = u64::try_from(state.tree_size).unwrap_or(0);
        if recorded != log_size {
            problems.push(AuditProblem::StateMismatch {
                recorded,
                found: log_size,
            });
        }
        Ok(AuditReport {
            entries: log_size,
            pruned,
            heads_checked,
            latest_head: heads.last().map(|h| h.tree_size),
            problems,
        })
    }
}

//! Inclusion and consistency proofs from stored subtree roots, so that a proof reads O(log n)
//! rows whatever the size of the log.
//!
//! Integration stores the root of every complete subtree of 2^[`MIN_STORED_LEVEL`] leaves and more
//! (`audit_nodes`); a proof's hashes are roots of leaf ranges ([`merkle::inclusion_plan`]), each made
//! of at most one stored root per level plus at most 15 leaf hashes. A root that is missing (a log
//! integrated before the table existed) is recomputed from its leaves, which is slower but exact.

use crate::audit_tree::{HeadRow, LeafRow, LeafRowRaw, TreeHead, from_hex};
use crate::{Result, Store, StoreError, on_pool};
use mydata_core::merkle::{self, Hash, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// Smallest subtree level whose roots are stored (16 leaves).
pub(crate) const MIN_STORED_LEVEL: u32 = 4;

/// Stored roots asked for per statement.
const NODES_PER_QUERY: usize = 200;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// How many events the tree holds (the size of the newest tree head).
    pub async fn audit_tree_size(&self) -> Result<u64> {
        let (size,): (i64,) = on_pool!(self, pool => sqlx::query_as("SELECT tree_size FROM audit_log_state WHERE id = 1").fetch_one(pool).await?);
        u64::try_from(size).map_err(|_| StoreError::Corrupt("negative tree size".into()))
    }

    /// The tree head recorded at exactly this size, if any.
    pub async fn tree_head_at(&self, tree_size: u64) -> Result<Option<TreeHead>> {
        let sql = "SELECT tree_size, root_hash, created_at, signature FROM tree_heads WHERE tree_size = $1";
        let row: Option<HeadRow> = on_pool!(self, pool => sqlx::query_as(sql).bind(to_i64(tree_size)).fetch_optional(pool).await?);
        Ok(row.map(TreeHead::from))
    }

    /// The integrated event at a leaf index.
    pub async fn audit_leaf(&self, leaf_index: u64) -> Result<Option<LeafRow>> {
        self.leaf_where("leaf_index = $1", to_i64(leaf_index)).await
    }

    /// The event with this sequence number and its leaf, once integrated.
    pub async fn audit_leaf_of_event(&self, seq: i64) -> Result<Option<LeafRow>> {
        self.leaf_where("seq = $1 AND leaf_index IS NOT NULL", seq)
            .await
    }

    async fn leaf_where(&self, cond: &str, value: i64) -> Result<Option<LeafRow>> {
        let sql = format!(
            "SELECT leaf_index, leaf_hash, pruned_at, seq, at, kind, subject, transfer_id, actor, detail FROM audit_events WHERE {cond}"
        );
        let row: Option<LeafRowRaw> =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(value).fetch_optional(pool).await?);
        row.map(LeafRow::try_from).transpose()
    }

    /// An inclusion proof for the event with sequence number `seq` in the tree of `tree_size`
    /// entries: its leaf index and the audit path.
    pub async fn audit_inclusion_proof(
        &self,
        seq: i64,
        tree_size: u64,
    ) -> Result<(u64, Vec<Hash>)> {
        let index = self
            .audit_leaf_of_event(seq)
            .await?
            .map(|l| l.leaf_index)
            .filter(|&i| i < tree_size)
            .ok_or_else(|| StoreError::NotFound {
                what: "audit entry in that tree",
                id: seq.to_string(),
            })?;
        Ok((
            index,
            self.audit_inclusion_proof_at(index, tree_size).await?,
        ))
    }

    /// The audit path of leaf `leaf_index` in the tree of `tree_size` entries.
    pub async fn audit_inclusion_proof_at(
        &self,
        leaf_index: u64,
        tree_size: u64,
    ) -> Result<Vec<Hash>> {
        self.check_size(tree_size).await?;
        let plan =
            merkle::inclusion_plan(leaf_index, tree_size).map_err(|_| StoreError::NotFound {
                what: "audit entry in that tree",
                id: leaf_index.to_string(),
            })?;
        self.resolve_ranges(&plan).await
    }

    /// A consistency proof between two tree sizes.
    pub async fn audit_consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>> {
        self.check_size(second).await?;
        let plan = merkle::consistency_plan(first, second)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.resolve_ranges(&plan).await
    }

    /// The root of the tree of the first `tree_size` entries.
    pub async fn audit_root_at(&self, tree_size: u64) -> Result<Hash> {
        self.check_size(tree_size).await?;
        let roots = self.resolve_ranges(&[(0, tree_size)]).await?;
        Ok(roots.first().copied().unwrap_or_else(|| merkle::root(&[])))
    }

    async fn check_size(&self, tree_size: u64) -> Result<()> {
        if tree_size > self.audit_tree_size().await? {
            return Err(StoreError::NotFound {
                what: "tree of size",
                id: tree_size.to_string(),
            });
        }
        Ok(())
    }

    /// The roots of the given leaf ranges, from stored subtree roots and a few leaf hashes.
    async fn resolve_ranges(&self, ranges: &[(u64, u64)]) -> Result<Vec<Hash>> {
        let wanted: BTreeSet<NodeId> = ranges
            .iter()
            .flat_map(|&(s, e)| merkle::range_nodes(s, e))
            .collect();
        let mut known: BTreeMap<NodeId, Hash> = BTreeMap::new();
        let stored: Vec<NodeId> = wanted
            .iter()
            .copied()
            .filter(|n| n.level >= MIN_STORED_LEVEL)
            .collect();
        for chunk in stored.chunks(NODES_PER_QUERY) {
            let cond: Vec<String> = (0..chunk.len())
                .map(|i| format!("(level = ${} AND idx = ${})", 2 * i + 1, 2 * i + 2))
                .collect();
            let sql = format!(
                "SELECT level, idx, hash FROM audit_nodes WHERE {}",
                cond.join(" OR ")
            );
            let rows: Vec<(i64, i64, String)> = on_pool!(self, pool => {
                let mut q = sqlx::query_as(&sql);
                for n in chunk {
                    q = q.bind(i64::from(n.level)).bind(to_i64(n.index));
                }
                q.fetch_all(pool).await?
            });
            for (level, idx, hash) in rows {
                let id = NodeId {
                    level: u32::try_from(level)
                        .map_err(|_| StoreError::Corrupt(format!("audit node level {level}")))?,
                    index: u64::try_from(idx)
                        .map_err(|_| StoreError::Corrupt(format!("audit node index {idx}")))?,
                };
                known.insert(id, from_hex(&hash)?);
            }
        }
        // Everything else comes from leaf hashes: small subtrees always, missing roots as a fallback.
        let from_leaves: Vec<NodeId> = wanted
            .iter()
            .copied()
            .filter(|n| !known.contains_key(n))
            .collect();
        let mut needed: Vec<(u64, u64)> = from_leaves.iter().map(|n| n.leaves()).collect();
        needed.sort_unstable();
        let mut spans: Vec<(u64, u64)> = Vec::new();
        for (a, b) in needed {
            match spans.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => spans.push((a, b)),
            }
        }
        let mut leaves: BTreeMap<u64, Hash> = BTreeMap::new();
        for (a, b) in spans {
            let sql = "SELECT leaf_index, leaf_hash FROM audit_events WHERE leaf_index >= $1 AND leaf_index < $2 ORDER BY leaf_index";
            let rows: Vec<(i64, Option<String>)> = on_pool!(self, pool => sqlx::query_as(sql).bind(to_i64(a)).bind(to_i64(b)).fetch_all(pool).await?);
            if rows.len() as u64 != b - a {
                return Err(StoreError::Corrupt(format!(
                    "audit log entries {a}..{b} are incomplete ({} of {} found)",
                    rows.len(),
                    b - a
                )));
            }
            for (i, h) in rows {
                let i = u64::try_from(i)
                    .map_err(|_| StoreError::Corrupt("negative leaf index".into()))?;
                leaves.insert(i, from_hex(h.as_deref().unwrap_or_default())?);
            }
        }
        for n in from_leaves {
            let (a, b) = n.leaves();
            let hashes: Vec<Hash> = leaves.range(a..b).map(|(_, h)| *h).collect();
            known.insert(n, merkle::root(&hashes));
        }
        ranges
            .iter()
            .map(|&(s, e)| {
                let roots = merkle::range_nodes(s, e)
                    .into_iter()
                    .map(|n| {
                        known.get(&n).copied().ok_or_else(|| {
                            StoreError::Corrupt(format!("audit subtree {n:?} unavailable"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(merkle::fold_range(&roots))
            })
            .collect()
    }
}

//! The Merkle tree of the audit log, as RFC 9162 (Certificate Transparency 2.0) section 2.1 defines
//! it: leaf and node hashes with domain separation, the tree head, inclusion proofs and consistency
//! proofs, and their verification.
//!
//! ```text
//! MTH({})      = SHA-256()
//! MTH({d0})    = SHA-256(0x00 || d0)                       leaf hash
//! MTH(D[n])    = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])) node hash, k = largest power of 2 < n
//! ```
//!
//! Everything works on leaf hashes, so the log can store them once and never rehash entries.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Why a proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {first} is larger than tree size {second}")]
    SizesOutOfOrder { first: u64, second: u64 },
    #[error("the proof has the wrong number of hashes for these tree sizes")]
    WrongLength,
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,
}

/// The hash of one log entry (`0x00 || entry`).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// The hash of an inner node (`0x01 || left || right`).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The root hash of a tree with these leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => Sha256::digest([]).into(),
        [one] => *one,
        _ => {
            let (l, r) = leaves.split_at(split(leaves.len()));
            node_hash(&root(l), &root(r))
        }
    }
}

/// The audit path proving that leaf `index` is in the tree of `leaves`.
pub fn inclusion_proof(index: u64, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    let size = leaves.len() as u64;
    let i = usize::try_from(index)
        .ok()
        .filter(|&i| i < leaves.len())
        .ok_or(ProofError::IndexOutOfRange { index, size })?;
    let mut out = Vec::new();
    path(i, leaves, &mut out);
    Ok(out)
}

fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
    if d.len() <= 1 {
        return;
    }
    let k = split(d.len());
    let (l, r) = d.split_at(k);
    if m < k {
        path(m, l, out);
        out.push(root(r));
    } else {
        path(m - k, r, out);
        out.push(root(l));
    }
}

/// Checks that `leaf` is entry `index` of the tree of `size` entries with root `expected_root`
/// (RFC 9162, 2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    expected_root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if &r != expected_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The proof that the tree of the first `first` leaves is a prefix of the tree of all `leaves`.
pub fn consistency_proof(first: u64, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    let second = leaves.len() as u64;
    let m = usize::try_from(first)
        .ok()
        .filter(|&m| m <= leaves.len())
        .ok_or(ProofError::SizesOutOfOrder { first, second })?;
    let mut out = Vec::new();
    if m > 0 && m < leaves.len() {
        subproof(m, leaves, true, &mut out);
    }
    Ok(out)
}

fn subproof(m: usize, d: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    if m == d.len() {
        if !complete {
            out.push(root(d));
        }
        return;
    }
    let k = split(d.len());
    let (l, r) = d.split_at(k);
    if m <= k {
        subproof(m, l, complete, out);
        out.push(root(r));
    } else {
        subproof(m - k, r, false, out);
        out.push(root(l));
    }
}

/// Checks that the tree of size `first` with root `first_root` is a prefix of the tree of size
/// `second` with root `second_root` (RFC 9162, 2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::SizesOutOfOrder { first, second });
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if first == 0 {
        // The empty tree is a prefix of every tree; nothing to prove.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((head, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if &fr != first_root || &sr != second_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// A perfect subtree of the log: the `2^level` leaves from `index << level` on. Level 0 is a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId {
    pub level: u32,
    pub index: u64,
}

impl NodeId {
    /// The leaves it covers, as a half-open range.
    pub fn leaves(self) -> (u64, u64) {
        let start = self.index << self.level;
        (start, start + (1u64 << self.level))
    }
}

/// The perfect subtrees whose roots, folded from the right with [`fold_range`], give the RFC 9162
/// root of leaves `[start, end)`, largest first. `start` must be aligned as every subtree of the
/// RFC 9162 recursion is (a multiple of the power of two at or above `end - start`).
pub fn range_nodes(start: u64, end: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    let len = end.saturating_sub(start);
    let mut pos = start;
    for level in (0..64u32).rev() {
        if len & (1u64 << level) != 0 {
            out.push(NodeId {
                level,
                index: pos >> level,
            });
            pos += 1u64 << level;
        }
    }
    out
}

/// The root of a range from the roots of its [`range_nodes`] (largest first).
pub fn fold_range(roots: &[Hash]) -> Hash {
    let mut it = roots.iter().rev();
    match it.next() {
        None => Sha256::digest([]).into(),
        Some(last) => it.fold(*last, |acc, p| node_hash(p, &acc)),
    }
}

/// What an inclusion proof is made of: for each hash of the audit path (in RFC 9162 order), the
/// leaf range whose root it is. A store resolves the ranges from stored subtree roots.
pub fn inclusion_plan(index: u64, size: u64) -> Result<Vec<(u64, u64)>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    let (mut m, mut start, mut n) = (index, 0u64, size);
    // PATH(m, D[start..start+n]) emits its deepest hash first, so collect top-down and reverse.
    while n > 1 {
        let k = split_u64(n);
        if m < k {
            out.push((start + k, start + n));
            n = k;
        } else {
            out.push((start, start + k));
            m -= k;
            start += k;
            n -= k;
        }
    }
    out.reverse();
    Ok(out)
}

/// What a consistency proof between sizes `first` and `second` is made of (see [`inclusion_plan`]).
pub fn consistency_plan(first: u64, second: u64) -> Result<Vec<(u64, u64)>, ProofError> {
    if first > second {
        return Err(ProofError::SizesOutOfOrder { first, second });
    }
    let mut out = Vec::new();
    if first == 0 || first == second {
        return Ok(out);
    }
    let (mut m, mut start, mut n, mut complete) = (first, 0u64, second, true);
    loop {
        if m == n {
            if !complete {
                out.push((start, start + n));
            }
            break;
        }
        let k = split_u64(n);
        if m <= k {
            out.push((start + k, start + n));
            n = k;
        } else {
            out.push((start, start + k));
            m -= k;
            start += k;
            n -= k;
            complete = false;
        }
    }
    out.reverse();
    Ok(out)
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split_u64(n: u64) -> u64 {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The right edge of a tree: the roots of its perfect subtrees, largest first. Enough to append
/// leaves and compute the root without the leaves themselves (O(log n) hashes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    /// Roots of the perfect subtrees that make up the tree, largest first.
    peaks: Vec<Hash>,
}

impl CompactRange {
    /// Rebuilds a range from its stored size and peaks; refuses a peak count that cannot belong
    /// to that size.
    pub fn from_parts(size: u64, peaks: Vec<Hash>) -> Result<Self, ProofError> {
        if peaks.len() != size.count_ones() as usize {
            return Err(ProofError::WrongLength);
        }
        Ok(Self { size, peaks })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.push_with(leaf, |_, _| {});
    }

    /// Appends one leaf hash and reports every perfect subtree it completes (level 1 and up), so
    /// a log can store their roots and later build proofs from O(log n) stored hashes.
    pub fn push_with(&mut self, leaf: Hash, mut completed: impl FnMut(NodeId, &Hash)) {
        let index = self.size;
        let mut h = leaf;
        let mut size = self.size;
        let mut level = 0u32;
        // Like a binary counter: each trailing one bit merges two equal subtrees.
        while size & 1 == 1 {
            match self.peaks.pop() {
                Some(left) => h = node_hash(&left, &h),
                None => break,
            }
            size >>= 1;
            level += 1;
            completed(
                NodeId {
                    level,
                    index: index >> level,
                },
                &h,
            );
        }
        self.peaks.push(h);
        self.size += 1;
    }

    /// The root hash of the tree so far.
    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        match it.next() {
            None => Sha256::digest([]).into(),
            Some(last) => it.fold(*last, |acc, p| node_hash(p, &acc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compact_range_matches_the_full_root_at_every_size() {
        let l = leaves(70);
        let mut c = CompactRange::default();
        assert_eq!(c.root(), root(&[]));
        for (i, h) in l.iter().enumerate() {
            c.push(*h);
            assert_eq!(c.size(), i as u64 + 1);
            assert_eq!(c.root(), root(&l[..=i]), "size {}", i + 1);
            let again = CompactRange::from_parts(c.size(), c.peaks().to_vec()).unwrap();
            assert_eq!(again, c);
        }
        assert!(CompactRange::from_parts(3, vec![l[0]]).is_err());
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("event {i}").as_bytes()))
            .collect()
    }

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn known_values_match_rfc_construction() {
        // The empty tree is the hash of the empty string.
        assert_eq!(
            hex(&root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // The leaf hash of the empty entry is SHA-256(0x00).
        assert_eq!(
            hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        let l = leaves(3);
        assert_eq!(root(&l), node_hash(&node_hash(&l[0], &l[1]), &l[2]));
        let l = leaves(5);
        let left = node_hash(&node_hash(&l[0], &l[1]), &node_hash(&l[2], &l[3]));
        assert_eq!(root(&l), node_hash(&left, &l[4]));
    }

    #[test]
    fn inclusion_proofs_verify_for_every_leaf_of_small_trees() {
        for n in 1..=33 {
            let l = leaves(n);
            let r = root(&l);
            for i in 0..n {
                let p = inclusion_proof(i as u64, &l).unwrap();
                verify_inclusion(&l[i], i as u64, n as u64, &p, &r).unwrap();
                // Another leaf or another index does not verify. (A different size can share the
                // path shape; the signed tree head binds size and root together.)
                let other = leaf_hash(b"forged");
                assert!(verify_inclusion(&other, i as u64, n as u64, &p, &r).is_err());
                if n > 1 {
                    assert!(
                        verify_inclusion(&l[i], ((i + 1) % n) as u64, n as u64, &p, &r).is_err(),
                        "n={n} i={i}"
                    );
                }
            }
        }
        assert_eq!(
            inclusion_proof(3, &leaves(3)),
            Err(ProofError::IndexOutOfRange { index: 3, size: 3 })
        );
    }

    #[test]
    fn consistency_proofs_verify_between_all_small_sizes() {
        let all = leaves(33);
        for second in 1..=33usize {
            let sr = root(&all[..second]);
            for first in 0..=second {
                let fr = root(&all[..first]);
                let p = consistency_proof(first as u64, &all[..second]).unwrap();
                verify_consistency(first as u64, second as u64, &fr, &sr, &p).unwrap();
                if first > 0 && first < second {
                    // A forged earlier head is detected.
                    let forged = leaf_hash(b"forged head");
                    assert!(
                        verify_consistency(first as u64, second as u64, &forged, &sr, &p).is_err()
                    );
                    // The proof for another first size is refused (different path or shape).
                    if first + 1 < second {
                        let fr2 = root(&all[..first + 1]);
                        assert!(
                            verify_consistency(first as u64 + 1, second as u64, &fr2, &sr, &p)
                                .is_err(),
                            "{first}->{second}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rewritten_history_breaks_consistency() {
        let mut l = leaves(10);
        let old_root = root(&l[..6]);
        l[2] = leaf_hash(b"rewritten");
        let p = consistency_proof(6, &l).unwrap();
        assert_eq!(
            verify_consistency(6, 10, &old_root, &root(&l), &p),
            Err(ProofError::RootMismatch)
        );
    }

    /// Resolves a plan with hashes computed from the leaves, as a store would from stored nodes.
    fn resolve(plan: &[(u64, u64)], l: &[Hash]) -> Vec<Hash> {
        plan.iter()
            .map(|&(s, e)| {
                let roots: Vec<Hash> = range_nodes(s, e)
                    .into_iter()
                    .map(|n| {
                        let (a, b) = n.leaves();
                        root(&l[a as usize..b as usize])
                    })
                    .collect();
                fold_range(&roots)
            })
            .collect()
    }

    #[test]
    fn plans_give_the_same_proofs_as_the_leaves() {
        let all = leaves(70);
        for n in 1..=70usize {
            let l = &all[..n];
            for i in 0..n {
                let plan = inclusion_plan(i as u64, n as u64).unwrap();
                assert_eq!(
                    resolve(&plan, l),
                    inclusion_proof(i as u64, l).unwrap(),
                    "{i}/{n}"
                );
            }
            for m in 0..=n {
                let plan = consistency_plan(m as u64, n as u64).unwrap();
                assert_eq!(
                    resolve(&plan, l),
                    consistency_proof(m as u64, l).unwrap(),
                    "{m}->{n}"
                );
            }
        }
        assert!(inclusion_plan(5, 5).is_err());
        assert!(consistency_plan(6, 5).is_err());
    }

    #[test]
    fn push_reports_every_completed_subtree() {
        let l = leaves(37);
        let mut c = CompactRange::default();
        let mut nodes = Vec::new();
        for h in &l {
            c.push_with(*h, |id, hash| nodes.push((id, *hash)));
        }
        // One node per completed pair, four, eight...: 18 + 9 + 4 + 2 + 1.
        assert_eq!(nodes.len(), 34);
        for (id, hash) in nodes {
            let (a, b) = id.leaves();
            assert!(id.level >= 1);
            assert_eq!(hash, root(&l[a as usize..b as usize]), "{id:?}");
        }
    }

    proptest! {
        #[test]
        fn any_inclusion_proof_verifies_and_any_flipped_bit_fails(n in 1usize..300, i_seed in 0usize..300, bit in 0usize..256) {
            let l = leaves(n);
            let i = i_seed % n;
            let r = root(&l);
            let mut p = inclusion_proof(i as u64, &l).unwrap();
            prop_assert!(verify_inclusion(&l[i], i as u64, n as u64, &p, &r).is_ok());
            if !p.is_empty() {
                let which = bit % p.len();
                p[which][bit / 8 % 32] ^= 1 << (bit % 8);
                prop_assert!(verify_inclusion(&l[i], i as u64, n as u64, &p, &r).is_err());
            }
        }

        #[test]
        fn any_consistency_proof_verifies(second in 1usize..300, first_seed in 0usize..300) {
            let l = leaves(second);
            let first = first_seed % (second + 1);
            let p = consistency_proof(first as u64, &l).unwrap();
            prop_assert!(verify_consistency(first as u64, second as u64, &root(&l[..first]), &root(&l), &p).is_ok());
        }
    }
}

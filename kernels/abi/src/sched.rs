//! FlashMLA's tile scheduler (HEAD `csrc/smxx/decode/get_decoding_sched_meta/get_decoding_sched_meta.cu`,
//! `get_mla_metadata_kernel`), written once and compiled for the GPU metadata kernel and for the host.
//!
//! The decode grid has one CTA per (query m-block, KV head, SM part). Every SM part gets a work list of
//! about the same cost: a request's chunk of `n` KV blocks costs `n + FIXED_OVERHEAD_NUM_BLOCKS`. The greedy
//! pass below walks the requests in order and cuts them into chunks; a request cut into several chunks is
//! "split", its partial results go to `o_accum`/`lse_accum` and the combine kernel merges them.

use crate::params::DecodingSchedMeta;
use crate::{BLOCK_SIZE_M, FIXED_OVERHEAD_NUM_BLOCKS, PAGE_BLOCK_SIZE};

/// KV blocks the scheduler charges for a request of `seqlen` tokens. A request with no tokens still
/// counts as one block (FlashMLA HEAD: `last_token_idx = max(s_k - 1, 0)`), so every request owns at
/// least one chunk and its empty output row is written by the decode kernel. Negative lengths count as 0.
#[inline(always)]
pub const fn sched_num_blocks(seqlen: i32) -> i32 {
    let last_token = if seqlen > 1 { seqlen - 1 } else { 0 };
    last_token / PAGE_BLOCK_SIZE as i32 + 1
}

/// Cost of a whole request in the scheduler's unit (KV blocks plus the per-chunk overhead).
#[inline(always)]
pub const fn sched_request_cost(seqlen: i32) -> i64 {
    sched_num_blocks(seqlen) as i64 + FIXED_OVERHEAD_NUM_BLOCKS as i64
}

/// Number of SM parts (work lists) FlashMLA HEAD uses for the dense decode of one batch:
/// `max(num_sms / h_kv / ceil(q_seq_per_hk / 64), 1)`, so that the split kernel's grid
/// `(ceil(q_seq_per_hk / 64), h_kv, num_sm_parts)` is at most one wave of one CTA per SM.
/// `q_seq_per_hk = s_q · h_q / h_kv` is the number of query rows folded onto one KV head.
/// Zero arguments are treated as 1.
///
/// ```
/// // H200 (132 SMs), MLA with one KV head: 128 heads × 1 token = two 64-row tiles per KV head.
/// assert_eq!(flashmla_abi::sched::num_sm_parts(132, 1, 128), 66);
/// assert_eq!(flashmla_abi::sched::num_sm_parts(132, 8, 4096), 1); // FlashMLA v1 divided to 0 here
/// ```
#[inline]
pub const fn num_sm_parts(num_sms: u32, h_kv: u32, q_seq_per_hk: u32) -> u32 {
    let h_kv = if h_kv == 0 { 1 } else { h_kv };
    let rows = if q_seq_per_hk == 0 { 1 } else { q_seq_per_hk };
    let m_blocks = rows.div_ceil(BLOCK_SIZE_M as u32);
    let parts = num_sms / h_kv / m_blocks;
    if parts == 0 {
        1
    } else {
        parts
    }
}

/// Upper bound on the number of split slots (`o_accum` / `lse_accum` rows per KV head and query row)
/// a schedule can use: every request has one, and every part opens at most one more.
#[inline]
pub const fn max_total_splits(batch_size: usize, num_sm_parts: usize) -> usize {
    batch_size + num_sm_parts
}

/// Runs the greedy scheduling pass.
///
/// * `seqlen_at(i)` returns request `i`'s KV length;
/// * `total_cost` must be `Σ sched_request_cost(seqlen_at(i))` (on the GPU a warp computes it in parallel);
/// * `emit_meta(p, m)` receives the work list of part `p`, for every `p < num_sm_parts`, in order;
/// * `emit_num_splits(i, v)` receives `num_splits[i]` for every `i ≤ batch_size`, in order.
///
/// Returns `false` only if the pass did not assign every block (FlashMLA's `FLASH_DEVICE_ASSERT`), which
/// the cost bound rules out: each part's capacity exceeds what it can waste or add in split overhead.
/// `batch_size` must be ≥ 1 and `num_sm_parts` ≥ 1.
///
/// ```
/// use flashmla_abi::params::DecodingSchedMeta;
/// use flashmla_abi::sched::{sched_request_cost, schedule};
/// let seqlens = [4641, 45118, 1730, 1696];
/// let total = seqlens.iter().map(|&s| sched_request_cost(s)).sum();
/// let (mut parts, mut num_splits) = ([DecodingSchedMeta::default(); 8], [0i32; 5]);
/// let done = schedule(4, 8, |i| seqlens[i], total, |p, m| parts[p] = m, |i, v| num_splits[i] = v);
/// assert!(done);
/// assert_eq!(num_splits, [0, 1, 9, 10, 11]); // request 1 is cut into 8 chunks
/// assert_eq!((parts[0].begin_req_idx, parts[0].end_req_idx, parts[0].end_block_idx), (0, 1, 29));
/// ```
#[inline(always)]
pub fn schedule<S, M, N>(
    batch_size: usize,
    num_sm_parts: usize,
    seqlen_at: S,
    total_cost: i64,
    mut emit_meta: M,
    mut emit_num_splits: N,
) -> bool
where
    S: Fn(usize) -> i32,
    M: FnMut(usize, DecodingSchedMeta),
    N: FnMut(usize, i32),
{
    let overhead = FIXED_OVERHEAD_NUM_BLOCKS as i64;
    let parts = if num_sm_parts == 0 { 1 } else { num_sm_parts };
    let payload = (total_cost + parts as i64 - 1) / parts as i64 + overhead;

    let mut req = 0usize;
    let mut block = 0i32;
    let mut n_split = 0i32;
    let mut cum_splits = 0i32;
    emit_num_splits(0, 0);
    for part in 0..parts {
        let mut meta = DecodingSchedMeta {
            begin_req_idx: req as i32,
            begin_block_idx: block,
            begin_split_idx: n_split,
            is_first_req_splitted: (block != 0) as i32,
            ..DecodingSchedMeta::default()
        };
        let mut remain = payload;
        while req < batch_size {
            let remain_blocks = (sched_num_blocks(seqlen_at(req)) - block) as i64;
            if remain >= remain_blocks + overhead {
                cum_splits += n_split + 1;
                emit_num_splits(req + 1, cum_splits);
                remain -= remain_blocks + overhead;
                req += 1;
                block = 0;
                n_split = 0;
            } else {
                if remain - overhead > 0 {
                    block += (remain - overhead) as i32;
                    n_split += 1;
                }
                break;
            }
        }
        if block > 0 {
            meta.end_req_idx = req as i32;
            meta.end_block_idx = block;
        } else {
            // `req >= 1` here: the first part always takes at least one block (payload > overhead).
            let last = req.saturating_sub(1);
            let last_len = seqlen_at(last);
            meta.end_req_idx = req as i32 - 1;
            meta.end_block_idx = if last_len <= 0 {
                0
            } else {
                sched_num_blocks(last_len)
            };
        }
        let end = if meta.end_req_idx < 0 {
            0
        } else {
            meta.end_req_idx as usize
        };
        let end_len = seqlen_at(end);
        meta.is_last_req_splitted =
            (meta.end_block_idx != sched_num_blocks(end_len) && end_len > 0) as i32;
        if meta.begin_req_idx == meta.end_req_idx {
            let either = meta.is_first_req_splitted | meta.is_last_req_splitted;
            meta.is_first_req_splitted = either;
            meta.is_last_req_splitted = either;
        }
        emit_meta(part, meta);
    }
    req == batch_size && block == 0 && n_split == 0
}

/// Decodes a part's record into the KV block range it covers for request `req`
/// (`begin_req_idx ≤ req ≤ end_req_idx`): `(start_block, end_block, split_idx, is_split)`.
/// `num_blocks` is `ceil(seqlen / 64)`, the blocks that hold tokens (0 for an empty request).
#[inline(always)]
pub fn part_range(meta: &DecodingSchedMeta, req: i32, num_blocks: i32) -> (i32, i32, i32, bool) {
    let is_first = req == meta.begin_req_idx;
    let is_last = req == meta.end_req_idx;
    let start = if is_first { meta.begin_block_idx } else { 0 };
    let end = if is_last {
        meta.end_block_idx
    } else {
        num_blocks
    };
    let split_idx = if is_first { meta.begin_split_idx } else { 0 };
    let is_split = (is_first && meta.is_first_req_splitted != 0)
        || (is_last && meta.is_last_req_splitted != 0);
    (start, end, split_idx, is_split)
}

/// Where a part starts: request `req`, its KV block `block`, and the number `n_split` of chunks of
/// `req` that earlier parts took (FlashMLA's `begin_split_idx`).
///
/// The greedy pass of [`schedule`] can be restated on the cost line, where request `i` ends at
/// `C[i + 1] = Σ_{j≤i} sched_request_cost(len_j)`: a part starting at position `pos` reaches
/// `pos + payload`; the next part starts at `reach - FIXED_OVERHEAD_NUM_BLOCKS` (the part cuts a request)
/// or, when no more than the overhead is left past the last boundary `C[e] ≤ reach`, at `C[e]`
/// ([`sched_next_start`]). Only that chain of start positions is serial; the metadata kernel runs it on
/// one warp (a `redux.sync.max` finds `C[e]`) and derives every cursor, work list and `num_splits` entry
/// from the positions in parallel, with the same result as [`schedule`] (tested on random batches for
/// every part count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedCursor {
    /// Request the part starts in (`batch_size` once every request is assigned).
    pub req: i32,
    /// KV block of `req` the part starts at.
    pub block: i32,
    /// Chunks of `req` that earlier parts took.
    pub n_split: i32,
}

/// The cost each part may take: `ceil(total_cost / num_sm_parts) + FIXED_OVERHEAD_NUM_BLOCKS`.
#[inline(always)]
pub const fn sched_payload(total_cost: i64, num_sm_parts: usize) -> i64 {
    let parts = if num_sm_parts == 0 {
        1
    } else {
        num_sm_parts as i64
    };
    (total_cost + parts - 1) / parts + FIXED_OVERHEAD_NUM_BLOCKS as i64
}

/// Largest total cost the position chain handles in 32-bit arithmetic (`start + payload` stays below
/// 2^32); the metadata kernel runs [`schedule`] serially above it (no real batch gets there: its KV
/// cache would hold more than 2^37 tokens).
pub const SCHED_MAX_CHAIN_COST: i64 = i32::MAX as i64;

/// The position where the part after the one starting at `start` starts. `c_e` is the last request
/// boundary `C[e] ≤ start + payload` (0 if none); `total_cost = C[batch_size] ≤ SCHED_MAX_CHAIN_COST`.
/// Returns `total_cost` once every request is assigned.
#[inline(always)]
pub fn sched_next_start(start: u32, payload: u32, total_cost: u32, c_e: u32) -> u32 {
    let overhead = FIXED_OVERHEAD_NUM_BLOCKS as u32;
    let reach = start + payload;
    if reach >= total_cost {
        total_cost
    } else if reach - c_e > overhead {
        // The part cuts the request after C[e]: the next one resumes inside it.
        reach - overhead
    } else {
        // No more than the overhead left: not worth a chunk, the part stops at the boundary.
        c_e
    }
}

/// The request whose length [`sched_part_meta`] needs for a part that ends where `next` starts.
#[inline(always)]
pub fn sched_end_request(next: SchedCursor) -> i32 {
    if next.block > 0 {
        next.req
    } else if next.req > 0 {
        next.req - 1
    } else {
        0
    }
}

/// The work list of the part that starts at `begin` and ends where `next` starts, as [`schedule`]
/// writes it; `end_len` is the length of request [`sched_end_request`]`(next)`.
#[inline(always)]
pub fn sched_part_meta(begin: SchedCursor, next: SchedCursor, end_len: i32) -> DecodingSchedMeta {
    let mut meta = DecodingSchedMeta {
        begin_req_idx: begin.req,
        begin_block_idx: begin.block,
        begin_split_idx: begin.n_split,
        is_first_req_splitted: (begin.block != 0) as i32,
        ..DecodingSchedMeta::default()
    };
    if next.block > 0 {
        meta.end_req_idx = next.req;
        meta.end_block_idx = next.block;
    } else {
        meta.end_req_idx = next.req - 1;
        meta.end_block_idx = if end_len <= 0 {
            0
        } else {
            sched_num_blocks(end_len)
        };
    }
    meta.is_last_req_splitted =
        (meta.end_block_idx != sched_num_blocks(end_len) && end_len > 0) as i32;
    if meta.begin_req_idx == meta.end_req_idx {
        let either = meta.is_first_req_splitted | meta.is_last_req_splitted;
        meta.is_first_req_splitted = either;
        meta.is_last_req_splitted = either;
    }
    meta
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{vec, vec::Vec};

    /// FlashMLA HEAD's `get_mla_metadata_kernel`, restated line by line with plain vectors and its own
    /// arithmetic (no helper of the module under test), as the oracle.
    fn flashmla_reference(seqlens: &[i32], parts: usize) -> (Vec<[i32; 8]>, Vec<i32>) {
        let b = seqlens.len();
        let num_blocks: Vec<i64> = seqlens
            .iter()
            .map(|&s| (std::cmp::max(s as i64 - 1, 0)) / 64 + 1)
            .collect();
        let total: i64 = num_blocks.iter().map(|n| n + 5).sum();
        let payload = (total + parts as i64 - 1) / parts as i64 + 5;
        let (mut now_req, mut now_block, mut now_split, mut cum) = (0usize, 0i64, 0i64, 0i64);
        let mut num_splits = vec![0i32; b + 1];
        let mut metas = Vec::new();
        for _ in 0..parts {
            let begin_req = now_req as i32;
            let begin_block = now_block as i32;
            let begin_split = now_split as i32;
            let mut first_split = (now_block != 0) as i32;
            let mut remain = payload;
            while now_req < b {
                let left = num_blocks[now_req] - now_block;
                if remain >= left + 5 {
                    cum += now_split + 1;
                    num_splits[now_req + 1] = cum as i32;
                    remain -= left + 5;
                    now_req += 1;
                    now_block = 0;
                    now_split = 0;
                } else {
                    if remain - 5 > 0 {
                        now_block += remain - 5;
                        now_split += 1;
                    }
                    break;
                }
            }
            let end_req = if now_block > 0 {
                now_req as i32
            } else {
                now_req as i32 - 1
            };
            let end_block = if now_block > 0 {
                now_block as i32
            } else if seqlens[now_req - 1] == 0 {
                0
            } else {
                num_blocks[now_req - 1] as i32
            };
            let e = end_req as usize;
            let mut last_split = (end_block as i64 != num_blocks[e] && seqlens[e] != 0) as i32;
            if begin_req == end_req {
                let x = first_split | last_split;
                first_split = x;
                last_split = x;
            }
            metas.push([
                begin_req,
                end_req,
                begin_block,
                end_block,
                begin_split,
                first_split,
                last_split,
                0,
            ]);
        }
        assert!(
            now_req == b && now_block == 0 && now_split == 0,
            "reference left work unassigned"
        );
        (metas, num_splits)
    }

    fn run(seqlens: &[i32], parts: usize) -> (Vec<DecodingSchedMeta>, Vec<i32>) {
        let total = seqlens.iter().map(|&s| sched_request_cost(s)).sum();
        let mut metas = vec![DecodingSchedMeta::default(); parts];
        let mut splits = vec![-1; seqlens.len() + 1];
        let ok = schedule(
            seqlens.len(),
            parts,
            |i| seqlens[i],
            total,
            |p, m| metas[p] = m,
            |i, v| splits[i] = v,
        );
        assert!(ok, "schedule left work unassigned: {seqlens:?} / {parts}");
        (metas, splits)
    }

    /// Every block of every request is covered exactly once, in order, and the split bookkeeping agrees
    /// with the chunks actually emitted.
    fn check_invariants(
        seqlens: &[i32],
        parts: usize,
        metas: &[DecodingSchedMeta],
        splits: &[i32],
    ) {
        let b = seqlens.len();
        assert_eq!(splits[0], 0);
        let mut next_block = vec![0i32; b];
        let mut chunks = vec![0i32; b];
        for m in metas {
            if m.begin_req_idx as usize >= b {
                assert_eq!(m.begin_req_idx as usize, b, "idle part must start at b");
                continue;
            }
            assert!(m.begin_req_idx <= m.end_req_idx, "{m:?}");
            for req in m.begin_req_idx..=m.end_req_idx {
                let r = req as usize;
                let (start, end, split_idx, is_split) =
                    part_range(m, req, sched_num_blocks(seqlens[r]));
                assert_eq!(
                    start, next_block[r],
                    "request {r} chunk does not continue where the last ended"
                );
                assert!(
                    end > start || seqlens[r] == 0,
                    "empty chunk for request {r}: {m:?}"
                );
                assert_eq!(split_idx, chunks[r], "split index of request {r}");
                next_block[r] = if seqlens[r] == 0 { 1 } else { end };
                chunks[r] += 1;
                let n = splits[r + 1] - splits[r];
                assert_eq!(is_split, n > 1, "split flag of request {r} ({n} chunks)");
            }
        }
        for r in 0..b {
            assert_eq!(
                next_block[r],
                sched_num_blocks(seqlens[r]),
                "request {r} not fully covered"
            );
            assert_eq!(
                chunks[r],
                splits[r + 1] - splits[r],
                "num_splits of request {r}"
            );
        }
        assert!(splits[b] as usize <= max_total_splits(b, parts));
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_batch(rng: &mut Rng) -> Vec<i32> {
        // Batch sizes log-uniform in 1..=4096 so small and large batches both get many draws.
        let b = (1u64 << rng.below(13)).min(4096);
        let b = (b + rng.below(b)).clamp(1, 4096) as usize;
        let kind = rng.below(6);
        let mean = 1 + rng.below(20_000) as i64;
        (0..b)
            .map(|i| match kind {
                0 => rng.below(70_000) as i32, // uniform
                1 => (mean + rng.below(mean as u64) as i64 - mean / 2).max(1) as i32, // varlen around a mean
                2 if rng.below(2) == 0 => 0, // half zero lengths
                2 => rng.below(9000) as i32,
                3 if i == 0 => 1 << (20 + rng.below(7)), // one huge request
                3 => rng.below(300) as i32,
                4 => mean as i32, // equal lengths
                _ => [0, 1, 63, 64, 65, 127, 128, 129][rng.below(8) as usize], // page boundaries
            })
            .collect()
    }

    #[test]
    fn matches_flashmla_on_random_batches_for_every_part_count() {
        let mut rng = Rng(0x5EED);
        for _ in 0..1200 {
            let seqlens = random_batch(&mut rng);
            for parts in 1..=160 {
                let (metas, splits) = run(&seqlens, parts);
                let (ref_metas, ref_splits) = flashmla_reference(&seqlens, parts);
                let words: Vec<[i32; 8]> = metas.iter().map(|m| m.to_words()).collect();
                assert_eq!(
                    words,
                    ref_metas,
                    "metadata differs for b={} parts={parts}",
                    seqlens.len()
                );
                assert_eq!(
                    splits,
                    ref_splits,
                    "num_splits differs for b={} parts={parts}",
                    seqlens.len()
                );
                check_invariants(&seqlens, parts, &metas, &splits);
            }
        }
    }

    /// [`schedule`] rebuilt the metadata kernel's way: the chain of start positions, then every cursor,
    /// work list and `num_splits` entry from the positions alone (binary searches where the kernel
    /// also searches).
    fn run_by_cursor(seqlens: &[i32], parts: usize) -> (Vec<DecodingSchedMeta>, Vec<i32>, bool) {
        let b = seqlens.len();
        let mut c = vec![0u32; b + 1];
        for (i, &len) in seqlens.iter().enumerate() {
            c[i + 1] = c[i] + sched_request_cost(len) as u32;
        }
        let total = c[b];
        assert!(total as i64 <= SCHED_MAX_CHAIN_COST);
        let payload = sched_payload(total as i64, parts) as u32;
        // The serial chain: start positions, their requests and the running count of cuts.
        let (mut starts, mut reqs, mut cuts) = (vec![0u32], vec![0i32], vec![0i32]);
        for p in 0..parts {
            let reach = starts[p] + payload;
            let e = c[1..].partition_point(|&v| v <= reach);
            let next = sched_next_start(starts[p], payload, total, c[e]);
            let req = if next == total {
                b
            } else {
                c[1..].partition_point(|&v| v <= next)
            };
            starts.push(next);
            reqs.push(req as i32);
            cuts.push(cuts[p] + (next != c[req]) as i32);
        }
        let cursor = |p: usize| -> SchedCursor {
            let req = reqs[p] as usize;
            let block = (starts[p] - c[req]) as i32;
            // Parts 0..=p that started inside request `req`: the chunks earlier parts took from it.
            let first_inside = starts[..=p].partition_point(|&v| v <= c[req]);
            SchedCursor {
                req: req as i32,
                block,
                n_split: if block > 0 {
                    (p + 1 - first_inside) as i32
                } else {
                    0
                },
            }
        };
        let metas = (0..parts)
            .map(|p| {
                let next = cursor(p + 1);
                sched_part_meta(cursor(p), next, seqlens[sched_end_request(next) as usize])
            })
            .collect();
        let mut num_splits = vec![0i32; b + 1];
        for i in 0..b {
            // Cuts at positions before the end of request i.
            let q = starts[1..].partition_point(|&v| v < c[i + 1]);
            num_splits[i + 1] = i as i32 + 1 + cuts[q];
        }
        (metas, num_splits, starts[parts] == total)
    }

    #[test]
    fn cursor_steps_match_the_serial_pass() {
        let mut rng = Rng(0x5eed_c0de);
        let mut checked = 0;
        for _ in 0..300 {
            let seqlens = random_batch(&mut rng);
            let b = seqlens.len();
            for parts in [1, 2, 3, 7, 16, 33, 66, 132, 264, b, b + 1, 2 * b + 5] {
                let (meta, splits) = run(&seqlens, parts);
                let (meta_c, splits_c, complete) = run_by_cursor(&seqlens, parts);
                assert!(complete, "{seqlens:?} parts={parts}");
                assert_eq!(meta, meta_c, "{seqlens:?} parts={parts}");
                assert_eq!(splits, splits_c, "{seqlens:?} parts={parts}");
                checked += 1;
            }
        }
        for seqlens in [
            vec![0],
            vec![1],
            vec![-5, 0, 1, 64, 65],
            vec![0; 40],
            vec![1 << 30; 3],
        ] {
            for parts in 1..=70 {
                let (meta, splits) = run(&seqlens, parts);
                let (meta_c, splits_c, complete) = run_by_cursor(&seqlens, parts);
                assert!(complete);
                assert_eq!(
                    (meta, splits),
                    (meta_c, splits_c),
                    "{seqlens:?} parts={parts}"
                );
                checked += 1;
            }
        }
        assert!(checked > 3000);
    }

    #[test]
    fn flashmla_worked_example() {
        // From the spec: seqlens [4641, 45118, 1730, 1696], 8 parts → request 1 split 8 ways.
        let (metas, splits) = run(&[4641, 45118, 1730, 1696], 8);
        assert_eq!(splits, [0, 1, 9, 10, 11]);
        assert_eq!(metas[0].to_words()[..5], [0, 1, 0, 29, 0]);
        assert_eq!(metas[7].begin_req_idx, 1);
        assert_eq!(metas[7].end_req_idx, 3);
    }

    #[test]
    fn all_zero_lengths_and_single_request() {
        for parts in [1, 2, 66, 132, 160] {
            let (metas, splits) = run(&[0; 7], parts);
            assert_eq!(splits, [0, 1, 2, 3, 4, 5, 6, 7]);
            check_invariants(&[0; 7], parts, &metas, &splits);
            let (metas, splits) = run(&[i32::MAX], parts);
            check_invariants(&[i32::MAX], parts, &metas, &splits);
            // One request spread over every part: at most one chunk per part, and split whenever it can be.
            assert!(
                splits[1] as usize <= parts && (parts == 1) == (splits[1] == 1),
                "{parts}: {splits:?}"
            );
        }
    }

    #[test]
    fn num_sm_parts_matches_flashmla() {
        assert_eq!(num_sm_parts(132, 1, 128), 66);
        assert_eq!(num_sm_parts(132, 1, 64), 132);
        assert_eq!(num_sm_parts(132, 1, 256), 33);
        assert_eq!(num_sm_parts(132, 1, 16), 132);
        // FlashMLA v1 divided to 0 here (issue #28); HEAD clamps to 1.
        assert_eq!(num_sm_parts(132, 8, 2048), 1);
        assert_eq!(num_sm_parts(132, 0, 0), 132);
    }

    #[test]
    fn negative_lengths_count_as_empty() {
        assert_eq!(sched_num_blocks(-5), sched_num_blocks(0));
        assert_eq!(sched_num_blocks(64), 1);
        assert_eq!(sched_num_blocks(65), 2);
    }
}

//! What the two split-KV decode kernels share (ports of FlashMLA `splitkv_mla.cuh`'s per-request setup
//! and softmax numerics): the keys one CTA covers for one request of its work list, the bottom-right
//! causal border of a query row, the address of a query row, the online-softmax step and the two lse
//! forms of the epilogue.

use crate::arch;
use flashmla_abi::params::{DecodeParams, DecodingSchedMeta};
use flashmla_abi::sched::{part_range, sched_num_blocks};
use flashmla_abi::PAGE_BLOCK_SIZE;

/// log(2): converts a base-2 lse to natural log.
pub const LN_2: f32 = core::f32::consts::LN_2;

/// The keys one CTA (one m-block of 64 folded query rows, one KV head) covers for one request of its SM
/// part: FlashMLA's block range of the part (`part_range`), cut at the ragged end of the sequence and at
/// the causal border of the m-block's last valid row (`common_mask_len` in FlashMLA), so that no CTA
/// loads a block none of its rows attends.
#[derive(Clone, Copy)]
pub struct RequestRange {
    /// Batch index.
    pub b: usize,
    /// KV length of the request, clamped to the block table (tokens past `64 · max_blocks_per_seq`
    /// are never read; the host refuses such batches when it can see the lengths).
    pub seqlen: i32,
    /// First block (block-table column) of the range.
    pub start_blk: i32,
    /// Split number of the range within its request.
    pub split_idx: i32,
    /// Whether the request is split across parts (partials go to `o_accum`/`lse_accum`).
    pub is_split: bool,
    /// First key of the range.
    pub tok_begin: i32,
    /// End of the keys any row of this m-block attends in the range (exclusive).
    pub tok_end: i32,
}

impl RequestRange {
    /// The range of request `req` for the m-block starting at folded row `row_base`, of which
    /// `valid_rows` rows exist.
    ///
    /// # Safety
    /// `req` is a request of `meta`'s work list (`< batch_size`) and `p.seqlens_k` is valid.
    #[inline(always)]
    pub unsafe fn new(
        p: &DecodeParams,
        meta: &DecodingSchedMeta,
        req: i32,
        row_base: u32,
        valid_rows: usize,
    ) -> Self {
        let b = req as usize;
        // SAFETY: req < batch_size (the caller's contract).
        let seqlen = unsafe { *(p.seqlens_k as *const i32).add(b) }.max(0);
        let seqlen = seqlen.min(p.max_blocks_per_seq.saturating_mul(PAGE_BLOCK_SIZE as i32));
        let (start_blk, end_blk, split_idx, is_split) =
            part_range(meta, req, sched_num_blocks(seqlen));
        let tok_begin = start_blk * PAGE_BLOCK_SIZE as i32;
        let mut tok_end = (end_blk * PAGE_BLOCK_SIZE as i32).min(seqlen);
        if valid_rows > 0 {
            tok_end = tok_end.min(causal_limit(p, seqlen, row_base + valid_rows as u32 - 1));
        }
        Self {
            b,
            seqlen,
            start_blk,
            split_idx,
            is_split,
            tok_begin,
            tok_end,
        }
    }

    /// Blocks of `tokens` keys the range spans (0 when it is empty).
    #[inline(always)]
    pub fn blocks(&self, tokens: usize) -> usize {
        if self.tok_end > self.tok_begin {
            ((self.tok_end - self.tok_begin) as usize).div_ceil(tokens)
        } else {
            0
        }
    }
}

/// Bottom-right causal border of folded query row `r` (token `r / heads_per_kv`): it attends keys
/// `< seqlen − (s_q − 1 − t)` (FlashMLA `get_mask_len`); padding rows and non-causal calls attend all
/// `seqlen` keys.
#[inline(always)]
pub fn causal_limit(p: &DecodeParams, seqlen: i32, r: u32) -> i32 {
    if p.is_causal != 0 && r < p.q_seq_per_hk as u32 {
        seqlen - (p.seqlen_q - 1 - (r / heads_per_kv(p)) as i32)
    } else {
        seqlen
    }
}

/// Query heads per KV head, as a divisor: the host validates it is at least 1; saying so here removes
/// the division-by-zero panic branches (a call, around which ptxas must save every live register).
#[inline(always)]
pub fn heads_per_kv(p: &DecodeParams) -> u32 {
    (p.heads_per_kv as u32).max(1)
}

/// Address of folded query row `r` of request `b` under KV head `kv_head`: `q[b, t, h, :]` with
/// `t = r / heads_per_kv`, `h = kv_head · heads_per_kv + r % heads_per_kv` (FlashMLA's head folding).
///
/// # Safety
/// `r < q_seq_per_hk`, `b < batch_size`, `kv_head < num_heads_kv`, and `p`'s q strides are valid.
#[inline(always)]
pub unsafe fn q_row(p: &DecodeParams, b: usize, r: u32, kv_head: usize) -> *const u16 {
    let hpk = heads_per_kv(p);
    let head = kv_head as u32 * hpk + r % hpk;
    // SAFETY: the caller's contract.
    unsafe {
        (p.q as *const u16).offset(
            b as isize * p.q_batch_stride as isize
                + (r / hpk) as isize * p.q_seq_stride as isize
                + head as isize * p.q_head_stride as isize,
        )
    }
}

/// One step of the online softmax for one row (FlashMLA `wg0_bunch_0`): the running maximum `row_max`
/// (base-2 logits) meets the maximum of a new block, `block_max`. Returns the new running maximum, the
/// reference the block's probabilities are taken against (`p = 2^(s − reference)`), and the factor that
/// rescales what was accumulated so far. A row with no key yet keeps −inf as its maximum; its reference
/// is 0, so no `−inf − (−inf)` appears and the factor is 0.
#[inline(always)]
pub fn online_softmax_step(row_max: f32, block_max: f32) -> (f32, f32, f32) {
    let new_max = row_max.max(block_max);
    let reference = if new_max == f32::NEG_INFINITY {
        0.0
    } else {
        new_max
    };
    (new_max, reference, arch::exp2(row_max - reference))
}

/// Natural-log lse of a row with softmax sum `sum` and base-2 maximum `max`; `+inf` when the row
/// attended no key (`sum` is 0 or NaN: FlashMLA's convention).
#[inline(always)]
pub fn lse_natural(sum: f32, max: f32) -> f32 {
    if sum > 0.0 {
        (arch::log2(sum) + max) * LN_2
    } else {
        f32::INFINITY
    }
}

/// Base-2 lse of a split partial (FlashMLA `lse_accum`); `−inf` when the partial attended no key, so
/// that the combine gives it no weight.
#[inline(always)]
pub fn lse_base2(sum: f32, max: f32) -> f32 {
    if sum > 0.0 {
        arch::log2(sum) + max
    } else {
        f32::NEG_INFINITY
    }
}

/// `1 / sum`, or 0 for a row that attended no key (its output is 0).
#[inline(always)]
pub fn inverse_sum(sum: f32) -> f32 {
    if sum > 0.0 {
        arch::rcp(sum)
    } else {
        0.0
    }
}

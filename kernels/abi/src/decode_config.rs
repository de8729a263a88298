//! Tiling of the portable split-KV decode kernel (`kernels/src/portable.rs`) and its shared-memory plan.
//! The host sizes its launch from these; the kernel lays out shared memory from the same numbers.

use crate::{BLOCK_SIZE_M, HEAD_DIM_K, HEAD_DIM_V, PAGE_BLOCK_SIZE};

/// Threads per decode CTA: 8 warps. Warp `w` owns query rows `16·(w % 4) ..+16`; for QKᵀ it takes KV
/// tokens `16·(w / 4) ..+16` of the tile, for PV output columns `256·(w / 4) ..+256`.
pub const DECODE_THREADS: u32 = 256;
/// KV tokens per pipeline stage (half a page): two stages fit beside the Q tile in an A100's 163 KiB.
pub const KV_TILE: usize = 32;
/// cp.async stages of the KV ring.
pub const KV_STAGES: usize = 2;
/// Elements per shared-memory row of Q and K: 576 plus 8 of padding, so the 8 row addresses of an
/// `ldmatrix` (1168 bytes apart) fall in 8 different 16-byte bank groups.
pub const SMEM_ROW: usize = HEAD_DIM_K + 8;
/// Elements per shared-memory row of the P tile (32 tokens + 8 padding, 80 bytes: conflict-free too).
pub const P_ROW: usize = KV_TILE + 8;
/// 16-byte chunks per Q/K row.
pub const ROW_CHUNKS: usize = HEAD_DIM_K * 2 / 16;

/// Byte offsets of the decode kernel's dynamic shared memory.
pub mod smem {
    use super::*;
    /// Q tile: `BLOCK_SIZE_M × SMEM_ROW` elements.
    pub const Q: usize = 0;
    /// KV ring: `KV_STAGES × KV_TILE × SMEM_ROW` elements.
    pub const KV: usize = Q + BLOCK_SIZE_M * SMEM_ROW * 2;
    /// P tile (probabilities in the input dtype): `BLOCK_SIZE_M × P_ROW` elements.
    pub const P: usize = KV + KV_STAGES * KV_TILE * SMEM_ROW * 2;
    /// Row maxima of the two warps sharing a row: `2 × BLOCK_SIZE_M` f32.
    pub const ROW_MAX: usize = P + BLOCK_SIZE_M * P_ROW * 2;
    /// Row sums of the two warps sharing a row: `2 × BLOCK_SIZE_M` f32.
    pub const ROW_SUM: usize = ROW_MAX + 2 * BLOCK_SIZE_M * 4;
    /// Total dynamic shared memory of one decode CTA.
    pub const TOTAL: usize = ROW_SUM + 2 * BLOCK_SIZE_M * 4;
}

/// Warps of a combine CTA.
pub const COMBINE_WARPS: u32 = 8;
/// Threads per combine CTA.
pub const COMBINE_THREADS: u32 = COMBINE_WARPS * 32;
/// Warps that merge one query row, each over `HEAD_DIM_V / COMBINE_WARPS_PER_ROW` columns: a small
/// batch has few rows, and one warp per row left most SMs idle (b = 1, h_q = 128: 16 CTAs).
pub const COMBINE_WARPS_PER_ROW: usize = 4;
/// Output columns each lane of a combine warp owns (one float4).
pub const COMBINE_COLS_PER_LANE: usize = HEAD_DIM_V / 32 / COMBINE_WARPS_PER_ROW;
/// Splits whose partials a combine warp loads before it accumulates any (loads in flight per lane):
/// 12 covers the 8–9 splits per request of a b = 8 batch on 66 SM parts in one round trip.
pub const COMBINE_SPLITS_IN_FLIGHT: usize = 12;

const _: () = assert!(PAGE_BLOCK_SIZE.is_multiple_of(KV_TILE) && KV_TILE == 32);
const _: () = assert!(BLOCK_SIZE_M == 64 && DECODE_THREADS == 256);
const _: () = assert!(HEAD_DIM_V == 2 * 256 && HEAD_DIM_K.is_multiple_of(16));
const _: () = assert!(
    smem::TOTAL <= 163 * 1024,
    "must fit an A100's opt-in shared memory"
);
const _: () = assert!(
    smem::KV.is_multiple_of(128) && smem::P.is_multiple_of(16) && smem::ROW_MAX.is_multiple_of(16)
);
const _: () = assert!(
    COMBINE_COLS_PER_LANE == 4 && (COMBINE_WARPS as usize).is_multiple_of(COMBINE_WARPS_PER_ROW)
);

//! Tiling and shared-memory plan of the Hopper split-KV decode kernel (`kernels/src/decode_sm90.rs`,
//! FlashMLA's dense sm90 design: TMA + mbarrier + wgmma). The host sizes its launch and its tensor map
//! from these; the kernel lays out shared memory from the same numbers.

use crate::{BLOCK_SIZE_M, HEAD_DIM_K, HEAD_DIM_V, PAGE_BLOCK_SIZE};

/// Threads per Hopper decode CTA: two warpgroups. Warpgroup 0 owns output columns 0..256, warpgroup 1
/// columns 256..512; which of them computes `S = Q·Kᵀ` and the softmax of a block depends on the
/// schedule ([`Sm90Schedule`]).
pub const SM90_THREADS: u32 = 256;
/// Threads of one warpgroup (the unit that issues a `wgmma`).
pub const WARPGROUP_THREADS: u32 = 128;
/// Columns of one TMA box / wgmma operand tile: 64 bf16 = 128 bytes, the 128-byte swizzle span.
pub const TILE_COLS: usize = 64;
/// 64-column tiles of a 576-wide Q or K row (tile 8 is the RoPE part, read only by `Q·Kᵀ`).
pub const K_TILES: usize = HEAD_DIM_K / TILE_COLS;
/// 64-column tiles of V (the first 512 columns of K) owned by each warpgroup in `P·V`.
pub const V_TILES_PER_WARPGROUP: usize = HEAD_DIM_V / TILE_COLS / 2;
/// Bytes of one 64 × 64 16-bit tile (one TMA box, one mbarrier transaction).
pub const TILE_BYTES: usize = PAGE_BLOCK_SIZE * TILE_COLS * 2;
/// KV pages resident in shared memory (double buffer).
pub const SM90_KV_BUFFERS: usize = 2;

/// How the Hopper decode kernel splits a block's work between its two warpgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sm90Schedule {
    /// FlashMLA's seesaw (`kernels/src/decode_sm90.rs`): the warpgroups take turns computing `S` and
    /// the softmax of a block, so one's softmax runs under the other's matmuls.
    Seesaw,
    /// Warpgroup 0 computes `S` and the softmax of every block (`kernels/src/decode_sm90_single.rs`):
    /// fewer hand-offs on each block's path from landing to refill.
    SingleSoftmax,
}

/// The schedule for `rows_per_kv_head` folded query rows (`s_q · h_q / h_kv`). Measured side by side
/// with FlashMLA on its grid (PERF_NOTES.md, v12): the seesaw is faster from 65 rows on, where the
/// decode is bound by the tensor cores (two or more m-blocks per KV head); the single-softmax schedule is
/// faster up to 64 rows, where it is bound by memory.
pub const fn sm90_schedule_for_rows(rows_per_kv_head: usize) -> Sm90Schedule {
    if rows_per_kv_head > BLOCK_SIZE_M {
        Sm90Schedule::Seesaw
    } else {
        Sm90Schedule::SingleSoftmax
    }
}

/// One 64 × 64 tile of 16-bit values (a TMA box, a wgmma operand): 1024-byte aligned, because the
/// 128-byte swizzle pattern repeats every 8 rows × 128 bytes and both TMA and the wgmma descriptors
/// assume tiles aligned to it.
#[repr(C, align(1024))]
pub struct SwizzledTile(pub [u8; TILE_BYTES]);

/// The Hopper decode CTA's dynamic shared memory (FlashMLA's `SharedMemoryPlan`); its size is the launch's
/// dynamic shared-memory request ([`sm90_smem::TOTAL`]).
#[repr(C, align(1024))]
pub struct Sm90SharedMemory {
    /// Q of the current request: `K_TILES` tiles of 64 rows × 64 columns. Tile 8 (the RoPE columns) is
    /// copied into registers once Q has landed; its space then holds P of the odd blocks (`sP1`). In the
    /// epilogue the whole area stages the f32 partials of split requests.
    pub q: [SwizzledTile; K_TILES],
    /// Two KV pages (64 tokens × 576 columns each, as `K_TILES` tiles).
    pub kv: [[SwizzledTile; K_TILES]; SM90_KV_BUFFERS],
    /// P of the even blocks, rescaled to the pair's row maximum (`sP0`): warpgroup 1's `A` operand.
    pub p0: SwizzledTile,
    /// Running row maximum (base-2 logits) of the current request, shared by both warpgroups (`sM`).
    pub row_max: [f32; BLOCK_SIZE_M],
    /// Row rescale factors of the even (`[0]`, `sScale0`) and odd (`[1]`, `sScale1`) block of a pair.
    pub row_scale: [[f32; BLOCK_SIZE_M]; 2],
    /// Row sums of each warpgroup's blocks at the end of a request (`sL_reduction_wksp`).
    pub row_sum: [[f32; BLOCK_SIZE_M]; 2],
    /// mbarriers: one per (KV buffer, tile).
    pub kv_barriers: [[u64; K_TILES]; SM90_KV_BUFFERS],
}

/// Byte offsets in [`Sm90SharedMemory`], for shared-memory addresses and `wgmma` descriptors.
pub mod sm90_smem {
    use super::*;
    use core::mem::{offset_of, size_of};
    /// Q tiles.
    pub const Q: usize = offset_of!(Sm90SharedMemory, q);
    /// KV pages.
    pub const KV: usize = offset_of!(Sm90SharedMemory, kv);
    /// Bytes of one KV page buffer.
    pub const KV_BUFFER: usize = size_of::<[SwizzledTile; K_TILES]>();
    /// P of the even blocks (`sP0`).
    pub const P0: usize = offset_of!(Sm90SharedMemory, p0);
    /// P of the odd blocks (`sP1`): Q's tile 8, free once it is in registers.
    pub const P1: usize = Q + (K_TILES - 1) * TILE_BYTES;
    /// Running row maxima.
    pub const ROW_MAX: usize = offset_of!(Sm90SharedMemory, row_max);
    /// Row rescale factors (even block, then odd block).
    pub const ROW_SCALE: usize = offset_of!(Sm90SharedMemory, row_scale);
    /// Row sums (warpgroup 0's, then warpgroup 1's).
    pub const ROW_SUM: usize = offset_of!(Sm90SharedMemory, row_sum);
    /// mbarriers.
    pub const BARRIERS: usize = offset_of!(Sm90SharedMemory, kv_barriers);
    /// Row stride of the f32 output staging area of split requests (32 rows at a time, in the Q tiles
    /// once the request's last `Q·Kᵀ` and `P·V` are done): 512 floats plus 8, so the 8 rows one warp
    /// store touches fall in different bank groups (FlashMLA's 520).
    pub const O_STAGE_ROW_BYTES: usize = (HEAD_DIM_V + 8) * 4;
    /// Total dynamic shared memory of one CTA.
    pub const TOTAL: usize = size_of::<Sm90SharedMemory>();
}

const _: () = assert!(SM90_THREADS == 2 * WARPGROUP_THREADS && BLOCK_SIZE_M == 64);
const _: () = assert!(K_TILES == 9 && V_TILES_PER_WARPGROUP == 4 && TILE_BYTES == 8192);
const _: () = assert!(
    sm90_smem::KV.is_multiple_of(1024)
        && sm90_smem::KV_BUFFER == K_TILES * TILE_BYTES
        && sm90_smem::P0.is_multiple_of(1024)
        && sm90_smem::P1.is_multiple_of(1024)
        && sm90_smem::P1 == sm90_smem::Q + (K_TILES - 1) * TILE_BYTES
        && sm90_smem::BARRIERS.is_multiple_of(8)
        && sm90_smem::BARRIERS + SM90_KV_BUFFERS * K_TILES * 8 <= sm90_smem::TOTAL
);
const _: () = assert!(
    BLOCK_SIZE_M / 2 * sm90_smem::O_STAGE_ROW_BYTES <= sm90_smem::KV - sm90_smem::Q
        && sm90_smem::O_STAGE_ROW_BYTES.is_multiple_of(16)
);
const _: () = assert!(
    sm90_smem::TOTAL <= crate::MAX_DYNAMIC_SMEM_BYTES,
    "must fit a Hopper CTA's opt-in shared memory"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_by_rows_per_kv_head() {
        // h_q · s_q / h_kv: up to 64 rows (one m-block) take the single-softmax schedule, more the seesaw.
        assert_eq!(sm90_schedule_for_rows(1), Sm90Schedule::SingleSoftmax);
        assert_eq!(sm90_schedule_for_rows(64), Sm90Schedule::SingleSoftmax);
        assert_eq!(sm90_schedule_for_rows(65), Sm90Schedule::Seesaw);
        assert_eq!(sm90_schedule_for_rows(256), Sm90Schedule::Seesaw);
    }
}

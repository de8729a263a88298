//! Tiling and shared-memory plan of the Hopper split-KV decode kernel (`kernels/src/decode_sm90.rs`,
//! FlashMLA's dense sm90 design: TMA + mbarrier + wgmma). The host sizes its launch and its tensor map
//! from these; the kernel lays out shared memory from the same numbers.

use crate::{BLOCK_SIZE_M, HEAD_DIM_K, HEAD_DIM_V, PAGE_BLOCK_SIZE};

/// Threads per Hopper decode CTA: two warpgroups. Warpgroup 0 computes `S = Q·Kᵀ` and the softmax and
/// owns output columns 0..256; warpgroup 1 owns output columns 256..512.
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

/// Byte offsets of the Hopper decode kernel's dynamic shared memory. Every tile starts on a 1024-byte
/// boundary: the 128-byte swizzle pattern repeats every 8 rows × 128 bytes, and both TMA and the wgmma
/// descriptors assume tiles aligned to it.
pub mod sm90_smem {
    use super::*;
    /// Q: `K_TILES` tiles of 64 rows × 64 columns, 128-byte swizzled.
    pub const Q: usize = 0;
    /// KV pages: `SM90_KV_BUFFERS × K_TILES` tiles (64 tokens × 64 columns each).
    pub const KV: usize = Q + K_TILES * TILE_BYTES;
    /// Bytes of one KV page buffer.
    pub const KV_BUFFER: usize = K_TILES * TILE_BYTES;
    /// P (probabilities in the input dtype, 64 rows × 64 tokens), 128-byte swizzled: warpgroup 1's
    /// `A` operand.
    pub const P: usize = KV + SM90_KV_BUFFERS * KV_BUFFER;
    /// Per-row rescale factor of the current block (64 `f32`), warpgroup 0 → warpgroup 1.
    pub const ROW_SCALE: usize = P + TILE_BYTES;
    /// Per-row softmax sum of the request (64 `f32`), for the epilogue of warpgroup 1.
    pub const ROW_SUM: usize = ROW_SCALE + BLOCK_SIZE_M * 4;
    /// mbarriers: one per (KV buffer, tile), 8 bytes each.
    pub const BARRIERS: usize = ROW_SUM + BLOCK_SIZE_M * 4;
    /// Row stride of the f32 output staging area of split requests (32 rows at a time, in the Q tile
    /// once the request's last `Q·Kᵀ` is done): 512 floats plus 8, so the 8 rows one warp store
    /// touches fall in different bank groups (FlashMLA's 520).
    pub const O_STAGE_ROW_BYTES: usize = (HEAD_DIM_V + 8) * 4;
    /// Total dynamic shared memory of one CTA.
    pub const TOTAL: usize = BARRIERS + SM90_KV_BUFFERS * K_TILES * 8;
}

const _: () = assert!(SM90_THREADS == 2 * WARPGROUP_THREADS && BLOCK_SIZE_M == 64);
const _: () = assert!(K_TILES == 9 && V_TILES_PER_WARPGROUP == 4 && TILE_BYTES == 8192);
const _: () = assert!(
    sm90_smem::KV.is_multiple_of(1024)
        && sm90_smem::KV_BUFFER.is_multiple_of(1024)
        && sm90_smem::P.is_multiple_of(1024)
        && sm90_smem::BARRIERS.is_multiple_of(8)
);
const _: () = assert!(
    BLOCK_SIZE_M / 2 * sm90_smem::O_STAGE_ROW_BYTES <= sm90_smem::KV - sm90_smem::Q
        && sm90_smem::O_STAGE_ROW_BYTES.is_multiple_of(16)
);
const _: () = assert!(
    sm90_smem::TOTAL <= crate::MAX_DYNAMIC_SMEM_BYTES,
    "must fit a Hopper CTA's opt-in shared memory"
);

//! What the flashmla host crate and its GPU kernels share, compiled for both: FlashMLA's constants, the
//! `#[repr(C)]` records that cross the host/device boundary, and the tile scheduler.
//!
//! This crate is `no_std`, has no dependencies and uses no nightly features, so the device crate
//! (`kernels/`, built for `nvptx64-nvidia-cuda`) and the host crate (`flashmla`, stable Rust) compile
//! the very same source. Nothing in here may be written twice on the other side.
//!
//! The root holds FlashMLA's dimensions; the rest is in named modules, so every use says what it is:
//! [`params`] (the records passed to the kernels), [`sched`] (the tile scheduler), [`decode_config`]
//! (the portable decode kernel's and the combine kernel's tiling), [`sm90_config`] (the Hopper kernel's
//! tiling and shared-memory plan) and [`fill`] (the test-data generator both sides compute).
#![no_std]
#![deny(missing_docs)]

pub mod decode_config;
pub mod fill;
pub mod fp8;
pub mod params;
pub mod sched;
pub mod sm90_config;

/// Width of one query/key row of MLA: 512 latent (NoPE) columns plus 64 RoPE columns.
pub const HEAD_DIM_K: usize = 576;
/// Width of one value row: the first 512 columns of each key row (V is never stored on its own).
pub const HEAD_DIM_V: usize = 512;
/// Tokens per KV-cache page. FlashMLA's dense decode kernels hard-wire one page per 64-key tile.
pub const PAGE_BLOCK_SIZE: usize = 64;
/// Query rows (heads and tokens folded together) per CTA tile.
pub const BLOCK_SIZE_M: usize = 64;
/// Query rows of m-block `m_block` (of `BLOCK_SIZE_M` rows) that exist when there are `rows` in all;
/// the rest of the block is padding.
pub const fn m_block_valid_rows(rows: u32, m_block: u32) -> usize {
    let row_base = m_block * BLOCK_SIZE_M as u32;
    if rows > row_base {
        let n = rows - row_base;
        if n < BLOCK_SIZE_M as u32 {
            n as usize
        } else {
            BLOCK_SIZE_M
        }
    } else {
        0
    }
}

/// The scheduler's estimate of one work chunk's start-up and drain cost, in KV blocks
/// (FlashMLA's `fixed_overhead_num_blocks`; see FlashMLA issue #38).
pub const FIXED_OVERHEAD_NUM_BLOCKS: i32 = 5;
/// Threads of the scheduler-metadata kernel (one CTA): they load the lengths and sum the prefix costs
/// in parallel, then one warp moves the scheduler's cursor from part to part.
pub const SCHED_META_THREADS: u32 = 512;
/// Largest dynamic shared memory an sm_80/sm_90 CTA can opt into, in bytes.
pub const MAX_DYNAMIC_SMEM_BYTES: usize = 227 * 1024;
/// Dynamic shared memory a CTA may use without opting in (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`
/// defaults to it), in bytes: a launch that needs more must raise the kernel's attribute first.
pub const DEFAULT_DYNAMIC_SMEM_BYTES: usize = 48 * 1024;
/// Largest extent of a launch grid's y and z dimensions (CUDA's limit). The decode grid's y is `h_kv` and
/// its z the number of SM parts; the combine grid's y is the batch.
pub const MAX_GRID_Y_Z: usize = 65_535;
/// Largest extent of a launch grid's x dimension (CUDA's limit, `2^31 − 1`).
pub const MAX_GRID_X: usize = i32::MAX as usize;
/// Shared memory of the scheduler-metadata kernel before its arrays: one `i64` per warp (the scan's
/// warp totals), then the number of part boundaries the serial chain recorded (8 bytes).
pub const SCHED_META_SCRATCH_BYTES: usize = 8 * (SCHED_META_THREADS as usize / 32) + 8;
/// Most parts whose metadata is computed in parallel for every batch up to [`MAX_SCHED_BATCH`]: beyond
/// them (or where [`sched_meta_parallel_fits`] fails) the kernel runs the serial pass.
pub const MAX_SCHED_PARALLEL_PARTS: usize = 1024;
/// Whether the scheduler-metadata kernel's parallel path fits in shared memory: one `u32` prefix cost
/// per request, and per part boundary (`num_sm_parts + 1`) its position, request and running count of
/// cuts.
pub const fn sched_meta_parallel_fits(batch_size: usize, num_sm_parts: usize) -> bool {
    batch_size <= MAX_DYNAMIC_SMEM_BYTES / 4
        && num_sm_parts <= MAX_DYNAMIC_SMEM_BYTES / 12
        && SCHED_META_SCRATCH_BYTES + 4 * batch_size + 12 * (num_sm_parts + 1)
            <= MAX_DYNAMIC_SMEM_BYTES
}
/// Dynamic shared memory of the scheduler-metadata kernel: the scratch, plus the parallel path's
/// arrays where they fit.
pub const fn sched_meta_smem_bytes(batch_size: usize, num_sm_parts: usize) -> usize {
    if sched_meta_parallel_fits(batch_size, num_sm_parts) {
        SCHED_META_SCRATCH_BYTES + 4 * batch_size + 12 * (num_sm_parts + 1)
    } else {
        SCHED_META_SCRATCH_BYTES
    }
}
/// Largest batch a decode shape takes: the largest whose metadata is computed in parallel with up to
/// [`MAX_SCHED_PARALLEL_PARTS`] parts.
pub const MAX_SCHED_BATCH: usize =
    (MAX_DYNAMIC_SMEM_BYTES - SCHED_META_SCRATCH_BYTES - 12 * (MAX_SCHED_PARALLEL_PARTS + 1)) / 4;

const _: () = assert!(
    HEAD_DIM_K.is_multiple_of(64) && HEAD_DIM_V.is_multiple_of(64) && HEAD_DIM_V < HEAD_DIM_K
);
const _: () = assert!(PAGE_BLOCK_SIZE == BLOCK_SIZE_M);
// The combine grid's y is the batch: every batch a decode shape takes fits, so the host need not check.
const _: () = assert!(MAX_SCHED_BATCH <= MAX_GRID_Y_Z);
const _: () = assert!(
    SCHED_META_THREADS.is_multiple_of(32)
        && SCHED_META_THREADS <= 1024
        && sched_meta_parallel_fits(MAX_SCHED_BATCH, MAX_SCHED_PARALLEL_PARTS)
        && !sched_meta_parallel_fits(MAX_SCHED_BATCH + 1, MAX_SCHED_PARALLEL_PARTS)
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_config::COMBINE_WARPS;
    use crate::params::{combine_grid_x, combine_tasks_per_warp, COMBINE_TARGET_CTAS};

    #[test]
    fn m_block_rows() {
        assert_eq!(m_block_valid_rows(16, 0), 16);
        assert_eq!(m_block_valid_rows(64, 0), 64);
        assert_eq!(m_block_valid_rows(126, 1), 62);
        assert_eq!(m_block_valid_rows(128, 1), 64);
        assert_eq!(m_block_valid_rows(128, 2), 0);
    }

    #[test]
    fn combine_grid_never_exceeds_its_target() {
        let mut tasks = 1usize;
        while tasks < 1 << 40 {
            for b in [1, 2, 3, 7, 64, 1000, MAX_SCHED_BATCH] {
                for t in [tasks - 1, tasks, tasks + 1] {
                    let ctas = combine_grid_x(t, b);
                    assert!(
                        ctas <= COMBINE_TARGET_CTAS,
                        "{t} tasks, b = {b}: {ctas} CTAs"
                    );
                    // Every task has a warp.
                    let warps = ctas * COMBINE_WARPS as usize;
                    assert!(warps * combine_tasks_per_warp(b * t) >= t);
                }
            }
            tasks = tasks * 3 / 2 + 1;
        }
    }

    #[test]
    fn combine_tasks() {
        assert_eq!(combine_tasks_per_warp(0), 1);
        assert_eq!(
            combine_tasks_per_warp(512),
            1,
            "b = 1, h_q = 128: one task per warp"
        );
        let tasks = 128 * 128 * 4; // b = 128, 128 rows, 4 quarters
        let per_warp = combine_tasks_per_warp(tasks);
        assert_eq!(per_warp, 8);
        assert!(tasks.div_ceil(per_warp * COMBINE_WARPS as usize) <= COMBINE_TARGET_CTAS);
    }
}

//! The tile-scheduler metadata kernel. Port of FlashMLA HEAD
//! `csrc/smxx/decode/get_decoding_sched_meta/get_decoding_sched_meta.cu::get_mla_metadata_kernel`;
//! the scheduling pass itself is `flashmla_abi::schedule`, the function the host runs on the CPU.

use crate::arch;
use flashmla_abi::{
    sched_request_cost, schedule, DecodingSchedMeta, SchedMetaParams, SCHED_META_THREADS,
};

/// Computes the decode work lists and `num_splits` from `cache_seqlens` on the device, so a decode step
/// needs no host round trip (and can be captured in a CUDA graph).
///
/// Launch: 1 CTA of [`SCHED_META_THREADS`] (32) threads, `4 · batch_size` bytes of dynamic shared memory.
/// The warp loads the lengths into shared memory and sums the request costs in parallel; lane 0 then runs
/// the serial greedy pass, which only reads shared memory.
///
/// # Safety
/// The pointers in `params` must be valid device allocations of `batch_size`, `num_sm_parts` records and
/// `batch_size + 1` elements; `batch_size ≥ 1`, `num_sm_parts ≥ 1`.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn flashmla_get_decoding_sched_meta(params: SchedMetaParams) {
    let lane = arch::thread_idx_x();
    let b = params.batch_size as usize;
    let seqlens = params.seqlens_k as *const i32;
    let meta_out = params.tile_scheduler_metadata as *mut DecodingSchedMeta;
    let num_splits_out = params.num_splits as *mut i32;
    let s_seqlens = arch::dynamic_smem::<i32>();

    let mut cost = 0i64;
    let mut i = lane as usize;
    while i < b {
        // SAFETY: i < batch_size; the smem array has batch_size slots.
        let len = unsafe { seqlens.add(i).read_volatile() };
        unsafe { s_seqlens.add(i).write(len) };
        cost += sched_request_cost(len);
        i += SCHED_META_THREADS as usize;
    }
    // SAFETY: every lane reaches both collectives (no divergence above them).
    let total_cost = unsafe { arch::warp_sum_i64(cost) };
    unsafe { arch::sync_warp() };

    if lane == 0 {
        let complete = schedule(
            b,
            params.num_sm_parts as usize,
            // SAFETY: the scheduler asks only for requests < batch_size.
            |req| unsafe { s_seqlens.add(req).read() },
            total_cost,
            // SAFETY: part < num_sm_parts and idx <= batch_size, the output sizes.
            |part, meta| unsafe { meta_out.add(part).write(meta) },
            |idx, value| unsafe { num_splits_out.add(idx).write(value) },
        );
        if !complete {
            arch::trap();
        }
    }
}

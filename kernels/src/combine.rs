//! The combine kernel: merges the normalised f32 partials of every split request into `out` and the
//! natural-log `lse`. Port of FlashMLA HEAD `csrc/smxx/decode/combine/combine.cu`
//! (`flash_fwd_mla_combine_kernel`): four warps per query row, per-split weights `exp2(lse_s − lse)`,
//! `lse = log2 Σ exp2(lse_s)`, `+inf` lse and zero output when no split attended anything.

use crate::arch::{self, Element};
use crate::unroll;
use flashmla_abi::decode_config::{
    COMBINE_COLS_PER_LANE, COMBINE_SPLITS_IN_FLIGHT, COMBINE_WARPS, COMBINE_WARPS_PER_ROW,
};
use flashmla_abi::params::CombineParams;
use flashmla_abi::HEAD_DIM_V;

const LN_2: f32 = core::f32::consts::LN_2;

/// Grid `(ceil(h_kv · q_seq_per_hk · COMBINE_WARPS_PER_ROW / (COMBINE_WARPS · tasks_per_warp)), b)`,
/// `COMBINE_THREADS` threads. A task is a quarter of a query row's columns; each warp merges
/// `tasks_per_warp` consecutive tasks. Requests that were not split (`num_splits[b+1] − num_splits[b]
/// == 1`) were finished by the decode kernel: their CTAs exit at once.
///
/// # Safety
/// `params` describes valid device buffers matching the preceding decode launch.
#[inline(always)]
pub unsafe fn combine<E: Element>(p: &CombineParams) {
    let lane = arch::thread_idx_x() as usize % 32;
    let warp = arch::thread_idx_x() as usize / 32;
    let b = arch::block_idx_y() as usize;
    let rows = p.q_seq_per_hk as usize;
    // The partials come from the decode kernel just before this one (PDL).
    arch::grid_dependency_wait();
    let num_splits = p.num_splits as *const i32;
    // SAFETY: b < batch_size.
    let (first, count) = unsafe {
        (
            *num_splits.add(b),
            *num_splits.add(b + 1) - *num_splits.add(b),
        )
    };
    if count <= 1 {
        return;
    }
    let (first, count) = (first as usize, count as usize);
    let h_kv = p.num_heads_kv as usize;
    let tasks_per_warp = p.tasks_per_warp as usize;
    let first_task =
        (arch::block_idx_x() as usize * COMBINE_WARPS as usize + warp) * tasks_per_warp;
    for task in first_task..first_task + tasks_per_warp {
        let flat_row = task / COMBINE_WARPS_PER_ROW;
        if flat_row >= h_kv * rows {
            break;
        }
        let col = (task % COMBINE_WARPS_PER_ROW) * (HEAD_DIM_V / COMBINE_WARPS_PER_ROW)
            + lane * COMBINE_COLS_PER_LANE;
        // SAFETY: forwarded; (b, flat_row) is a row of a split request.
        unsafe { combine_row::<E>(p, b, flat_row, col, first, count) };
    }
    arch::launch_dependents();
}

/// Merges columns `col..col + 4` (per lane) of folded row `flat_row` of request `b`, split `count` ways
/// starting at split slot `first`, into `out`; the warp of column 0 also writes `lse`.
///
/// # Safety
/// Warp-wide; `params` as for [`combine`], and the arguments name a row of a split request.
#[inline(always)]
unsafe fn combine_row<E: Element>(
    p: &CombineParams,
    b: usize,
    flat_row: usize,
    col: usize,
    first: usize,
    count: usize,
) {
    let lane = arch::thread_idx_x() as usize % 32;
    let rows = p.q_seq_per_hk as usize;
    let h_kv = p.num_heads_kv as usize;
    let kv_head = flat_row / rows;
    let r = flat_row % rows;
    let slot = |s: usize| ((first + s) * h_kv + kv_head) * rows + r;
    let lse_accum = p.lse_accum as *const f32;
    // SAFETY (both closures): s < count, so slot(s) < total splits · h_kv · rows.
    let lse_of = |s: usize| {
        if s < count {
            unsafe { *lse_accum.add(slot(s)) }
        } else {
            f32::NEG_INFINITY
        }
    };

    // Global base-2 lse of the row from the per-split lse (lanes stride over splits).
    let mut max = f32::NEG_INFINITY;
    let mut s = lane;
    while s < count {
        max = max.max(lse_of(s));
        s += 32;
    }
    let mut off = 16;
    while off > 0 {
        // SAFETY: all lanes reach the shuffle (warp-uniform loop).
        max = max.max(unsafe { arch::shfl_xor_f32(max, off) });
        off /= 2;
    }
    let reference = if max == f32::NEG_INFINITY { 0.0 } else { max };
    let mut sum = 0.0f32;
    let mut s = lane;
    while s < count {
        sum += arch::exp2(lse_of(s) - reference);
        s += 32;
    }
    let mut off = 16;
    while off > 0 {
        sum += unsafe { arch::shfl_xor_f32(sum, off) };
        off /= 2;
    }
    let lse2 = if !(sum > 0.0) {
        f32::INFINITY
    } else {
        arch::log2(sum) + reference
    };

    // out = Σ_s exp2(lse_s − lse) · o_s. Lane s of a 32-split chunk holds split s's weight; the partials
    // of COMBINE_SPLITS_IN_FLIGHT splits are loaded before any is accumulated, so that many 16-byte
    // loads per lane are in flight instead of one dependent chain per split.
    let mut acc = [0.0f32; COMBINE_COLS_PER_LANE];
    // Split s of this row, columns col..: row_base + s · split_stride (floats).
    let split_stride = h_kv * rows * HEAD_DIM_V;
    // SAFETY: slot(0) is this row's first split slot.
    let row_base = unsafe { (p.o_accum as *const f32).add(slot(0) * HEAD_DIM_V + col) };
    let mut chunk = 0;
    while chunk < count {
        let weight = arch::exp2(lse_of(chunk + lane) - lse2);
        let in_chunk = (count - chunk).min(32);
        let mut s = 0;
        while s < in_chunk {
            let mut parts = [[0.0f32; COMBINE_COLS_PER_LANE]; COMBINE_SPLITS_IN_FLIGHT];
            unroll!(I in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11] {
                if s + I < in_chunk {
                    // SAFETY: split chunk + s + I < count; 16-byte aligned inside its 512-column row.
                    parts[I] = unsafe { *(row_base.add((chunk + s + I) * split_stride) as *const [f32; 4]) };
                }
            });
            unroll!(I in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11] {
                // SAFETY: all lanes reach the shuffle (warp-uniform bounds); lanes past the chunk hold 0.
                let w = unsafe { arch::shfl_idx_f32(weight, ((s + I) % 32) as u32) };
                if s + I < in_chunk {
                    unroll!(J in [0, 1, 2, 3] { acc[J] += w * parts[I][J]; });
                }
            });
            s += COMBINE_SPLITS_IN_FLIGHT;
        }
        chunk += 32;
    }
    let hpk = p.heads_per_kv as usize;
    let (t, head) = ((r / hpk) as u32, (kv_head * hpk + r % hpk) as u32);
    // SAFETY: validated strides address out[b, t, head, :] and lse[b, head, t].
    unsafe {
        let out = (p.output.out as *mut u16).offset(p.output.out_offset(b, t, head));
        *(out.add(col) as *mut [u32; 2]) = [E::pack(acc[0], acc[1]), E::pack(acc[2], acc[3])];
        if lane == 0 && col == 0 {
            *(p.output.lse as *mut f32).offset(p.output.lse_offset(b, t, head)) = lse2 * LN_2;
        }
    }
}

const _: () = assert!(
    COMBINE_SPLITS_IN_FLIGHT == 12,
    "the unrolled split loop above is written for 12"
);

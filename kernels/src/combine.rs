//! The combine kernel: merges the normalised f32 partials of every split request into `out` and the
//! natural-log `lse`. Port of FlashMLA HEAD `csrc/smxx/decode/combine/combine.cu`
//! (`flash_fwd_mla_combine_kernel`): one warp per query row, per-split weights `exp2(lse_s − lse)`,
//! `lse = log2 Σ exp2(lse_s)`, `+inf` lse and zero output when no split attended anything.

use crate::arch::{self, Element};
use crate::unroll;
use flashmla_abi::{CombineParams, COMBINE_COLS_PER_LANE, COMBINE_WARPS, HEAD_DIM_V};

const LN_2: f32 = core::f32::consts::LN_2;

/// Grid `(b, ceil(h_kv · q_seq_per_hk / COMBINE_WARPS))`, `COMBINE_THREADS` threads. Requests that were not
/// split (`num_splits[b+1] − num_splits[b] == 1`) were finished by the decode kernel and are skipped.
///
/// # Safety
/// `params` describes valid device buffers matching the preceding decode launch.
#[inline(always)]
pub unsafe fn combine<E: Element>(p: &CombineParams) {
    let lane = arch::thread_idx_x() as usize % 32;
    let warp = arch::thread_idx_x() as usize / 32;
    let b = arch::block_idx_x() as usize;
    let rows = p.q_seq_per_hk as usize;
    let flat_row = arch::block_idx_y() as usize * COMBINE_WARPS as usize + warp;
    // The partials come from the decode kernel just before this one (PDL).
    arch::grid_dependency_wait();
    if flat_row >= p.num_heads_kv as usize * rows {
        return;
    }
    let num_splits = p.num_splits as *const i32;
    // SAFETY: b < batch_size.
    let (first, count) = unsafe { (*num_splits.add(b), *num_splits.add(b + 1) - *num_splits.add(b)) };
    if count <= 1 {
        return;
    }
    let (first, count) = (first as usize, count as usize);
    let kv_head = flat_row / rows;
    let r = flat_row % rows;
    let h_kv = p.num_heads_kv as usize;
    let slot = |s: usize| ((first + s) * h_kv + kv_head) * rows + r;
    let lse_accum = p.lse_accum as *const f32;

    // Global base-2 lse of the row from the per-split lse (lanes stride over splits).
    let mut max = f32::NEG_INFINITY;
    let mut s = lane;
    while s < count {
        // SAFETY: slot(s) < total splits · h_kv · rows.
        max = max.max(unsafe { *lse_accum.add(slot(s)) });
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
        sum += arch::exp2(unsafe { *lse_accum.add(slot(s)) } - reference);
        s += 32;
    }
    let mut off = 16;
    while off > 0 {
        sum += unsafe { arch::shfl_xor_f32(sum, off) };
        off /= 2;
    }
    let lse2 = if !(sum > 0.0) { f32::INFINITY } else { arch::log2(sum) + reference };

    // out = Σ_s exp2(lse_s − lse) · o_s; lane owns columns lane·4 + 128·i (coalesced float4 loads).
    let mut acc = [[0.0f32; 4]; COMBINE_COLS_PER_LANE / 4];
    for s in 0..count {
        let weight = arch::exp2(unsafe { *lse_accum.add(slot(s)) } - lse2);
        if weight != 0.0 {
            let o = unsafe { (p.o_accum as *const f32).add(slot(s) * HEAD_DIM_V + lane * 4) };
            unroll!(I in [0, 1, 2, 3] {
                // SAFETY: inside the 512-column partial row; 16-byte aligned.
                let v = unsafe { *(o.add(I * 128) as *const [f32; 4]) };
                unroll!(J in [0, 1, 2, 3] { acc[I][J] += weight * v[J]; });
            });
        }
    }
    let hpk = p.heads_per_kv as usize;
    let (t, head) = ((r / hpk) as u32, (kv_head * hpk + r % hpk) as u32);
    // SAFETY: validated strides address out[b, t, head, :] and lse[b, head, t].
    unsafe {
        let out = (p.output.out as *mut u16).offset(p.output.out_offset(b, t, head));
        unroll!(I in [0, 1, 2, 3] {
            let o = out.add(lane * 4 + I * 128) as *mut u32;
            *o = E::pack(acc[I][0], acc[I][1]);
            *o.add(1) = E::pack(acc[I][2], acc[I][3]);
        });
        if lane == 0 {
            *(p.output.lse as *mut f32).offset(p.output.lse_offset(b, t, head)) = lse2 * LN_2;
        }
    }
    arch::launch_dependents();
}

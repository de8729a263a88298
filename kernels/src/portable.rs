//! The portable split-KV decode kernel: tensor cores through `mma.sync.m16n8k16` (sm_80+), K/V tiles
//! through a two-stage `cp.async` ring. It is the correctness oracle for the Hopper kernel and the path
//! for Ampere and newer non-Hopper GPUs.
//!
//! Semantics port FlashMLA `csrc/sm90/decode/dense/splitkv_mla.cuh` (`flash_fwd_splitkv_mla_kernel`,
//! HEAD 9241ae3): the persistent walk over one SM part's work list, bottom-right causal borders
//! (`get_mask_len`), online softmax in base 2 with the scale premultiplied by log2(e), P rounded to the
//! input dtype before PV, out-of-range KV rows never read (zero-filled, FlashMLA `fill_oob_V`), and the
//! epilogue (`store_o`): final `out`/natural-log `lse` for unsplit requests, normalised f32 partials and
//! base-2 `lse_accum` for split ones, `+inf` lse / zero output for rows with no keys.
//!
//! One CTA = 64 query rows (heads and tokens folded together) of one KV head, for one SM part.
//! Per 32-token KV tile: `S = Q·Kᵀ` (64×32, k = 576), row max shared by the two warps of a row through
//! shared memory, `P = exp2(S·scale_log2 − m)`, `O = O·α + P·V` (64×512, V = K[:, :512] read with
//! `ldmatrix.trans`).

use crate::arch::{self, Element};
use crate::attn::{self, RequestRange};
use crate::unroll;

// The unrolled k-steps below are written out: 36 of QKᵀ over the 576 head columns, 2 of PV over a tile.
const _: () = assert!(HEAD_DIM_K / 16 == 36 && KV_TILE / 16 == 2);
use flashmla_abi::decode_config::{smem, KV_STAGES, KV_TILE, P_ROW, ROW_CHUNKS, SMEM_ROW};
use flashmla_abi::params::{DecodeParams, DecodingSchedMeta};
use flashmla_abi::{BLOCK_SIZE_M, HEAD_DIM_K, HEAD_DIM_V, PAGE_BLOCK_SIZE};

const THREADS: usize = flashmla_abi::decode_config::DECODE_THREADS as usize;

/// Per-thread coordinates inside the CTA's warp tiling.
#[derive(Clone, Copy)]
struct Lane {
    lane: usize,
    /// `lane / 4`: the accumulator row inside a 16-row warp tile (and row + 8).
    group: usize,
    /// `lane % 4`: the accumulator column pair.
    tig: usize,
    /// First of the warp's 16 query rows.
    warp_row: usize,
    /// 0 or 1: which half of the KV tile (QKᵀ) and which 256 output columns (PV) the warp owns.
    half: usize,
}

/// Copies `rows` rows of 576 elements into a padded shared-memory tile with 16-byte `cp.async`s. Warp
/// `w` copies rows `w, w + 8, ...`, one row at a time, its lanes striding over the row's 72 chunks: the
/// source address is computed once per row and is warp-uniform. Rows whose `src(row)` is `None` are
/// zero-filled and nothing is read for them (`zero_src` is only a valid global address to name in the
/// zero-byte copy).
#[inline(always)]
unsafe fn load_rows(
    dst: *mut u16,
    rows: usize,
    warp: usize,
    lane: usize,
    zero_src: *const u16,
    src: impl Fn(usize) -> Option<*const u16>,
) {
    const WARPS: usize = THREADS / 32;
    let mut row = warp;
    while row < rows {
        let (from, bytes) = match src(row) {
            Some(p) => (p, 16),
            None => (zero_src, 0),
        };
        let d = arch::smem_addr(dst) + (row * SMEM_ROW * 2 + lane * 16) as u32;
        let mut chunk = lane;
        while chunk < ROW_CHUNKS {
            // SAFETY: chunk < 72 stays inside the 576-element row on both sides.
            unsafe {
                let from = if bytes == 0 {
                    from
                } else {
                    from.add(chunk * 8)
                };
                arch::cp_async_16(d + ((chunk - lane) * 16) as u32, from as *const u8, bytes)
            };
            chunk += 32;
        }
        row += WARPS;
    }
}

/// Decodes one CTA's share of the batch. Generic over the 16-bit input type.
///
/// # Safety
/// Launched with `DECODE_THREADS` threads, `smem::TOTAL` bytes of dynamic shared memory and grid
/// `(ceil(q_seq_per_hk / 64), h_kv, num_sm_parts)`; `params` describes valid device buffers (validated by
/// the host) and a schedule computed for this batch.
#[inline(always)]
pub unsafe fn splitkv_decode<E: Element>(p: &DecodeParams) {
    let tid = arch::thread_idx_x() as usize;
    let lane_id = tid % 32;
    let warp = tid / 32;
    let me = Lane {
        lane: lane_id,
        group: lane_id / 4,
        tig: lane_id % 4,
        warp_row: (warp % 4) * 16,
        half: warp / 4,
    };
    let m_block = arch::block_idx_x() as usize;
    let kv_head = arch::block_idx_y() as usize;
    let part = arch::block_idx_z() as usize;

    // The schedule and the lengths may come from the kernel just before this one (PDL).
    arch::grid_dependency_wait();
    // SAFETY: part < num_sm_parts (grid z).
    let meta: DecodingSchedMeta =
        unsafe { *(p.tile_scheduler_metadata as *const DecodingSchedMeta).add(part) };
    if meta.begin_req_idx >= p.batch_size {
        return;
    }

    let smem = arch::dynamic_smem::<u8>();
    // SAFETY: offsets from the shared plan, inside smem::TOTAL bytes.
    let (s_q, s_kv, s_p, s_max, s_sum) = unsafe {
        (
            smem.add(smem::Q) as *mut u16,
            smem.add(smem::KV) as *mut u16,
            smem.add(smem::P) as *mut u16,
            smem.add(smem::ROW_MAX) as *mut f32,
            smem.add(smem::ROW_SUM) as *mut f32,
        )
    };
    // Row / head arithmetic in 32 bits: 64-bit divisions are subroutine calls on the GPU, and 64-bit
    // values take two of the registers the 128 accumulators per thread leave scarce.
    let rows = p.q_seq_per_hk as u32;
    let hpk = attn::heads_per_kv(p);
    let row_base = (m_block * BLOCK_SIZE_M) as u32;
    let valid_rows = flashmla_abi::m_block_valid_rows(rows, m_block as u32);
    let num_splits = p.num_splits as *const i32;

    for req in meta.begin_req_idx..=meta.end_req_idx {
        // SAFETY: req is in the work list (< batch_size).
        let range = unsafe { RequestRange::new(p, &meta, req, row_base, valid_rows) };
        let RequestRange {
            b,
            seqlen,
            split_idx,
            is_split,
            tok_begin,
            tok_end,
            ..
        } = range;
        let n_tiles = range.blocks(KV_TILE);
        let limit = |local_row: usize| attn::causal_limit(p, seqlen, row_base + local_row as u32);
        let row_limit = [
            limit(me.warp_row + me.group),
            limit(me.warp_row + me.group + 8),
        ];
        let warp_active = me.warp_row < valid_rows;

        // ---- prologue: Q tile and the first KV tile -------------------------------------------------
        let q_base = p.q as *const u16;
        // SAFETY: valid rows address q[b, t, head, :]; padding rows are zero-filled.
        unsafe {
            load_rows(s_q, BLOCK_SIZE_M, warp, lane_id, q_base, |row| {
                let r = row_base + row as u32;
                (r < rows).then(|| attn::q_row(p, b, r, kv_head))
            })
        };
        // A 32-token tile never straddles a 64-token page, so each tile needs one block-table entry.
        // It is read one tile ahead of its copy: a lookup issued right before the copies would put a
        // global-load latency (≈1 µs) on every tile's critical path.
        let tile_page = |tile: usize| page_of(p, b, tok_begin as usize + tile * KV_TILE);
        let load_tile = |tile: usize, page: Option<i32>| {
            let first = tok_begin as usize + tile * KV_TILE;
            // SAFETY: the stage buffer holds KV_TILE rows; a valid page id addresses rows of the cache.
            unsafe {
                load_rows(
                    s_kv.add((tile % KV_STAGES) * KV_TILE * SMEM_ROW),
                    KV_TILE,
                    warp,
                    lane_id,
                    q_base,
                    |row| {
                        let token = first + row;
                        let page = page?;
                        (token < tok_end as usize).then(|| {
                            (p.k_cache as *const u16).offset(
                                page as isize * p.k_page_stride as isize
                                    + (token % PAGE_BLOCK_SIZE) as isize * p.k_row_stride as isize
                                    + kv_head as isize * p.k_head_stride as isize,
                            )
                        })
                    },
                )
            }
        };
        let mut next_page = if n_tiles > 1 { tile_page(1) } else { None };
        if n_tiles > 0 {
            load_tile(0, tile_page(0));
        }
        arch::cp_async_commit();

        let mut row_max = [f32::NEG_INFINITY; 2];
        let mut row_sum = [0.0f32; 2];
        let mut acc_o = [[0.0f32; 4]; 32];

        // ---- main loop over 32-token KV tiles ------------------------------------------------------
        for tile in 0..n_tiles {
            if tile + 1 < n_tiles {
                load_tile(tile + 1, next_page);
                next_page = if tile + 2 < n_tiles {
                    tile_page(tile + 2)
                } else {
                    None
                };
            }
            arch::cp_async_commit();
            arch::cp_async_wait::<1>();
            // SAFETY: every thread of the CTA runs the same trip count (CTA-uniform bounds).
            unsafe { arch::sync_threads() };
            let s_k = unsafe { s_kv.add((tile % KV_STAGES) * KV_TILE * SMEM_ROW) };

            // S = Q·Kᵀ for the warp's 16 rows × 16 tokens.
            let mut acc_s = [[0.0f32; 4]; 2];
            let q_addr = arch::smem_addr(unsafe {
                s_q.add((me.warp_row + me.lane % 16) * SMEM_ROW + (me.lane / 16) * 8)
            });
            let k_addr = arch::smem_addr(unsafe {
                s_k.add(
                    (me.half * 16 + me.lane % 8 + (me.lane / 16) * 8) * SMEM_ROW
                        + ((me.lane / 8) % 2) * 8,
                )
            });
            // Warps whose 16 rows are all padding (fewer than 64 query rows per KV head) skip their MMAs:
            // with zero Q rows their scores are 0 either way, and their outputs are never stored.
            if warp_active {
                unroll!(KK in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35] {
                    // SAFETY: warp-uniform; addresses inside the Q and K tiles (16 columns = 32 bytes a step).
                    unsafe {
                        let a = arch::ldmatrix_x4::<{ (KK * 32) as u32 }>(q_addr);
                        let bk = arch::ldmatrix_x4::<{ (KK * 32) as u32 }>(k_addr);
                        E::mma(&mut acc_s[0], a, bk[0], bk[1]);
                        E::mma(&mut acc_s[1], a, bk[2], bk[3]);
                    }
                });
            }

            // Scale to base 2, mask, and take the row maxima of the warp's half.
            let tile_tok = tok_begin + (tile * KV_TILE + me.half * 16 + 2 * me.tig) as i32;
            let mut part_max = [f32::NEG_INFINITY; 2];
            unroll!(NT in [0, 1] {
                unroll!(E_ in [0, 1, 2, 3] {
                    let tok = tile_tok + (NT * 8 + E_ % 2) as i32;
                    let h = E_ / 2;
                    let s = if tok < tok_end && tok < row_limit[h] { acc_s[NT][E_] * p.scale_log2 } else { f32::NEG_INFINITY };
                    acc_s[NT][E_] = s;
                    part_max[h] = part_max[h].max(s);
                });
            });
            for h in 0..2 {
                // SAFETY: all lanes reach the shuffles.
                unsafe {
                    part_max[h] = part_max[h].max(arch::shfl_xor_f32(part_max[h], 1));
                    part_max[h] = part_max[h].max(arch::shfl_xor_f32(part_max[h], 2));
                }
                if me.tig == 0 {
                    // SAFETY: inside the 2×64 row-max array.
                    unsafe {
                        *s_max.add(me.half * BLOCK_SIZE_M + me.warp_row + me.group + 8 * h) =
                            part_max[h]
                    };
                }
            }
            unsafe { arch::sync_threads() };

            // Online softmax update, identical in both warps of a row.
            let mut alpha = [0.0f32; 2];
            let mut m_ref = [0.0f32; 2];
            for h in 0..2 {
                let r = me.warp_row + me.group + 8 * h;
                // SAFETY: inside the row-max array.
                let tile_max = unsafe { (*s_max.add(r)).max(*s_max.add(BLOCK_SIZE_M + r)) };
                let (new_max, reference, factor) = attn::online_softmax_step(row_max[h], tile_max);
                m_ref[h] = reference;
                alpha[h] = factor;
                row_max[h] = new_max;
                row_sum[h] *= alpha[h];
            }
            unroll!(NT in [0, 1] {
                let mut packed = [0u32; 2];
                unroll!(H in [0, 1] {
                    let p0 = arch::exp2(acc_s[NT][2 * H] - m_ref[H]);
                    let p1 = arch::exp2(acc_s[NT][2 * H + 1] - m_ref[H]);
                    row_sum[H] += p0 + p1;
                    packed[H] = E::pack(p0, p1);
                });
                unroll!(H in [0, 1] {
                    let r = me.warp_row + me.group + 8 * H;
                    let c = me.half * 16 + NT * 8 + 2 * me.tig;
                    // SAFETY: inside the 64 × P_ROW tile; 4-byte aligned (c even).
                    unsafe { *(s_p.add(r * P_ROW + c) as *mut u32) = packed[H] };
                });
            });
            unroll!(NT in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31] {
                acc_o[NT][0] *= alpha[0];
                acc_o[NT][1] *= alpha[0];
                acc_o[NT][2] *= alpha[1];
                acc_o[NT][3] *= alpha[1];
            });
            unsafe { arch::sync_threads() };

            // O += P·V for the warp's 16 rows × 256 columns; V rows are the K tile's first 512 columns.
            let p_addr = arch::smem_addr(unsafe {
                s_p.add((me.warp_row + me.lane % 16) * P_ROW + (me.lane / 16) * 8)
            });
            let v_addr = arch::smem_addr(unsafe {
                s_k.add(
                    (me.lane % 8 + ((me.lane / 8) % 2) * 8) * SMEM_ROW
                        + me.half * (HEAD_DIM_V / 2)
                        + (me.lane / 16) * 8,
                )
            });
            if warp_active {
                unroll!(KK in [0, 1] {
                    // SAFETY: warp-uniform; addresses inside the P and K tiles (16 tokens a step).
                    let a = unsafe { arch::ldmatrix_x4::<{ (KK * 32) as u32 }>(p_addr) };
                    unroll!(NP in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
                        unsafe {
                            let bv = arch::ldmatrix_x4_trans::<{ (KK * 16 * SMEM_ROW * 2 + NP * 32) as u32 }>(v_addr);
                            E::mma(&mut acc_o[2 * NP], a, bv[0], bv[1]);
                            E::mma(&mut acc_o[2 * NP + 1], a, bv[2], bv[3]);
                        }
                    });
                });
            }
            // The stage and the P tile are overwritten next iteration.
            unsafe { arch::sync_threads() };
        }

        // ---- epilogue: row sums across the 4 lanes and the 2 warps of a row, then the stores -------
        for h in 0..2 {
            // SAFETY: all lanes reach the shuffles.
            unsafe {
                row_sum[h] += arch::shfl_xor_f32(row_sum[h], 1);
                row_sum[h] += arch::shfl_xor_f32(row_sum[h], 2);
            }
            if me.tig == 0 {
                // SAFETY: inside the 2×64 row-sum array.
                unsafe {
                    *s_sum.add(me.half * BLOCK_SIZE_M + me.warp_row + me.group + 8 * h) = row_sum[h]
                };
            }
        }
        unsafe { arch::sync_threads() };
        let split = if is_split {
            (unsafe { *num_splits.add(b) } + split_idx) as usize
        } else {
            0
        };
        unroll!(H in [0, 1] {
            let local = me.warp_row + me.group + 8 * H;
            // SAFETY: inside the row-sum array.
            let sum = unsafe { *s_sum.add(local) + *s_sum.add(BLOCK_SIZE_M + local) };
            // FlashMLA: L == 0 or NaN → the row attended nothing: zero output, lse +inf (or −inf partial).
            let inv = attn::inverse_sum(sum);
            let r = row_base + local as u32;
            if r < rows {
                let t = r / hpk;
                let head = kv_head as u32 * hpk + r % hpk;
                let col0 = me.half * (HEAD_DIM_V / 2) + 2 * me.tig;
                if is_split {
                    let row_idx = (split * p.num_heads_kv as usize + kv_head) * rows as usize + r as usize;
                    let o = p.o_accum as *mut f32;
                    unroll!(NT in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31] {
                        // SAFETY: split slot < total splits; 8-byte aligned (even column).
                        unsafe {
                            *(o.add(row_idx * HEAD_DIM_V + col0 + NT * 8) as *mut [f32; 2]) =
                                [acc_o[NT][2 * H] * inv, acc_o[NT][2 * H + 1] * inv];
                        }
                    });
                    if me.half == 0 && me.tig == 0 {
                        let lse2 = attn::lse_base2(sum, row_max[H]);
                        unsafe { *(p.lse_accum as *mut f32).add(row_idx) = lse2 };
                    }
                } else {
                    // SAFETY: validated strides address out[b, t, head, :].
                    let out = unsafe { (p.output.out as *mut u16).offset(p.output.out_offset(b, t, head)) };
                    unroll!(NT in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31] {
                        // SAFETY: inside out's row; 4-byte aligned (even column, validated strides).
                        unsafe {
                            *(out.add(col0 + NT * 8) as *mut u32) = E::pack(acc_o[NT][2 * H] * inv, acc_o[NT][2 * H + 1] * inv);
                        }
                    });
                    if me.half == 0 && me.tig == 0 {
                        let lse = attn::lse_natural(sum, row_max[H]);
                        // SAFETY: validated strides address lse[b, head, t].
                        unsafe { *(p.output.lse as *mut f32).offset(p.output.lse_offset(b, t, head)) = lse };
                    }
                }
            }
        });
        // Q, the row sums and the KV ring are reused by the next request.
        unsafe { arch::sync_threads() };
    }
    arch::launch_dependents();
}

/// Page id holding KV token `token` of request `b`, or `None` when its block-table column is past the
/// table or the id is outside the cache (such tokens read as zeros, like FlashMLA's TMA out-of-bounds fill).
#[inline(always)]
fn page_of(p: &DecodeParams, b: usize, token: usize) -> Option<i32> {
    let column = token / PAGE_BLOCK_SIZE;
    if column >= p.max_blocks_per_seq as usize {
        return None;
    }
    // SAFETY: b < batch_size and column < max_blocks_per_seq.
    let page = unsafe {
        *(p.block_table as *const i32)
            .offset(b as isize * p.block_table_stride as isize + column as isize)
    };
    (0..p.num_blocks).contains(&page).then_some(page)
}

//! The Hopper split-KV decode kernel's second schedule, for up to 64 query rows per KV head (one m-block:
//! h_q · s_q / h_kv ≤ 64, the memory-bound shapes). Same tiles, TMA, mbarriers, wgmma and epilogue as
//! the seesaw kernel (`decode_sm90.rs`); only the split of the work between the two warpgroups differs:
//! warpgroup 0 computes `S` and the softmax of every block and its half `O_L += P·V_L` (P from
//! registers), and queues `S = Q·Kᵀ` of the next block right behind `P·V_L`; it hands P (swizzled) and the
//! row rescale factors to warpgroup 1 through shared memory, which computes `O_R = O_R·α + P·V_R`. The
//! KV blocks of all the requests of an SM part form one sequence: a tile is refilled with the block two
//! ahead (next request's included) by the thread of the warpgroup that reads it last.
//!
//! Why two schedules: measured side by side with FlashMLA on its grid (PERF_NOTES.md, v12), the seesaw is
//! faster where the tensor cores bound the decode (more than 64 rows per KV head) and this one where
//! memory does (it keeps fewer hand-offs between the warpgroups on each block's path from landing to
//! refill). The host picks by rows per KV head (`sm90_schedule_for_rows`).

use crate::arch;
use crate::attn::{self, RequestRange};
use crate::decode_sm90::{
    cta_prologue, k_major_desc, load_q, store_o, store_p, v_desc, Smem, Thread,
};
use crate::hopper::{self as hw, WgmmaElement};
use crate::unroll;
use flashmla_abi::params::{DecodingSchedMeta, Sm90DecodeParams};
use flashmla_abi::sm90_config::{
    sm90_smem as smem, Sm90SharedMemory, K_TILES, SM90_THREADS, TILE_BYTES, TILE_COLS,
    V_TILES_PER_WARPGROUP, WARPGROUP_THREADS,
};
use flashmla_abi::{BLOCK_SIZE_M, HEAD_DIM_K, HEAD_DIM_V, PAGE_BLOCK_SIZE};

const CTA: u32 = SM90_THREADS;
const WG: u32 = WARPGROUP_THREADS;
/// 16-byte chunks of a 576-wide Q row.
const Q_ROW_CHUNKS: usize = HEAD_DIM_K * 2 / 16;

// Named barriers (0 is `__syncthreads`).
/// Warpgroup 0 → 1: P and the row scales of the current block are in shared memory.
const BAR_P_READY: u32 = 1;
/// Warpgroup 1 → 0: warpgroup 1 has consumed them.
const BAR_P_FREE: u32 = 2;
/// Warpgroup 0 → 1: the request's row sums are in shared memory.
const BAR_ROW_SUM: u32 = 3;
/// Inside warpgroup 0 (4) / 1 (5): out-of-range V rows have been zeroed.
const BAR_WG_ZEROED: u32 = 4;

const _: () =
    assert!(TILE_COLS == 64 && K_TILES == 9 && V_TILES_PER_WARPGROUP == 4 && HEAD_DIM_V == 512);
const _: () = assert!(PAGE_BLOCK_SIZE == 64 && BLOCK_SIZE_M == 64 && Q_ROW_CHUNKS == 72);

/// The part's key range of request `req` for this m-block, and its 64-token blocks.
///
/// # Safety
/// `req` is a request of `meta`'s work list.
#[inline(always)]
unsafe fn request_blocks(
    p: &flashmla_abi::params::DecodeParams,
    meta: &DecodingSchedMeta,
    req: i32,
    row_base: u32,
    valid_rows: usize,
) -> (RequestRange, usize) {
    // SAFETY: forwarded.
    let range = unsafe { RequestRange::new(p, meta, req, row_base, valid_rows) };
    (range, range.blocks(PAGE_BLOCK_SIZE))
}

/// Page id of block `j` of the CTA's flattened block sequence counted from request `req` (`j` may run
/// past that request into the next non-empty ones), or `None` past the part's last block. Page ids
/// outside the cache are left to TMA, which reads them as zeros.
#[inline(always)]
unsafe fn page_at(
    p: &flashmla_abi::params::DecodeParams,
    meta: &DecodingSchedMeta,
    mut req: i32,
    mut j: usize,
    row_base: u32,
    valid_rows: usize,
) -> Option<i32> {
    while req <= meta.end_req_idx {
        // SAFETY: req is in the work list.
        let (rb, n_blocks) = unsafe { request_blocks(p, meta, req, row_base, valid_rows) };
        if j < n_blocks {
            // SAFETY: b < batch_size; start_blk + j < ceil(tok_end / 64) <= max_blocks_per_seq.
            return Some(unsafe {
                *(p.block_table as *const i32).offset(
                    rb.b as isize * p.block_table_stride as isize
                        + rb.start_blk as isize
                        + j as isize,
                )
            });
        }
        j -= n_blocks;
        req += 1;
    }
    None
}

/// Decodes one CTA's share of the batch on Hopper.
///
/// # Safety
/// Launched with `SM90_THREADS` threads, `sm90_smem::TOTAL` bytes of dynamic shared memory and grid
/// `(ceil(q_seq_per_hk / 64), h_kv, num_sm_parts)` on an sm_90 device; `params.common` describes valid
/// device buffers (validated by the host) and a schedule computed for this batch; `k_tensor_map`
/// describes `k_cache`; `tensor_map_slots` has 128 bytes per CTA.
#[inline(always)]
pub unsafe fn splitkv_decode_sm90_single<E: WgmmaElement>(params: &Sm90DecodeParams) {
    let p = &params.common;
    let tid = arch::thread_idx_x();
    // SAFETY: every lane reaches it.
    let wg = unsafe { arch::warp_broadcast_lane0(tid / WG) } as usize;
    let wtid = (tid % WG) as usize;
    let lane = wtid % 32;
    let group = lane / 4;
    let tig = lane % 4;
    // The thread's two accumulator rows are row0 and row0 + 8.
    let row0 = (wtid / 32) * 16 + group;
    let m_block = arch::block_idx_x() as usize;
    let kv_head = arch::block_idx_y() as usize;
    let part = arch::block_idx_z() as usize;

    let smem_ptr = arch::dynamic_smem::<Sm90SharedMemory>() as *mut u8;
    let base = arch::smem_addr(smem_ptr);
    let smem = Smem {
        base,
        ptr: smem_ptr,
    };
    let th = Thread {
        wg,
        wtid,
        tig,
        row0,
    };
    let q_addr = base + smem::Q as u32;
    let p_addr = base + smem::P0 as u32;
    let kv_addr = |buf: usize| base + (smem::KV + buf * smem::KV_BUFFER) as u32;
    let bar = |buf: usize, tile: usize| base + (smem::BARRIERS + (buf * K_TILES + tile) * 8) as u32;
    // SAFETY: offsets from the shared plan, inside sm90_smem::TOTAL bytes.
    let (s_scale, s_sum) = unsafe {
        (
            smem_ptr.add(smem::ROW_SCALE) as *mut f32,
            smem_ptr.add(smem::ROW_SUM) as *mut f32,
        )
    };

    let rows = p.q_seq_per_hk as u32;
    // SAFETY: every thread, first thing.
    let tensor_map = unsafe { cta_prologue(params, smem, tid) };

    // The schedule and the lengths may come from the kernel just before this one (PDL).
    arch::grid_dependency_wait();
    // SAFETY: part < num_sm_parts (grid z).
    let meta: DecodingSchedMeta =
        unsafe { *(p.tile_scheduler_metadata as *const DecodingSchedMeta).add(part) };
    if meta.begin_req_idx >= p.batch_size {
        return;
    }

    let hpk = attn::heads_per_kv(p);
    let row_base = (m_block * BLOCK_SIZE_M) as u32;
    let valid_rows = flashmla_abi::m_block_valid_rows(rows, m_block as u32);
    let num_splits = p.num_splits as *const i32;
    // The normal L2 policy: measured against EVICT_FIRST on FlashMLA's memory-bound shapes (PERF_NOTES
    // v11), where this schedule runs.
    let policy = hw::l2_evict_normal_policy();
    let load_tile = |buf: usize, tile: usize, page: i32| {
        let bar = bar(buf, tile);
        // SAFETY: the buffer's tile is free (its last reader has waited on its wgmma); the tensor map
        // was acquired by this thread (thread 0 or WG).
        unsafe {
            hw::mbarrier_arrive_expect_tx_at::<0>(bar, TILE_BYTES as u32);
            hw::tma_load_4d_hinted::<0, 0>(
                kv_addr(buf) + (tile * TILE_BYTES) as u32,
                tensor_map,
                bar,
                [(tile * TILE_COLS) as i32, 0, kv_head as i32, page],
                policy,
            );
        }
    };
    // The KV blocks of all the part's requests form one sequence, block g in buffer g % 2 with mbarrier
    // phase parity (g / 2) % 2. Block g + 2 is loaded as soon as block g's buffer is free, whichever
    // request it belongs to, so request boundaries do not drain the pipeline. Thread 0 loads tiles 8
    // and 0..4 of every block, thread WG tiles 4..8: each tile's last reader refills it.
    if tid == 0 || tid == WG {
        for g in 0..2 {
            // SAFETY: the part's first request.
            if let Some(page) =
                unsafe { page_at(p, &meta, meta.begin_req_idx, g, row_base, valid_rows) }
            {
                if tid == 0 {
                    load_tile(g, K_TILES - 1, page);
                    for tile in 0..V_TILES_PER_WARPGROUP {
                        load_tile(g, tile, page);
                    }
                } else {
                    for tile in V_TILES_PER_WARPGROUP..2 * V_TILES_PER_WARPGROUP {
                        load_tile(g, tile, page);
                    }
                }
            }
        }
    }
    // Blocks of the part done before the current request.
    let mut g_base = 0usize;

    let (begin_req, end_req) = (meta.begin_req_idx, meta.end_req_idx);
    for req in begin_req..=end_req {
        // SAFETY: part < num_sm_parts (grid z).
        let meta = unsafe { *(p.tile_scheduler_metadata as *const DecodingSchedMeta).add(part) };
        // SAFETY: req is in the work list.
        let (
            RequestRange {
                b,
                seqlen,
                start_blk,
                split_idx,
                is_split,
                tok_begin,
                tok_end,
            },
            n_blocks,
        ) = unsafe { request_blocks(p, &meta, req, row_base, valid_rows) };
        let limit = |local_row: usize| attn::causal_limit(p, seqlen, row_base + local_row as u32);
        let row_limit = [limit(row0), limit(row0 + 8)];
        // Page of the block two after block j of this request (the one refilling j's buffer).
        let refill_page = |j: usize| -> Option<i32> {
            if j + 2 < n_blocks {
                // SAFETY: b < batch_size, start_blk + j + 2 < ceil(tok_end / 64) <= max_blocks_per_seq.
                Some(unsafe {
                    *(p.block_table as *const i32).offset(
                        b as isize * p.block_table_stride as isize
                            + start_blk as isize
                            + (j + 2) as isize,
                    )
                })
            } else {
                // (The work list is re-read here, near the end of a request only: kept in registers across
                // the block loop it would cost the accumulators their room.)
                // SAFETY: part < num_sm_parts (grid z).
                let meta =
                    unsafe { *(p.tile_scheduler_metadata as *const DecodingSchedMeta).add(part) };
                // SAFETY: the CTA's work list; req + 1.. are its later requests.
                unsafe { page_at(p, &meta, req + 1, j + 2 - n_blocks, row_base, valid_rows) }
            }
        };

        // ---- Q by cp.async (this request's first KV pages are already on their way) ------------------
        // SAFETY: every thread; the previous request ended with a CTA barrier.
        unsafe { load_q::<false>(p, smem, b, kv_head, row_base, tid) };

        let mut acc_o = [0.0f32; 128];
        let mut row_max = [f32::NEG_INFINITY; 2];
        let mut row_sum = [0.0f32; 2];
        // Zeroes the V rows of the last block past tok_end in this warpgroup's four V tiles: they may hold
        // NaN (unused cache slots), and P = 0 times NaN is NaN (FlashMLA fill_oob_V).
        let zero_oob_v_rows = |buf: usize, blk_tok: i32| {
            let valid = (tok_end - blk_tok) as usize;
            let first_tile = wg * V_TILES_PER_WARPGROUP;
            let mut idx = wtid;
            while idx < (PAGE_BLOCK_SIZE - valid) * 32 {
                let row = valid + idx / 32;
                let tile = first_tile + (idx % 32) / 8;
                let off = smem::KV
                    + buf * smem::KV_BUFFER
                    + tile * TILE_BYTES
                    + row * 128
                    + (idx % 8) * 16;
                // SAFETY: inside the KV buffer; a whole 128-byte row is cleared, whatever its swizzle.
                unsafe { *(smem_ptr.add(off) as *mut [u32; 4]) = [0; 4] };
                idx += WG as usize;
            }
            hw::fence_proxy_async_shared();
            // SAFETY: the whole warpgroup reaches it (warpgroup-uniform condition).
            unsafe { hw::named_barrier_sync(BAR_WG_ZEROED + wg as u32, WG) };
        };

        // Whole blocks below this token need no mask: no ragged tail, and no causal border (the border
        // grows with the row, so row 0's is the lowest).
        let unmasked_end = tok_end.min(limit(0));
        // O·α with α = 1 in every lane of the warp is a no-op: skipped. Once a row's running max settles,
        // most blocks leave it unchanged.
        let rescale = |acc_o: &mut [f32; 128], alpha: [f32; 2]| {
            // SAFETY: all lanes reach the vote (warpgroup-uniform control flow).
            if !unsafe { arch::warp_all(alpha[0] == 1.0 && alpha[1] == 1.0) } {
                unroll!(I in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31] {
                    unroll!(E_ in [0, 1, 2, 3] {
                        acc_o[4 * I + E_] *= alpha[E_ / 2];
                    });
                });
            }
        };

        if wg == 0 {
            // ---- warpgroup 0: S = Q·Kᵀ, softmax, O_L = O_L·α + P·V_L --------------------------------------
            // S = Q·Kᵀ of block j (issued, not waited for). Each tile's wgmmas start as soon as its TMA lands.
            // (A macro, not a closure: it is used twice and must be inlined, or ptxas serialises the
            // wgmma pipeline across the call.)
            macro_rules! issue_qk {
                ($acc_s:ident, $j:expr) => {{
                    let g = g_base + $j;
                    let (buf, parity) = (g % 2, ((g / 2) % 2) as u32);
                    // SAFETY: warpgroup-uniform; descriptors address the Q tiles and the landed K tiles.
                    unsafe {
                        let (a, k) = (k_major_desc(q_addr), k_major_desc(kv_addr(buf)));
                        // Tiles in the order their buffers are refilled: 8 (right after Q·Kᵀ), 0..4 (after
                        // P·V_L), 4..8 (after P·V_R, the latest).
                        unroll!(T in [8, 0, 1, 2, 3, 4, 5, 6, 7] {
                            hw::mbarrier_wait_at::<{ (T * 8) as u32 }>(bar(buf, 0), parity);
                            hw::wgmma_fence_32(&mut $acc_s);
                            unroll!(KS in [0, 1, 2, 3] {
                                E::wgmma_m64n64k16_ss::<{ ((T * TILE_BYTES + KS * 32) / 16) as u64 }>(
                                    &mut $acc_s, a, k, (T != 8 || KS > 0) as u32,
                                );
                            });
                        });
                        hw::wgmma_commit();
                    }
                }};
            }
            let mut acc_s = [0.0f32; 32];
            if n_blocks > 0 {
                issue_qk!(acc_s, 0);
                // SAFETY: warpgroup-uniform.
                unsafe { hw::wgmma_wait_32::<0>(&mut acc_s) };
            }
            for j in 0..n_blocks {
                let buf = (g_base + j) % 2;
                // Read early: the table lookup's latency hides behind the softmax.
                let refill = if tid == 0 { refill_page(j) } else { None };
                // Tile 8 (RoPE) has no other reader than Q·Kᵀ(j), which is done.
                if let Some(page) = refill {
                    load_tile(buf, K_TILES - 1, page);
                }

                // Scale to base 2, mask, row maxima (each row lives in the 4 lanes of a quad).
                let blk_tok = tok_begin + (j * PAGE_BLOCK_SIZE) as i32;
                let mut part_max = [f32::NEG_INFINITY; 2];
                if blk_tok + PAGE_BLOCK_SIZE as i32 <= unmasked_end {
                    unroll!(I in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31] {
                        let s = acc_s[I] * p.scale_log2;
                        acc_s[I] = s;
                        part_max[(I / 2) % 2] = part_max[(I / 2) % 2].max(s);
                    });
                } else {
                    unroll!(I in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31] {
                        let h = (I / 2) % 2;
                        let tok = blk_tok + (8 * (I / 4) + 2 * tig + I % 2) as i32;
                        let s = if tok < tok_end && tok < row_limit[h] { acc_s[I] * p.scale_log2 } else { f32::NEG_INFINITY };
                        acc_s[I] = s;
                        part_max[h] = part_max[h].max(s);
                    });
                }
                let mut alpha = [0.0f32; 2];
                let mut m_ref = [0.0f32; 2];
                for h in 0..2 {
                    // SAFETY: all lanes reach the shuffles.
                    unsafe {
                        part_max[h] = part_max[h].max(arch::shfl_xor_f32(part_max[h], 1));
                        part_max[h] = part_max[h].max(arch::shfl_xor_f32(part_max[h], 2));
                    }
                    let new_max = row_max[h].max(part_max[h]);
                    // A row with no key so far keeps max −inf; use 0 as its reference so no inf − inf appears.
                    m_ref[h] = if new_max == f32::NEG_INFINITY {
                        0.0
                    } else {
                        new_max
                    };
                    alpha[h] = arch::exp2(row_max[h] - m_ref[h]);
                    row_max[h] = new_max;
                    row_sum[h] *= alpha[h];
                }
                // P in the input dtype, packed in pairs: pair I = accumulators 2I, 2I + 1 (row + 8 when I is
                // odd), which is also wgmma's register-A layout (k-step s takes pairs 4s..4s+4).
                let mut pa = [0u32; 16];
                unroll!(I in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
                    let p0 = arch::exp2(acc_s[2 * I] - m_ref[I % 2]);
                    let p1 = arch::exp2(acc_s[2 * I + 1] - m_ref[I % 2]);
                    row_sum[I % 2] += p0 + p1;
                    pa[I] = E::pack(p0, p1);
                });

                // Hand P and α to warpgroup 1 once it has consumed the previous block's.
                if j > 0 {
                    // SAFETY: warpgroup 1 arrives once per block but the last.
                    unsafe { hw::named_barrier_sync(BAR_P_FREE, CTA) };
                }
                // SAFETY: warpgroup-uniform; warpgroup 1 is done with the previous block's P.
                unsafe { store_p(th, p_addr, &pa) };
                if tig == 0 {
                    // SAFETY: inside the row-scale array.
                    unsafe {
                        *s_scale.add(row0) = alpha[0];
                        *s_scale.add(row0 + 8) = alpha[1];
                    }
                }
                hw::fence_proxy_async_shared();
                // SAFETY: warpgroup 1 waits on it once per block.
                unsafe { hw::named_barrier_arrive(BAR_P_READY, CTA) };

                if j + 1 == n_blocks && tok_end - blk_tok < PAGE_BLOCK_SIZE as i32 {
                    zero_oob_v_rows(buf, blk_tok);
                }
                rescale(&mut acc_o, alpha);
                // O_L += P·V_L (V = K tiles 0..4), then straight on to S = Q·Kᵀ of the next block, so the
                // tensor cores have both queued while this warpgroup waits.
                // SAFETY: warpgroup-uniform; V = K tiles 0..4 of the landed page.
                unsafe {
                    hw::wgmma_fence_128(&mut acc_o);
                    let v = v_desc(kv_addr(buf));
                    unroll!(KS in [0, 1, 2, 3] {
                        E::wgmma_m64n256k16_rs_tb::<{ (KS * 16 * 128 / 16) as u64 }>(
                            &mut acc_o,
                            [pa[4 * KS], pa[4 * KS + 1], pa[4 * KS + 2], pa[4 * KS + 3]],
                            v,
                        );
                    });
                    hw::wgmma_commit();
                }
                // Both waits of the in-flight S sit in one branch: a control-flow join while its wgmma runs
                // would make LLVM move the accumulators (phi copies), and ptxas then serialises.
                if j + 1 < n_blocks {
                    issue_qk!(acc_s, j + 1);
                    // SAFETY: warpgroup-uniform; P·V_L is the older of the two pending groups.
                    unsafe { hw::wgmma_wait_128::<1>(&mut acc_o) };
                    // Tiles 0..4 are V_L of this block: free now.
                    if let Some(page) = refill {
                        for tile in 0..V_TILES_PER_WARPGROUP {
                            load_tile(buf, tile, page);
                        }
                    }
                    // SAFETY: warpgroup-uniform.
                    unsafe { hw::wgmma_wait_32::<0>(&mut acc_s) };
                } else {
                    // SAFETY: warpgroup-uniform.
                    unsafe { hw::wgmma_wait_128::<0>(&mut acc_o) };
                    // The next request's block, if any.
                    if let Some(page) = refill {
                        for tile in 0..V_TILES_PER_WARPGROUP {
                            load_tile(buf, tile, page);
                        }
                    }
                }
            }
            // Full row sums (the quad's four lanes) for the epilogue of both warpgroups.
            for h in 0..2 {
                // SAFETY: all lanes reach the shuffles.
                unsafe {
                    row_sum[h] += arch::shfl_xor_f32(row_sum[h], 1);
                    row_sum[h] += arch::shfl_xor_f32(row_sum[h], 2);
                }
            }
            if tig == 0 {
                // SAFETY: inside the row-sum array.
                unsafe {
                    *s_sum.add(row0) = row_sum[0];
                    *s_sum.add(row0 + 8) = row_sum[1];
                }
            }
            // SAFETY: warpgroup 1 waits on it once per request.
            unsafe { hw::named_barrier_arrive(BAR_ROW_SUM, CTA) };
        } else {
            // ---- warpgroup 1: O_R = O_R·α + P·V_R -------------------------------------------------------
            for j in 0..n_blocks {
                let g = g_base + j;
                let (buf, parity) = (g % 2, ((g / 2) % 2) as u32);
                let refill = if wtid == 0 { refill_page(j) } else { None };
                // SAFETY: warpgroup 0 arrives once per block.
                unsafe { hw::named_barrier_sync(BAR_P_READY, CTA) };
                // SAFETY: written by warpgroup 0 before the barrier.
                let alpha = unsafe { [*s_scale.add(row0), *s_scale.add(row0 + 8)] };
                let blk_tok = tok_begin + (j * PAGE_BLOCK_SIZE) as i32;
                if j + 1 == n_blocks && tok_end - blk_tok < PAGE_BLOCK_SIZE as i32 {
                    for tile in V_TILES_PER_WARPGROUP..2 * V_TILES_PER_WARPGROUP {
                        // SAFETY: landed already (warpgroup 0 waited); this orders the TMA writes before ours.
                        unsafe { hw::mbarrier_wait_at::<0>(bar(buf, tile), parity) };
                    }
                    zero_oob_v_rows(buf, blk_tok);
                }
                rescale(&mut acc_o, alpha);
                // SAFETY: warpgroup-uniform; A = the P tile, V = K tiles 4..8 of the landed page.
                unsafe {
                    hw::wgmma_fence_128(&mut acc_o);
                    let (a, v) = (k_major_desc(p_addr), v_desc(kv_addr(buf)));
                    unroll!(KS in [0, 1, 2, 3] {
                        E::wgmma_m64n256k16_ss_tb::<
                            { (KS * 32 / 16) as u64 },
                            { ((V_TILES_PER_WARPGROUP * TILE_BYTES + KS * 16 * 128) / 16) as u64 },
                        >(&mut acc_o, a, v);
                    });
                    hw::wgmma_commit();
                    hw::wgmma_wait_128::<0>(&mut acc_o);
                }
                if j + 1 < n_blocks {
                    // SAFETY: warpgroup 0 waits on it before every block but the first.
                    unsafe { hw::named_barrier_arrive(BAR_P_FREE, CTA) };
                }
                if let Some(page) = refill {
                    for tile in V_TILES_PER_WARPGROUP..2 * V_TILES_PER_WARPGROUP {
                        load_tile(buf, tile, page);
                    }
                }
            }
            // SAFETY: warpgroup 0 arrives once per request.
            unsafe { hw::named_barrier_sync(BAR_ROW_SUM, CTA) };
            // SAFETY: written by warpgroup 0 before the barrier.
            row_sum = unsafe { [*s_sum.add(row0), *s_sum.add(row0 + 8)] };
        }

        // ---- epilogue (FlashMLA store_o): each warpgroup stores its 256 columns ----------------------------
        let split = if is_split {
            (unsafe { *num_splits.add(b) } + split_idx) as usize
        } else {
            0
        };
        let split_row0 =
            (split * p.num_heads_kv as usize + kv_head) * rows as usize + row_base as usize;
        let mut inv = [0.0f32; 2];
        unroll!(H in [0, 1] {
            let sum = row_sum[H];
            // FlashMLA: L == 0 or NaN → the row attended nothing: zero output, lse +inf (or −inf partial).
            inv[H] = attn::inverse_sum(sum);
            let r = row_base + (row0 + 8 * H) as u32;
            if wg == 0 && tig == 0 && r < rows {
                if is_split {
                    let lse2 = attn::lse_base2(sum, row_max[H]);
                    // SAFETY: split slot < total splits.
                    unsafe { *(p.lse_accum as *mut f32).add(split_row0 + row0 + 8 * H) = lse2 };
                } else {
                    let lse = attn::lse_natural(sum, row_max[H]);
                    // SAFETY: validated strides address lse[b, head, t].
                    unsafe {
                        *(p.output.lse as *mut f32)
                            .offset(p.output.lse_offset(b, r / hpk, kv_head as u32 * hpk + r % hpk)) = lse
                    };
                }
            }
        });
        // The Q tiles stage split partials: both warpgroups' last wgmmas must be done.
        // SAFETY: every thread reaches it.
        unsafe { arch::sync_threads() };
        let split_row0 = is_split.then_some(split_row0);
        // SAFETY: every thread, past the barrier above.
        unsafe {
            store_o::<E>(
                p, smem, th, tid, &acc_o, inv, split_row0, b, kv_head, row_base,
            )
        };
        g_base += n_blocks;
        // Q, the KV buffers and the row sums are reused by the next request.
        // SAFETY: every thread reaches it.
        unsafe { arch::sync_threads() };
    }
    arch::launch_dependents();
}

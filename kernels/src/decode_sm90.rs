//! The Hopper split-KV decode kernel: KV pages by TMA onto mbarriers, `Q·Kᵀ` and `P·V` by `wgmma`, and
//! FlashMLA's "seesaw" schedule for the two warpgroups. Selected on sm_90 devices; the portable kernel
//! (`decode.rs`) stays the oracle.
//!
//! Ports FlashMLA's dense sm90 kernel (v1 9edee0c `csrc/kernels/splitkv_mla.cu`, still the dense kernel
//! at HEAD 9241ae3 `csrc/sm90/decode/dense/splitkv_mla.cuh`, `flash_fwd_splitkv_mla_kernel`):
//! - 64 query rows (heads folded into M) per CTA; 64-token pages loaded as nine 64 × 64 tiles with the
//!   128-byte swizzle, one mbarrier per tile (`launch_kv_tiles_copy_tma`), so `Q·Kᵀ` starts on a tile
//!   as soon as it lands;
//! - `S = Q·Kᵀ` as `wgmma.m64n64k16`, Q's RoPE tile from registers and the other eight from shared
//!   memory (`warpgroup_cooperative_qkt_gemm`); `O += P·V` as `wgmma.m64n256k16` with V read from the K
//!   tiles through an MN-major descriptor (FlashMLA's `SmemLayoutV`, no copy);
//! - the seesaw: the blocks of a request go in pairs (a, c = a + 1). Warpgroup 0 owns output columns
//!   0..256 (`O_L`) and computes `S` and the softmax of the even blocks; warpgroup 1 owns columns
//!   256..512 (`O_R`) and computes `S` and the softmax of the odd blocks. Each applies its own P from
//!   registers to its half of V and the other warpgroup's P from shared memory (`sP0`, `sP1`), so one
//!   warpgroup's softmax runs while the other's matmuls keep the tensor cores busy. The running row
//!   maximum lives in shared memory (`sM`) and the rescale factors of a pair travel through `sScale0`
//!   and `sScale1` (`wg0_subroutine`, `wg1_subroutine`);
//! - the online softmax in base 2 with the scale premultiplied by log2(e) (`scale_softmax_log2`), P
//!   rounded to the input dtype, out-of-range V rows zeroed in shared memory (`fill_oob_V`), the
//!   bottom-right causal border (`get_mask_len`), the split/unsplit epilogue (`store_o`) and PDL.
//!
//! KV pages stream across requests: buffer b holds the blocks of parity b of each request (constant
//! addresses, as FlashMLA's `sK0`/`sK1`), and each tile is refilled with the buffer's next block, of
//! this request or a later one, by the thread of the warpgroup that reads it last (tile 8 after its
//! owner's `Q·Kᵀ`, tiles 0..4 after warpgroup 0's `P·V_L`, tiles 4..8 after warpgroup 1's `P·V_R`),
//! so request boundaries do not drain the pipeline (FlashMLA restarts it per request). Split partials
//! are staged in shared memory and written by bulk copies. PERF_NOTES.md has what each choice was
//! predicted to do and did.

use crate::arch;
use crate::attn::{self, RequestRange};
use crate::hopper::{self as hw, WgmmaElement};
use crate::unroll;
use flashmla_abi::params::{DecodeParams, DecodingSchedMeta, Sm90DecodeParams, TENSOR_MAP_BYTES};
use flashmla_abi::sm90_config::{
    sm90_smem as smem, Sm90SharedMemory, K_TILES, SM90_THREADS, TILE_BYTES, TILE_COLS,
    V_TILES_PER_WARPGROUP, WARPGROUP_THREADS,
};
use flashmla_abi::{BLOCK_SIZE_M, HEAD_DIM_K, HEAD_DIM_V, PAGE_BLOCK_SIZE};

const CTA: u32 = SM90_THREADS;
const WG: u32 = WARPGROUP_THREADS;
/// 16-byte chunks of a 576-wide Q row.
const Q_ROW_CHUNKS: usize = HEAD_DIM_K * 2 / 16;
/// The K tile holding the RoPE columns (512..576): read only by `Q·Kᵀ`, its Q side from registers.
const ROPE_TILE: usize = K_TILES - 1;
/// wgmma commit groups of one `Q·Kᵀ` (one per K tile): waiting for "at most `QK_GROUPS` pending" right
/// after it waits for exactly the groups issued before it.
const QK_GROUPS: u32 = K_TILES as u32;
/// Byte offset of warpgroup 1's half of V (`V_R`, K tiles 4..8) in a KV buffer.
const V_R_OFFSET: u32 = (V_TILES_PER_WARPGROUP * TILE_BYTES) as u32;

// Named barriers (0 is `__syncthreads`), one per cross-warpgroup exchange (FlashMLA `NamedBarriers`).
// Each is arrived at by one warpgroup and waited on by the other, once per pair of blocks.
/// Warpgroup 0 → 1: the row maximum after the even block (`sM`), its rescale factors (`sScale0`) and
/// its P (`sP0`, fenced for the async proxy) are in shared memory (FlashMLA `sScale0Ready` + `sP0Ready`).
const BAR_EVEN_READY: u32 = 1;
/// Warpgroup 1 → 0: the row maximum after the odd block, its rescale factors (`sScale1`) and its P
/// (`sP1`, fenced) are in shared memory (FlashMLA `sScale1Ready` + `rO1sP0sV0RIssued`).
const BAR_ODD_READY: u32 = 2;
/// Warpgroup 1 → 0: warpgroup 1's `P·V_R` of the even block, the reader of `sP0`, is complete, so the
/// next pair's P may be stored there. Apart from `BAR_ODD_READY` so that warpgroup 0 can start
/// `P·V_L` of the odd block (and the refill of its buffer) without waiting for it.
const BAR_P0_FREE: u32 = 3;
/// Inside warpgroup 0 (4) / 1 (5): its out-of-range V rows have been zeroed.
const BAR_WG_ZEROED: u32 = 4;

const _: () =
    assert!(TILE_COLS == 64 && K_TILES == 9 && V_TILES_PER_WARPGROUP == 4 && HEAD_DIM_V == 512);
const _: () = assert!(PAGE_BLOCK_SIZE == 64 && BLOCK_SIZE_M == 64 && Q_ROW_CHUNKS == 72);
const _: () = assert!(core::mem::align_of::<Sm90SharedMemory>() == 1024);

/// Descriptor of a K-major 64-row operand tile with the 128-byte swizzle: 8-row groups are 1024 bytes
/// apart; the leading offset is unused for swizzled K-major layouts (1 by convention).
#[inline(always)]
pub(crate) fn k_major_desc(addr: u32) -> u64 {
    hw::sw128_desc(addr, 16, 1024)
}

/// Descriptor of V, i.e. K tiles read transposed (MN-major): 64-column groups are one tile (8192 bytes)
/// apart, 8-token groups 1024 bytes apart.
#[inline(always)]
pub(crate) fn v_desc(addr: u32) -> u64 {
    hw::sw128_desc(addr, TILE_BYTES as u32, 1024)
}

/// Byte offset of 16-byte chunk `chunk` of row `row` in a 64-row × 128-byte tile with the 128-byte
/// swizzle (chunk index XOR row mod 8; what TMA writes and wgmma reads).
#[inline(always)]
fn sw128_offset(row: usize, chunk: usize) -> usize {
    row * 128 + ((chunk ^ (row % 8)) * 16)
}

/// The CTA's shared memory ([`Sm90SharedMemory`]): 32-bit shared addresses for wgmma descriptors, TMA
/// and mbarriers, a generic pointer for ordinary loads and stores.
#[derive(Clone, Copy)]
pub(crate) struct Smem {
    pub(crate) base: u32,
    pub(crate) ptr: *mut u8,
}

impl Smem {
    fn q(self) -> u32 {
        self.base + smem::Q as u32
    }
    fn kv(self, buf: u32) -> u32 {
        self.base + smem::KV as u32 + buf * smem::KV_BUFFER as u32
    }
    /// mbarrier of tile 0 of a buffer; tile t's is 8·t bytes further.
    fn bar(self, buf: u32) -> u32 {
        self.base + smem::BARRIERS as u32 + buf * (K_TILES * 8) as u32
    }
    fn p0(self) -> u32 {
        self.base + smem::P0 as u32
    }
    fn p1(self) -> u32 {
        self.base + smem::P1 as u32
    }
    fn f32_at(self, offset: usize) -> *mut f32 {
        // SAFETY: offsets of the shared plan stay inside its sm90_smem::TOTAL bytes.
        unsafe { self.ptr.add(offset) as *mut f32 }
    }
    /// `sM`: the running row maximum.
    fn row_max(self) -> *mut f32 {
        self.f32_at(smem::ROW_MAX)
    }
    /// `sScale0` (0) / `sScale1` (1).
    fn row_scale(self, i: usize) -> *mut f32 {
        self.f32_at(smem::ROW_SCALE + i * BLOCK_SIZE_M * 4)
    }
    /// Warpgroup `wg`'s row sums at the end of a request.
    fn row_sum(self, wg: usize) -> *mut f32 {
        self.f32_at(smem::ROW_SUM + wg * BLOCK_SIZE_M * 4)
    }
}

/// A thread's place in its warpgroup's wgmma fragments: accumulator rows `row0` and `row0 + 8`,
/// columns `8·i + 2·tig + {0, 1}`.
#[derive(Clone, Copy)]
pub(crate) struct Thread {
    pub(crate) wg: usize,
    pub(crate) wtid: usize,
    pub(crate) tig: usize,
    pub(crate) row0: usize,
}

/// The KV side: the tensor map, the L2 policy and the buffers its tiles land in. Buffer b holds the
/// blocks of parity b of each request (block j is in buffer j % 2): both buffers' addresses are then
/// constants of each warpgroup's code, as in FlashMLA (`sK0`, `sK1`).
#[derive(Clone, Copy)]
struct KvLoader {
    smem: Smem,
    tensor_map: u64,
    kv_head: i32,
    policy: u64,
}

impl KvLoader {
    /// Loads one tile of page `page` into buffer `buf` by TMA: tile offset, barrier offset and column
    /// as immediates.
    ///
    /// # Safety
    /// The buffer's tile is free (its last reader has waited on its wgmma) and this thread acquired
    /// the tensor map.
    #[inline(always)]
    unsafe fn load_tile<const DST_OFF: u32, const BAR_OFF: u32, const COLUMN: i32>(
        self,
        buf: u32,
        page: i32,
    ) {
        let (dst, bar) = (self.smem.kv(buf), self.smem.bar(buf));
        // SAFETY: forwarded; the barrier expects one box of TILE_BYTES.
        unsafe {
            hw::mbarrier_arrive_expect_tx_at::<BAR_OFF>(bar, TILE_BYTES as u32);
            hw::tma_load_4d_hinted::<DST_OFF, BAR_OFF>(
                dst,
                self.tensor_map,
                bar,
                [COLUMN, 0, self.kv_head, page],
                self.policy,
            );
        }
    }

    /// Loads the RoPE tile (8) of page `page` into buffer `buf`. See [`KvLoader::load_tile`].
    #[inline(always)]
    unsafe fn load_rope(self, buf: u32, page: i32) {
        // SAFETY: forwarded.
        unsafe {
            self.load_tile::<{ (ROPE_TILE * TILE_BYTES) as u32 }, { (ROPE_TILE * 8) as u32 }, { (ROPE_TILE * TILE_COLS) as i32 }>(buf, page)
        };
    }

    /// Loads `V_L`, tiles 0..4. See [`KvLoader::load_tile`].
    #[inline(always)]
    unsafe fn load_v_left(self, buf: u32, page: i32) {
        unroll!(T in [0, 1, 2, 3] {
            // SAFETY: forwarded.
            unsafe { self.load_tile::<{ (T * TILE_BYTES) as u32 }, { (T * 8) as u32 }, { (T * TILE_COLS) as i32 }>(buf, page) };
        });
    }

    /// Loads `V_R`, tiles 4..8. See [`KvLoader::load_tile`].
    #[inline(always)]
    unsafe fn load_v_right(self, buf: u32, page: i32) {
        unroll!(T in [4, 5, 6, 7] {
            // SAFETY: forwarded.
            unsafe { self.load_tile::<{ (T * TILE_BYTES) as u32 }, { (T * 8) as u32 }, { (T * TILE_COLS) as i32 }>(buf, page) };
        });
    }

    /// Waits until tiles `first..first + 4` of buffer `buf` have landed in the phase of parity
    /// `parity` (for a warpgroup that did not compute that block's `Q·Kᵀ` and is about to write into
    /// them).
    #[inline(always)]
    unsafe fn wait_v_tiles(self, buf: u32, parity: u32, first: usize) {
        let bar = self.smem.bar(buf) + (first * 8) as u32;
        unroll!(T in [0, 1, 2, 3] {
            // SAFETY: initialised barriers of this CTA.
            unsafe { hw::mbarrier_wait_at::<{ (T * 8) as u32 }>(bar, parity) };
        });
    }
}

/// Page id of block `parity` (0 or 1) of the first request from `req` on that has more than `parity`
/// blocks, i.e. the next block of buffer `parity` once the current request has none left; `None` past
/// the part's last request. Page ids outside the cache are left to TMA, which reads them as zeros.
///
/// # Safety
/// `meta` is this CTA's work list and `req` one of its requests (or one past the last).
#[inline(always)]
unsafe fn first_block_of_parity(
    p: &DecodeParams,
    meta: &DecodingSchedMeta,
    mut req: i32,
    parity: u32,
    row_base: u32,
    valid_rows: usize,
) -> Option<i32> {
    while req <= meta.end_req_idx {
        // SAFETY: req is in the work list.
        let rr = unsafe { RequestRange::new(p, meta, req, row_base, valid_rows) };
        if rr.blocks(PAGE_BLOCK_SIZE) as u32 > parity {
            // SAFETY: b < batch_size; start_blk + parity < ceil(tok_end / 64) <= max_blocks_per_seq.
            return Some(unsafe {
                *(p.block_table as *const i32).offset(
                    rr.b as isize * p.block_table_stride as isize
                        + rr.start_blk as isize
                        + parity as isize,
                )
            });
        }
        req += 1;
    }
    None
}

/// One request of the CTA's work list, as both warpgroups see it.
struct Request<'a> {
    p: &'a DecodeParams,
    /// The CTA's work list is re-read from global memory when a refill crosses into the next request
    /// (rarely): kept in registers across the block loop it would cost the accumulators their room.
    meta_ptr: *const DecodingSchedMeta,
    req: i32,
    range: RequestRange,
    n_blocks: u32,
    /// mbarrier phase parity of buffer 0's first block in this request (a field per buffer, not an
    /// array: indexed with a run-time value, an array keeps this struct, and the parameters it points
    /// to, in local memory).
    phase0: u32,
    /// As `phase0`, for buffer 1.
    phase1: u32,
    row_base: u32,
    valid_rows: usize,
    /// Keys below this need no mask in any row (no ragged tail, no causal border: the border grows
    /// with the row, so row 0's is the lowest).
    unmasked_end: i32,
}

impl Request<'_> {
    /// mbarrier phase parity of block `j` (in buffer j % 2).
    fn parity(&self, j: u32) -> u32 {
        let first = if j % 2 == 0 { self.phase0 } else { self.phase1 };
        (first + j / 2) % 2
    }

    /// Page of the next block of block `j`'s buffer: block j + 2 of this request, or the first block of
    /// that parity of a later request.
    #[inline(always)]
    fn refill_page(&self, j: u32) -> Option<i32> {
        let p = self.p;
        if j + 2 < self.n_blocks {
            // SAFETY: b < batch_size, start_blk + j + 2 < ceil(tok_end / 64) <= max_blocks_per_seq.
            Some(unsafe {
                *(p.block_table as *const i32).offset(
                    self.range.b as isize * p.block_table_stride as isize
                        + self.range.start_blk as isize
                        + (j + 2) as isize,
                )
            })
        } else {
            // SAFETY: the CTA's own work-list record; req + 1.. are its later requests.
            unsafe {
                let meta = *self.meta_ptr;
                first_block_of_parity(
                    p,
                    &meta,
                    self.req + 1,
                    j % 2,
                    self.row_base,
                    self.valid_rows,
                )
            }
        }
    }

    /// First key of block `j`.
    fn block_token(&self, j: u32) -> i32 {
        self.range.tok_begin + (j * PAGE_BLOCK_SIZE as u32) as i32
    }

    /// Valid keys of block `j` when it is the request's last and ends before its page does: its V rows
    /// past them may hold anything (NaN in unused cache slots) and must be zeroed.
    fn ragged_tail(&self, j: u32) -> Option<u32> {
        let valid = self.range.tok_end - self.block_token(j);
        (j + 1 == self.n_blocks && valid < PAGE_BLOCK_SIZE as i32).then_some(valid as u32)
    }
}

/// Per-thread state of a request in a warpgroup: the causal border of the thread's two rows.
#[derive(Clone, Copy)]
struct RowBorders([i32; 2]);

/// Issues `S = Q·Kᵀ` of the block in buffer `buf` (FlashMLA `warpgroup_cooperative_qkt_gemm`), one
/// commit group per K tile, each after its tile's mbarrier (phase parity `parity`): the RoPE tile first
/// with Q from registers (`rQ8`), then the eight tiles of Q in shared memory in the order their buffers
/// are refilled.
///
/// # Safety
/// Warpgroup-uniform; Q is in shared memory and `q_rope` in registers; the block's tiles are (being)
/// loaded.
#[inline(always)]
unsafe fn issue_qk<E: WgmmaElement>(
    acc_s: &mut [f32; 32],
    q_rope: &[u32; 16],
    smem: Smem,
    buf: u32,
    parity: u32,
) {
    let (a, k) = (k_major_desc(smem.q()), k_major_desc(smem.kv(buf)));
    let bar = smem.bar(buf);
    // SAFETY: warpgroup-uniform; descriptors address the Q tiles and the landed K tiles.
    unsafe {
        hw::mbarrier_wait_at::<{ (ROPE_TILE * 8) as u32 }>(bar, parity);
        // The first wgmma overwrites S: the previous block's scores are dead by now.
        hw::wgmma_fence();
        E::wgmma_m64n64k16_rs_overwrite::<{ (ROPE_TILE * TILE_BYTES / 16) as u64 }>(
            acc_s,
            [q_rope[0], q_rope[1], q_rope[2], q_rope[3]],
            k,
        );
        unroll!(KS in [1, 2, 3] {
            E::wgmma_m64n64k16_rs::<{ ((ROPE_TILE * TILE_BYTES + KS * 32) / 16) as u64 }>(
                acc_s,
                [q_rope[4 * KS], q_rope[4 * KS + 1], q_rope[4 * KS + 2], q_rope[4 * KS + 3]],
                k,
                1,
            );
        });
        hw::wgmma_commit();
        unroll!(T in [0, 1, 2, 3, 4, 5, 6, 7] {
            hw::mbarrier_wait_at::<{ (T * 8) as u32 }>(bar, parity);
            hw::wgmma_fence_32(acc_s);
            unroll!(KS in [0, 1, 2, 3] {
                E::wgmma_m64n64k16_ss::<{ ((T * TILE_BYTES + KS * 32) / 16) as u64 }>(acc_s, a, k, 1);
            });
            hw::wgmma_commit();
        });
    }
}

/// `O += P·V` with P from registers (the block this warpgroup computed S of; FlashMLA
/// `warpgroup_cooperative_pv_gemm_localP`). `v` addresses the warpgroup's four V tiles. One commit
/// group.
///
/// # Safety
/// Warpgroup-uniform; the V tiles have landed (and their out-of-range rows are zeroed).
#[inline(always)]
unsafe fn pv_local<E: WgmmaElement>(acc_o: &mut [f32; 128], p: &[u32; 16], v: u32) {
    let v = v_desc(v);
    // SAFETY: forwarded.
    unsafe {
        hw::wgmma_fence_128(acc_o);
        unroll!(KS in [0, 1, 2, 3] {
            E::wgmma_m64n256k16_rs_tb::<{ (KS * 16 * 128 / 16) as u64 }>(
                acc_o,
                [p[4 * KS], p[4 * KS + 1], p[4 * KS + 2], p[4 * KS + 3]],
                v,
            );
        });
        hw::wgmma_commit();
    }
}

/// `O += P·V` with P from a swizzled shared tile (the other warpgroup's block; FlashMLA
/// `warpgroup_cooperative_pv_gemm_remoteP`). One commit group.
///
/// # Safety
/// As [`pv_local`]; the P tile was written and fenced before a barrier this warpgroup passed.
#[inline(always)]
unsafe fn pv_remote<E: WgmmaElement>(acc_o: &mut [f32; 128], p_tile: u32, v: u32) {
    let (a, v) = (k_major_desc(p_tile), v_desc(v));
    // SAFETY: forwarded.
    unsafe {
        hw::wgmma_fence_128(acc_o);
        unroll!(KS in [0, 1, 2, 3] {
            E::wgmma_m64n256k16_ss_tb::<{ (KS * 32 / 16) as u64 }, { (KS * 16 * 128 / 16) as u64 }>(
                acc_o, a, v,
            );
        });
        hw::wgmma_commit();
    }
}

/// Scales a block's scores to base 2, masks the keys past each row's border (only where the block
/// reaches past `unmasked_end`) and returns each of the thread's two rows' block maximum (reduced over
/// the quad that holds the row). FlashMLA `wg0_bunch_0`, first half.
#[inline(always)]
fn scale_and_mask(
    acc_s: &mut [f32; 32],
    r: &Request,
    borders: RowBorders,
    blk_tok: i32,
    tig: usize,
) -> [f32; 2] {
    let scale = r.p.scale_log2;
    let mut block_max = [f32::NEG_INFINITY; 2];
    if blk_tok + PAGE_BLOCK_SIZE as i32 <= r.unmasked_end {
        unroll!(I in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31] {
            let s = acc_s[I] * scale;
            acc_s[I] = s;
            block_max[(I / 2) % 2] = block_max[(I / 2) % 2].max(s);
        });
    } else {
        let tok_end = r.range.tok_end;
        unroll!(I in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31] {
            let h = (I / 2) % 2;
            let tok = blk_tok + (8 * (I / 4) + 2 * tig + I % 2) as i32;
            let s = if tok < tok_end && tok < borders.0[h] { acc_s[I] * scale } else { f32::NEG_INFINITY };
            acc_s[I] = s;
            block_max[h] = block_max[h].max(s);
        });
    }
    for m in &mut block_max {
        // SAFETY: all lanes reach the shuffles (warpgroup-uniform control flow).
        unsafe {
            *m = m.max(arch::shfl_xor_f32(*m, 1));
            *m = m.max(arch::shfl_xor_f32(*m, 2));
        }
    }
    block_max
}

/// The online-softmax step of a block against the running row maximum both warpgroups share (`sM`):
/// the new maximum goes back to `sM` and the factor that rescales what was accumulated before this
/// block to `s_scale` (`sScale0`/`sScale1`), by the first lane of each quad (the quad's four lanes hold
/// the same row). Returns the reference the block's probabilities are taken against and that factor,
/// for the thread's two rows. FlashMLA `wg0_bunch_0` / `wg1_bunch_0`, the `sM` update.
///
/// # Safety
/// The other warpgroup does not access the rows' `sM` and `s_scale` entries meanwhile (the named
/// barriers of the pair order it).
#[inline(always)]
unsafe fn shared_softmax_step(
    th: Thread,
    s_max: *mut f32,
    s_scale: *mut f32,
    block_max: [f32; 2],
) -> ([f32; 2], [f32; 2]) {
    let mut reference = [0.0f32; 2];
    let mut alpha = [0.0f32; 2];
    for h in 0..2 {
        let row = th.row0 + 8 * h;
        // SAFETY: the thread's rows of sM; ordered by the caller.
        let old = unsafe { *s_max.add(row) };
        let (new_max, rf, al) = attn::online_softmax_step(old, block_max[h]);
        reference[h] = rf;
        alpha[h] = al;
        if th.tig == 0 {
            // SAFETY: the quad's own rows; ordered by the caller.
            unsafe {
                *s_max.add(row) = new_max;
                *s_scale.add(row) = al;
            }
        }
    }
    (reference, alpha)
}

/// `P = 2^(S − reference)` in place (f32, kept for the rescaled copy the other warpgroup gets); returns
/// the two rows' sums of this thread's P and P rounded to the input type, packed in pairs: pair I =
/// accumulators 2I, 2I + 1 (row + 8 when I is odd), which is also wgmma's register-A layout (k-step s
/// takes pairs 4s..4s+4). FlashMLA `wg0_bunch_0`, second half.
#[inline(always)]
fn exponentiate<E: WgmmaElement>(
    acc_s: &mut [f32; 32],
    reference: [f32; 2],
) -> ([f32; 2], [u32; 16]) {
    let mut sum = [0.0f32; 2];
    let mut packed = [0u32; 16];
    unroll!(I in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
        let p0 = arch::exp2(acc_s[2 * I] - reference[I % 2]);
        let p1 = arch::exp2(acc_s[2 * I + 1] - reference[I % 2]);
        acc_s[2 * I] = p0;
        acc_s[2 * I + 1] = p1;
        sum[I % 2] += p0 + p1;
        packed[I] = E::pack(p0, p1);
    });
    (sum, packed)
}

/// `O *= α` per row; skipped when α = 1 in every lane of the warp (once a row's running maximum
/// settles, most blocks leave it unchanged).
#[inline(always)]
fn rescale(acc_o: &mut [f32; 128], alpha: [f32; 2]) {
    // SAFETY: all lanes reach the vote (warpgroup-uniform control flow).
    if !unsafe { arch::warp_all(alpha[0] == 1.0 && alpha[1] == 1.0) } {
        unroll!(I in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31] {
            unroll!(E_ in [0, 1, 2, 3] {
                acc_o[4 * I + E_] *= alpha[E_ / 2];
            });
        });
    }
}

/// Stores packed P (this thread's pairs, wgmma `A` layout) into a 64 × 64 swizzled tile, the other
/// warpgroup's `A` operand (FlashMLA `save_rPb_to_sP`): one `stmatrix.x4` per 16-column k-step, whose
/// four 8 × 8 matrices are the warp's rows 0..8 and 8..16 of the step's two 16-byte chunks.
///
/// # Safety
/// Warpgroup-uniform; `tile` is a 1024-byte aligned shared tile nobody reads until a fence + barrier.
#[inline(always)]
pub(crate) unsafe fn store_p(th: Thread, tile: u32, packed: &[u32; 16]) {
    // Lane l addresses row l % 8 (+ 8 for matrices 1 and 3) of the warp's 16 rows, in chunk 2·ks + l / 16
    // of k-step ks; with the swizzle (chunk ^ row % 8) that is `first ^ 32·ks` (2·ks only flips chunk bits
    // 1 and 2, which l / 16 and row % 8 leave to the XOR).
    let lane = (th.wtid % 32) as u32;
    let row = (th.wtid / 32 * 16) as u32 + lane % 8 + 8 * ((lane / 8) % 2);
    let first = tile + row * 128 + (((lane / 16) ^ (row % 8)) * 16);
    unroll!(KS in [0, 1, 2, 3] {
        // SAFETY: inside the tile, 16-byte aligned rows of the k-step's chunks.
        unsafe {
            hw::stmatrix_x4(
                first ^ (KS as u32 * 32),
                [packed[4 * KS], packed[4 * KS + 1], packed[4 * KS + 2], packed[4 * KS + 3]],
            )
        };
    });
}

/// Loads Q's RoPE tile into registers in wgmma's `A` layout (FlashMLA `retrieve_rP_from_sP` into `rQ8`),
/// freeing its shared-memory tile for `sP1`. [`load_q`] leaves this one tile unswizzled (no wgmma reads
/// it from shared memory), so every load is the thread's row address plus an immediate: swizzled, each
/// load needs its own XOR-ed address, and ptxas hoists all sixteen out of the request loop.
///
/// # Safety
/// Q has landed and was made visible by a barrier.
#[inline(always)]
unsafe fn load_q_rope(th: Thread, smem: Smem) -> [u32; 16] {
    // SAFETY: Q's RoPE tile is inside the shared plan.
    let row = unsafe {
        smem.ptr
            .add(smem::P1 + th.row0 * 128 + 4 * th.tig)
            .cast::<u32>()
    };
    let mut q = [0u32; 16];
    unroll!(I in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
        // Pair I: row + 8 when I is odd, columns 8·(I / 2) + 2·tig.
        // SAFETY: inside Q's RoPE tile (row-major, 128 bytes a row); 4-byte aligned.
        q[I] = unsafe { *row.add((I % 2) * 8 * 32 + (I / 2) * 4) };
    });
    q
}

/// Zeroes the V rows `valid..64` of the block in buffer `buf`, in this warpgroup's four V tiles, starting at K tile
/// `FIRST_TILE`: they may hold NaN (unused cache slots), and P = 0 times NaN is NaN (FlashMLA
/// `fill_oob_V`). Ends with a proxy fence and a barrier of the warpgroup, so its wgmmas see the zeros.
///
/// # Safety
/// Warpgroup-uniform; the tiles have landed, and no wgmma reads them until this returns.
#[inline(always)]
unsafe fn zero_oob_v_rows<const FIRST_TILE: usize>(th: Thread, smem: Smem, buf: u32, valid: u32) {
    // Thread t clears 16-byte chunk t % 8 of tile t % 32 / 8 in rows valid + t / 32, + 4, + 8, ...: one
    // address register that steps by four rows.
    let wtid = th.wtid as u32;
    let tile = smem.kv(buf) + ((FIRST_TILE as u32 + wtid % 32 / 8) * TILE_BYTES as u32);
    let end = tile + (PAGE_BLOCK_SIZE * 128) as u32;
    let mut addr = tile + (valid + wtid / 32) * 128 + (wtid % 8) * 16;
    while addr < end {
        // SAFETY: inside the tile; a whole 128-byte row is cleared, whatever its swizzle.
        unsafe { hw::st_shared_zero_16(addr) };
        addr += (WG / 32) * 128;
    }
    hw::fence_proxy_async_shared();
    // SAFETY: the whole warpgroup reaches it.
    unsafe { hw::named_barrier_sync(BAR_WG_ZEROED + th.wg as u32, WG) };
}

/// Warpgroup 0's part of one request (FlashMLA `wg0_subroutine`). For each pair of blocks (a, c): the
/// softmax of a against the running maximum, P_a to warpgroup 1, `O_L = O_L·α_a + P_a·V_L(a)`; then, with
/// warpgroup 1's softmax of c, `O_L = O_L·α_c + P_c·V_L(c)`, and `S` of the next even block queued behind
/// it.
///
/// # Safety
/// Warpgroup 0 of the CTA, in step with [`warpgroup1`] on the same request.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn warpgroup0<E: WgmmaElement>(
    r: &Request,
    th: Thread,
    smem: Smem,
    kv: KvLoader,
    borders: RowBorders,
    q_rope: &[u32; 16],
    acc_o: &mut [f32; 128],
    row_sum: &mut [f32; 2],
) {
    let n = r.n_blocks;
    let loader = th.wtid == 0;
    let rows = [th.row0, th.row0 + 8];
    let (s_max, s_scale0, s_scale1) = (smem.row_max(), smem.row_scale(0), smem.row_scale(1));
    let mut acc_s = [0.0f32; 32];
    if n > 0 {
        // SAFETY: warpgroup-uniform.
        unsafe {
            issue_qk::<E>(&mut acc_s, q_rope, smem, 0, r.parity(0));
            hw::wgmma_wait_32::<0>(&mut acc_s);
        }
    }
    let mut a = 0;
    while a < n {
        // The page that refills a's buffer, read now: the lookup's latency hides behind the softmax.
        let page_a = if loader { r.refill_page(a) } else { None };

        // ---- softmax of block a (FlashMLA wg0_bunch_0) ------------------------------------------------
        let block_max = scale_and_mask(&mut acc_s, r, borders, r.block_token(a), th.tig);
        // SAFETY: sM was written by warpgroup 1 before BAR_ODD_READY of the previous pair (waited on), or
        // initialised before the CTA barrier after Q; warpgroup 1 reads sM and sScale0 after
        // BAR_EVEN_READY.
        let (reference, alpha_a) = unsafe { shared_softmax_step(th, s_max, s_scale0, block_max) };
        let (sum, p_packed) = exponentiate::<E>(&mut acc_s, reference);
        if a > 0 {
            // SAFETY: warpgroup 1 arrives once per pair that has a successor.
            unsafe { hw::named_barrier_sync(BAR_P0_FREE, CTA) };
        }
        // SAFETY: sP0 was last read by warpgroup 1's P·V_R(a) of the previous pair, complete before
        // BAR_P0_FREE (or by the previous request's, before its closing CTA barrier).
        unsafe { store_p(th, smem.p0(), &p_packed) };
        hw::fence_proxy_async_shared();
        // SAFETY: warpgroup 1 waits on it once per pair.
        unsafe { hw::named_barrier_arrive(BAR_EVEN_READY, CTA) };
        if let Some(page) = page_a {
            // SAFETY: tile 8 of a's buffer has no reader but Q·Kᵀ(a), which is done.
            unsafe { kv.load_rope(0, page) };
        }

        // ---- O_L = O_L·α_a + P_a·V_L(a) ---------------------------------------------------------------
        rescale(acc_o, alpha_a);
        for h in 0..2 {
            row_sum[h] = row_sum[h] * alpha_a[h] + sum[h];
        }
        if let Some(valid) = r.ragged_tail(a) {
            // SAFETY: warpgroup-uniform; a's tiles landed before Q·Kᵀ(a).
            unsafe { zero_oob_v_rows::<0>(th, smem, 0, valid) };
        }
        // SAFETY: warpgroup-uniform; V_L of a has landed.
        unsafe {
            pv_local::<E>(acc_o, &p_packed, smem.kv(0));
            hw::wgmma_wait_128::<0>(acc_o);
        }
        if let Some(page) = page_a {
            // SAFETY: V_L of a was last read by the P·V just waited for.
            unsafe { kv.load_v_left(0, page) };
        }

        if a + 1 < n {
            // ---- O_L = O_L·α_c + P_c·V_L(c) -----------------------------------------------------------
            let page_c = if loader { r.refill_page(a + 1) } else { None };
            // SAFETY: warpgroup 1 arrives once per pair with an odd block.
            unsafe { hw::named_barrier_sync(BAR_ODD_READY, CTA) };
            if let Some(valid) = r.ragged_tail(a + 1) {
                // SAFETY: warpgroup-uniform; Q·Kᵀ(c), the other reader of these rows, completed before
                // BAR_ODD_READY; the wait orders the TMA writes before ours.
                unsafe {
                    kv.wait_v_tiles(1, r.parity(a + 1), 0);
                    zero_oob_v_rows::<0>(th, smem, 1, valid);
                }
            }
            // SAFETY: written by warpgroup 1 before BAR_ODD_READY.
            let alpha_c = unsafe { [*s_scale1.add(rows[0]), *s_scale1.add(rows[1])] };
            rescale(acc_o, alpha_c);
            for h in 0..2 {
                row_sum[h] *= alpha_c[h];
            }
            // SAFETY: warpgroup-uniform; sP1 and V_L of c are ready.
            unsafe { pv_remote::<E>(acc_o, smem.p1(), smem.kv(1)) };
            // The waits of in-flight wgmmas stay inside the branch that issued them: a control-flow join
            // while they run makes LLVM move the accumulators (phi copies), and ptxas then serialises.
            if a + 2 < n {
                // S of the next even block, queued right behind P·V_L(c).
                // SAFETY: warpgroup-uniform.
                unsafe {
                    issue_qk::<E>(&mut acc_s, q_rope, smem, 0, r.parity(a + 2));
                    hw::wgmma_wait_128::<QK_GROUPS>(acc_o);
                }
                if let Some(page) = page_c {
                    // SAFETY: V_L of c was last read by the P·V just waited for.
                    unsafe { kv.load_v_left(1, page) };
                }
                // SAFETY: warpgroup-uniform.
                unsafe { hw::wgmma_wait_32::<0>(&mut acc_s) };
                a += 2;
                // Only this path loops back: it carries fresh scores in S, so the last pair's P values
                // are dead once packed, not kept in registers for a loop that exits anyway.
                continue;
            } else {
                // SAFETY: warpgroup-uniform.
                unsafe { hw::wgmma_wait_128::<0>(acc_o) };
                if let Some(page) = page_c {
                    // SAFETY: as above.
                    unsafe { kv.load_v_left(1, page) };
                }
            }
        }
        break;
    }
}

/// Warpgroup 1: `O_R = O_R·α_a` once warpgroup 0 has published the maximum after even block a, its
/// rescale factors and P_a (BAR_EVEN_READY).
///
/// # Safety
/// Warpgroup 1, once per pair, in step with warpgroup 0.
#[inline(always)]
unsafe fn wg1_rescale_for_even(
    smem: Smem,
    rows: [usize; 2],
    acc_o: &mut [f32; 128],
    row_sum: &mut [f32; 2],
) {
    // SAFETY: warpgroup 0 arrives once per pair.
    unsafe { hw::named_barrier_sync(BAR_EVEN_READY, CTA) };
    let s_scale0 = smem.row_scale(0);
    // SAFETY: written by warpgroup 0 before BAR_EVEN_READY.
    let alpha_a = unsafe { [*s_scale0.add(rows[0]), *s_scale0.add(rows[1])] };
    rescale(acc_o, alpha_a);
    for h in 0..2 {
        row_sum[h] *= alpha_a[h];
    }
}

/// Warpgroup 1's part of one request (FlashMLA `wg1_subroutine`). For each pair of blocks (a, c): once
/// warpgroup 0 has published P_a and the maximum after a, `O_R = O_R·α_a + P_a·V_R(a)` with P_a from
/// shared memory; under it the softmax of c, P_c to warpgroup 0; then `O_R = O_R·α_c + P_c·V_R(c)` and
/// `S` of the next odd block.
///
/// # Safety
/// Warpgroup 1 of the CTA, in step with [`warpgroup0`] on the same request.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn warpgroup1<E: WgmmaElement>(
    r: &Request,
    th: Thread,
    smem: Smem,
    kv: KvLoader,
    borders: RowBorders,
    q_rope: &[u32; 16],
    acc_o: &mut [f32; 128],
    row_sum: &mut [f32; 2],
) {
    let n = r.n_blocks;
    let loader = th.wtid == 0;
    let rows = [th.row0, th.row0 + 8];
    let (s_max, s_scale1) = (smem.row_max(), smem.row_scale(1));
    let mut acc_s = [0.0f32; 32];
    if n > 1 {
        // SAFETY: warpgroup-uniform.
        unsafe {
            issue_qk::<E>(&mut acc_s, q_rope, smem, 1, r.parity(1));
            hw::wgmma_wait_32::<0>(&mut acc_s);
        }
    }
    let mut a = 0;
    while a + 1 < n {
        let page_a = if loader { r.refill_page(a) } else { None };
        let page_c = if loader { r.refill_page(a + 1) } else { None };
        // ---- O_R = O_R·α_a + P_a·V_R(a) -------------------------------------------------------------
        // SAFETY: warpgroup 1, once per pair.
        unsafe { wg1_rescale_for_even(smem, rows, acc_o, row_sum) };
        // SAFETY: warpgroup-uniform; sP0 and V_R of a are ready (a is not the last block).
        unsafe { pv_remote::<E>(acc_o, smem.p0(), smem.kv(0) + V_R_OFFSET) };

        // ---- softmax of block c against the maximum after a (FlashMLA wg1_bunch_0), under P·V_R(a) ----
        let block_max = scale_and_mask(&mut acc_s, r, borders, r.block_token(a + 1), th.tig);
        // SAFETY: warpgroup 0 wrote sM before BAR_EVEN_READY (waited on); it reads sM and sScale1 after
        // BAR_ODD_READY.
        let (reference, alpha_c) = unsafe { shared_softmax_step(th, s_max, s_scale1, block_max) };
        let (sum, p_packed) = exponentiate::<E>(&mut acc_s, reference);
        // SAFETY: sP1 was last read by warpgroup 0's P·V_L(c) of the previous pair, which completed
        // before warpgroup 0 arrived at BAR_EVEN_READY of this pair.
        unsafe { store_p(th, smem.p1(), &p_packed) };
        hw::fence_proxy_async_shared();
        if let Some(page) = page_c {
            // SAFETY: tile 8 of c's buffer has no reader but Q·Kᵀ(c), which is done.
            unsafe { kv.load_rope(1, page) };
        }
        // SAFETY: warpgroup 0 waits on it once per pair with an odd block.
        unsafe { hw::named_barrier_arrive(BAR_ODD_READY, CTA) };
        // SAFETY: warpgroup-uniform.
        unsafe { hw::wgmma_wait_128::<0>(acc_o) };
        if a + 2 < n {
            // sP0's reader is done: warpgroup 0 may store the next pair's P there.
            // SAFETY: warpgroup 0 waits on it once per pair after the first.
            unsafe { hw::named_barrier_arrive(BAR_P0_FREE, CTA) };
        }
        if let Some(page) = page_a {
            // SAFETY: V_R of a was last read by the P·V just waited for.
            unsafe { kv.load_v_right(0, page) };
        }

        // ---- O_R = O_R·α_c + P_c·V_R(c) -------------------------------------------------------------
        rescale(acc_o, alpha_c);
        for h in 0..2 {
            row_sum[h] = row_sum[h] * alpha_c[h] + sum[h];
        }
        if let Some(valid) = r.ragged_tail(a + 1) {
            // SAFETY: warpgroup-uniform; c's tiles landed before Q·Kᵀ(c).
            unsafe { zero_oob_v_rows::<V_TILES_PER_WARPGROUP>(th, smem, 1, valid) };
        }
        // SAFETY: warpgroup-uniform; V_R of c has landed.
        unsafe {
            pv_local::<E>(acc_o, &p_packed, smem.kv(1) + V_R_OFFSET);
            hw::wgmma_wait_128::<0>(acc_o);
        }
        if let Some(page) = page_c {
            // SAFETY: V_R of c was last read by the P·V just waited for.
            unsafe { kv.load_v_right(1, page) };
        }
        a += 2;
        if a + 1 < n {
            // SAFETY: warpgroup-uniform.
            unsafe {
                issue_qk::<E>(&mut acc_s, q_rope, smem, 1, r.parity(a + 1));
                hw::wgmma_wait_32::<0>(&mut acc_s);
            }
            // Only this path loops back: it carries fresh scores in S, so the pair's P values are dead
            // once packed, not kept in registers for a loop that exits anyway.
            continue;
        }
        break;
    }
    if a < n {
        // ---- a is the request's last block and has no partner: O_R = O_R·α_a + P_a·V_R(a) ------------
        let page_a = if loader { r.refill_page(a) } else { None };
        // SAFETY: warpgroup 1, once for this block.
        unsafe { wg1_rescale_for_even(smem, rows, acc_o, row_sum) };
        if let Some(valid) = r.ragged_tail(a) {
            // SAFETY: warpgroup-uniform; Q·Kᵀ(a), the other reader of these rows, completed before
            // BAR_EVEN_READY; the wait orders the TMA writes before ours.
            unsafe {
                kv.wait_v_tiles(0, r.parity(a), V_TILES_PER_WARPGROUP);
                zero_oob_v_rows::<V_TILES_PER_WARPGROUP>(th, smem, 0, valid);
            }
        }
        // SAFETY: warpgroup-uniform; sP0 and V_R of a are ready.
        unsafe {
            pv_remote::<E>(acc_o, smem.p0(), smem.kv(0) + V_R_OFFSET);
            hw::wgmma_wait_128::<0>(acc_o);
        }
        if let Some(page) = page_a {
            // SAFETY: V_R of a was last read by the P·V just waited for.
            unsafe { kv.load_v_right(0, page) };
        }
    }
}

/// Writes this m-block's output of one request, each warpgroup its 256 columns (FlashMLA `store_o`):
/// to `out` in the input type when the request is whole here, else as normalised f32 partials to
/// the split slot starting at row `split_row0` of `o_accum`, staged in shared memory (the Q tiles, 32
/// rows at a time) and written by one 2 KB bulk copy per row instead of 64 scattered 8-byte stores per
/// thread. `inv` is 1 / row sum (0 for rows that attended no key).
///
/// # Safety
/// Every thread of the CTA reaches it, after a CTA barrier that follows both warpgroups' last wgmma
/// (the Q tiles are free; the KV buffers may already receive the next request's pages).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn store_o<E: WgmmaElement>(
    p: &DecodeParams,
    smem: Smem,
    th: Thread,
    tid: u32,
    acc_o: &[f32; 128],
    inv: [f32; 2],
    split_row0: Option<usize>,
    b: usize,
    kv_head: usize,
    row_base: u32,
) {
    let rows = p.q_seq_per_hk as u32;
    let hpk = attn::heads_per_kv(p);
    let valid_rows = flashmla_abi::m_block_valid_rows(rows, row_base / BLOCK_SIZE_M as u32);
    let col0 = th.wg * (HEAD_DIM_V / 2) + 2 * th.tig;
    if let Some(split_row0) = split_row0 {
        let my_half = th.wtid / 64;
        for half in 0..2 {
            if my_half == half {
                unroll!(H in [0, 1] {
                    let row_off = smem::Q + (th.row0 + 8 * H - 32 * half) * smem::O_STAGE_ROW_BYTES + col0 * 4;
                    unroll!(N in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31] {
                        // SAFETY: inside the staging half (32 rows × O_STAGE_ROW_BYTES in the Q tiles);
                        // 8-byte aligned.
                        unsafe {
                            *(smem.ptr.add(row_off + N * 32) as *mut [f32; 2]) =
                                [acc_o[4 * N + 2 * H] * inv[H], acc_o[4 * N + 2 * H + 1] * inv[H]];
                        }
                    });
                });
            }
            hw::fence_proxy_async_shared();
            // SAFETY: every thread reaches it.
            unsafe { arch::sync_threads() };
            let row = 32 * half + tid as usize;
            if tid < 32 && row < valid_rows {
                // SAFETY: `row` of this m-block is valid; its split slot holds 512 f32 (16-byte aligned);
                // the staged row was written and fenced before the barrier.
                unsafe {
                    hw::bulk_store(
                        p.o_accum + ((split_row0 + row) * HEAD_DIM_V * 4) as u64,
                        smem.base + (smem::Q + tid as usize * smem::O_STAGE_ROW_BYTES) as u32,
                        (HEAD_DIM_V * 4) as u32,
                    )
                };
                hw::bulk_commit_and_wait_read();
            }
            // The staging area is rewritten next (second half, then the next request's Q).
            // SAFETY: every thread reaches it.
            unsafe { arch::sync_threads() };
        }
    } else {
        unroll!(H in [0, 1] {
            let r = row_base + (th.row0 + 8 * H) as u32;
            if r < rows {
                // SAFETY: validated strides address out[b, t, head, :].
                let out = unsafe {
                    (p.output.out as *mut u16).offset(p.output.out_offset(b, r / hpk, kv_head as u32 * hpk + r % hpk))
                };
                unroll!(N in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31] {
                    // SAFETY: inside out's row; 4-byte aligned (even column, validated strides).
                    unsafe {
                        *(out.add(col0 + N * 8) as *mut u32) =
                            E::pack(acc_o[4 * N + 2 * H] * inv[H], acc_o[4 * N + 2 * H + 1] * inv[H]);
                    }
                });
            }
        });
    }
}

/// Loads Q of request `b` for this m-block with `cp.async` (zero rows past the m-block's valid rows)
/// into the swizzled Q tiles (the RoPE tile row-major if `ROPE_ROW_MAJOR`), and initialises the running
/// row maximum; ends with a CTA barrier.
///
/// # Safety
/// Every thread of the CTA reaches it; nothing reads or writes the Q tiles or `sM` meanwhile.
#[inline(always)]
pub(crate) unsafe fn load_q<const ROPE_ROW_MAJOR: bool>(
    p: &DecodeParams,
    smem: Smem,
    b: usize,
    kv_head: usize,
    row_base: u32,
    tid: u32,
) {
    let rows = p.q_seq_per_hk as u32;
    let lane = (tid % 32) as usize;
    let mut row = (tid / 32) as usize;
    while row < BLOCK_SIZE_M {
        let r = row_base + row as u32;
        let (src, bytes) = if r < rows {
            // SAFETY: a valid row of q (validated strides).
            (unsafe { attn::q_row(p, b, r, kv_head) }, 16)
        } else {
            (p.q as *const u16, 0)
        };
        let mut chunk = lane;
        while chunk < Q_ROW_CHUNKS {
            // The RoPE tile is row-major when it goes to registers (see load_q_rope), the others
            // 128-byte swizzled for wgmma.
            let in_tile = if ROPE_ROW_MAJOR && chunk / 8 == ROPE_TILE {
                row * 128 + (chunk % 8) * 16
            } else {
                sw128_offset(row, chunk % 8)
            };
            let dst = smem.q() + ((chunk / 8) * TILE_BYTES + in_tile) as u32;
            // SAFETY: inside the Q tiles; 16 bytes of the row (or a zero fill reading nothing).
            unsafe {
                let from = if bytes == 0 { src } else { src.add(chunk * 8) };
                arch::cp_async_16(dst, from as *const u8, bytes)
            };
            chunk += 32;
        }
        row += (CTA / 32) as usize;
    }
    if (tid as usize) < BLOCK_SIZE_M {
        // SAFETY: inside sM; read after the barrier below.
        unsafe { *smem.row_max().add(tid as usize) = f32::NEG_INFINITY };
    }
    arch::cp_async_commit();
    arch::cp_async_wait::<0>();
    // Q was written by the generic proxy; the wgmmas read it through the async proxy.
    hw::fence_proxy_async_shared();
    // SAFETY: every thread reaches it.
    unsafe { arch::sync_threads() };
}

/// What every Hopper decode CTA does first, whatever its schedule: initialises the KV mbarriers,
/// publishes the KV tensor map to the CTA's own global slot (thread 0) and acquires it for the other
/// TMA-issuing thread (thread `WG`). Returns the slot's address.
///
/// # Safety
/// Every thread of the CTA, before any TMA or mbarrier use; `params.tensor_map_slots` has
/// `TENSOR_MAP_BYTES` bytes per CTA of the grid.
#[inline(always)]
pub(crate) unsafe fn cta_prologue(params: &Sm90DecodeParams, smem: Smem, tid: u32) -> u64 {
    let p = &params.common;
    let rows = p.q_seq_per_hk as u32;
    let m_blocks = rows.div_ceil(BLOCK_SIZE_M as u32) as usize;
    let (m_block, kv_head, part) = (
        arch::block_idx_x() as usize,
        arch::block_idx_y() as usize,
        arch::block_idx_z() as usize,
    );
    let cta_linear = m_block + m_blocks * (kv_head + p.num_heads_kv as usize * part);
    let tensor_map = params.tensor_map_slots + cta_linear as u64 * TENSOR_MAP_BYTES as u64;
    if tid == 0 {
        for i in 0..2 * K_TILES {
            // SAFETY: inside the barrier array; nobody waits before the CTA barrier below.
            unsafe { hw::mbarrier_init(smem.base + (smem::BARRIERS + i * 8) as u32, 1) };
        }
        hw::fence_mbarrier_init();
        // SAFETY: this CTA's own slot; no TMA has been issued yet.
        unsafe { hw::publish_tensor_map(tensor_map, &params.k_tensor_map.0) };
    }
    // SAFETY: every thread reaches it.
    unsafe { arch::sync_threads() };
    if tid == WG {
        // SAFETY: published by thread 0 before the barrier.
        unsafe { hw::acquire_tensor_map(tensor_map) };
    }
    tensor_map
}

/// Decodes one CTA's share of the batch on Hopper.
///
/// # Safety
/// Launched with `SM90_THREADS` threads, `sm90_smem::TOTAL` bytes of dynamic shared memory and grid
/// `(ceil(q_seq_per_hk / 64), h_kv, num_sm_parts)` on an sm_90 device; `params.common` describes valid
/// device buffers (validated by the host) and a schedule computed for this batch; `k_tensor_map`
/// describes `k_cache`; `tensor_map_slots` has 128 bytes per CTA.
#[inline(always)]
pub unsafe fn splitkv_decode_sm90<E: WgmmaElement>(params: &Sm90DecodeParams) {
    let p = &params.common;
    let tid = arch::thread_idx_x();
    // SAFETY: every lane reaches it.
    let wg = unsafe { arch::warp_broadcast_lane0(tid / WG) } as usize;
    let wtid = (tid % WG) as usize;
    let lane = wtid % 32;
    let th = Thread {
        wg,
        wtid,
        tig: lane % 4,
        row0: (wtid / 32) * 16 + lane / 4,
    };
    let m_block = arch::block_idx_x() as usize;
    let kv_head = arch::block_idx_y() as usize;
    let part = arch::block_idx_z() as usize;

    let smem_ptr = arch::dynamic_smem::<Sm90SharedMemory>() as *mut u8;
    let smem = Smem {
        base: arch::smem_addr(smem_ptr),
        ptr: smem_ptr,
    };

    let rows = p.q_seq_per_hk as u32;
    // SAFETY: every thread, first thing.
    let tensor_map = unsafe { cta_prologue(params, smem, tid) };

    // The schedule and the lengths may come from the kernel just before this one (PDL).
    arch::grid_dependency_wait();
    let meta_ptr = (p.tile_scheduler_metadata as *const DecodingSchedMeta).wrapping_add(part);
    // SAFETY: part < num_sm_parts (grid z).
    let meta: DecodingSchedMeta = unsafe { *meta_ptr };
    if meta.begin_req_idx >= p.batch_size {
        return;
    }

    let row_base = (m_block * BLOCK_SIZE_M) as u32;
    let valid_rows = flashmla_abi::m_block_valid_rows(rows, m_block as u32);
    let num_splits = p.num_splits as *const i32;
    let kv = KvLoader {
        smem,
        tensor_map,
        kv_head: kv_head as i32,
        policy: hw::l2_evict_first_policy(),
    };
    // The first block of each buffer. Thread 0 loads tiles 8 and 0..4, thread WG tiles 4..8 (each tile
    // is refilled later by the thread of its last reader).
    if tid == 0 || tid == WG {
        for buf in 0..2u32 {
            // SAFETY: the part's first request.
            if let Some(page) = unsafe {
                first_block_of_parity(p, &meta, meta.begin_req_idx, buf, row_base, valid_rows)
            } {
                if tid == 0 {
                    // SAFETY: the buffers are free; thread 0 published the tensor map.
                    unsafe {
                        kv.load_rope(buf, page);
                        kv.load_v_left(buf, page);
                    }
                } else {
                    // SAFETY: the buffers are free; thread WG acquired the tensor map.
                    unsafe { kv.load_v_right(buf, page) };
                }
            }
        }
    }

    // mbarrier phase parity of each buffer's next block.
    let mut phase = [0u32; 2];
    let mut req = meta.begin_req_idx;
    loop {
        // The work list is re-read for each request rather than kept in registers across the block
        // loops, where the accumulators need them.
        // SAFETY: part < num_sm_parts (grid z).
        let meta: DecodingSchedMeta = unsafe { *meta_ptr };
        if req > meta.end_req_idx {
            break;
        }
        // SAFETY: req is in the work list.
        let range = unsafe { RequestRange::new(p, &meta, req, row_base, valid_rows) };
        let n_blocks = range.blocks(PAGE_BLOCK_SIZE) as u32;
        let r = Request {
            p,
            meta_ptr,
            req,
            range,
            n_blocks,
            phase0: phase[0],
            phase1: phase[1],
            row_base,
            valid_rows,
            unmasked_end: range
                .tok_end
                .min(attn::causal_limit(p, range.seqlen, row_base)),
        };
        let borders = RowBorders([
            attn::causal_limit(p, range.seqlen, row_base + th.row0 as u32),
            attn::causal_limit(p, range.seqlen, row_base + th.row0 as u32 + 8),
        ]);

        // ---- load Q (this request's first KV pages are already on their way) --------------------------
        // SAFETY: every thread; the previous request ended with a CTA barrier.
        unsafe { load_q::<true>(p, smem, range.b, kv_head, row_base, tid) };
        // SAFETY: Q landed before the barrier in load_q.
        let q_rope = unsafe { load_q_rope(th, smem) };

        // ---- the block pairs, one warpgroup each side of the seesaw ----------------------------------------
        let mut acc_o = [0.0f32; 128];
        let mut row_sum = [0.0f32; 2];
        if wg == 0 {
            // SAFETY: warpgroup 0; warpgroup 1 runs warpgroup1 on the same request.
            unsafe {
                warpgroup0::<E>(&r, th, smem, kv, borders, &q_rope, &mut acc_o, &mut row_sum)
            };
        } else {
            // SAFETY: warpgroup 1, in step with warpgroup 0.
            unsafe {
                warpgroup1::<E>(&r, th, smem, kv, borders, &q_rope, &mut acc_o, &mut row_sum)
            };
        }

        // ---- row sums across the quad and the warpgroups (FlashMLA's sL_reduction_wksp) --------------
        for s in &mut row_sum {
            // SAFETY: all lanes reach the shuffles.
            unsafe {
                *s += arch::shfl_xor_f32(*s, 1);
                *s += arch::shfl_xor_f32(*s, 2);
            }
        }
        if th.tig == 0 {
            // SAFETY: this warpgroup's row sums.
            unsafe {
                *smem.row_sum(wg).add(th.row0) = row_sum[0];
                *smem.row_sum(wg).add(th.row0 + 8) = row_sum[1];
            }
        }
        // Both warpgroups' wgmmas are complete past this barrier (each waited for its own), so the Q
        // tiles (and sP1 in them) are free for the staging below.
        // SAFETY: every thread reaches it.
        unsafe { arch::sync_threads() };
        let total = |row: usize| -> f32 {
            // SAFETY: both warpgroups wrote their sums before the barrier.
            unsafe { *smem.row_sum(0).add(row) + *smem.row_sum(1).add(row) }
        };
        let inv = [
            attn::inverse_sum(total(th.row0)),
            attn::inverse_sum(total(th.row0 + 8)),
        ];

        // ---- epilogue (FlashMLA store_o): lse by the first 64 threads, each warpgroup stores its half ----
        let b = range.b;
        let hpk = attn::heads_per_kv(p);
        let split = if range.is_split {
            // SAFETY: b < batch_size.
            (unsafe { *num_splits.add(b) } + range.split_idx) as usize
        } else {
            0
        };
        let split_row0 =
            (split * p.num_heads_kv as usize + kv_head) * rows as usize + row_base as usize;
        if (tid as usize) < valid_rows {
            let row = tid as usize;
            // SAFETY: written before the barrier above.
            let max = unsafe { *smem.row_max().add(row) };
            let r_global = row_base + tid;
            if range.is_split {
                // SAFETY: split slot < total splits.
                unsafe {
                    *(p.lse_accum as *mut f32).add(split_row0 + row) =
                        attn::lse_base2(total(row), max)
                };
            } else {
                // SAFETY: validated strides address lse[b, head, t].
                unsafe {
                    *(p.output.lse as *mut f32).offset(p.output.lse_offset(
                        b,
                        r_global / hpk,
                        kv_head as u32 * hpk + r_global % hpk,
                    )) = attn::lse_natural(total(row), max)
                };
            }
        }
        let split_row0 = range.is_split.then_some(split_row0);
        // SAFETY: every thread; both warpgroups' wgmmas completed before the barrier above.
        unsafe {
            store_o::<E>(
                p, smem, th, tid, &acc_o, inv, split_row0, b, kv_head, row_base,
            )
        };
        // Buffer 0 held ceil(n / 2) blocks of this request, buffer 1 floor(n / 2).
        phase = [
            phase[0] ^ (n_blocks.div_ceil(2) % 2),
            phase[1] ^ ((n_blocks / 2) % 2),
        ];
        req += 1;
        // Q, sM, the row sums and the KV buffers are reused by the next request.
        // SAFETY: every thread reaches it.
        unsafe { arch::sync_threads() };
    }
    arch::launch_dependents();
}

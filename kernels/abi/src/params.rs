//! `#[repr(C)]` records passed between the host and the kernels. Device pointers are carried as `u64`
//! so that every record has one layout on the 64-bit host and on `nvptx64`.

/// Marker for records that may be copied byte for byte between host and device memory or passed by
/// value as a kernel parameter.
///
/// # Safety
/// The type must be `#[repr(C)]` (or `#[repr(transparent)]` over such a type), `Copy`, contain no
/// references or host pointers, and be valid for every bit pattern the other side may write.
pub unsafe trait DeviceRecord: Copy + 'static {}

/// One tile-scheduler work list: the slice of (request, KV block) pairs that every CTA of one "SM part"
/// walks. Layout of FlashMLA HEAD's `DecodingSchedMeta` (`csrc/params.h`), 8 × `i32`, 32-byte aligned:
///
/// | word | field | meaning |
/// |---|---|---|
/// | 0 | `begin_req_idx` | first request of the part |
/// | 1 | `end_req_idx` | last request of the part (inclusive); `< begin_req_idx` for an idle part |
/// | 2 | `begin_block_idx` | first KV block (64 tokens) of `begin_req_idx` (inclusive) |
/// | 3 | `end_block_idx` | end KV block of `end_req_idx` (exclusive; 0 for a finished empty request) |
/// | 4 | `begin_split_idx` | split number of the first request's chunk (0 when it starts the request) |
/// | 5 | `is_first_req_splitted` | 1 when the first request is not wholly inside this part |
/// | 6 | `is_last_req_splitted` | 1 when the last request is not wholly inside this part |
/// | 7 | `_pad` | always 0 |
///
/// Parts left over once every request is assigned have `begin_req_idx == b`; their CTAs exit at once.
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecodingSchedMeta {
    /// First request of the part.
    pub begin_req_idx: i32,
    /// Last request of the part, inclusive.
    pub end_req_idx: i32,
    /// First KV block of the first request, inclusive.
    pub begin_block_idx: i32,
    /// End KV block of the last request, exclusive.
    pub end_block_idx: i32,
    /// Split number of the first request's chunk.
    pub begin_split_idx: i32,
    /// 1 when the first request continues from (or into) another part.
    pub is_first_req_splitted: i32,
    /// 1 when the last request continues in another part.
    pub is_last_req_splitted: i32,
    /// Padding to 32 bytes; always 0.
    pub pad: i32,
}

/// Number of `i32` words in one [`DecodingSchedMeta`] record.
pub const SCHED_META_WORDS: usize =
    core::mem::size_of::<DecodingSchedMeta>() / core::mem::size_of::<i32>();
const _: () = assert!(core::mem::size_of::<DecodingSchedMeta>() == 32 && SCHED_META_WORDS == 8);
const _: () = assert!(core::mem::align_of::<DecodingSchedMeta>() == 32);

impl DecodingSchedMeta {
    /// The record as FlashMLA's `int32 [8]` row.
    pub const fn to_words(self) -> [i32; SCHED_META_WORDS] {
        [
            self.begin_req_idx,
            self.end_req_idx,
            self.begin_block_idx,
            self.end_block_idx,
            self.begin_split_idx,
            self.is_first_req_splitted,
            self.is_last_req_splitted,
            self.pad,
        ]
    }

    /// The record from FlashMLA's `int32 [8]` row.
    pub const fn from_words(w: [i32; SCHED_META_WORDS]) -> Self {
        Self {
            begin_req_idx: w[0],
            end_req_idx: w[1],
            begin_block_idx: w[2],
            end_block_idx: w[3],
            begin_split_idx: w[4],
            is_first_req_splitted: w[5],
            is_last_req_splitted: w[6],
            pad: w[7],
        }
    }
}

// SAFETY: repr(C), plain i32 fields, every bit pattern valid.
unsafe impl DeviceRecord for DecodingSchedMeta {}

/// Parameters of the scheduler-metadata kernel (FlashMLA `GetDecodeSchedMetaParams`, dense case).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedMetaParams {
    /// `const i32 [b]`: KV length of each request (FlashMLA `cache_seqlens`).
    pub seqlens_k: u64,
    /// `DecodingSchedMeta [num_sm_parts]`: output.
    pub tile_scheduler_metadata: u64,
    /// `i32 [b + 1]`: output, the exclusive prefix sum of per-request split counts.
    pub num_splits: u64,
    /// Number of requests.
    pub batch_size: i32,
    /// Number of work lists, see [`num_sm_parts`](crate::sched::num_sm_parts).
    pub num_sm_parts: i32,
}

// SAFETY: repr(C), integers only.
unsafe impl DeviceRecord for SchedMetaParams {}

/// Parameters of the split-KV decode kernels (FlashMLA `DenseAttnDecodeParams`). Pointers are device
/// addresses, strides are in elements. Query rows are folded as in FlashMLA: row
/// `r = t · heads_per_kv + j` of KV head `g` is query token `t`, query head `g · heads_per_kv + j`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DecodeParams {
    /// `q [b, s_q, h_q, 576]`.
    pub q: u64,
    /// `k_cache [num_blocks, 64, h_kv, 576]`; V is its first 512 columns.
    pub k_cache: u64,
    /// `block_table [b, max_blocks_per_seq]` (`i32`, last dimension contiguous).
    pub block_table: u64,
    /// `cache_seqlens [b]` (`i32`).
    pub seqlens_k: u64,
    /// `o_accum [total_splits, h_kv, q_seq_per_hk, 512]` (`f32`): normalised partial outputs.
    pub o_accum: u64,
    /// `lse_accum [total_splits, h_kv, q_seq_per_hk]` (`f32`, base 2): partial lse.
    pub lse_accum: u64,
    /// `DecodingSchedMeta [num_sm_parts]`.
    pub tile_scheduler_metadata: u64,
    /// `num_splits [b + 1]`.
    pub num_splits: u64,
    /// q strides: batch, token, head.
    pub q_batch_stride: i64,
    /// q stride between query tokens.
    pub q_seq_stride: i64,
    /// q stride between heads.
    pub q_head_stride: i64,
    /// k_cache stride between pages.
    pub k_page_stride: i64,
    /// k_cache stride between tokens of a page.
    pub k_row_stride: i64,
    /// k_cache stride between KV heads.
    pub k_head_stride: i64,
    /// block_table stride between requests.
    pub block_table_stride: i64,
    /// Final `out` and `lse` of unsplit requests.
    pub output: OutputParams,
    /// Requests.
    pub batch_size: i32,
    /// Query tokens per request.
    pub seqlen_q: i32,
    /// KV heads.
    pub num_heads_kv: i32,
    /// Query heads per KV head.
    pub heads_per_kv: i32,
    /// `s_q · heads_per_kv`.
    pub q_seq_per_hk: i32,
    /// Pages in the KV cache; page ids outside `0..num_blocks` read as zeros.
    pub num_blocks: i32,
    /// Columns of `block_table`; tokens past `64 · max_blocks_per_seq` are never read.
    pub max_blocks_per_seq: i32,
    /// 1 for bottom-right-aligned causal masking.
    pub is_causal: i32,
    /// `softmax_scale · log2(e)`: logits are kept in base 2.
    pub scale_log2: f32,
    /// Padding; 0.
    pub pad: i32,
}

// SAFETY: repr(C), integers and floats only.
unsafe impl DeviceRecord for DecodeParams {}

/// A CUDA tensor map (`CUtensorMap`): 128 opaque bytes encoded on the host by
/// `cuTensorMapEncodeTiled`, describing how TMA reads the KV cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TensorMapBytes(pub [u64; 16]);

// SAFETY: repr(C), integers only.
unsafe impl DeviceRecord for TensorMapBytes {}

/// Bytes of one tensor-map slot of [`Sm90DecodeParams::tensor_map_slots`]: one `CUtensorMap`. The host
/// allocates `CTAs × TENSOR_MAP_BYTES` and each Hopper decode CTA finds its slot at `cta × TENSOR_MAP_BYTES`.
pub const TENSOR_MAP_BYTES: usize = core::mem::size_of::<TensorMapBytes>();
const _: () = assert!(TENSOR_MAP_BYTES == 128, "a CUtensorMap is 128 bytes");

/// Parameters of the Hopper split-KV decode kernels: the common record plus the KV cache's tensor map.
///
/// A tensor map must live in global, constant or kernel-parameter memory when TMA reads it, and Rust
/// cannot keep a by-value parameter in parameter space once its address is taken (it is copied to
/// local memory). So the map travels by value here and each CTA copies it to its own 128-byte slot of
/// `tensor_map_slots` (global memory, owned by the plan) before its first TMA.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sm90DecodeParams {
    /// Everything the portable kernel takes.
    pub common: DecodeParams,
    /// `k_cache` as a 4-D tensor `(576 columns, 64 tokens, h_kv, num_blocks)`, box 64 × 64, 128-byte
    /// swizzle, zero fill outside the cache.
    pub k_tensor_map: TensorMapBytes,
    /// Device address of `grid size × TENSOR_MAP_BYTES` bytes, 64-byte aligned: one tensor-map slot
    /// per CTA.
    pub tensor_map_slots: u64,
}

// SAFETY: repr(C) over DeviceRecords and integers.
unsafe impl DeviceRecord for Sm90DecodeParams {}

/// Parameters of the combine kernels (FlashMLA `CombineParams`): merge the split partials of every split
/// request into `out` and `lse`. Same folding as [`DecodeParams`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CombineParams {
    /// `out` and `lse`, as in [`DecodeParams`].
    pub output: OutputParams,
    /// `o_accum`, as in [`DecodeParams`].
    pub o_accum: u64,
    /// `lse_accum`, as in [`DecodeParams`].
    pub lse_accum: u64,
    /// `num_splits [b + 1]`.
    pub num_splits: u64,
    /// Requests.
    pub batch_size: i32,
    /// KV heads.
    pub num_heads_kv: i32,
    /// Query heads per KV head.
    pub heads_per_kv: i32,
    /// `s_q · heads_per_kv`.
    pub q_seq_per_hk: i32,
    /// (row, column quarter) tasks each warp merges in turn ([`combine_tasks_per_warp`]).
    pub tasks_per_warp: i32,
    /// Padding; 0.
    pub pad: i32,
}

// SAFETY: repr(C), integers only.
unsafe impl DeviceRecord for CombineParams {}

/// Combine CTAs the grid aims at: about one wave of 8 CTAs per SM on a 132-SM H200. Every CTA pays a
/// launch and a `num_splits` read even when its request was not split (then it exits at once), so a
/// grid of one task per warp cost 13 µs at b = 128, h_q = 128 with nothing to merge.
pub const COMBINE_TARGET_CTAS: usize = 1024;

/// Tasks per combine warp for `tasks` (row, column quarter) tasks in all: enough that the grid has
/// about [`COMBINE_TARGET_CTAS`] CTAs, at least 1.
pub const fn combine_tasks_per_warp(tasks: usize) -> usize {
    let per_warp =
        tasks.div_ceil(COMBINE_TARGET_CTAS * crate::decode_config::COMBINE_WARPS as usize);
    if per_warp == 0 {
        1
    } else {
        per_warp
    }
}

/// The combine grid's x extent for `tasks` (row, column quarter) tasks per request in a batch of
/// `batch_size`: CTAs of `COMBINE_WARPS` warps, each warp taking
/// [`combine_tasks_per_warp`]`(batch_size · tasks)` tasks.
///
/// Never above [`COMBINE_TARGET_CTAS`], whatever the shape: with `W = COMBINE_WARPS` and
/// `C = COMBINE_TARGET_CTAS`, a warp takes `p ≥ batch_size · tasks / (C · W) ≥ tasks / (C · W)` tasks
/// (for `batch_size ≥ 1`), so the grid has `⌈tasks / (W · p)⌉ ≤ ⌈C⌉ = C` CTAs. (A saturated product
/// only makes `p` larger.) So the host need not check the grid's x limit; the asserts below hold the
/// constants to it.
pub const fn combine_grid_x(tasks: usize, batch_size: usize) -> usize {
    let per_warp = combine_tasks_per_warp(batch_size.saturating_mul(tasks));
    tasks.div_ceil(crate::decode_config::COMBINE_WARPS as usize * per_warp)
}
const _: () = assert!(COMBINE_TARGET_CTAS <= crate::MAX_GRID_X);
// The largest task count a decode shape makes (s_q · h_q < 2^31 rows, 4 tasks each), alone and in the
// largest batch.
const _: () = assert!(
    combine_grid_x(4 * i32::MAX as usize, 1) <= COMBINE_TARGET_CTAS
        && combine_grid_x(4 * i32::MAX as usize, crate::MAX_SCHED_BATCH) <= COMBINE_TARGET_CTAS
);

/// Where the final results go: `out [b, s_q, h_q, 512]` (q's dtype, last dimension contiguous) and
/// `lse [b, h_q, s_q]` (`f32`, natural log), with element strides. Written by the decode kernel for
/// unsplit requests and by the combine kernel for split ones; both address them through this record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OutputParams {
    /// `out` device address.
    pub out: u64,
    /// `lse` device address.
    pub lse: u64,
    /// out stride between requests.
    pub out_batch_stride: i64,
    /// out stride between query tokens.
    pub out_seq_stride: i64,
    /// out stride between heads.
    pub out_head_stride: i64,
    /// lse stride between requests.
    pub lse_batch_stride: i64,
    /// lse stride between heads.
    pub lse_head_stride: i64,
    /// lse stride between query tokens.
    pub lse_seq_stride: i64,
}

impl OutputParams {
    /// Element offset of `out[b, t, head, 0]`.
    #[inline(always)]
    pub fn out_offset(&self, b: usize, t: u32, head: u32) -> isize {
        b as isize * self.out_batch_stride as isize
            + t as isize * self.out_seq_stride as isize
            + head as isize * self.out_head_stride as isize
    }

    /// Element offset of `lse[b, head, t]`.
    #[inline(always)]
    pub fn lse_offset(&self, b: usize, t: u32, head: u32) -> isize {
        b as isize * self.lse_batch_stride as isize
            + head as isize * self.lse_head_stride as isize
            + t as isize * self.lse_seq_stride as isize
    }
}

// SAFETY: repr(C), integers only.
unsafe impl DeviceRecord for OutputParams {}

//! Every check of a decode call that needs no device, turned into a typed [`Error`]: shapes against
//! the plan, head dims, page size, contiguity, alignment, outputs that overlap themselves, the scale,
//! sizes against the kernels' 32-bit arithmetic and grid limits, and the kernel the call runs (the
//! Hopper kernel's TMA rules for the KV cache included). What passes becomes the launch parameters
//! ([`DecodeLaunch`]).
//!
//! Pure functions of the arguments (pointers are compared, never dereferenced), so they are unit-tested
//! here and property-tested in `host/proptests.rs` without a GPU.

use super::{DecodeKernel, RawDecodeArgs};
use crate::sched::GRID_Y_Z_LIMIT;
use crate::tensor::DType;
use crate::{DecodeShape, Error, Result};
use flashmla_abi::decode_config::COMBINE_WARPS_PER_ROW;
use flashmla_abi::params::{
    combine_grid_x, combine_tasks_per_warp, CombineParams, DecodeParams, OutputParams,
};
use flashmla_abi::{HEAD_DIM_K, HEAD_DIM_V, MAX_GRID_Y_Z, PAGE_BLOCK_SIZE};

/// Launch parameters of a validated decode call.
pub(crate) struct DecodeLaunch {
    pub(super) decode: DecodeParams,
    pub(super) combine: CombineParams,
    pub(super) decode_grid: (u32, u32, u32),
    pub(super) combine_grid: (u32, u32, u32),
    pub(super) dtype: DType,
    pub(super) kernel: LaunchKernel,
}

/// The split-KV kernel a validated call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LaunchKernel {
    /// The `mma.sync` kernel.
    Portable,
    /// The Hopper kernel, with the byte strides of its TMA descriptor of the KV cache (tokens, KV
    /// heads, pages), checked against TMA's rules.
    Hopper { k_strides: [u64; 3] },
}

/// What the handle and the plan of a call can run: what [`DecodeOptions::kernel`] is resolved against.
///
/// [`DecodeOptions::kernel`]: super::DecodeOptions::kernel
#[derive(Clone, Copy, Debug)]
pub(crate) struct Available {
    /// The handle's PTX module (named in [`Error::KernelUnavailable`]).
    pub(crate) module: &'static str,
    /// The handle has the Hopper kernels (the sm_90a module on a compute capability 9.0 device).
    pub(crate) hopper: bool,
    /// The plan has tensor-map slots: it was made by a handle with the Hopper kernels.
    pub(crate) plan_tensor_map_slots: bool,
}

/// Bytes of a q, k_cache or out element: both [`DType`]s are 16-bit.
const ELEM_BYTES: usize = 2;

#[cfg(test)]
impl DecodeLaunch {
    pub(crate) fn decode_params(&self) -> &DecodeParams {
        &self.decode
    }

    pub(crate) fn kernel(&self) -> LaunchKernel {
        self.kernel
    }
}

/// Every check of a decode call that needs no device: shapes against the plan, head dims, page size,
/// contiguity, alignment, self-overlapping outputs, scale, sizes against 32-bit kernel arithmetic and
/// grid limits, and the kernel `available` can run for `a.options.kernel`.
pub(crate) fn validate(
    planned: &DecodeShape,
    num_sm_parts: usize,
    metadata_computed: bool,
    available: Available,
    a: &RawDecodeArgs,
) -> Result<DecodeLaunch> {
    let (q_ptr, q_shape, q_strides) = a.q;
    let (k_ptr, k_shape, k_strides) = a.k_cache;
    let (bt_ptr, bt_shape, bt_strides) = a.block_table;
    let (out_ptr, out_shape, out_strides) = a.out;
    let (lse_ptr, lse_shape, lse_strides) = a.lse;
    // A dimension of extent 1 is only ever indexed at 0: its stride never reaches an address, so any
    // value (frameworks leave arbitrary ones there) is taken, and the kernels get 0.
    let (q_strides, k_strides, bt_strides) = (
        used_strides(q_shape, q_strides),
        used_strides(k_shape, k_strides),
        used_strides(bt_shape, bt_strides),
    );
    let (out_strides, lse_strides) = (
        used_strides(out_shape, out_strides),
        used_strides(lse_shape, lse_strides),
    );

    if q_shape[3] != HEAD_DIM_K {
        return Err(Error::HeadDim {
            name: "q",
            expected: HEAD_DIM_K,
            got: q_shape[3],
        });
    }
    if k_shape[3] != HEAD_DIM_K {
        return Err(Error::HeadDim {
            name: "k_cache",
            expected: HEAD_DIM_K,
            got: k_shape[3],
        });
    }
    if k_shape[1] != PAGE_BLOCK_SIZE {
        return Err(Error::PageBlockSize {
            expected: PAGE_BLOCK_SIZE,
            got: k_shape[1],
        });
    }
    if k_shape[0] == 0 {
        return Err(Error::ZeroSize {
            name: "k_cache num_blocks",
        });
    }
    let shape = DecodeShape::new(q_shape[0], q_shape[1], q_shape[2], k_shape[2])?;
    if shape.dims() != planned.dims() {
        return Err(Error::PlanMismatch {
            planned: *planned,
            got: shape,
        });
    }
    if out_shape[3] != HEAD_DIM_V {
        return Err(Error::HeadDim {
            name: "out",
            expected: HEAD_DIM_V,
            got: out_shape[3],
        });
    }
    let (b, s_q, h_q) = (shape.batch_size(), shape.seqlen_q(), shape.num_heads_q());
    check_shape("out", out_shape, [b, s_q, h_q, HEAD_DIM_V])?;
    check_shape("lse", lse_shape, [b, h_q, s_q])?;
    if bt_shape[0] != b {
        return Err(Error::Shape {
            name: "block_table",
            expected: vec![b, bt_shape[1]],
            got: bt_shape.to_vec(),
        });
    }
    if bt_shape[1] == 0 {
        return Err(Error::ZeroSize {
            name: "block_table columns",
        });
    }
    check_last_contiguous("q", q_strides)?;
    check_last_contiguous("k_cache", k_strides)?;
    check_last_contiguous("block_table", bt_strides)?;
    check_last_contiguous("out", out_strides)?;
    // 16-byte cp.async loads of q and k rows; 4-byte stores of output pairs.
    check_aligned("q", q_ptr, q_strides, ELEM_BYTES, 8)?;
    check_aligned("k_cache", k_ptr, k_strides, ELEM_BYTES, 8)?;
    check_aligned("out", out_ptr, out_strides, ELEM_BYTES, 2)?;
    check_aligned("lse", lse_ptr, [0, 1], 4, 1)?;
    // Different threads write different indices: two indices on one element would race.
    check_no_self_overlap("out", out_shape, a.out.2)?;
    check_no_self_overlap("lse", lse_shape, a.lse.2)?;
    check_aligned("block_table", bt_ptr, [0, 1], 4, 1)?;
    check_aligned("cache_seqlens", a.cache_seqlens, [0, 1], 4, 1)?;
    let scale = a.options.scale();
    if !scale.is_finite() {
        return Err(Error::InvalidScale(scale));
    }
    let table_tokens = bt_shape[1]
        .checked_mul(PAGE_BLOCK_SIZE)
        .filter(|&t| t <= i32::MAX as usize)
        .ok_or(Error::Overflow {
            what: "block_table columns × PAGE_BLOCK_SIZE (tokens a row addresses)",
            value: bt_shape[1] as u128 * PAGE_BLOCK_SIZE as u128,
            limit: "i32",
        })?;
    if let Some(seqlen) = a.options.max_seqlen_k {
        if seqlen > table_tokens {
            return Err(Error::BlockTableTooSmall {
                columns: bt_shape[1],
                tokens: table_tokens,
                seqlen,
            });
        }
    }
    if !metadata_computed {
        return Err(Error::MetadataNotComputed);
    }
    let rows = shape.q_seq_per_hk();
    let combine_tasks = shape.num_heads_kv() * rows * COMBINE_WARPS_PER_ROW;
    let tasks_per_warp = combine_tasks_per_warp(b * combine_tasks);
    // No check of the combine grid: its x is at most COMBINE_TARGET_CTAS and its y (b) at most
    // MAX_SCHED_BATCH, both within CUDA's limits by the abi's compile-time asserts. The decode grid's x
    // (64-row tiles of s_q · h_q < 2^31 rows) is within limits too; its y (h_kv) is not bounded by the shape.
    let combine_blocks = combine_grid_x(combine_tasks, b);
    if shape.num_heads_kv() > MAX_GRID_Y_Z {
        return Err(Error::Overflow {
            what: "h_kv (the decode grid's y)",
            value: shape.num_heads_kv() as u128,
            limit: GRID_Y_Z_LIMIT,
        });
    }
    let kernel = resolve_kernel(a.options.kernel, available, k_shape, k_strides)?;
    let causal = a.options.causal && s_q > 1;
    let output = OutputParams {
        out: out_ptr,
        lse: lse_ptr,
        out_batch_stride: to_i64("out stride", out_strides[0])?,
        out_seq_stride: to_i64("out stride", out_strides[1])?,
        out_head_stride: to_i64("out stride", out_strides[2])?,
        lse_batch_stride: to_i64("lse stride", lse_strides[0])?,
        lse_head_stride: to_i64("lse stride", lse_strides[1])?,
        lse_seq_stride: to_i64("lse stride", lse_strides[2])?,
    };
    let decode = DecodeParams {
        q: q_ptr,
        k_cache: k_ptr,
        block_table: bt_ptr,
        seqlens_k: a.cache_seqlens,
        o_accum: 0,
        lse_accum: 0,
        tile_scheduler_metadata: 0,
        num_splits: 0,
        q_batch_stride: to_i64("q stride", q_strides[0])?,
        q_seq_stride: to_i64("q stride", q_strides[1])?,
        q_head_stride: to_i64("q stride", q_strides[2])?,
        k_page_stride: to_i64("k_cache stride", k_strides[0])?,
        k_row_stride: to_i64("k_cache stride", k_strides[1])?,
        k_head_stride: to_i64("k_cache stride", k_strides[2])?,
        block_table_stride: to_i64("block_table stride", bt_strides[0])?,
        output,
        batch_size: to_i32("batch_size", b)?,
        seqlen_q: to_i32("seqlen_q", s_q)?,
        num_heads_kv: to_i32("num_heads_kv", shape.num_heads_kv())?,
        heads_per_kv: to_i32("heads per kv head", shape.heads_per_kv())?,
        q_seq_per_hk: to_i32("s_q · h_q / h_kv", rows)?,
        num_blocks: to_i32("k_cache num_blocks", k_shape[0])?,
        max_blocks_per_seq: to_i32("block_table columns", bt_shape[1])?,
        is_causal: causal as i32,
        scale_log2: scale * std::f32::consts::LOG2_E,
        pad: 0,
    };
    let combine = CombineParams {
        output,
        o_accum: 0,
        lse_accum: 0,
        num_splits: 0,
        batch_size: decode.batch_size,
        num_heads_kv: decode.num_heads_kv,
        heads_per_kv: decode.heads_per_kv,
        q_seq_per_hk: decode.q_seq_per_hk,
        tasks_per_warp: tasks_per_warp as i32,
        pad: 0,
    };
    Ok(DecodeLaunch {
        decode,
        combine,
        decode_grid: (
            shape.num_m_blocks() as u32,
            shape.num_heads_kv() as u32,
            num_sm_parts as u32,
        ),
        combine_grid: (combine_blocks as u32, b as u32, 1),
        dtype: a.dtype,
        kernel,
    })
}

/// The kernel `kernel` stands for on a handle with (`hopper`) or without the Hopper kernels, before a
/// call's plan and KV-cache view are looked at: [`DecodeKernel::Portable`] or [`DecodeKernel::Hopper`],
/// never `Auto`; the Hopper kernel where there is none is [`Error::KernelUnavailable`] naming
/// `module`. [`FlashMla::resolve_kernel`] reports this; [`resolve_kernel`] starts from it, so the two
/// cannot disagree.
///
/// [`FlashMla::resolve_kernel`]: crate::FlashMla::resolve_kernel
pub(crate) fn kernel_for_handle(
    kernel: DecodeKernel,
    hopper: bool,
    module: &'static str,
) -> Result<DecodeKernel> {
    match (kernel, hopper) {
        (DecodeKernel::Portable, _) | (DecodeKernel::Auto, false) => Ok(DecodeKernel::Portable),
        (DecodeKernel::Hopper | DecodeKernel::Auto, true) => Ok(DecodeKernel::Hopper),
        (DecodeKernel::Hopper, false) => Err(Error::KernelUnavailable { module }),
    }
}

/// The kernel a call runs. [`DecodeKernel::Auto`] is the Hopper kernel where the handle has it
/// ([`kernel_for_handle`]), the plan has tensor-map slots and TMA can read the KV cache view
/// ([`k_tma_strides`]), else the portable kernel, which runs all of these. [`DecodeKernel::Hopper`] is
/// that or an error saying which is missing, in that order.
fn resolve_kernel(
    kernel: DecodeKernel,
    available: Available,
    k_shape: [usize; 4],
    k_strides: [usize; 4],
) -> Result<LaunchKernel> {
    if kernel_for_handle(kernel, available.hopper, available.module)? == DecodeKernel::Portable {
        return Ok(LaunchKernel::Portable);
    }
    // The handle has the Hopper kernels: what is left is this call's plan and view.
    let hopper = if available.plan_tensor_map_slots {
        k_tma_strides(k_shape, k_strides).map(|k_strides| LaunchKernel::Hopper { k_strides })
    } else {
        Err(Error::PlanWithoutTensorMaps)
    };
    match (kernel, hopper) {
        (DecodeKernel::Auto, Err(_)) => Ok(LaunchKernel::Portable),
        (_, result) => result,
    }
}

/// The byte strides of the KV cache's tokens, KV heads and pages (`k_cache` dimensions 1, 2, 0) in the
/// Hopper kernel's TMA descriptor, as `cuTensorMapEncodeTiled` documents them: multiples of 16 bytes and
/// below 2^40 bytes; and non-zero, which is only possible where the extent is above 1, so a dimension of
/// extent 1 (only ever indexed at 0) gets 16. `strides` are the used ones (0 for extent 1).
fn k_tma_strides(shape: [usize; 4], strides: [usize; 4]) -> Result<[u64; 3]> {
    let stride = |dim: usize| -> Result<u64> {
        if shape[dim] == 1 {
            return Ok(16);
        }
        let bytes = strides[dim] as u128 * ELEM_BYTES as u128;
        let rule = if bytes == 0 {
            "non-zero where the extent is above 1"
        } else if bytes >= 1 << 40 {
            "below 2^40 bytes"
        } else if !bytes.is_multiple_of(16) {
            "multiples of 16 bytes"
        } else {
            return Ok(bytes as u64);
        };
        Err(Error::TmaStride {
            name: "k_cache",
            dim,
            stride: strides[dim],
            rule,
        })
    };
    Ok([stride(1)?, stride(2)?, stride(0)?])
}

fn to_i64(name: &'static str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Overflow {
        what: name,
        value: v as u128,
        limit: "i64",
    })
}

fn to_i32(name: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Overflow {
        what: name,
        value: v as u128,
        limit: "i32",
    })
}

/// `strides` with those of extent-1 dimensions replaced: 0 for a leading one, 1 for the last one (a
/// single element is contiguous). The kernels only ever index such a dimension at 0.
fn used_strides<const N: usize>(shape: [usize; N], strides: [usize; N]) -> [usize; N] {
    let mut used = strides;
    for d in 0..N {
        if shape[d] == 1 {
            used[d] = if d == N - 1 { 1 } else { 0 };
        }
    }
    used
}

fn check_shape<const N: usize>(
    name: &'static str,
    got: [usize; N],
    expected: [usize; N],
) -> Result<()> {
    if got != expected {
        return Err(Error::Shape {
            name,
            expected: expected.to_vec(),
            got: got.to_vec(),
        });
    }
    Ok(())
}

fn check_last_contiguous<const N: usize>(name: &'static str, strides: [usize; N]) -> Result<()> {
    if strides[N - 1] != 1 {
        return Err(Error::NonContiguous {
            name,
            stride: strides[N - 1],
        });
    }
    Ok(())
}

/// No two indices of the view `name` address one element. Sorted by stride, every dimension of extent > 1
/// must step past all that the dimensions with smaller strides span: `stride ≥ 1 + Σ (extent − 1) · stride`
/// over them (ties count as smaller, so two dimensions with one stride fail). Dimensions of extent 1
/// have one index and take no part. Sufficient, not necessary: an interleaving that happens not to
/// collide (shape `[3, 2]`, strides `[2, 3]`) is refused too, which no framework's tensors need.
pub(crate) fn check_no_self_overlap<const N: usize>(
    name: &'static str,
    shape: [usize; N],
    strides: [usize; N],
) -> Result<()> {
    let mut dims: Vec<usize> = (0..N).filter(|&d| shape[d] > 1).collect();
    dims.sort_by_key(|&d| strides[d]);
    // Largest offset the dimensions checked so far reach. No overflow: a dimension is added only when its
    // stride (< 2^64) exceeds the span, and its term (extent − 1) · stride is below 2^128 − 2^65.
    let mut span: u128 = 0;
    for d in dims {
        if strides[d] as u128 <= span {
            return Err(Error::OverlappingOutput {
                name,
                shape: shape.to_vec(),
                strides: strides.to_vec(),
                dim: d,
            });
        }
        span += (shape[d] as u128 - 1) * strides[d] as u128;
    }
    Ok(())
}

/// Base address (bytes) and leading strides (elements) must be multiples of the access width.
fn check_aligned<const N: usize>(
    name: &'static str,
    ptr: u64,
    strides: [usize; N],
    elem_bytes: usize,
    multiple: usize,
) -> Result<()> {
    let bytes = (elem_bytes * multiple) as u64;
    if !ptr.is_multiple_of(bytes) {
        return Err(Error::Misaligned {
            name,
            what: "the base address (bytes)",
            multiple: bytes as usize,
            value: ptr,
        });
    }
    for &s in &strides[..N - 1] {
        if s % multiple != 0 {
            return Err(Error::Misaligned {
                name,
                what: "every leading stride (elements)",
                multiple,
                value: s as u64,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DecodeOptions;

    const B: usize = 4;
    const S_Q: usize = 2;
    const H_Q: usize = 16;
    const H_KV: usize = 2;
    const PAGES: usize = 40;
    const COLS: usize = 10;

    fn contiguous<const N: usize>(shape: [usize; N]) -> [usize; N] {
        let mut s = [1; N];
        for i in (0..N - 1).rev() {
            s[i] = s[i + 1] * shape[i + 1];
        }
        s
    }

    /// An sm_90a handle and a plan made by it.
    const HOPPER: Available = Available {
        module: "sm90a",
        hopper: true,
        plan_tensor_map_slots: true,
    };

    fn plan_shape() -> DecodeShape {
        DecodeShape::new(B, S_Q, H_Q, H_KV).unwrap()
    }

    /// Valid arguments at fake, well-aligned device addresses (validation never dereferences them).
    fn good() -> RawDecodeArgs {
        let q = [B, S_Q, H_Q, HEAD_DIM_K];
        let k = [PAGES, PAGE_BLOCK_SIZE, H_KV, HEAD_DIM_K];
        let bt = [B, COLS];
        let out = [B, S_Q, H_Q, HEAD_DIM_V];
        let lse = [B, H_Q, S_Q];
        RawDecodeArgs {
            dtype: DType::Bf16,
            q: (0x1_0000_0000, q, contiguous(q)),
            k_cache: (0x2_0000_0000, k, contiguous(k)),
            block_table: (0x3_0000_0000, bt, contiguous(bt)),
            cache_seqlens: 0x4_0000_0000,
            out: (0x5_0000_0000, out, contiguous(out)),
            lse: (0x6_0000_0000, lse, contiguous(lse)),
            options: DecodeOptions {
                softmax_scale: None,
                causal: true,
                max_seqlen_k: Some(COLS * 64),
                kernel: DecodeKernel::Auto,
            },
        }
    }

    fn check(a: &RawDecodeArgs) -> Result<DecodeLaunch> {
        validate(&plan_shape(), 66, true, HOPPER, a)
    }

    #[test]
    fn valid_arguments_build_the_launch() {
        let l = check(&good()).unwrap();
        assert_eq!(l.decode_grid, (1, H_KV as u32, 66));
        assert_eq!(
            l.combine_grid,
            (
                (H_KV * S_Q * H_Q / H_KV * 4).div_ceil(8) as u32,
                B as u32,
                1
            )
        );
        assert_eq!(l.decode.q_seq_per_hk, (S_Q * H_Q / H_KV) as i32);
        assert_eq!(l.decode.heads_per_kv, (H_Q / H_KV) as i32);
        assert_eq!(l.decode.is_causal, 1);
        assert!((l.decode.scale_log2 - std::f32::consts::LOG2_E / 24.0).abs() < 1e-7);
        assert_eq!(l.decode.k_page_stride, (64 * H_KV * HEAD_DIM_K) as i64);
        assert_eq!(l.decode.output.lse_head_stride, S_Q as i64);
        assert_eq!(l.combine.output, l.decode.output);
    }

    #[test]
    fn causal_is_off_for_one_query_token() {
        let shape = DecodeShape::new(B, 1, H_Q, H_KV).unwrap();
        let mut a = good();
        a.q.1[1] = 1;
        a.q.2 = contiguous(a.q.1);
        a.out.1[1] = 1;
        a.out.2 = contiguous(a.out.1);
        a.lse.1[2] = 1;
        a.lse.2 = contiguous(a.lse.1);
        assert_eq!(
            validate(&shape, 66, true, HOPPER, &a)
                .unwrap()
                .decode
                .is_causal,
            0
        );
    }

    #[test]
    fn a_plan_with_its_own_sm_parts_takes_the_same_inputs() {
        let shape = plan_shape().with_num_sm_parts(8).unwrap();
        let launch = validate(&shape, 8, true, HOPPER, &good()).expect("same batch dimensions");
        assert_eq!(launch.decode_grid.2, 8);
    }

    macro_rules! rejects {
        ($name:ident, |$a:ident| $edit:block, $pat:pat) => {
            #[test]
            fn $name() {
                let mut $a = good();
                $edit
                match check(&$a) {
                    Err($pat) => {}
                    Err(other) => panic!("wrong error: {other}"),
                    Ok(_) => panic!("accepted"),
                }
            }
        };
    }

    rejects!(
        q_head_dim,
        |a| {
            a.q.1[3] = 512;
        },
        Error::HeadDim {
            name: "q",
            expected: 576,
            got: 512
        }
    );
    rejects!(
        k_head_dim,
        |a| {
            a.k_cache.1[3] = 512;
        },
        Error::HeadDim {
            name: "k_cache",
            ..
        }
    );
    rejects!(
        page_size,
        |a| {
            a.k_cache.1[1] = 16;
        },
        Error::PageBlockSize {
            expected: 64,
            got: 16
        }
    );
    rejects!(
        no_pages,
        |a| {
            a.k_cache.1[0] = 0;
        },
        Error::ZeroSize { .. }
    );
    rejects!(
        heads_not_divisible,
        |a| {
            a.k_cache.1[2] = 3;
        },
        Error::HeadsNotDivisible { h_q: 16, h_kv: 3 }
    );
    rejects!(
        empty_batch,
        |a| {
            a.q.1[0] = 0;
        },
        Error::EmptyBatch
    );
    rejects!(
        plan_for_other_batch,
        |a| {
            a.q.1[0] = B + 1;
        },
        Error::PlanMismatch { .. }
    );
    rejects!(
        plan_for_other_kv_heads,
        |a| {
            a.k_cache.1[2] = 1;
        },
        Error::PlanMismatch { .. }
    );
    rejects!(
        out_head_dim_v,
        |a| {
            a.out.1[3] = 576;
        },
        Error::HeadDim {
            name: "out",
            expected: 512,
            ..
        }
    );
    rejects!(
        out_shape,
        |a| {
            a.out.1[1] = 1;
        },
        Error::Shape { name: "out", .. }
    );
    rejects!(
        lse_shape,
        |a| {
            a.lse.1 = [B, S_Q, H_Q];
        },
        Error::Shape { name: "lse", .. }
    );
    rejects!(
        block_table_rows,
        |a| {
            a.block_table.1[0] = B - 1;
        },
        Error::Shape {
            name: "block_table",
            ..
        }
    );
    rejects!(
        block_table_no_columns,
        |a| {
            a.block_table.1[1] = 0;
        },
        Error::ZeroSize { .. }
    );
    rejects!(
        block_table_too_small,
        |a| {
            a.options.max_seqlen_k = Some(COLS * 64 + 1);
        },
        Error::BlockTableTooSmall { .. }
    );
    rejects!(
        q_not_contiguous,
        |a| {
            a.q.2[3] = 2;
        },
        Error::NonContiguous {
            name: "q",
            stride: 2
        }
    );
    rejects!(
        k_not_contiguous,
        |a| {
            a.k_cache.2[3] = 2;
        },
        Error::NonContiguous {
            name: "k_cache",
            ..
        }
    );
    rejects!(
        out_not_contiguous,
        |a| {
            a.out.2[3] = 3;
        },
        Error::NonContiguous { name: "out", .. }
    );
    rejects!(
        block_table_not_contiguous,
        |a| {
            a.block_table.2[1] = 2;
        },
        Error::NonContiguous {
            name: "block_table",
            ..
        }
    );
    rejects!(
        q_misaligned_pointer,
        |a| {
            a.q.0 += 2;
        },
        Error::Misaligned { name: "q", .. }
    );
    rejects!(
        q_misaligned_stride,
        |a| {
            a.q.2[2] = 580;
        },
        Error::Misaligned { name: "q", .. }
    );
    rejects!(
        k_misaligned_stride,
        |a| {
            a.k_cache.2[1] = HEAD_DIM_K * H_KV + 4;
        },
        Error::Misaligned {
            name: "k_cache",
            ..
        }
    );
    rejects!(
        out_misaligned_stride,
        |a| {
            a.out.2[2] = 513;
        },
        Error::Misaligned { name: "out", .. }
    );
    rejects!(
        lse_misaligned,
        |a| {
            a.lse.0 += 2;
        },
        Error::Misaligned { name: "lse", .. }
    );
    rejects!(
        nan_scale,
        |a| {
            a.options.softmax_scale = Some(f32::NAN);
        },
        Error::InvalidScale(_)
    );
    rejects!(
        infinite_scale,
        |a| {
            a.options.softmax_scale = Some(f32::INFINITY);
        },
        Error::InvalidScale(_)
    );
    rejects!(
        pages_overflow_i32,
        |a| {
            a.k_cache.1[0] = 1 << 31;
        },
        Error::Overflow { .. }
    );
    rejects!(
        block_table_overflows_i32,
        |a| {
            a.block_table.1[1] = (1 << 25) + 1;
            a.options.max_seqlen_k = None;
        },
        Error::Overflow { .. }
    );

    rejects!(
        out_heads_on_one_row,
        |a| {
            a.out.2[2] = 0;
        },
        Error::OverlappingOutput {
            name: "out",
            dim: 2,
            ..
        }
    );
    rejects!(
        out_heads_overlapping_rows,
        |a| {
            // 256 apart, but a row is 512 wide.
            a.out.2[2] = 256;
        },
        Error::OverlappingOutput { name: "out", .. }
    );
    rejects!(
        out_tokens_on_the_heads,
        |a| {
            a.out.2[1] = a.out.2[2];
        },
        Error::OverlappingOutput { name: "out", .. }
    );
    rejects!(
        lse_broadcast,
        |a| {
            a.lse.2 = [0, 0, 0];
        },
        Error::OverlappingOutput { name: "lse", .. }
    );
    rejects!(
        lse_batches_on_one_block,
        |a| {
            a.lse.2[0] = 0;
        },
        Error::OverlappingOutput {
            name: "lse",
            dim: 0,
            ..
        }
    );

    #[test]
    fn overlap_check() {
        // Row-major, padded, permuted: disjoint.
        assert!(check_no_self_overlap("v", [4, 3, 5], [15, 5, 1]).is_ok());
        assert!(check_no_self_overlap("v", [4, 3, 5], [40, 8, 1]).is_ok());
        assert!(check_no_self_overlap("v", [4, 3, 5], [1, 20, 4]).is_ok());
        // Extent-1 dimensions have one index: any stride, even 0 or a repeated one.
        assert!(check_no_self_overlap("v", [1, 3, 1], [0, 1, 1]).is_ok());
        // A zero stride, equal strides, a stride inside the span of the smaller ones.
        assert!(check_no_self_overlap("v", [2, 3], [0, 1]).is_err());
        assert!(check_no_self_overlap("v", [2, 2], [1, 1]).is_err());
        assert!(check_no_self_overlap("v", [2, 3], [2, 1]).is_err());
        // The largest extents and strides neither overflow nor wrap around to look disjoint.
        let m = usize::MAX;
        assert!(check_no_self_overlap("v", [m, m, m], [1, m, m]).is_err());
        assert!(check_no_self_overlap("v", [m, 2], [1, m]).is_ok());
        // The rule is sufficient, not necessary: this interleaving is disjoint (0, 3, 2, 5, 4, 7) but
        // refused.
        assert!(check_no_self_overlap("v", [3, 2], [2, 3]).is_err());
    }

    /// An sm_90a handle with a plan made by an sm_80-module handle.
    const PLAN_WITHOUT_SLOTS: Available = Available {
        plan_tensor_map_slots: false,
        ..HOPPER
    };
    /// A handle without the Hopper kernels.
    const SM80: Available = Available {
        module: "sm80",
        hopper: false,
        plan_tensor_map_slots: false,
    };

    fn kernel_for(
        a: &RawDecodeArgs,
        kernel: DecodeKernel,
        available: Available,
    ) -> Result<LaunchKernel> {
        let mut a = *a;
        a.options.kernel = kernel;
        validate(&plan_shape(), 66, true, available, &a).map(|l| l.kernel)
    }

    /// k_cache with KV head stride 0 (both heads read one row: fine for the portable kernel's loads,
    /// not describable to TMA).
    fn k_heads_broadcast() -> RawDecodeArgs {
        let mut a = good();
        a.k_cache.2 = [PAGE_BLOCK_SIZE * HEAD_DIM_K, HEAD_DIM_K, 0, 1];
        a
    }

    #[test]
    fn auto_runs_the_hopper_kernel_with_the_cache_strides_in_bytes() {
        let (row, head, page) = (
            H_KV * HEAD_DIM_K * 2,
            HEAD_DIM_K * 2,
            PAGE_BLOCK_SIZE * H_KV * HEAD_DIM_K * 2,
        );
        let expected = LaunchKernel::Hopper {
            k_strides: [row as u64, head as u64, page as u64],
        };
        assert_eq!(
            kernel_for(&good(), DecodeKernel::Auto, HOPPER).unwrap(),
            expected
        );
        assert_eq!(
            kernel_for(&good(), DecodeKernel::Hopper, HOPPER).unwrap(),
            expected
        );
        assert_eq!(
            kernel_for(&good(), DecodeKernel::Portable, HOPPER).unwrap(),
            LaunchKernel::Portable
        );
    }

    #[test]
    fn auto_falls_back_to_the_portable_kernel_where_the_hopper_one_cannot_run() {
        let mut huge_pages = good();
        huge_pages.k_cache.2[0] = 1 << 39; // 2^40 bytes
        for (what, a, available) in [
            ("head stride 0", k_heads_broadcast(), HOPPER),
            ("page stride of 2^40 bytes", huge_pages, HOPPER),
            ("plan without tensor-map slots", good(), PLAN_WITHOUT_SLOTS),
            ("handle without the Hopper kernels", good(), SM80),
        ] {
            assert_eq!(
                kernel_for(&a, DecodeKernel::Auto, available).unwrap(),
                LaunchKernel::Portable,
                "{what}"
            );
            assert_eq!(
                kernel_for(&a, DecodeKernel::Portable, available).unwrap(),
                LaunchKernel::Portable,
                "{what}"
            );
        }
    }

    #[test]
    fn the_hopper_kernel_where_it_cannot_run_is_a_typed_error() {
        match kernel_for(&k_heads_broadcast(), DecodeKernel::Hopper, HOPPER) {
            Err(Error::TmaStride {
                name: "k_cache",
                dim: 2,
                stride: 0,
                rule,
            }) => assert!(rule.starts_with("non-zero")),
            other => panic!("{other:?}"),
        }
        let mut a = good();
        a.k_cache.2[0] = 1 << 39;
        match kernel_for(&a, DecodeKernel::Hopper, HOPPER) {
            Err(Error::TmaStride { dim: 0, rule, .. }) => assert_eq!(rule, "below 2^40 bytes"),
            other => panic!("{other:?}"),
        }
        // Just below the limit is taken.
        a.k_cache.2[0] = (1 << 39) - 8;
        assert!(kernel_for(&a, DecodeKernel::Hopper, HOPPER).is_ok());
        assert!(matches!(
            kernel_for(&good(), DecodeKernel::Hopper, PLAN_WITHOUT_SLOTS),
            Err(Error::PlanWithoutTensorMaps)
        ));
        assert!(matches!(
            kernel_for(&good(), DecodeKernel::Hopper, SM80),
            Err(Error::KernelUnavailable { module: "sm80" })
        ));
    }

    #[test]
    fn kernel_for_handle_is_what_resolve_kernel_starts_from() {
        use DecodeKernel::{Auto, Hopper, Portable};
        for (kernel, hopper, expected) in [
            (Auto, true, Hopper),
            (Auto, false, Portable),
            (Hopper, true, Hopper),
            (Portable, true, Portable),
            (Portable, false, Portable),
        ] {
            assert_eq!(
                kernel_for_handle(kernel, hopper, "m").unwrap(),
                expected,
                "{kernel} {hopper}"
            );
        }
        assert!(matches!(
            kernel_for_handle(Hopper, false, "m"),
            Err(Error::KernelUnavailable { module: "m" })
        ));
    }

    #[test]
    fn tma_stride_rules() {
        let shape = [PAGES, PAGE_BLOCK_SIZE, H_KV, HEAD_DIM_K];
        // A stride that is not a multiple of 16 bytes (validation's alignment check refuses it first).
        match k_tma_strides(shape, [1 << 20, 1156, 576, 1]) {
            Err(Error::TmaStride { dim: 1, rule, .. }) => assert_eq!(rule, "multiples of 16 bytes"),
            other => panic!("{other:?}"),
        }
        // Dimensions of extent 1 get 16 bytes whatever their (used: 0) stride.
        assert_eq!(
            k_tma_strides([1, PAGE_BLOCK_SIZE, 1, HEAD_DIM_K], [0, 576, 0, 1]).unwrap(),
            [1152, 16, 16]
        );
    }

    #[test]
    fn metadata_must_be_computed() {
        assert!(matches!(
            validate(&plan_shape(), 66, false, HOPPER, &good()),
            Err(Error::MetadataNotComputed)
        ));
    }

    #[test]
    fn combine_grid_takes_a_million_rows() {
        let shape = DecodeShape::new(1, 8192, 128, 1).unwrap();
        let mut a = good();
        a.q.1 = [1, 8192, 128, HEAD_DIM_K];
        a.q.2 = contiguous(a.q.1);
        a.k_cache.1[2] = 1;
        a.k_cache.2 = contiguous(a.k_cache.1);
        a.block_table.1[0] = 1;
        a.out.1 = [1, 8192, 128, HEAD_DIM_V];
        a.out.2 = contiguous(a.out.1);
        a.lse.1 = [1, 128, 8192];
        a.lse.2 = contiguous(a.lse.1);
        let l = validate(&shape, 1, true, HOPPER, &a).unwrap();
        // 4M (row, quarter) tasks over about COMBINE_TARGET_CTAS CTAs of 8 warps.
        let per_warp = combine_tasks_per_warp(8192 * 128 * 4);
        assert_eq!(per_warp, 8192 * 128 * 4 / (1024 * 8));
        assert_eq!(l.combine.tasks_per_warp as usize, per_warp);
        assert_eq!(
            l.combine_grid,
            ((8192 * 128 * 4 / (8 * per_warp)) as u32, 1, 1)
        );
    }

    #[test]
    fn kv_heads_beyond_the_decode_grid_y_are_refused() {
        let h = MAX_GRID_Y_Z + 1;
        let shape = DecodeShape::new(1, 1, h, h).unwrap();
        let mut a = good();
        a.q.1 = [1, 1, h, HEAD_DIM_K];
        a.q.2 = contiguous(a.q.1);
        a.k_cache.1[2] = h;
        a.k_cache.2 = contiguous(a.k_cache.1);
        a.block_table.1[0] = 1;
        a.out.1 = [1, 1, h, HEAD_DIM_V];
        a.out.2 = contiguous(a.out.1);
        a.lse.1 = [1, h, 1];
        a.lse.2 = contiguous(a.lse.1);
        match validate(&shape, 1, true, HOPPER, &a) {
            Err(Error::Overflow { what, value, .. }) => {
                assert!(what.starts_with("h_kv"));
                assert_eq!(value, h as u128);
            }
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn strided_views_are_accepted() {
        let mut a = good();
        // q as a slice of a larger [b, s_q, h_q, 640] buffer, k with a padded page stride.
        a.q.2 = [S_Q * H_Q * 640, H_Q * 640, 640, 1];
        a.k_cache.2[0] += 64;
        a.lse.2 = [1, B * S_Q, B];
        let l = check(&a).unwrap();
        assert_eq!(l.decode.q_head_stride, 640);
        assert_eq!(l.decode.output.lse_batch_stride, 1);
    }
}

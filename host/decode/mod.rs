//! The decode call: FlashMLA's `flash_mla_with_kvcache` (dense, paged KV cache), split-KV kernel plus
//! combine kernel, with every check FlashMLA's `dense_decode.h` makes (and the ones it misses) turned
//! into typed errors before anything is launched.

use crate::launch::{self, LaunchConfig};
use crate::ptx::PtxArch;
use crate::sched::SchedMetadata;
use crate::tensor::{DType, Element, TensorView, TensorViewMut};
use crate::{DecodeShape, Error, FlashMla, Result};
use cudarc::driver::{sys, CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceSlice};
use flashmla_abi::decode_config::{
    smem, COMBINE_THREADS, COMBINE_WARPS, COMBINE_WARPS_PER_ROW, DECODE_THREADS,
};
use flashmla_abi::params::{
    combine_tasks_per_warp, CombineParams, DecodeParams, OutputParams, Sm90DecodeParams,
    TensorMapBytes,
};
use flashmla_abi::sched::max_total_splits;
use flashmla_abi::sm90_config::{
    sm90_schedule_for_rows, sm90_smem, Sm90Schedule, SM90_THREADS, TILE_COLS,
};
use flashmla_abi::{HEAD_DIM_K, HEAD_DIM_V, PAGE_BLOCK_SIZE};
use std::sync::Arc;

/// Options of one decode call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DecodeOptions {
    /// Scale of `q·kᵀ` before the softmax; `None` is FlashMLA's default `1/√576`.
    pub softmax_scale: Option<f32>,
    /// Bottom-right-aligned causal mask over the `s_q` new tokens (ignored when `s_q == 1`).
    pub causal: bool,
    /// The longest `cache_seqlens` entry, when the caller knows it on the host: then a block table too
    /// small for it is an error instead of the tokens past the table being ignored.
    pub max_seqlen_k: Option<usize>,
    /// Which split-KV kernel runs.
    pub kernel: DecodeKernel,
}

/// The split-KV decode kernel a call runs. Both compute the same thing within the same tolerances;
/// the portable one stays available on Hopper as a cross-check and a baseline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DecodeKernel {
    /// The Hopper kernel on compute capability 9.0 devices, the portable kernel elsewhere.
    #[default]
    Auto,
    /// The wgmma + TMA kernels: the seesaw schedule (`kernels/src/decode_sm90.rs`) above 64 query rows
    /// per KV head, the single-softmax schedule (`kernels/src/decode_sm90_single.rs`) up to 64
    /// ([`flashmla_abi::sm90_config::sm90_schedule_for_rows`]); an error on devices without them.
    Hopper,
    /// The `mma.sync` + `cp.async` kernel (`kernels/src/portable.rs`), any sm_80+ device.
    Portable,
}

impl std::fmt::Display for DecodeKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DecodeKernel::Auto => "auto",
            DecodeKernel::Hopper => "hopper (wgmma + TMA)",
            DecodeKernel::Portable => "portable (mma.sync + cp.async)",
        })
    }
}

impl DecodeOptions {
    /// The scale the kernels use.
    pub fn scale(&self) -> f32 {
        self.softmax_scale
            .unwrap_or(1.0 / (HEAD_DIM_K as f32).sqrt())
    }
}

/// Device inputs of a decode call.
pub struct DecodeArgs<'a, T> {
    /// `[b, s_q, h_q, 576]`, last dimension contiguous.
    pub q: TensorView<'a, T, 4>,
    /// `[num_blocks, 64, h_kv, 576]`, last dimension contiguous; V is the first 512 columns.
    pub k_cache: TensorView<'a, T, 4>,
    /// `[b, max_blocks_per_seq]` page ids (`i32`), last dimension contiguous. Entries past a sequence's
    /// last page are never read (any value, e.g. FlashMLA's 2147480000, is fine).
    pub block_table: TensorView<'a, i32, 2>,
    /// `[b]` KV lengths (`i32`); the same values the plan's metadata was computed from.
    pub cache_seqlens: CudaView<'a, i32>,
}

/// Device outputs of a decode call.
pub struct DecodeOutputs<'a, T> {
    /// `[b, s_q, h_q, 512]` in q's dtype, last dimension contiguous.
    pub out: TensorViewMut<'a, T, 4>,
    /// `[b, h_q, s_q]` `f32`, natural-log LSE; `+inf` for rows that attend to no key.
    pub lse: TensorViewMut<'a, f32, 3>,
}

/// Owned, contiguous output buffers: `out [b, s_q, h_q, 512]` and `lse [b, h_q, s_q]`.
pub struct OutputBuffers<T> {
    /// `[b, s_q, h_q, 512]`.
    pub out: CudaSlice<T>,
    /// `[b, h_q, s_q]`.
    pub lse: CudaSlice<f32>,
    /// `[b, s_q, h_q]`.
    dims: [usize; 3],
}

impl<T: Element> OutputBuffers<T> {
    /// Allocates (uninitialised) outputs for `[b, s_q, h_q]`: a decode writes every element.
    pub fn alloc(stream: &Arc<CudaStream>, [b, s_q, h_q]: [usize; 3]) -> Result<Self> {
        // SAFETY: plain data, written by the decode or combine kernel before anything reads it.
        let out = unsafe { stream.alloc::<T>(b * s_q * h_q * HEAD_DIM_V) }
            .map_err(Error::cuda("cuMemAlloc"))?;
        let lse =
            unsafe { stream.alloc::<f32>(b * h_q * s_q) }.map_err(Error::cuda("cuMemAlloc"))?;
        Ok(Self {
            out,
            lse,
            dims: [b, s_q, h_q],
        })
    }

    /// The views a decode call writes.
    pub fn views(&mut self) -> Result<DecodeOutputs<'_, T>> {
        let [b, s_q, h_q] = self.dims;
        Ok(DecodeOutputs {
            out: TensorViewMut::contiguous(
                "out",
                self.out.as_view_mut(),
                [b, s_q, h_q, HEAD_DIM_V],
            )?,
            lse: TensorViewMut::contiguous("lse", self.lse.as_view_mut(), [b, h_q, s_q])?,
        })
    }
}

/// Raw decode arguments for runtimes that own their memory: device pointers, shapes and strides in
/// elements (see [`FlashMla::decode_raw`]).
#[derive(Clone, Copy, Debug)]
pub struct RawDecodeArgs {
    /// Type of q, k_cache and out.
    pub dtype: DType,
    /// `q` pointer, shape `[b, s_q, h_q, 576]` and strides.
    pub q: (sys::CUdeviceptr, [usize; 4], [usize; 4]),
    /// `k_cache` pointer, shape `[num_blocks, 64, h_kv, 576]` and strides.
    pub k_cache: (sys::CUdeviceptr, [usize; 4], [usize; 4]),
    /// `block_table` pointer, shape `[b, max_blocks_per_seq]` and strides.
    pub block_table: (sys::CUdeviceptr, [usize; 2], [usize; 2]),
    /// `cache_seqlens` pointer (`b` contiguous `i32`).
    pub cache_seqlens: sys::CUdeviceptr,
    /// `out` pointer, shape `[b, s_q, h_q, 512]` and strides.
    pub out: (sys::CUdeviceptr, [usize; 4], [usize; 4]),
    /// `lse` pointer, shape `[b, h_q, s_q]` and strides.
    pub lse: (sys::CUdeviceptr, [usize; 3], [usize; 3]),
    /// Scale, causality, length hint.
    pub options: DecodeOptions,
}

/// Everything one batch shape needs across decode calls: the scheduler metadata and the split
/// workspaces (`o_accum`, `lse_accum`), allocated once. A decode step refreshes the metadata with
/// [`FlashMla::get_mla_metadata`] and then runs [`FlashMla::decode`] for every layer; neither allocates
/// or synchronises the host, so the step can be captured in a CUDA graph. Like FlashMLA's workspaces, a
/// plan serves one stream at a time: its calls are ordered by the stream they are queued on.
pub struct DecodePlan {
    pub(crate) metadata: SchedMetadata,
    pub(crate) o_accum: CudaSlice<f32>,
    pub(crate) lse_accum: CudaSlice<f32>,
    /// One 128-byte tensor-map slot per Hopper decode CTA (sm_90a handles only).
    tensor_map_slots: Option<CudaSlice<u8>>,
    addresses: PlanAddresses,
}

/// Device addresses of the plan's own buffers, taken once when the plan is made: the buffers are only
/// ever used by the plan's calls, ordered by the one stream they are queued on, so a decode call needs
/// neither cudarc's per-buffer events (host work on every layer, and not capturable in a CUDA graph) nor a
/// fresh lookup.
#[derive(Clone, Copy, Debug)]
struct PlanAddresses {
    tile_scheduler_metadata: sys::CUdeviceptr,
    num_splits: sys::CUdeviceptr,
    o_accum: sys::CUdeviceptr,
    lse_accum: sys::CUdeviceptr,
    /// 0 when the plan has no tensor-map slots.
    tensor_map_slots: sys::CUdeviceptr,
}

impl std::fmt::Debug for DecodePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodePlan")
            .field("metadata", &self.metadata)
            .field("o_accum_len", &self.o_accum.len())
            .finish()
    }
}

impl DecodePlan {
    /// The batch shape.
    pub fn shape(&self) -> &DecodeShape {
        self.metadata.shape()
    }

    /// The scheduler metadata (pass it to [`FlashMla::get_mla_metadata`]).
    pub fn metadata(&self) -> &SchedMetadata {
        &self.metadata
    }

    /// Mutable access to the scheduler metadata.
    pub fn metadata_mut(&mut self) -> &mut SchedMetadata {
        &mut self.metadata
    }

    /// Bytes of device memory the plan holds.
    pub fn device_bytes(&self) -> usize {
        (self.o_accum.len() + self.lse_accum.len()) * 4
            + (self.metadata.tile_scheduler_metadata.len() + self.metadata.num_splits.len()) * 4
            + self.tensor_map_slots.as_ref().map_or(0, |s| s.len())
    }
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

/// Base address (bytes) and leading strides (elements) must be multiples of the access width.
fn check_aligned<const N: usize>(
    name: &'static str,
    ptr: u64,
    strides: [usize; N],
    elem_bytes: usize,
    multiple: usize,
) -> Result<()> {
    let bytes = (elem_bytes * multiple) as u64;
    if ptr % bytes != 0 {
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
                what: "every leading stride",
                multiple,
                value: s as u64,
            });
        }
    }
    Ok(())
}

/// Launch parameters of a validated decode call.
pub(crate) struct DecodeLaunch {
    decode: DecodeParams,
    combine: CombineParams,
    decode_grid: (u32, u32, u32),
    combine_grid: (u32, u32, u32),
    dtype: DType,
    kernel: DecodeKernel,
}

#[cfg(test)]
impl DecodeLaunch {
    pub(crate) fn decode_params(&self) -> &DecodeParams {
        &self.decode
    }
}

impl FlashMla {
    /// Allocates the metadata and split workspaces for `shape` on this device.
    ///
    /// ```no_run
    /// # fn main() -> flashmla::Result<()> {
    /// let fm = flashmla::FlashMla::new(0)?;
    /// let stream = fm.new_stream()?;
    /// let plan = fm.plan_decode(&stream, flashmla::DecodeShape::new(128, 1, 128, 1)?)?;
    /// println!("{} MB of workspace", plan.device_bytes() >> 20);
    /// # Ok(()) }
    /// ```
    pub fn plan_decode(&self, stream: &Arc<CudaStream>, shape: DecodeShape) -> Result<DecodePlan> {
        self.check_decode_device()?;
        let metadata = self.alloc_sched_metadata(stream, shape)?;
        let splits = max_total_splits(shape.batch_size(), metadata.num_sm_parts());
        let rows = splits
            .checked_mul(shape.num_heads_kv())
            .and_then(|v| v.checked_mul(shape.q_seq_per_hk()))
            .ok_or(Error::Overflow {
                what: "split workspace rows",
                value: u128::MAX,
                limit: "usize",
            })?;
        // SAFETY: f32 has no invalid bit patterns; the decode kernel writes every slot it schedules
        // before the combine kernel reads it.
        let o_accum =
            unsafe { stream.alloc::<f32>(rows * HEAD_DIM_V) }.map_err(Error::cuda("cuMemAlloc"))?;
        let lse_accum = unsafe { stream.alloc::<f32>(rows) }.map_err(Error::cuda("cuMemAlloc"))?;
        let tensor_map_slots = if self.inner.decode_sm90.is_some() {
            let ctas = shape.num_m_blocks() * shape.num_heads_kv() * metadata.num_sm_parts();
            // cuMemAlloc returns 256-byte aligned memory: every 128-byte slot is 64-byte aligned.
            Some(
                stream
                    .alloc_zeros::<u8>(ctas * 128)
                    .map_err(Error::cuda("cuMemAlloc"))?,
            )
        } else {
            None
        };
        let addresses = PlanAddresses {
            tile_scheduler_metadata: metadata.tile_scheduler_metadata.device_ptr(stream).0,
            num_splits: metadata.num_splits.device_ptr(stream).0,
            o_accum: o_accum.device_ptr(stream).0,
            lse_accum: lse_accum.device_ptr(stream).0,
            tensor_map_slots: tensor_map_slots
                .as_ref()
                .map_or(0, |s| s.device_ptr(stream).0),
        };
        Ok(DecodePlan {
            metadata,
            o_accum,
            lse_accum,
            tensor_map_slots,
            addresses,
        })
    }

    /// The kernel `kernel` stands for on this handle: [`DecodeKernel::Auto`] resolves to
    /// [`DecodeKernel::Hopper`] where the sm_90a module is loaded, else [`DecodeKernel::Portable`];
    /// asking for the Hopper kernel where there is none is [`Error::KernelUnavailable`].
    ///
    /// ```no_run
    /// # fn main() -> flashmla::Result<()> {
    /// use flashmla::{DecodeKernel, DecodeOptions, FlashMla};
    /// let fm = FlashMla::new(0)?;
    /// println!("decode runs the {} kernel", fm.resolve_kernel(DecodeKernel::Auto)?);
    /// // The portable mma.sync kernel, e.g. to cross-check the Hopper one:
    /// let options = DecodeOptions { kernel: DecodeKernel::Portable, ..Default::default() };
    /// # let _ = options;
    /// # Ok(()) }
    /// ```
    pub fn resolve_kernel(&self, kernel: DecodeKernel) -> Result<DecodeKernel> {
        match (kernel, self.inner.decode_sm90.is_some()) {
            (DecodeKernel::Portable, _) | (DecodeKernel::Auto, false) => Ok(DecodeKernel::Portable),
            (DecodeKernel::Hopper | DecodeKernel::Auto, true) => Ok(DecodeKernel::Hopper),
            (DecodeKernel::Hopper, false) => Err(Error::KernelUnavailable {
                module: self.inner.ptx.name,
            }),
        }
    }

    fn check_decode_device(&self) -> Result<()> {
        let info = self.device_info();
        if (info.max_shared_memory_per_block_optin as usize) < smem::TOTAL {
            return Err(Error::SharedMemory {
                needed: smem::TOTAL,
                available: info.max_shared_memory_per_block_optin as usize,
                device: info.name.clone(),
            });
        }
        Ok(())
    }

    /// Multi-head latent attention decode over a paged KV cache: FlashMLA's `flash_mla_with_kvcache`.
    ///
    /// Writes `out = softmax(scale · q·kᵀ) · v` and the natural-log `lse` for every query row; rows that
    /// attend to no key get zeros and `+inf`. Both kernels are queued on `stream`; nothing is allocated
    /// and the host does not wait. All arguments are validated first: on error nothing is launched and
    /// no output is touched.
    ///
    /// ```no_run
    /// use flashmla::{DecodeArgs, DecodeOptions, DecodeOutputs, DecodeShape, FlashMla, TensorView, TensorViewMut};
    /// use half::bf16;
    /// # fn main() -> flashmla::Result<()> {
    /// let cuda = |e| flashmla::Error::Cuda { op: "example", source: e };
    /// let fm = FlashMla::new(0)?;
    /// let stream = fm.new_stream()?;
    /// let (b, s_q, h_q, h_kv, pages) = (2, 1, 16, 1, 8);
    /// let q = stream.alloc_zeros::<bf16>(b * s_q * h_q * 576).map_err(cuda)?;
    /// let k_cache = stream.alloc_zeros::<bf16>(pages * 64 * h_kv * 576).map_err(cuda)?;
    /// let block_table = stream.clone_htod(&[0i32, 1, 2, 3, 4, 5, 6, 7]).map_err(cuda)?;
    /// let seqlens = stream.clone_htod(&[100i32, 256]).map_err(cuda)?;
    /// let mut out = stream.alloc_zeros::<bf16>(b * s_q * h_q * 512).map_err(cuda)?;
    /// let mut lse = stream.alloc_zeros::<f32>(b * h_q * s_q).map_err(cuda)?;
    ///
    /// let mut plan = fm.plan_decode(&stream, DecodeShape::new(b, s_q, h_q, h_kv)?)?;
    /// fm.get_mla_metadata(&stream, &seqlens, plan.metadata_mut())?; // once per decode step
    /// let args = DecodeArgs {
    ///     q: TensorView::contiguous("q", q.as_view(), [b, s_q, h_q, 576])?,
    ///     k_cache: TensorView::contiguous("k_cache", k_cache.as_view(), [pages, 64, h_kv, 576])?,
    ///     block_table: TensorView::contiguous("block_table", block_table.as_view(), [b, 4])?,
    ///     cache_seqlens: seqlens.as_view(),
    /// };
    /// let mut outputs = DecodeOutputs {
    ///     out: TensorViewMut::contiguous("out", out.as_view_mut(), [b, s_q, h_q, 512])?,
    ///     lse: TensorViewMut::contiguous("lse", lse.as_view_mut(), [b, h_q, s_q])?,
    /// };
    /// fm.decode(&stream, &mut plan, &args, &mut outputs, DecodeOptions::default())?; // every layer
    /// # Ok(()) }
    /// ```
    pub fn decode<T: Element>(
        &self,
        stream: &Arc<CudaStream>,
        plan: &mut DecodePlan,
        args: &DecodeArgs<'_, T>,
        outputs: &mut DecodeOutputs<'_, T>,
        options: DecodeOptions,
    ) -> Result<()> {
        self.check_stream(stream)?;
        self.check_buffer("q", args.q.data.stream())?;
        self.check_buffer("k_cache", args.k_cache.data.stream())?;
        self.check_buffer("block_table", args.block_table.data.stream())?;
        self.check_buffer("cache_seqlens", args.cache_seqlens.stream())?;
        self.check_buffer("out", outputs.out.data.stream())?;
        self.check_buffer("lse", outputs.lse.data.stream())?;
        if args.cache_seqlens.len() != args.q.shape[0] {
            return Err(Error::Shape {
                name: "cache_seqlens",
                expected: vec![args.q.shape[0]],
                got: vec![args.cache_seqlens.len()],
            });
        }
        let (q, _g0) = args.q.data.device_ptr(stream);
        let (k, _g1) = args.k_cache.data.device_ptr(stream);
        let (bt, _g2) = args.block_table.data.device_ptr(stream);
        let (sl, _g3) = args.cache_seqlens.device_ptr(stream);
        let (out, _g4) = outputs.out.data.device_ptr_mut(stream);
        let (lse, _g5) = outputs.lse.data.device_ptr_mut(stream);
        let raw = RawDecodeArgs {
            dtype: T::DTYPE,
            q: (q, args.q.shape, args.q.strides),
            k_cache: (k, args.k_cache.shape, args.k_cache.strides),
            block_table: (bt, args.block_table.shape, args.block_table.strides),
            cache_seqlens: sl,
            out: (out, outputs.out.shape, outputs.out.strides),
            lse: (lse, outputs.lse.shape, outputs.lse.strides),
            options,
        };
        let launch = self.validate_decode(plan, &raw)?;
        // SAFETY: every pointer comes from a live view of this context whose extent was checked against
        // its buffer (TensorView::new) and whose shape and strides were validated; the guards above order
        // the launches on `stream` after earlier writers and keep the buffers alive until queued.
        unsafe { self.launch_decode(stream.cu_stream(), plan, &launch) }
    }

    /// [`decode`](Self::decode) allocating the outputs: returns `out [b, s_q, h_q, 512]` and
    /// `lse [b, h_q, s_q]` (contiguous), like FlashMLA's Python API.
    pub fn decode_alloc<T: Element>(
        &self,
        stream: &Arc<CudaStream>,
        plan: &mut DecodePlan,
        args: &DecodeArgs<'_, T>,
        options: DecodeOptions,
    ) -> Result<(CudaSlice<T>, CudaSlice<f32>)> {
        let [b, s_q, h_q, _] = args.q.shape;
        let mut buffers = OutputBuffers::<T>::alloc(stream, [b, s_q, h_q])?;
        self.decode(stream, plan, args, &mut buffers.views()?, options)?;
        Ok((buffers.out, buffers.lse))
    }

    /// [`decode`](Self::decode) on raw device pointers and a raw stream, for runtimes that own their
    /// memory. Shapes, strides and alignment are validated exactly as in `decode`.
    ///
    /// # Safety
    /// Every pointer must address device memory of this handle's context that covers the view its shape
    /// and strides describe, `cache_seqlens` must hold `b` `i32`s, `stream` must belong to this context,
    /// and no other work may write the inputs or touch the outputs until the kernels finish.
    pub unsafe fn decode_raw(
        &self,
        stream: sys::CUstream,
        plan: &mut DecodePlan,
        args: &RawDecodeArgs,
    ) -> Result<()> {
        let launch = self.validate_decode(plan, args)?;
        // SAFETY: forwarded from the caller; shapes validated.
        unsafe { self.launch_decode(stream, plan, &launch) }
    }

    fn validate_decode(&self, plan: &DecodePlan, a: &RawDecodeArgs) -> Result<DecodeLaunch> {
        self.check_decode_device()?;
        if plan.metadata.cu_ctx != self.context().cu_ctx() as usize {
            return Err(Error::WrongDevice {
                name: "plan",
                expected: self.device_info().ordinal,
                got: usize::MAX,
            });
        }
        validate(
            plan.shape(),
            plan.metadata.num_sm_parts(),
            plan.metadata.computed,
            a,
        )
    }

    /// Queues the split-KV kernel and the combine kernel.
    ///
    /// # Safety
    /// `launch` was validated for `plan`; the user buffers it points to are live and ordered on `stream`.
    unsafe fn launch_decode(
        &self,
        stream: sys::CUstream,
        plan: &mut DecodePlan,
        launch: &DecodeLaunch,
    ) -> Result<()> {
        self.bind()?;
        let inner = &self.inner;
        let hopper = match self.resolve_kernel(launch.kernel)? {
            DecodeKernel::Hopper => inner.decode_sm90.as_ref(),
            _ => None,
        };
        let combine_fn = match launch.dtype {
            DType::Bf16 => &inner.combine_bf16,
            DType::F16 => &inner.combine_f16,
        };
        // Only the sm_90a module waits with griddepcontrol; PDL lets each kernel's launch overlap the
        // previous kernel's tail.
        let pdl = inner.ptx.arch == PtxArch::Sm90a;
        let PlanAddresses {
            tile_scheduler_metadata,
            num_splits,
            o_accum,
            lse_accum,
            tensor_map_slots,
        } = plan.addresses;
        let decode = DecodeParams {
            o_accum,
            lse_accum,
            tile_scheduler_metadata,
            num_splits,
            ..launch.decode
        };
        let combine = CombineParams {
            o_accum,
            lse_accum,
            num_splits,
            ..launch.combine
        };
        let combine_config = LaunchConfig {
            grid: launch.combine_grid,
            block: (COMBINE_THREADS, 1, 1),
            dynamic_smem_bytes: 0,
            programmatic_serialization: pdl,
        };
        if let Some(kernels) = hopper {
            if tensor_map_slots == 0 {
                // A plan made by a handle without the Hopper kernels (e.g. the sm_80 module forced).
                return Err(Error::KernelUnavailable {
                    module: inner.ptx.name,
                });
            }
            let params = Sm90DecodeParams {
                common: decode,
                k_tensor_map: encode_kv_tensor_map(&decode, launch.dtype)?,
                tensor_map_slots,
            };
            let (bf16_fn, f16_fn) =
                match sm90_schedule_for_rows(launch.decode.q_seq_per_hk as usize) {
                    Sm90Schedule::Seesaw => &kernels.seesaw,
                    Sm90Schedule::SingleSoftmax => &kernels.single_softmax,
                };
            let decode_fn = match launch.dtype {
                DType::Bf16 => bf16_fn,
                DType::F16 => f16_fn,
            };
            let config = LaunchConfig {
                grid: launch.decode_grid,
                block: (SM90_THREADS, 1, 1),
                dynamic_smem_bytes: sm90_smem::TOTAL as u32,
                programmatic_serialization: pdl,
            };
            // SAFETY: the kernels take exactly these records; pointers validated by the caller and
            // owned by the plan (one tensor-map slot per CTA of this grid).
            return unsafe {
                launch::launch(decode_fn.cu_function(), stream, &config, &params)?;
                launch::launch(combine_fn.cu_function(), stream, &combine_config, &combine)
            };
        }
        let decode_fn = match launch.dtype {
            DType::Bf16 => &inner.decode_bf16,
            DType::F16 => &inner.decode_f16,
        };
        let decode_config = LaunchConfig {
            grid: launch.decode_grid,
            block: (DECODE_THREADS, 1, 1),
            dynamic_smem_bytes: smem::TOTAL as u32,
            programmatic_serialization: pdl,
        };
        // SAFETY: kernels take exactly these records; pointers validated by the caller and owned by plan.
        unsafe {
            launch::launch(decode_fn.cu_function(), stream, &decode_config, &decode)?;
            launch::launch(combine_fn.cu_function(), stream, &combine_config, &combine)
        }
    }
}

/// Encodes the KV cache as the Hopper kernel's TMA tensor map: a 4-D tensor (576 columns, 64 tokens,
/// h_kv, num_blocks) of 16-bit elements with the validated strides, read in 64 × 64 boxes with the
/// 128-byte swizzle; coordinates outside it (page ids outside the cache) read as zeros, like
/// FlashMLA's. A pure host call (no device work), so it is made per decode call.
fn encode_kv_tensor_map(d: &DecodeParams, dtype: DType) -> Result<TensorMapBytes> {
    use sys::{
        CUtensorMapDataType as T, CUtensorMapFloatOOBfill as Fill, CUtensorMapInterleave as I,
        CUtensorMapL2promotion as L2, CUtensorMapSwizzle as Sw,
    };
    let data_type = match dtype {
        DType::Bf16 => T::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        DType::F16 => T::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
    };
    let dims: [u64; 4] = [
        HEAD_DIM_K as u64,
        PAGE_BLOCK_SIZE as u64,
        d.num_heads_kv as u64,
        d.num_blocks as u64,
    ];
    // Byte strides of dims 1..4. A dimension of extent 1 is only ever indexed at 0, so its stride is
    // irrelevant, but TMA wants a non-zero multiple of 16 below 2^40.
    let stride = |elements: i64, extent: u64| -> Result<u64> {
        let bytes = elements as u64 * 2;
        match (bytes, extent) {
            (0, 1) => Ok(16),
            (b, _) if b > 0 && b < 1 << 40 && b % 16 == 0 => Ok(b),
            _ => Err(Error::Overflow {
                what: "k_cache stride for TMA (bytes, multiple of 16 below 2^40)",
                value: bytes as u128,
                limit: "2^40",
            }),
        }
    };
    let strides = [
        stride(d.k_row_stride, dims[1])?,
        stride(d.k_head_stride, dims[2])?,
        stride(d.k_page_stride, dims[3])?,
    ];
    let box_dims: [u32; 4] = [TILE_COLS as u32, PAGE_BLOCK_SIZE as u32, 1, 1];
    let element_strides = [1u32; 4];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: a pure encoding call writing 128 bytes into `map`; every array has the rank's length.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            data_type,
            4,
            d.k_cache as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            box_dims.as_ptr(),
            element_strides.as_ptr(),
            I::CU_TENSOR_MAP_INTERLEAVE_NONE,
            Sw::CU_TENSOR_MAP_SWIZZLE_128B,
            L2::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            Fill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .map_err(Error::cuda("cuTensorMapEncodeTiled"))?;
    // SAFETY: initialised by the successful call (and zeroed before).
    Ok(TensorMapBytes(unsafe { map.assume_init() }.opaque))
}

/// Every check of a decode call that needs no device: shapes against the plan, head dims, page size,
/// contiguity, alignment, scale, sizes against 32-bit kernel arithmetic and grid limits.
pub(crate) fn validate(
    planned: &DecodeShape,
    num_sm_parts: usize,
    metadata_computed: bool,
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
    check_aligned("q", q_ptr, q_strides, 2, 8)?;
    check_aligned("k_cache", k_ptr, k_strides, 2, 8)?;
    check_aligned("out", out_ptr, out_strides, 2, 2)?;
    check_aligned("lse", lse_ptr, [0, 1], 4, 1)?;
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
            what: "block_table columns × 64",
            value: bt_shape[1] as u128 * 64,
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
    let combine_blocks = combine_tasks.div_ceil(COMBINE_WARPS as usize * tasks_per_warp);
    // Grid y and z are limited to 65535 (h_kv is the decode grid's y, b the combine grid's y).
    for (what, value) in [
        ("h_kv (decode grid y)", shape.num_heads_kv()),
        ("batch size (combine grid y)", b),
    ] {
        if value > 65_535 {
            return Err(Error::Overflow {
                what,
                value: value as u128,
                limit: "65535",
            });
        }
    }
    if combine_blocks > i32::MAX as usize {
        return Err(Error::Overflow {
            what: "h_kv · s_q · h_q / h_kv / 2 (combine grid x)",
            value: combine_blocks as u128,
            limit: "2^31 - 1",
        });
    }
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
        kernel: a.options.kernel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        validate(&plan_shape(), 66, true, a)
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
        assert_eq!(validate(&shape, 66, true, &a).unwrap().decode.is_causal, 0);
    }

    #[test]
    fn a_plan_with_its_own_sm_parts_takes_the_same_inputs() {
        let shape = plan_shape().with_num_sm_parts(8).unwrap();
        let launch = validate(&shape, 8, true, &good()).expect("same batch dimensions");
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

    #[test]
    fn metadata_must_be_computed() {
        assert!(matches!(
            validate(&plan_shape(), 66, false, &good()),
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
        let l = validate(&shape, 1, true, &a).unwrap();
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

//! The decode call: FlashMLA's `flash_mla_with_kvcache` (dense, paged KV cache), split-KV kernel plus
//! combine kernel.
//!
//! This module is the API: the arguments and options of a call, the per-shape [`DecodePlan`], and
//! [`FlashMla`]'s methods that make plans, decode and launch. Every check FlashMLA's `dense_decode.h`
//! makes (and the ones it misses) is a typed error raised by `validate.rs` before anything is
//! launched; the Hopper kernel's TMA descriptor of the KV cache is built in `tensor_map.rs`.

mod tensor_map;
mod validate;

#[cfg(test)]
pub(crate) use validate::check_no_self_overlap;
use validate::kernel_for_handle;
pub(crate) use validate::{validate, Available, DecodeLaunch, LaunchKernel};

use crate::launch::{self, LaunchConfig};
use crate::ptx::PtxArch;
use crate::sched::SchedMetadata;
use crate::tensor::{DType, Element, TensorView, TensorViewMut};
use crate::{DecodeShape, Error, FlashMla, Result};
use cudarc::driver::{sys, CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceSlice};
use flashmla_abi::decode_config::{smem, COMBINE_THREADS, DECODE_THREADS};
use flashmla_abi::params::{CombineParams, DecodeParams, Sm90DecodeParams, TENSOR_MAP_BYTES};
use flashmla_abi::sched::max_total_splits;
use flashmla_abi::sm90_config::{sm90_schedule_for_rows, sm90_smem, Sm90Schedule, SM90_THREADS};
use flashmla_abi::{HEAD_DIM_K, HEAD_DIM_V};
use std::sync::Arc;
use tensor_map::encode_kv_tensor_map;

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
    /// The Hopper kernel on compute capability 9.0 devices, the portable kernel elsewhere. Also the
    /// portable kernel for a call the Hopper kernel cannot take: a `k_cache` view whose strides TMA
    /// cannot describe (a zero stride over more than one index, or one of 2^40 bytes or more), or a
    /// plan made by a handle without the Hopper kernels (it has no tensor-map slots).
    #[default]
    Auto,
    /// The wgmma + TMA kernels: the seesaw schedule (`kernels/src/decode_sm90.rs`) above 64 query rows
    /// per KV head, the single-softmax schedule (`kernels/src/decode_sm90_single.rs`) up to 64
    /// ([`flashmla_abi::sm90_config::sm90_schedule_for_rows`]); an error on devices without them
    /// ([`Error::KernelUnavailable`]), with a plan made without them ([`Error::PlanWithoutTensorMaps`])
    /// and for a `k_cache` view TMA cannot read ([`Error::TmaStride`]), raised before anything runs.
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
    /// Allocates zeroed outputs for `[b, s_q, h_q]`. Zeroed because the fields are public: the buffers
    /// may be read before (or without) a decode writing them.
    pub fn alloc(stream: &Arc<CudaStream>, [b, s_q, h_q]: [usize; 3]) -> Result<Self> {
        let (lse_len, out_len) = output_lens([b, s_q, h_q])?;
        let out = stream
            .alloc_zeros::<T>(out_len)
            .map_err(Error::cuda("cuMemAlloc"))?;
        let lse = stream
            .alloc_zeros::<f32>(lse_len)
            .map_err(Error::cuda("cuMemAlloc"))?;
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

/// Elements of `lse [b, h_q, s_q]` and `out [b, s_q, h_q, HEAD_DIM_V]`.
fn output_lens([b, s_q, h_q]: [usize; 3]) -> Result<(usize, usize)> {
    // Each step multiplies a usize by a usize, so its exact value fits the error's u128.
    let mul = |what: &'static str, x: usize, y: usize| {
        x.checked_mul(y).ok_or(Error::Overflow {
            what,
            value: x as u128 * y as u128,
            limit: "usize",
        })
    };
    let rows = mul("b · s_q", b, s_q)?;
    let rows = mul("b · s_q · h_q (lse elements)", rows, h_q)?;
    let elements = mul("b · s_q · h_q · 512 (out elements)", rows, HEAD_DIM_V)?;
    Ok((rows, elements))
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
    /// One tensor-map slot (`TENSOR_MAP_BYTES`) per Hopper decode CTA (sm_90a handles only).
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

/// Rows (`lse_accum`) and elements (`o_accum`, `HEAD_DIM_V` per row) of the split workspaces: one row
/// per split slot, KV head and query row of a KV head.
fn split_workspace_len(splits: usize, shape: DecodeShape) -> Result<(usize, usize)> {
    let rows = splits as u128 * shape.num_heads_kv() as u128 * shape.q_seq_per_hk() as u128;
    let elements = rows * HEAD_DIM_V as u128;
    match (usize::try_from(rows), usize::try_from(elements)) {
        (Ok(rows), Ok(elements)) => Ok((rows, elements)),
        _ => Err(Error::Overflow {
            what: "split workspace (split slots · h_kv · s_q·h_q/h_kv · 512 f32)",
            value: elements,
            limit: "usize",
        }),
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
        let (rows, o_accum_len) = split_workspace_len(splits, shape)?;
        // SAFETY: f32 has no invalid bit patterns; the decode kernel writes every slot it schedules
        // before the combine kernel reads it.
        let o_accum =
            unsafe { stream.alloc::<f32>(o_accum_len) }.map_err(Error::cuda("cuMemAlloc"))?;
        let lse_accum = unsafe { stream.alloc::<f32>(rows) }.map_err(Error::cuda("cuMemAlloc"))?;
        let tensor_map_slots = if self.inner.decode_sm90.is_some() {
            let ctas = shape.num_m_blocks() * shape.num_heads_kv() * metadata.num_sm_parts();
            // cuMemAlloc returns 256-byte aligned memory: every 128-byte slot is 64-byte aligned.
            Some(
                stream
                    .alloc_zeros::<u8>(ctas * TENSOR_MAP_BYTES)
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
    /// asking for the Hopper kernel where there is none is [`Error::KernelUnavailable`]. A decode call
    /// with `Auto` on a handle with the Hopper kernels still runs the portable kernel where the Hopper
    /// one cannot take its arguments (see [`DecodeKernel::Auto`]).
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
        kernel_for_handle(
            kernel,
            self.inner.decode_sm90.is_some(),
            self.inner.ptx.name,
        )
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

    /// Fills `plan`'s split workspaces (`o_accum`, `lse_accum`) with NaN, on `stream`: a debugging aid.
    /// The combine kernel reads only the partials the decode kernel wrote in the same call, so a decode
    /// after this gives the same output; a partial read without being written would turn its row into
    /// NaN. The test harness poisons every plan this way (the decode kernel writes the partials with
    /// bulk copies, which `compute-sanitizer --tool initcheck` does not see as writes).
    ///
    /// ```no_run
    /// # fn main() -> flashmla::Result<()> {
    /// let fm = flashmla::FlashMla::new(0)?;
    /// let stream = fm.new_stream()?;
    /// let mut plan = fm.plan_decode(&stream, flashmla::DecodeShape::new(4, 1, 128, 1)?)?;
    /// fm.poison_plan_workspaces(&stream, &mut plan)?;
    /// # Ok(()) }
    /// ```
    pub fn poison_plan_workspaces(
        &self,
        stream: &Arc<CudaStream>,
        plan: &mut DecodePlan,
    ) -> Result<()> {
        self.check_stream(stream)?;
        self.check_metadata("plan", &plan.metadata)?;
        self.bind()?;
        let nan = f32::NAN.to_bits();
        for (buf, len) in [
            (plan.addresses.o_accum, plan.o_accum.len()),
            (plan.addresses.lse_accum, plan.lse_accum.len()),
        ] {
            // SAFETY: the plan's own allocation of `len` f32 in this context (checked above), ordered
            // on `stream` like every call that uses the plan.
            unsafe { sys::cuMemsetD32Async(buf, nan, len, stream.cu_stream()) }
                .result()
                .map_err(Error::cuda("cuMemsetD32Async"))?;
        }
        Ok(())
    }

    fn validate_decode(&self, plan: &DecodePlan, a: &RawDecodeArgs) -> Result<DecodeLaunch> {
        self.check_decode_device()?;
        self.check_metadata("plan", &plan.metadata)?;
        let available = Available {
            module: self.inner.ptx.name,
            hopper: self.inner.decode_sm90.is_some(),
            plan_tensor_map_slots: plan.addresses.tensor_map_slots != 0,
        };
        validate(
            plan.shape(),
            plan.metadata.num_sm_parts(),
            plan.metadata.computed,
            available,
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
        if let LaunchKernel::Hopper { k_strides } = launch.kernel {
            // Validation chose the Hopper kernel only with this handle's kernels and this plan's slots;
            // checked again because a launch without slots would write tensor maps through address 0.
            let Some(kernels) = inner.decode_sm90.as_ref() else {
                return Err(Error::KernelUnavailable {
                    module: inner.ptx.name,
                });
            };
            if tensor_map_slots == 0 {
                return Err(Error::PlanWithoutTensorMaps);
            }
            let params = Sm90DecodeParams {
                common: decode,
                k_tensor_map: encode_kv_tensor_map(&decode, k_strides, launch.dtype)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes() {
        assert_eq!(output_lens([2, 3, 4]).unwrap(), (24, 24 * HEAD_DIM_V));
        // b · s_q · h_q fits in usize, times 512 does not: an error, not a panic or a wrapped size.
        let h = 1usize << 60;
        match output_lens([1, 1, h]) {
            Err(Error::Overflow { value, .. }) => assert_eq!(value, h as u128 * 512),
            other => panic!("{other:?}"),
        }
        match output_lens([usize::MAX, usize::MAX, usize::MAX]) {
            Err(Error::Overflow { what, value, .. }) => {
                assert_eq!(
                    (what, value),
                    ("b · s_q", usize::MAX as u128 * usize::MAX as u128)
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn split_workspace_sizes() {
        let shape = DecodeShape::new(4, 2, 16, 2).unwrap();
        // 8 · 2 KV heads · 16 rows each.
        assert_eq!(
            split_workspace_len(8, shape).unwrap(),
            (256, 256 * HEAD_DIM_V)
        );
        match split_workspace_len(usize::MAX, shape) {
            Err(Error::Overflow { value, .. }) => {
                assert_eq!(value, usize::MAX as u128 * 32 * HEAD_DIM_V as u128)
            }
            other => panic!("{other:?}"),
        }
    }
}

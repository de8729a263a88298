//! # flashmla-candle
//!
//! FlashMLA's multi-head latent attention (MLA) decode over a paged KV cache, from the [`flashmla`]
//! crate, on candle [`Tensor`]s: FlashMLA's two calls, [`get_mla_metadata`] (once per decode step) and
//! [`flash_mla_with_kvcache`] (once per layer), with FlashMLA's layouts and semantics. The decode is a
//! candle [`CustomOp3`] over `(q, k_cache, block_table)`, in the pattern of candle-flash-attn; it runs
//! on the candle device's stream, in its CUDA context, and returns `out` and `lse` as candle tensors.
//!
//! | tensor | shape | dtype |
//! |---|---|---|
//! | `q` | `[b, s_q, h_q, 576]` | bf16 or f16 |
//! | `k_cache` | `[num_pages, 64, h_kv, 576]` (V = the first 512 columns) | as `q` |
//! | `block_table` | `[b, max_pages_per_seq]` | i32 |
//! | `cache_seqlens` | `[b]`, contiguous | i32 |
//! | `out` (returned) | `[b, s_q, h_q, 512]` | as `q` |
//! | `lse` (returned) | `[b, h_q, s_q]`, natural log, `+inf` for rows that attend to no key | f32 |
//!
//! Views may be strided (the last dimension contiguous); every invalid input is an error before
//! anything is launched. Inference only: the op has no backward pass.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! # fn main() -> candle_core::Result<()> {
//! let device = Device::new_cuda(0)?;
//! let (b, s_q, h_q, h_kv, pages) = (2, 1, 16, 1, 8);
//! let q = Tensor::randn(0f32, 0.1, (b, s_q, h_q, 576), &device)?.to_dtype(DType::BF16)?;
//! let k_cache = Tensor::randn(0f32, 0.1, (pages, 64, h_kv, 576), &device)?.to_dtype(DType::BF16)?;
//! let block_table = Tensor::new(&[[0i32, 1, 2, 3], [4, 5, 6, 7]], &device)?;
//! let cache_seqlens = Tensor::new(&[100i32, 256], &device)?;
//!
//! let metadata = flashmla_candle::get_mla_metadata(&cache_seqlens, s_q, h_q, h_kv)?; // per step
//! let (out, lse) = flashmla_candle::flash_mla_with_kvcache(
//!     &q, &k_cache, &block_table, &cache_seqlens, &metadata, None, true, // per layer
//! )?;
//! assert_eq!(out.dims(), &[b, s_q, h_q, 512]);
//! assert_eq!(lse.dims(), &[b, h_q, s_q]);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

use candle_core::backend::BackendStorage;
use candle_core::cuda::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use flashmla::cudarc::driver::CudaView;
use flashmla::half::{bf16, f16};
use flashmla::{
    DecodeArgs, DecodePlan, DecodeShape, Element, FlashMla, OutputBuffers, Schedule, TensorView,
};
use std::sync::Mutex;

pub use flashmla;
pub use flashmla::{DecodeKernel, DecodeOptions};

/// Width of q/k rows (512 latent + 64 RoPE columns).
const HEAD_DIM_K: usize = flashmla::abi::HEAD_DIM_K;
/// Width of v/out rows.
const HEAD_DIM_V: usize = flashmla::abi::HEAD_DIM_V;

fn wrap(e: flashmla::Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// The scheduling metadata of one decode step (FlashMLA's `tile_scheduler_metadata` and
/// `num_splits`), with the split workspaces the decode needs, on the device of `cache_seqlens`.
///
/// Made by [`get_mla_metadata`] for a batch shape; [`MlaMetadata::update`] recomputes it in place for
/// the next step's lengths. One step's layers share it; like FlashMLA's workspaces it serves one
/// stream (the candle device's).
pub struct MlaMetadata {
    flashmla: FlashMla,
    device: CudaDevice,
    plan: Mutex<DecodePlan>,
}

impl std::fmt::Debug for MlaMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlaMetadata")
            .field("shape", &self.shape())
            .finish()
    }
}

/// FlashMLA's `get_mla_metadata`: the tile schedule for a batch of `b = cache_seqlens.len()` requests
/// with `seqlen_q` new tokens, `num_heads_q` query heads and `num_heads_kv` KV heads, computed on the
/// GPU (no host synchronisation).
pub fn get_mla_metadata(
    cache_seqlens: &Tensor,
    seqlen_q: usize,
    num_heads_q: usize,
    num_heads_kv: usize,
) -> Result<MlaMetadata> {
    let b = seqlens_len(cache_seqlens)?;
    let shape = DecodeShape::new(b, seqlen_q, num_heads_q, num_heads_kv).map_err(wrap)?;
    let device = cache_seqlens.device().as_cuda_device()?.clone();
    let stream = device.cuda_stream();
    let flashmla = FlashMla::with_context(stream.context().clone()).map_err(wrap)?;
    let plan = flashmla.plan_decode(&stream, shape).map_err(wrap)?;
    let metadata = MlaMetadata {
        flashmla,
        device,
        plan: Mutex::new(plan),
    };
    metadata.update(cache_seqlens)?;
    Ok(metadata)
}

impl MlaMetadata {
    /// Recomputes the schedule for this step's `cache_seqlens` (same batch size), reusing the buffers.
    pub fn update(&self, cache_seqlens: &Tensor) -> Result<()> {
        let b = seqlens_len(cache_seqlens)?;
        let mut plan = self.lock_plan()?;
        if b != plan.shape().batch_size() {
            candle_core::bail!(
                "cache_seqlens has {b} requests, but the metadata was made for {}",
                plan.shape().batch_size()
            );
        }
        let (storage, layout) = cache_seqlens.storage_and_layout();
        let seqlens = i32_view(&storage, layout, "cache_seqlens")?;
        let stream = self.device.cuda_stream();
        self.flashmla
            .get_mla_metadata(&stream, &seqlens, plan.metadata_mut())
            .map_err(wrap)
    }

    /// The batch shape the metadata was made for.
    pub fn shape(&self) -> DecodeShape {
        match self.plan.lock() {
            Ok(plan) => *plan.shape(),
            Err(poisoned) => *poisoned.into_inner().shape(),
        }
    }

    /// The schedule, copied to the host (synchronises the device's stream): FlashMLA's
    /// `tile_scheduler_metadata` and `num_splits`.
    pub fn schedule(&self) -> Result<Schedule> {
        let plan = self.lock_plan()?;
        plan.metadata()
            .to_host(&self.device.cuda_stream())
            .map_err(wrap)
    }

    fn lock_plan(&self) -> Result<std::sync::MutexGuard<'_, DecodePlan>> {
        // A panic while the plan was held cannot leave it half-written: every call that writes it
        // validates first and then only queues device work.
        Ok(self
            .plan
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// FlashMLA's `flash_mla_with_kvcache`: MLA decode of `q` against the paged `k_cache`, returning
/// `(out, lse)`; `softmax_scale` defaults to `1/√576`; `causal` masks bottom-right aligned over the
/// `s_q` new tokens. See the crate docs for shapes.
#[allow(clippy::too_many_arguments)] // FlashMLA's signature
pub fn flash_mla_with_kvcache(
    q: &Tensor,
    k_cache: &Tensor,
    block_table: &Tensor,
    cache_seqlens: &Tensor,
    metadata: &MlaMetadata,
    softmax_scale: Option<f32>,
    causal: bool,
) -> Result<(Tensor, Tensor)> {
    let options = DecodeOptions {
        softmax_scale,
        causal,
        ..DecodeOptions::default()
    };
    flash_mla_with_kvcache_options(q, k_cache, block_table, cache_seqlens, metadata, options)
}

/// [`flash_mla_with_kvcache`] with every [`DecodeOptions`] (the kernel choice, a known longest
/// length).
pub fn flash_mla_with_kvcache_options(
    q: &Tensor,
    k_cache: &Tensor,
    block_table: &Tensor,
    cache_seqlens: &Tensor,
    metadata: &MlaMetadata,
    options: DecodeOptions,
) -> Result<(Tensor, Tensor)> {
    let op = FlashMlaDecode {
        cache_seqlens,
        metadata,
        options,
        lse: Mutex::new(None),
    };
    let out = q.apply_op3_no_bwd(k_cache, block_table, &op)?;
    let lse = op
        .lse
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
        .ok_or_else(|| candle_core::Error::msg("flash_mla_with_kvcache produced no lse"))?;
    let (b, s_q, h_q, _) = out.dims4()?;
    let lse = Tensor::from_storage(Storage::Cuda(lse), (b, h_q, s_q), BackpropOp::none(), false);
    Ok((out, lse))
}

/// The decode as a candle op over `(q, k_cache, block_table)`; `lse` is handed back through `lse`.
struct FlashMlaDecode<'a> {
    cache_seqlens: &'a Tensor,
    metadata: &'a MlaMetadata,
    options: DecodeOptions,
    lse: Mutex<Option<CudaStorage>>,
}

impl CustomOp3 for FlashMlaDecode<'_> {
    fn name(&self) -> &'static str {
        "flash-mla-with-kvcache"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("flash_mla_with_kvcache runs FlashMLA's GPU kernels: the tensors must be on a CUDA device, not the CPU")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_layout: &Layout,
        k_cache: &CudaStorage,
        k_layout: &Layout,
        block_table: &CudaStorage,
        bt_layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if k_cache.dtype() != q.dtype() {
            candle_core::bail!(
                "k_cache has dtype {:?}, but q has {:?}",
                k_cache.dtype(),
                q.dtype()
            );
        }
        let inputs = Inputs {
            q: (q, q_layout),
            k_cache: (k_cache, k_layout),
            block_table: (block_table, bt_layout),
        };
        match q.dtype() {
            DType::BF16 => self.decode::<bf16>(&inputs),
            DType::F16 => self.decode::<f16>(&inputs),
            other => candle_core::bail!("q must be bf16 or f16, got {other:?}"),
        }
    }
}

struct Inputs<'a> {
    q: (&'a CudaStorage, &'a Layout),
    k_cache: (&'a CudaStorage, &'a Layout),
    block_table: (&'a CudaStorage, &'a Layout),
}

impl FlashMlaDecode<'_> {
    fn decode<T: Element + CudaDType>(&self, inputs: &Inputs<'_>) -> Result<(CudaStorage, Shape)> {
        let device = inputs.q.0.device.clone();
        let stream = device.cuda_stream();
        let q = view4::<T>(inputs.q, "q")?;
        let k_cache = view4::<T>(inputs.k_cache, "k_cache")?;
        let block_table = {
            let (storage, layout) = inputs.block_table;
            let slice = storage.as_cuda_slice::<i32>()?;
            TensorView::new(
                "block_table",
                slice.slice(layout.start_offset()..),
                dims::<2>(layout, "block_table")?,
                strides::<2>(layout, "block_table")?,
            )
            .map_err(wrap)?
        };
        let (seqlens_storage, seqlens_layout) = self.cache_seqlens.storage_and_layout();
        let cache_seqlens = i32_view(&seqlens_storage, seqlens_layout, "cache_seqlens")?;
        let [b, s_q, h_q, _] = q.shape();
        let args = DecodeArgs {
            q,
            k_cache,
            block_table,
            cache_seqlens,
        };
        let mut buffers = OutputBuffers::<T>::alloc(&stream, [b, s_q, h_q]).map_err(wrap)?;
        let mut plan = self.metadata.lock_plan()?;
        self.metadata
            .flashmla
            .decode(
                &stream,
                &mut plan,
                &args,
                &mut buffers.views().map_err(wrap)?,
                self.options,
            )
            .map_err(wrap)?;
        let OutputBuffers { out, lse, .. } = buffers;
        *self.lse.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(CudaStorage::wrap_cuda_slice(lse, device.clone()));
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from((b, s_q, h_q, HEAD_DIM_V)),
        ))
    }
}

/// `[b]` of a rank-1 i32 tensor.
fn seqlens_len(cache_seqlens: &Tensor) -> Result<usize> {
    if cache_seqlens.dtype() != DType::I32 {
        candle_core::bail!("cache_seqlens must be i32, got {:?}", cache_seqlens.dtype());
    }
    match cache_seqlens.dims() {
        &[b] => Ok(b),
        other => candle_core::bail!("cache_seqlens must be [b], got {other:?}"),
    }
}

/// A contiguous `[b]` i32 view of a CUDA tensor's storage.
fn i32_view<'a>(storage: &'a Storage, layout: &Layout, name: &str) -> Result<CudaView<'a, i32>> {
    let Storage::Cuda(storage) = storage else {
        candle_core::bail!("{name} must be on a CUDA device");
    };
    if layout.dims().len() != 1 || !layout.is_contiguous() {
        candle_core::bail!(
            "{name} must be a contiguous [b] tensor, got shape {:?} strides {:?}",
            layout.dims(),
            layout.stride()
        );
    }
    let slice = storage.as_cuda_slice::<i32>()?;
    let start = layout.start_offset();
    Ok(slice.slice(start..start + layout.dims()[0]))
}

/// A strided 4-D view of a q/k_cache storage; the decode checks head dims, page size and alignment.
fn view4<'a, T: CudaDType>(
    (storage, layout): (&'a CudaStorage, &Layout),
    name: &'static str,
) -> Result<TensorView<'a, T, 4>> {
    let slice = storage.as_cuda_slice::<T>()?;
    TensorView::new(
        name,
        slice.slice(layout.start_offset()..),
        dims::<4>(layout, name)?,
        strides::<4>(layout, name)?,
    )
    .map_err(wrap)
}

fn dims<const N: usize>(layout: &Layout, name: &str) -> Result<[usize; N]> {
    layout.dims().try_into().map_err(|_| {
        candle_core::Error::msg(format!(
            "{name} must have {N} dimensions{}, got shape {:?}",
            expected_layout(name),
            layout.dims()
        ))
    })
}

fn strides<const N: usize>(layout: &Layout, name: &str) -> Result<[usize; N]> {
    layout.stride().try_into().map_err(|_| {
        candle_core::Error::msg(format!(
            "{name} must have {N} dimensions, got strides {:?}",
            layout.stride()
        ))
    })
}

fn expected_layout(name: &str) -> String {
    match name {
        "q" => format!(" [b, s_q, h_q, {HEAD_DIM_K}]"),
        "k_cache" => format!(" [num_pages, 64, h_kv, {HEAD_DIM_K}]"),
        "block_table" => " [b, max_pages_per_seq]".to_owned(),
        _ => String::new(),
    }
}

//! Tile-scheduler metadata: FlashMLA's `get_mla_metadata`, on the GPU (graph-capturable, no host sync)
//! and on the CPU (same Rust source, `flashmla_abi::sched::schedule`).

use crate::launch::{self, LaunchConfig};
use crate::{Error, FlashMla, Result};
use cudarc::driver::{sys, CudaSlice, CudaStream, CudaViewMut, DevicePtr, DevicePtrMut};
use flashmla_abi::params::{DecodingSchedMeta, SchedMetaParams, SCHED_META_WORDS};
use flashmla_abi::sched::{self, sched_request_cost};
use flashmla_abi::{
    sched_meta_smem_bytes, BLOCK_SIZE_M, DEFAULT_DYNAMIC_SMEM_BYTES, MAX_GRID_Y_Z, MAX_SCHED_BATCH,
    SCHED_META_THREADS,
};
use std::sync::Arc;

/// Shape of one decode batch, as far as scheduling and the kernels' grid are concerned.
///
/// `q_seq_per_hk = seqlen_q · num_heads_q / num_heads_kv` query rows share one KV head; FlashMLA folds
/// them into the GEMM M dimension (64-row tiles).
///
/// Only [`DecodeShape::new`] makes one, so every shape in a program is one the kernels take: no size is
/// zero, `h_kv` divides `h_q`, the batch fits the scheduler and the rows fit 32-bit arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodeShape {
    batch_size: usize,
    seqlen_q: usize,
    num_heads_q: usize,
    num_heads_kv: usize,
    /// An explicit number of SM parts ([`DecodeShape::with_num_sm_parts`]), else FlashMLA's formula.
    sm_parts: Option<u32>,
}

impl DecodeShape {
    /// Validates and builds a shape.
    ///
    /// ```
    /// let shape = flashmla::DecodeShape::new(128, 1, 128, 1)?;
    /// assert_eq!(shape.q_seq_per_hk(), 128);
    /// assert_eq!(shape.num_sm_parts(132), 66); // two 64-row tiles per KV head share 132 SMs
    /// assert!(flashmla::DecodeShape::new(4, 1, 12, 5).is_err()); // 12 heads cannot share 5 KV heads
    /// # Ok::<(), flashmla::Error>(())
    /// ```
    pub fn new(
        batch_size: usize,
        seqlen_q: usize,
        num_heads_q: usize,
        num_heads_kv: usize,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::EmptyBatch);
        }
        for (name, v) in [
            ("seqlen_q", seqlen_q),
            ("num_heads_q", num_heads_q),
            ("num_heads_kv", num_heads_kv),
        ] {
            if v == 0 {
                return Err(Error::ZeroSize { name });
            }
        }
        if !num_heads_q.is_multiple_of(num_heads_kv) {
            return Err(Error::HeadsNotDivisible {
                h_q: num_heads_q,
                h_kv: num_heads_kv,
            });
        }
        if batch_size > MAX_SCHED_BATCH {
            return Err(Error::BatchTooLarge {
                batch_size,
                max: MAX_SCHED_BATCH,
            });
        }
        let rows = seqlen_q as u128 * num_heads_q as u128;
        if rows > i32::MAX as u128 {
            return Err(Error::Overflow {
                what: "seqlen_q * num_heads_q",
                value: rows,
                limit: "i32",
            });
        }
        Ok(Self {
            batch_size,
            seqlen_q,
            num_heads_q,
            num_heads_kv,
            sm_parts: None,
        })
    }

    /// The same shape with an explicit number of SM parts (work lists, the decode grid's z extent)
    /// instead of FlashMLA's formula: for measuring how a batch should be cut, e.g. small batches,
    /// where fewer, longer work lists write fewer partial results for the combine kernel to merge.
    /// `1 ..= `[`MAX_GRID_Y_Z`](crate::abi::MAX_GRID_Y_Z) (65535, the grid's z limit).
    ///
    /// ```
    /// let shape = flashmla::DecodeShape::new(1, 1, 128, 1)?.with_num_sm_parts(16)?;
    /// assert_eq!(shape.num_sm_parts(132), 16);
    /// assert!(flashmla::DecodeShape::new(1, 1, 128, 1)?.with_num_sm_parts(0).is_err());
    /// # Ok::<(), flashmla::Error>(())
    /// ```
    pub fn with_num_sm_parts(self, num_sm_parts: usize) -> Result<Self> {
        check_num_sm_parts(num_sm_parts)?;
        Ok(Self {
            sm_parts: Some(num_sm_parts as u32),
            ..self
        })
    }

    /// `[b, s_q, h_q, h_kv]`: what inputs must match (the number of SM parts is the plan's own).
    pub(crate) fn dims(&self) -> [usize; 4] {
        [
            self.batch_size,
            self.seqlen_q,
            self.num_heads_q,
            self.num_heads_kv,
        ]
    }

    /// Requests in the batch (`b`).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// New query tokens per request (`s_q`; > 1 for speculative / MTP decoding).
    pub fn seqlen_q(&self) -> usize {
        self.seqlen_q
    }

    /// Query heads (`h_q`).
    pub fn num_heads_q(&self) -> usize {
        self.num_heads_q
    }

    /// KV heads (`h_kv`); divides `h_q`.
    pub fn num_heads_kv(&self) -> usize {
        self.num_heads_kv
    }

    /// Query heads sharing one KV head (`h_q / h_kv`).
    pub fn heads_per_kv(&self) -> usize {
        self.num_heads_q / self.num_heads_kv
    }

    /// Query rows folded onto one KV head (`s_q · h_q / h_kv`).
    pub fn q_seq_per_hk(&self) -> usize {
        self.seqlen_q * self.heads_per_kv()
    }

    /// 64-row query tiles per KV head.
    pub fn num_m_blocks(&self) -> usize {
        self.q_seq_per_hk().div_ceil(BLOCK_SIZE_M)
    }

    /// The number of SM parts for a device with `num_sms` multiprocessors (≥ 1): the one set by
    /// [`with_num_sm_parts`](Self::with_num_sm_parts), else FlashMLA's formula.
    pub fn num_sm_parts(&self, num_sms: u32) -> usize {
        if let Some(parts) = self.sm_parts {
            return parts as usize;
        }
        sched::num_sm_parts(
            num_sms,
            self.num_heads_kv as u32,
            self.q_seq_per_hk() as u32,
        ) as usize
    }
}

/// Scheduler output on the host: one record per SM part and `num_splits [b + 1]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// One work list per SM part.
    pub tile_scheduler_metadata: Vec<DecodingSchedMeta>,
    /// Exclusive prefix sum of per-request split counts: request `i`'s partial results occupy split slots
    /// `num_splits[i] .. num_splits[i+1]`; a difference of 1 means the request is not split.
    pub num_splits: Vec<i32>,
}

impl Schedule {
    /// Total split slots used (`num_splits[b]`).
    pub fn total_splits(&self) -> usize {
        self.num_splits.last().copied().unwrap_or(0) as usize
    }
}

/// [`MAX_GRID_Y_Z`] as the `limit` of an [`Error::Overflow`] (a `&'static str`, so written out here once).
pub(crate) const GRID_Y_Z_LIMIT: &str = "65535 (CUDA's limit of a grid's y and z)";
const _: () = assert!(MAX_GRID_Y_Z == 65_535, "GRID_Y_Z_LIMIT names the limit");

/// A number of SM parts the decode grid can have: `1..=MAX_GRID_Y_Z` (one CTA row per part, grid z).
fn check_num_sm_parts(num_sm_parts: usize) -> Result<()> {
    if num_sm_parts == 0 {
        return Err(Error::ZeroSize {
            name: "num_sm_parts",
        });
    }
    if num_sm_parts > MAX_GRID_Y_Z {
        return Err(Error::Overflow {
            what: "num_sm_parts",
            value: num_sm_parts as u128,
            limit: GRID_Y_Z_LIMIT,
        });
    }
    Ok(())
}

/// Computes the schedule on the CPU with the GPU metadata kernel's code
/// (`flashmla_abi::sched::schedule`), so for the same lengths and parts both give the same schedule.
/// One difference: a negative length is an error here ([`Error::NegativeSeqlen`]), where the GPU
/// kernel, which cannot report it, counts it as 0 (an empty request).
///
/// ```
/// use flashmla::get_mla_metadata_cpu;
/// // FlashMLA's worked example: request 1 (45118 tokens) is cut into 8 chunks over 8 parts.
/// let s = get_mla_metadata_cpu(&[4641, 45118, 1730, 1696], 8)?;
/// assert_eq!(s.num_splits, [0, 1, 9, 10, 11]);
/// assert_eq!(s.tile_scheduler_metadata.len(), 8);
/// # Ok::<(), flashmla::Error>(())
/// ```
pub fn get_mla_metadata_cpu(cache_seqlens: &[i32], num_sm_parts: usize) -> Result<Schedule> {
    let b = cache_seqlens.len();
    if b == 0 {
        return Err(Error::EmptyBatch);
    }
    check_num_sm_parts(num_sm_parts)?;
    if b + num_sm_parts > i32::MAX as usize {
        return Err(Error::Overflow {
            what: "batch_size + num_sm_parts (split slots)",
            value: (b + num_sm_parts) as u128,
            limit: "i32",
        });
    }
    if let Some((index, &value)) = cache_seqlens.iter().enumerate().find(|(_, &v)| v < 0) {
        return Err(Error::NegativeSeqlen { index, value });
    }
    let total_cost = cache_seqlens.iter().map(|&s| sched_request_cost(s)).sum();
    let mut out = Schedule {
        tile_scheduler_metadata: vec![DecodingSchedMeta::default(); num_sm_parts],
        num_splits: vec![0; b + 1],
    };
    let complete = sched::schedule(
        b,
        num_sm_parts,
        |i| cache_seqlens[i],
        total_cost,
        |p, m| out.tile_scheduler_metadata[p] = m,
        |i, v| out.num_splits[i] = v,
    );
    debug_assert!(complete, "scheduler left work unassigned");
    Ok(out)
}

/// Device buffers holding one batch's schedule: FlashMLA's `tile_scheduler_metadata [num_sm_parts, 8]`
/// and `num_splits [b + 1]` (both `int32`), plus the shape and device they were made for, so a decode
/// call can refuse metadata computed for something else.
///
/// Allocate once per batch shape with [`FlashMla::alloc_sched_metadata`]; refresh it each decode step
/// with [`FlashMla::get_mla_metadata`]; reuse it for every layer of the step.
pub struct SchedMetadata {
    pub(crate) tile_scheduler_metadata: CudaSlice<i32>,
    pub(crate) num_splits: CudaSlice<i32>,
    pub(crate) shape: DecodeShape,
    pub(crate) num_sm_parts: usize,
    pub(crate) cu_ctx: usize,
    /// Device ordinal of that context, for the error when another context's handle is given it.
    pub(crate) ordinal: usize,
    /// Whether a schedule was ever written (decoding with uninitialised metadata would read garbage).
    pub(crate) computed: bool,
}

impl std::fmt::Debug for SchedMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedMetadata")
            .field("shape", &self.shape)
            .field("num_sm_parts", &self.num_sm_parts)
            .finish()
    }
}

impl SchedMetadata {
    /// The batch shape this metadata was made for.
    pub fn shape(&self) -> &DecodeShape {
        &self.shape
    }

    /// Number of SM parts (work lists).
    pub fn num_sm_parts(&self) -> usize {
        self.num_sm_parts
    }

    /// `int32 [num_sm_parts, 8]`, FlashMLA's `tile_scheduler_metadata` (see [`DecodingSchedMeta`]).
    pub fn tile_scheduler_metadata(&self) -> &CudaSlice<i32> {
        &self.tile_scheduler_metadata
    }

    /// `int32 [b + 1]`, FlashMLA's `num_splits`.
    pub fn num_splits(&self) -> &CudaSlice<i32> {
        &self.num_splits
    }

    /// Writable views of both buffers (`tile_scheduler_metadata`, `num_splits`), for runtimes that fill
    /// them by other means and for tests that poison them before a run. Views, not the allocations: a
    /// [`DecodePlan`](crate::DecodePlan) keeps their addresses.
    ///
    /// # Safety
    /// Before the next decode with a plan made from this metadata, both buffers must hold the schedule
    /// of this shape for the `cache_seqlens` that decode gets, as [`FlashMla::get_mla_metadata`] writes
    /// it (calling it afterwards restores that): the decode and combine kernels index the batch, the
    /// block table, the outputs and the split workspaces with these contents unchecked, so anything else
    /// makes them read and write out of bounds.
    pub unsafe fn buffers_mut(&mut self) -> (CudaViewMut<'_, i32>, CudaViewMut<'_, i32>) {
        self.computed = true;
        (
            self.tile_scheduler_metadata.as_view_mut(),
            self.num_splits.as_view_mut(),
        )
    }

    /// Copies the schedule to the host (synchronises `stream`); [`Error::MetadataNotComputed`] before
    /// any schedule was written (the buffers are allocated uninitialised).
    pub fn to_host(&self, stream: &Arc<CudaStream>) -> Result<Schedule> {
        if !self.computed {
            return Err(Error::MetadataNotComputed);
        }
        let words = stream
            .clone_dtoh(&self.tile_scheduler_metadata)
            .map_err(Error::cuda("cuMemcpyDtoH"))?;
        let num_splits = stream
            .clone_dtoh(&self.num_splits)
            .map_err(Error::cuda("cuMemcpyDtoH"))?;
        let tile_scheduler_metadata = words
            .chunks_exact(SCHED_META_WORDS)
            .map(|w| {
                DecodingSchedMeta::from_words(w.try_into().expect("chunks of SCHED_META_WORDS"))
            })
            .collect();
        Ok(Schedule {
            tile_scheduler_metadata,
            num_splits,
        })
    }
}

/// The checks of [`FlashMla::get_mla_metadata_raw`]'s arguments that need no device: the batch and part
/// counts the kernel takes, and the alignment of its `i32` loads and stores and of its 32-byte records.
fn check_sched_meta_args(
    cache_seqlens: sys::CUdeviceptr,
    batch_size: usize,
    tile_scheduler_metadata: sys::CUdeviceptr,
    num_splits: sys::CUdeviceptr,
    num_sm_parts: usize,
) -> Result<()> {
    if batch_size == 0 {
        return Err(Error::EmptyBatch);
    }
    if batch_size > MAX_SCHED_BATCH {
        return Err(Error::BatchTooLarge {
            batch_size,
            max: MAX_SCHED_BATCH,
        });
    }
    check_num_sm_parts(num_sm_parts)?;
    for (name, ptr, multiple) in [
        ("cache_seqlens", cache_seqlens, 4),
        (
            "tile_scheduler_metadata",
            tile_scheduler_metadata,
            std::mem::align_of::<DecodingSchedMeta>(),
        ),
        ("num_splits", num_splits, 4),
    ] {
        if !ptr.is_multiple_of(multiple as u64) {
            return Err(Error::Misaligned {
                name,
                what: "the base address (bytes)",
                multiple,
                value: ptr,
            });
        }
    }
    Ok(())
}

impl FlashMla {
    /// Allocates metadata buffers for `shape` on this device (uninitialised until
    /// [`get_mla_metadata`](Self::get_mla_metadata) runs).
    pub fn alloc_sched_metadata(
        &self,
        stream: &Arc<CudaStream>,
        shape: DecodeShape,
    ) -> Result<SchedMetadata> {
        self.check_stream(stream)?;
        let num_sm_parts = shape.num_sm_parts(self.device_info().sm_count);
        // SAFETY: i32 has no invalid bit patterns; nothing reads them before a schedule is written
        // (`computed`: decode and to_host refuse uncomputed metadata; buffers_mut is unsafe).
        let tile_scheduler_metadata =
            unsafe { stream.alloc::<i32>(num_sm_parts * SCHED_META_WORDS) }
                .map_err(Error::cuda("cuMemAlloc"))?;
        let num_splits = unsafe { stream.alloc::<i32>(shape.batch_size() + 1) }
            .map_err(Error::cuda("cuMemAlloc"))?;
        Ok(SchedMetadata {
            tile_scheduler_metadata,
            num_splits,
            shape,
            num_sm_parts,
            cu_ctx: self.context().cu_ctx() as usize,
            ordinal: self.device_info().ordinal,
            computed: false,
        })
    }

    /// Computes the schedule for `cache_seqlens` (`int32 [b]`, on this device) into `metadata`, on
    /// `stream`. One kernel launch; no allocation and no host synchronisation, so it can be captured
    /// in a CUDA graph. Lengths are read on the device: negative values count as 0.
    /// One CTA: the request costs are summed in parallel and one warp moves FlashMLA's greedy cursor from
    /// part to part with warp-wide searches, so the time grows with the parts, not the batch.
    pub fn get_mla_metadata<S: DevicePtr<i32>>(
        &self,
        stream: &Arc<CudaStream>,
        cache_seqlens: &S,
        metadata: &mut SchedMetadata,
    ) -> Result<()> {
        self.check_stream(stream)?;
        self.check_buffer("cache_seqlens", cache_seqlens.stream())?;
        self.check_metadata("metadata", metadata)?;
        let b = metadata.shape.batch_size();
        if cache_seqlens.len() != b {
            return Err(Error::Shape {
                name: "cache_seqlens",
                expected: vec![b],
                got: vec![cache_seqlens.len()],
            });
        }
        let (seqlens_ptr, _seqlens_guard) = cache_seqlens.device_ptr(stream);
        let (meta_ptr, _meta_guard) = metadata.tile_scheduler_metadata.device_ptr_mut(stream);
        let (splits_ptr, _splits_guard) = metadata.num_splits.device_ptr_mut(stream);
        metadata.computed = true;
        // SAFETY: the three pointers are live allocations of this context with b, num_sm_parts·8 and b+1
        // elements (checked above / by construction); their guards order the launch on `stream`.
        unsafe {
            self.get_mla_metadata_raw(
                stream.cu_stream(),
                seqlens_ptr,
                b,
                meta_ptr,
                splits_ptr,
                metadata.num_sm_parts,
            )
        }
    }

    /// [`get_mla_metadata`](Self::get_mla_metadata) on raw device pointers, for runtimes that manage
    /// their own memory and streams.
    ///
    /// The sizes and alignments are checked (a misaligned pointer is [`Error::Misaligned`]).
    ///
    /// # Safety
    /// `cache_seqlens` must point to `batch_size` `i32`s, `tile_scheduler_metadata` to
    /// `num_sm_parts · 8` `i32`s (32-byte aligned) and `num_splits` to `batch_size + 1` `i32`s, all in this
    /// handle's context and not accessed by anything else while the kernel runs; `stream` must belong to
    /// this context.
    pub unsafe fn get_mla_metadata_raw(
        &self,
        stream: sys::CUstream,
        cache_seqlens: sys::CUdeviceptr,
        batch_size: usize,
        tile_scheduler_metadata: sys::CUdeviceptr,
        num_splits: sys::CUdeviceptr,
        num_sm_parts: usize,
    ) -> Result<()> {
        check_sched_meta_args(
            cache_seqlens,
            batch_size,
            tile_scheduler_metadata,
            num_splits,
            num_sm_parts,
        )?;
        self.bind()?;
        let smem = sched_meta_smem_bytes(batch_size, num_sm_parts);
        let function = &self.inner.sched_meta;
        if smem > DEFAULT_DYNAMIC_SMEM_BYTES {
            function
                .set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .map_err(Error::cuda("cuFuncSetAttribute"))?;
        }
        let params = SchedMetaParams {
            seqlens_k: cache_seqlens,
            tile_scheduler_metadata,
            num_splits,
            batch_size: batch_size as i32,
            num_sm_parts: num_sm_parts as i32,
        };
        let config = LaunchConfig {
            grid: (1, 1, 1),
            block: (SCHED_META_THREADS, 1, 1),
            dynamic_smem_bytes: smem as u32,
            programmatic_serialization: false,
        };
        // SAFETY: the kernel takes one SchedMetaParams; the caller vouches for the pointers and stream.
        unsafe { launch::launch(function.cu_function(), stream, &config, &params) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIGNED: u64 = 0x7000_0000;

    #[test]
    fn the_cpu_schedule_refuses_negative_lengths_the_gpu_counts_as_empty() {
        match get_mla_metadata_cpu(&[100, -3, 5], 4) {
            Err(Error::NegativeSeqlen { index, value }) => assert_eq!((index, value), (1, -3)),
            other => panic!("{other:?}"),
        }
        // What the GPU kernel computes for those lengths: the schedule of an empty request.
        assert!(get_mla_metadata_cpu(&[100, 0, 5], 4).is_ok());
    }

    #[test]
    fn raw_metadata_arguments_are_checked() {
        assert!(check_sched_meta_args(ALIGNED, 4, ALIGNED, ALIGNED, 8).is_ok());
        assert!(matches!(
            check_sched_meta_args(ALIGNED, 0, ALIGNED, ALIGNED, 8),
            Err(Error::EmptyBatch)
        ));
        assert!(matches!(
            check_sched_meta_args(ALIGNED, MAX_SCHED_BATCH + 1, ALIGNED, ALIGNED, 8),
            Err(Error::BatchTooLarge { .. })
        ));
        assert!(matches!(
            check_sched_meta_args(ALIGNED, 4, ALIGNED, ALIGNED, 0),
            Err(Error::ZeroSize { .. })
        ));
        for (name, args, multiple) in [
            ("cache_seqlens", (ALIGNED + 2, ALIGNED, ALIGNED), 4),
            (
                "tile_scheduler_metadata",
                (ALIGNED, ALIGNED + 16, ALIGNED),
                32,
            ),
            ("num_splits", (ALIGNED, ALIGNED, ALIGNED + 1), 4),
        ] {
            match check_sched_meta_args(args.0, 4, args.1, args.2, 8) {
                Err(Error::Misaligned {
                    name: n,
                    multiple: m,
                    ..
                }) => assert_eq!((n, m), (name, multiple)),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}

//! Test and benchmark cases in FlashMLA's style (HEAD `generate_test_data`), generated on the GPU: what
//! to generate ([`CaseSpec`]), the lengths and block table drawn on the host ([`CaseLayout`], which can
//! recompute any input element for the reference), and the tensors on the device ([`DeviceCase`]).
//!
//! * KV lengths: `mean`, or with `varlen` `max(normal(mean, mean/2), s_q)`; optionally about half of them 0.
//! * The block table is a random permutation of the pages; entries past a sequence's last page are
//!   `2147480000` (even seeds) or point at NaN-filled pages (odd seeds); either way they must never be
//!   read. Every unused KV slot (the tail of the last page, whole unused pages) is NaN.
//! * q and k are uniform in `[-a, a]`, rounded to the dtype; `a = √3/10` gives FlashMLA's standard
//!   deviation of 0.1 (`randn/10`); larger `a` gives sharp softmaxes.
//!
//! Which cases the suites and the benchmark run is in [`shapes`](crate::shapes); how a decode of one
//! is checked, in [`check`](crate::check).

use crate::compare::{Tolerance, LSE_TOLERANCE, OUT_TOLERANCE};
use crate::cuda;
use crate::rng::SplitMix64;
use flashmla::abi::fill::{fill_value, FillParams};
use flashmla::abi::{HEAD_DIM_K, PAGE_BLOCK_SIZE};
use flashmla::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use flashmla::{
    DType, DecodeArgs, DecodeKernel, DecodeOptions, DecodeShape, Element, Error, FlashMla, Result,
    TensorView,
};
use std::sync::Arc;

/// Block-table value FlashMLA's tests put past each sequence's last page.
pub const UNUSED_BLOCK_ID: i32 = 2_147_480_000;
/// Amplitude giving FlashMLA's input standard deviation of 0.1.
pub const FLASHMLA_AMPLITUDE: f32 = 0.173_205_08;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseSpec {
    /// Batch shape.
    pub shape: DecodeShape,
    /// Mean KV length.
    pub mean_seqlen_k: usize,
    /// Lengths drawn from `normal(mean, mean/2)`, at least `s_q`.
    pub varlen: bool,
    /// These exact KV lengths (one per request) instead of drawn ones: the benchmark uses FlashMLA's own
    /// varlen lengths, so both are timed on the same Σs_k.
    pub seqlens: Option<Vec<i32>>,
    /// About half the requests get length 0.
    pub zero_lengths: bool,
    /// Causal mask.
    pub causal: bool,
    /// Input type.
    pub dtype: DType,
    /// Uniform amplitude of q and k.
    pub amplitude: f32,
    /// Softmax scale (`None`: 1/√576).
    pub softmax_scale: Option<f32>,
    /// Seed of everything random in the case.
    pub seed: u64,
    /// The split-KV kernel to run.
    pub kernel: DecodeKernel,
}

impl CaseSpec {
    /// FlashMLA's benchmark/test case: amplitude 0.1·√3, default scale.
    pub fn new(
        shape: DecodeShape,
        mean_seqlen_k: usize,
        varlen: bool,
        causal: bool,
        dtype: DType,
        seed: u64,
    ) -> Self {
        Self {
            shape,
            mean_seqlen_k,
            varlen,
            seqlens: None,
            zero_lengths: false,
            causal,
            dtype,
            amplitude: FLASHMLA_AMPLITUDE,
            softmax_scale: None,
            seed,
            kernel: DecodeKernel::Auto,
        }
    }

    /// Tolerance for `out`: FlashMLA HEAD's for its inputs (σ = 0.1). Inputs of larger amplitude give
    /// proportionally larger outputs and proportionally larger errors from rounding P to 16 bits before
    /// PV (FlashMLA does the same), so the absolute tolerance grows with the amplitude (×2 for the
    /// tails); the relative and cosine tolerances stay FlashMLA's.
    pub fn out_tolerance(&self) -> Tolerance {
        let scale = (self.amplitude / FLASHMLA_AMPLITUDE).max(1.0) as f64;
        let widen = if scale > 1.0 { 2.0 * scale } else { 1.0 };
        Tolerance {
            abs: OUT_TOLERANCE.abs * widen,
            ..OUT_TOLERANCE
        }
    }

    /// Tolerance for `lse`: FlashMLA HEAD's for its inputs. The logits grow with the square of the input
    /// amplitude, and so does the f32 rounding of `q·k` (the tensor cores accumulate 576 products in
    /// an order of their own), which is all an lse close to 0 is then compared by: the absolute
    /// tolerance grows with the amplitude squared (×2), the relative one stays FlashMLA's.
    pub fn lse_tolerance(&self) -> Tolerance {
        let scale = (self.amplitude / FLASHMLA_AMPLITUDE).max(1.0) as f64;
        let widen = if scale > 1.0 {
            2.0 * scale * scale
        } else {
            1.0
        };
        Tolerance {
            abs: LSE_TOLERANCE.abs * widen,
            ..LSE_TOLERANCE
        }
    }

    /// One-line description.
    pub fn label(&self) -> String {
        let s = &self.shape;
        format!(
            "b={} s_q={} h_q={} h_kv={} s_k={}{}{}{} {} a={:.2}{}",
            s.batch_size(),
            s.seqlen_q(),
            s.num_heads_q(),
            s.num_heads_kv(),
            self.mean_seqlen_k,
            if self.varlen { " varlen" } else { "" },
            if self.zero_lengths { " zeros" } else { "" },
            if self.causal { " causal" } else { "" },
            self.dtype,
            self.amplitude,
            match self.kernel {
                DecodeKernel::Auto => "",
                DecodeKernel::Hopper => " hopper",
                DecodeKernel::Portable => " portable",
            }
        )
    }
}

/// Host-side description of a generated case (lengths, block table) plus its seeds.
#[derive(Clone, Debug)]
pub struct CaseLayout {
    /// The spec.
    pub spec: CaseSpec,
    /// `[b]` KV lengths.
    pub seqlens: Vec<i32>,
    /// `[b, max_blocks_per_seq]` page ids.
    pub block_table: Vec<i32>,
    /// Columns of the block table.
    pub max_blocks_per_seq: usize,
    /// Pages in the cache.
    pub num_blocks: usize,
    /// Valid token rows of each page (NaN beyond).
    pub page_valid_rows: Vec<i32>,
}

impl CaseLayout {
    /// Draws lengths and the page permutation for `spec`.
    pub fn generate(spec: &CaseSpec) -> Self {
        let b = spec.shape.batch_size();
        let s_q = spec.shape.seqlen_q();
        let mut rng = SplitMix64::new(spec.seed);
        let mean = spec.mean_seqlen_k as f64;
        let mut seqlens: Vec<i32> = match &spec.seqlens {
            Some(given) => given.clone(),
            None => (0..b)
                .map(|_| {
                    if spec.varlen {
                        (mean + rng.normal() * mean / 2.0).max(s_q as f64) as i32
                    } else {
                        spec.mean_seqlen_k as i32
                    }
                })
                .collect(),
        };
        if spec.zero_lengths {
            seqlens.iter_mut().for_each(|s| {
                if rng.below(2) == 0 {
                    *s = 0
                }
            });
        }
        let max_len = seqlens.iter().copied().max().unwrap_or(0).max(1) as usize;
        let max_blocks = max_len.div_ceil(PAGE_BLOCK_SIZE);
        let num_blocks = b * max_blocks;
        let mut pages: Vec<i32> = (0..num_blocks as i32).collect();
        for i in (1..pages.len()).rev() {
            pages.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut block_table = pages;
        let mut page_valid_rows = vec![0i32; num_blocks];
        for (i, &len) in seqlens.iter().enumerate() {
            for j in 0..max_blocks {
                let slot = &mut block_table[i * max_blocks + j];
                let valid = (len as usize)
                    .saturating_sub(j * PAGE_BLOCK_SIZE)
                    .min(PAGE_BLOCK_SIZE);
                if valid == 0 {
                    // Odd seeds keep the permutation's page there, a page filled with NaN: the kernel must
                    // not read past a sequence even where the table points at real pages.
                    if spec.seed & 1 == 0 {
                        *slot = UNUSED_BLOCK_ID;
                    }
                } else {
                    page_valid_rows[*slot as usize] = valid as i32;
                }
            }
        }
        Self {
            spec: spec.clone(),
            seqlens,
            block_table,
            max_blocks_per_seq: max_blocks,
            num_blocks,
            page_valid_rows,
        }
    }

    fn q_seed(&self) -> u64 {
        self.spec.seed ^ 0x51_5151
    }

    fn k_seed(&self) -> u64 {
        self.spec.seed ^ 0x4B_4B4B
    }

    /// `q[b, t, h, d]` as the GPU holds it.
    pub fn q_value(&self, b: usize, t: usize, h: usize, d: usize) -> f32 {
        let s = &self.spec.shape;
        let index = ((b * s.seqlen_q() + t) * s.num_heads_q() + h) * HEAD_DIM_K + d;
        self.spec
            .dtype
            .round(fill_value(self.q_seed(), index as u64, self.spec.amplitude))
    }

    /// Row `[576]` of key `token` of request `b`, KV head `g`, as the GPU holds it.
    pub fn key_row(&self, b: usize, g: usize, token: usize, out: &mut Vec<f32>) {
        let page = self.block_table[b * self.max_blocks_per_seq + token / PAGE_BLOCK_SIZE] as usize;
        let row =
            (page * PAGE_BLOCK_SIZE + token % PAGE_BLOCK_SIZE) * self.spec.shape.num_heads_kv() + g;
        let seed = self.k_seed();
        out.extend((0..HEAD_DIM_K).map(|d| {
            self.spec.dtype.round(fill_value(
                seed,
                (row * HEAD_DIM_K + d) as u64,
                self.spec.amplitude,
            ))
        }));
    }

    /// Sum of the KV lengths.
    pub fn total_seqlen_k(&self) -> usize {
        self.seqlens.iter().map(|&s| s.max(0) as usize).sum()
    }
}

/// A generated case on the device.
pub struct DeviceCase<T> {
    /// Host description.
    pub layout: CaseLayout,
    /// `[b, s_q, h_q, 576]`.
    pub q: CudaSlice<T>,
    /// `[num_blocks, 64, h_kv, 576]`.
    pub k_cache: CudaSlice<T>,
    /// `[b, max_blocks_per_seq]`.
    pub block_table: CudaSlice<i32>,
    /// `[b]`.
    pub cache_seqlens: CudaSlice<i32>,
}

impl<T: Element> DeviceCase<T> {
    /// Decode arguments viewing this case.
    pub fn args(&self) -> Result<DecodeArgs<'_, T>> {
        let s = &self.layout.spec.shape;
        Ok(DecodeArgs {
            q: TensorView::contiguous(
                "q",
                self.q.as_view(),
                [s.batch_size(), s.seqlen_q(), s.num_heads_q(), HEAD_DIM_K],
            )?,
            k_cache: TensorView::contiguous(
                "k_cache",
                self.k_cache.as_view(),
                [
                    self.layout.num_blocks,
                    PAGE_BLOCK_SIZE,
                    s.num_heads_kv(),
                    HEAD_DIM_K,
                ],
            )?,
            block_table: TensorView::contiguous(
                "block_table",
                self.block_table.as_view(),
                [s.batch_size(), self.layout.max_blocks_per_seq],
            )?,
            cache_seqlens: self.cache_seqlens.as_view(),
        })
    }

    /// The case's decode options.
    pub fn options(&self) -> DecodeOptions {
        DecodeOptions {
            softmax_scale: self.layout.spec.softmax_scale,
            causal: self.layout.spec.causal,
            max_seqlen_k: self.layout.seqlens.iter().map(|&s| s as usize).max(),
            kernel: self.layout.spec.kernel,
        }
    }

    /// Generates `spec` on `fm`'s device (q, the KV cache with NaN in unused slots, the block table,
    /// the lengths). The lengths and table are drawn on the host; the tensors are filled by a kernel.
    pub fn generate(fm: &FlashMla, stream: &Arc<CudaStream>, spec: &CaseSpec) -> Result<Self> {
        if T::DTYPE != spec.dtype {
            return Err(Error::DTypeMismatch {
                name: "case spec",
                expected: T::DTYPE,
                got: spec.dtype,
            });
        }
        if let Some(given) = &spec.seqlens {
            if given.len() != spec.shape.batch_size() {
                return Err(Error::Shape {
                    name: "case seqlens",
                    expected: vec![spec.shape.batch_size()],
                    got: vec![given.len()],
                });
            }
            if let Some((index, &value)) = given.iter().enumerate().find(|(_, &v)| v < 0) {
                return Err(Error::NegativeSeqlen { index, value });
            }
        }
        let layout = CaseLayout::generate(spec);
        let s = &spec.shape;
        let q_len = s.batch_size() * s.seqlen_q() * s.num_heads_q() * HEAD_DIM_K;
        let k_len = layout.num_blocks * PAGE_BLOCK_SIZE * s.num_heads_kv() * HEAD_DIM_K;
        // SAFETY: plain data, filled below before any use.
        let mut q = unsafe { stream.alloc::<T>(q_len) }.map_err(cuda("cuMemAlloc"))?;
        let mut k_cache = unsafe { stream.alloc::<T>(k_len) }.map_err(cuda("cuMemAlloc"))?;
        let block_table = stream
            .clone_htod(&layout.block_table)
            .map_err(cuda("cuMemcpyHtoD"))?;
        let cache_seqlens = stream
            .clone_htod(&layout.seqlens)
            .map_err(cuda("cuMemcpyHtoD"))?;
        let valid = stream
            .clone_htod(&layout.page_valid_rows)
            .map_err(cuda("cuMemcpyHtoD"))?;
        let rows_q = (s.batch_size() * s.seqlen_q() * s.num_heads_q()) as u64;
        let rows_k = (layout.num_blocks * PAGE_BLOCK_SIZE * s.num_heads_kv()) as u64;
        {
            let (q_ptr, _g0) = q.device_ptr_mut(stream);
            let (k_ptr, _g1) = k_cache.device_ptr_mut(stream);
            let (v_ptr, _g2) = valid.device_ptr(stream);
            // SAFETY: buffers sized rows × 576 above; the mask has one entry per page.
            unsafe {
                fm.fill_raw(
                    stream.cu_stream(),
                    spec.dtype,
                    &FillParams {
                        data: q_ptr,
                        valid_rows: 0,
                        seed: layout.q_seed(),
                        rows: rows_q,
                        row_len: HEAD_DIM_K as u32,
                        rows_per_page: 1,
                        tokens_divisor: 1,
                        amplitude: spec.amplitude,
                    },
                )?;
                fm.fill_raw(
                    stream.cu_stream(),
                    spec.dtype,
                    &FillParams {
                        data: k_ptr,
                        valid_rows: v_ptr,
                        seed: layout.k_seed(),
                        rows: rows_k,
                        row_len: HEAD_DIM_K as u32,
                        rows_per_page: (PAGE_BLOCK_SIZE * s.num_heads_kv()) as u32,
                        tokens_divisor: s.num_heads_kv() as u32,
                        amplitude: spec.amplitude,
                    },
                )?;
            }
        }
        Ok(DeviceCase {
            layout,
            q,
            k_cache,
            block_table,
            cache_seqlens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_marks_unused_pages_and_tails() {
        for seed in [3, 4] {
            let shape = DecodeShape::new(6, 2, 4, 1).unwrap();
            let spec = CaseSpec {
                zero_lengths: true,
                ..CaseSpec::new(shape, 100, true, true, DType::Bf16, seed)
            };
            let l = CaseLayout::generate(&spec);
            assert_eq!(l.block_table.len(), 6 * l.max_blocks_per_seq);
            let mut used = 0;
            for (i, &len) in l.seqlens.iter().enumerate() {
                for j in 0..l.max_blocks_per_seq {
                    let id = l.block_table[i * l.max_blocks_per_seq + j];
                    if j * 64 < len as usize {
                        used += 1;
                        let valid = (len as usize - j * 64).min(64) as i32;
                        assert_eq!(l.page_valid_rows[id as usize], valid);
                    } else if seed & 1 == 0 {
                        assert_eq!(id, UNUSED_BLOCK_ID);
                    } else {
                        assert_eq!(
                            l.page_valid_rows[id as usize], 0,
                            "past the sequence: a NaN page"
                        );
                    }
                }
            }
            assert_eq!(l.page_valid_rows.iter().filter(|&&v| v > 0).count(), used);
        }
    }

    #[test]
    fn key_rows_and_queries_are_reproducible_and_rounded() {
        let spec = CaseSpec::new(
            DecodeShape::new(2, 1, 2, 1).unwrap(),
            70,
            false,
            false,
            DType::Bf16,
            9,
        );
        let l = CaseLayout::generate(&spec);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        l.key_row(1, 0, 65, &mut a);
        // A second generation of the same spec (as each GPU test run makes) gives the same layout and rows.
        let again = CaseLayout::generate(&spec);
        assert_eq!(again.block_table, l.block_table);
        again.key_row(1, 0, 65, &mut b);
        assert_eq!(a, b);
        // Token 65 of request 1 is row 1 of the page its block table names for block 1; the device fill
        // writes element i of the [num_blocks, 64, h_kv = 1, 576] cache as fill_value(k_seed, i).
        let page = l.block_table[l.max_blocks_per_seq + 1] as usize;
        let row_start = (page * PAGE_BLOCK_SIZE + 1) * HEAD_DIM_K;
        for (d, &x) in a.iter().enumerate() {
            let cache = fill_value(l.k_seed(), (row_start + d) as u64, spec.amplitude);
            assert_eq!(x, DType::Bf16.round(cache), "column {d}");
        }
        assert!(a
            .iter()
            .all(|&x| x.abs() <= FLASHMLA_AMPLITUDE && DType::Bf16.round(x) == x));
        assert!(a.iter().any(|&x| x != 0.0));
        // q[1, 0, 1, 5] of a [2, 1, 2, 576] tensor is element ((1·1 + 0)·2 + 1)·576 + 5.
        let q = fill_value(l.q_seed(), (3 * HEAD_DIM_K + 5) as u64, spec.amplitude);
        assert_eq!(l.q_value(1, 0, 1, 5), DType::Bf16.round(q));
    }
}

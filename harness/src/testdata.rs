//! Test and benchmark cases in FlashMLA's style (HEAD `generate_test_data`), generated on the GPU, and the
//! correctness check against the `f64` CPU reference (FlashMLA `kernelkit.check_is_allclose`).
//!
//! * KV lengths: `mean`, or with `varlen` `max(normal(mean, mean/2), s_q)`; optionally about half of them 0.
//! * The block table is a random permutation of the pages; entries past a sequence's last page are
//!   `2147480000` (even seeds) or point at NaN-filled pages (odd seeds); either way they must never be
//!   read. Every unused KV slot (the tail of the last page, whole unused pages) is NaN.
//! * q and k are uniform in `[-a, a]`, rounded to the dtype; `a = √3/10` gives FlashMLA's standard
//!   deviation of 0.1 (`randn/10`); larger `a` gives sharp softmaxes.

use crate::cuda;
use crate::reference::{attend_row, attended_keys};
use crate::rng::SplitMix64;
use flashmla::abi::fill::{fill_value, FillParams};
use flashmla::abi::{HEAD_DIM_K, HEAD_DIM_V, PAGE_BLOCK_SIZE};
use flashmla::cudarc::driver::{sys, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use flashmla::{
    half, DType, DecodeArgs, DecodeKernel, DecodeOptions, DecodePlan, DecodeShape, Element, Error,
    FlashMla, OutputBuffers, Result, TensorView,
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

/// Elementwise tolerance check in FlashMLA's style (`kernelkit.check_is_allclose`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute tolerance.
    pub abs: f64,
    /// Relative tolerance (`|Δ| / (|ref| + 1e-6)`).
    pub rel: f64,
    /// Largest allowed cosine difference `1 − 2Σxy / Σ(x² + y²)`.
    pub cos: f64,
}

/// FlashMLA HEAD's tolerance for `out`.
pub const OUT_TOLERANCE: Tolerance = Tolerance {
    abs: 8e-4,
    rel: 2.01 / 128.0,
    cos: 5e-6,
};
/// FlashMLA HEAD's tolerance for `lse`.
pub const LSE_TOLERANCE: Tolerance = Tolerance {
    abs: 1e-6,
    rel: 8.01 / 65536.0,
    cos: 1e-7,
};

/// Error statistics of one tensor against its reference.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Comparison {
    /// Values compared.
    pub count: usize,
    /// Values outside both elementwise tolerances.
    pub mismatches: usize,
    /// Positions where exactly one side is ±inf/NaN, or both are but differ.
    pub special_mismatches: usize,
    /// Largest absolute error among finite values.
    pub max_abs: f64,
    /// Largest relative error among finite values.
    pub max_rel: f64,
    /// Cosine difference over finite values.
    pub cos_diff: f64,
}

impl Comparison {
    /// Compares `got` with `reference`.
    pub fn of(got: &[f64], reference: &[f64], tol: Tolerance) -> Self {
        let mut c = Comparison {
            count: got.len(),
            ..Default::default()
        };
        let (mut xy, mut xx_yy) = (0.0f64, 0.0f64);
        for (&x, &r) in got.iter().zip(reference) {
            if !r.is_finite() || !x.is_finite() {
                let same = (r.is_nan() && x.is_nan()) || r == x;
                c.special_mismatches += !same as usize;
                continue;
            }
            let abs = (x - r).abs();
            let rel = abs / (r.abs() + 1e-6);
            c.max_abs = c.max_abs.max(abs);
            c.max_rel = c.max_rel.max(rel);
            c.mismatches += (abs > tol.abs && rel > tol.rel) as usize;
            xy += x * r;
            xx_yy += x * x + r * r;
        }
        c.cos_diff = if xx_yy == 0.0 {
            0.0
        } else {
            1.0 - 2.0 * xy / xx_yy
        };
        c
    }

    /// Whether the comparison passes `tol`.
    pub fn passes(&self, tol: Tolerance) -> bool {
        self.mismatches == 0 && self.special_mismatches == 0 && self.cos_diff <= tol.cos
    }
}

/// Result of checking one case.
#[derive(Clone, Debug)]
pub struct CaseReport {
    /// The case.
    pub label: String,
    /// `out` against the reference (checked rows only).
    pub out: Comparison,
    /// `lse` against the reference (checked rows only).
    pub lse: Comparison,
    /// Output elements (of all rows) still holding the NaN poison or otherwise not finite.
    pub unwritten_out: usize,
    /// lse entries (of all rows) still holding the poison.
    pub unwritten_lse: usize,
    /// Query rows checked against the reference, of all rows.
    pub rows_checked: (usize, usize),
    /// Seed of the case.
    pub seed: u64,
    /// The tolerance `out` was held to.
    pub out_tolerance: Tolerance,
}

impl CaseReport {
    /// Whether everything passed FlashMLA's tolerances and every output was written.
    pub fn passed(&self) -> bool {
        self.out.passes(OUT_TOLERANCE)
            && self.lse.passes(LSE_TOLERANCE)
            && self.unwritten_out == 0
            && self.unwritten_lse == 0
    }

    /// One-line summary.
    pub fn summary(&self) -> String {
        format!(
            "{}: out max_abs {:.2e} max_rel {:.2e} cos {:.1e} mism {}+{}; lse max_abs {:.2e} max_rel {:.2e} mism {}+{}; unwritten {}+{}; rows {}/{} (seed {})",
            self.label,
            self.out.max_abs,
            self.out.max_rel,
            self.out.cos_diff,
            self.out.mismatches,
            self.out.special_mismatches,
            self.lse.max_abs,
            self.lse.max_rel,
            self.lse.mismatches,
            self.lse.special_mismatches,
            self.unwritten_out,
            self.unwritten_lse,
            self.rows_checked.0,
            self.rows_checked.1,
            self.seed
        )
    }
}

/// Poisons, decodes and checks one case: every output element must be written (no NaN poison left)
/// and the rows picked for the reference (all rows when they fit `row_budget` key·row products, else a
/// random subset that always includes the longest and an empty request) must match within FlashMLA's
/// tolerances. The reference runs on all CPU cores.
pub fn check_case<T: Element>(
    fm: &FlashMla,
    stream: &Arc<CudaStream>,
    case: &DeviceCase<T>,
    plan: &mut DecodePlan,
    row_budget: usize,
) -> Result<CaseReport> {
    let layout = &case.layout;
    let s = layout.spec.shape;
    let (b, s_q, h_q) = (s.batch_size(), s.seqlen_q(), s.num_heads_q());
    let mut buffers = OutputBuffers::<T>::alloc(stream, [b, s_q, h_q])?;
    {
        let (n_out, n_lse) = (buffers.out.len(), buffers.lse.len());
        let (o, _g) = buffers.out.device_ptr_mut(stream);
        let (l, _g2) = buffers.lse.device_ptr_mut(stream);
        // SAFETY: sized above; T is a 16-bit type, so D16 writes whole elements.
        unsafe {
            sys::cuMemsetD16Async(o, layout.spec.dtype.nan_bits(), n_out, stream.cu_stream())
                .result()
                .map_err(cuda("cuMemsetD16Async"))?;
            sys::cuMemsetD32Async(l, f32::NAN.to_bits(), n_lse, stream.cu_stream())
                .result()
                .map_err(cuda("cuMemsetD32Async"))?;
        }
    }
    fm.get_mla_metadata(stream, &case.cache_seqlens, plan.metadata_mut())?;
    fm.decode(
        stream,
        plan,
        &case.args()?,
        &mut buffers.views()?,
        case.options(),
    )?;
    let OutputBuffers { out, lse, .. } = buffers;
    let out_host: Vec<f32> = stream
        .clone_dtoh(&out)
        .map_err(cuda("cuMemcpyDtoH"))?
        .into_iter()
        .map(T::to_f32)
        .collect();
    let lse_host = stream.clone_dtoh(&lse).map_err(cuda("cuMemcpyDtoH"))?;
    Ok(check_outputs(layout, &out_host, &lse_host, row_budget))
}

/// Checks the outputs of a decode of `layout` (`out [b, s_q, h_q, 512]` as `f32`, `lse [b, h_q, s_q]`,
/// both contiguous, poisoned with NaN before the decode): every element must be written, and the rows
/// picked for the reference (all rows when they fit `row_budget` key·row products, else a random subset
/// that always includes the longest and an empty request) must match the `f64` reference within
/// FlashMLA's tolerances. For decodes made by other means than [`check_case`] (e.g. through a
/// framework's tensors). The reference runs on all CPU cores.
pub fn check_outputs(
    layout: &CaseLayout,
    out_host: &[f32],
    lse_host: &[f32],
    row_budget: usize,
) -> CaseReport {
    let s = layout.spec.shape;
    let (b, s_q, h_q, h_kv) = (
        s.batch_size(),
        s.seqlen_q(),
        s.num_heads_q(),
        s.num_heads_kv(),
    );
    let dtype = layout.spec.dtype;
    let unwritten_out = out_host.iter().filter(|x| !x.is_finite()).count();
    let unwritten_lse = lse_host.iter().filter(|x| x.is_nan()).count();

    // Pick (batch, kv head, rows) to check against the reference.
    let mut rng = SplitMix64::new(layout.spec.seed ^ 0xC4EC);
    let rows_per_kv = s.q_seq_per_hk();
    let total_rows = b * h_kv * rows_per_kv;
    let work: usize = layout
        .seqlens
        .iter()
        .map(|&l| l.max(1) as usize)
        .sum::<usize>()
        * h_kv
        * rows_per_kv;
    let mut picks: Vec<(usize, usize, Vec<usize>)> = Vec::new();
    if work <= row_budget {
        for i in 0..b {
            for g in 0..h_kv {
                picks.push((i, g, (0..rows_per_kv).collect()));
            }
        }
    } else {
        let longest = (0..b).max_by_key(|&i| layout.seqlens[i]).unwrap_or(0);
        let mut batches = vec![longest];
        if let Some(empty) = (0..b).find(|&i| layout.seqlens[i] == 0) {
            batches.push(empty);
        }
        batches.push(rng.below(b as u64) as usize);
        batches.push(rng.below(b as u64) as usize);
        batches.sort_unstable();
        batches.dedup();
        let per_batch_rows =
            (row_budget / batches.len()) / (layout.seqlens[longest].max(1) as usize);
        let rows_each = per_batch_rows.clamp(4, rows_per_kv * h_kv);
        for &i in &batches {
            let mut rows: Vec<(usize, usize)> = (0..h_kv)
                .flat_map(|g| (0..rows_per_kv).map(move |r| (g, r)))
                .collect();
            for k in (1..rows.len()).rev() {
                rows.swap(k, rng.below(k as u64 + 1) as usize);
            }
            rows.truncate(rows_each);
            // Always include the first and last rows of kv head 0 (causal border extremes).
            rows.push((0, 0));
            rows.push((0, rows_per_kv - 1));
            rows.sort_unstable();
            rows.dedup();
            for g in 0..h_kv {
                let rs: Vec<usize> = rows
                    .iter()
                    .filter(|(gg, _)| *gg == g)
                    .map(|&(_, r)| r)
                    .collect();
                if !rs.is_empty() {
                    picks.push((i, g, rs));
                }
            }
        }
    }
    let rows_checked: usize = picks.iter().map(|p| p.2.len()).sum();
    let scale = layout
        .spec
        .softmax_scale
        .unwrap_or(1.0 / (HEAD_DIM_K as f32).sqrt()) as f64;
    let hpk = s.heads_per_kv();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = picks.len().div_ceil(threads).max(1);
    let results: Vec<Vec<(usize, usize, usize, crate::reference::RowResult)>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = picks
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut done = Vec::new();
                        for (i, g, rows) in part {
                            let len = layout.seqlens[*i].max(0) as usize;
                            let mut keys = Vec::with_capacity(len * HEAD_DIM_K);
                            for j in 0..len {
                                layout.key_row(*i, *g, j, &mut keys);
                            }
                            for &r in rows {
                                let (t, h) = (r / hpk, g * hpk + r % hpk);
                                let q: Vec<f32> = (0..HEAD_DIM_K)
                                    .map(|d| layout.q_value(*i, t, h, d))
                                    .collect();
                                let n = attended_keys(len, s_q, t, layout.spec.causal);
                                done.push((
                                    *i,
                                    t,
                                    h,
                                    attend_row(&q, &keys[..n * HEAD_DIM_K], scale),
                                ));
                            }
                        }
                        done
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("reference thread"))
                .collect()
        });
    let (mut got_out, mut ref_out, mut got_lse, mut ref_lse) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, t, h, row) in results.into_iter().flatten() {
        let base = ((i * s_q + t) * h_q + h) * HEAD_DIM_V;
        for d in 0..HEAD_DIM_V {
            got_out.push(out_host[base + d] as f64);
            // FlashMLA compares against the reference rounded to the output dtype.
            ref_out.push(dtype.round(row.out[d] as f32) as f64);
        }
        got_lse.push(lse_host[(i * h_q + h) * s_q + t] as f64);
        ref_lse.push(row.lse);
    }
    CaseReport {
        label: layout.spec.label(),
        out: Comparison::of(&got_out, &ref_out, layout.spec.out_tolerance()),
        lse: Comparison::of(&got_lse, &ref_lse, layout.spec.lse_tolerance()),
        unwritten_out,
        unwritten_lse,
        rows_checked: (rows_checked, total_rows),
        seed: layout.spec.seed,
        out_tolerance: layout.spec.out_tolerance(),
    }
}

/// Key·row products the CPU reference checks per case before it switches to a random subset of rows.
pub const DEFAULT_ROW_BUDGET: usize = 3_000_000;

/// FlashMLA's test sweep (`tests/test_flash_mla.py`): b = 128, mean s_k ∈ {4096, 8192, 16384},
/// h_q ∈ {16, 32, 64, 128}, s_q ∈ {1, 2}, varlen off/on, causal, h_kv = 1.
pub fn flashmla_sweep(dtype: DType, seed: u64) -> Vec<CaseSpec> {
    // The same shapes as the benchmark grid's b = 128 rows (one list: `bench::flashmla_grid`).
    crate::bench::flashmla_grid()
        .into_iter()
        .filter(|g| g.b == 128)
        .enumerate()
        .map(|(n, g)| {
            let shape =
                DecodeShape::new(g.b, g.s_q, g.h_q, g.h_kv).expect("the grid's shapes are valid");
            CaseSpec::new(
                shape,
                g.s_k,
                g.varlen,
                g.causal,
                dtype,
                seed ^ (n as u64 * 7919),
            )
        })
        .collect()
}

/// `n` cases drawn from FlashMLA HEAD's correctness grid (`tests/test_flash_mla_dense_decoding.py`):
/// b ∈ {1, 2, 6, 64}, s_q ∈ {1, 2, 4}, s_k ∈ {20, 140, 4096}, h_q ∈ {1, 3, 9, 63, 64, 126, 128},
/// h_kv ∈ {1, 2, 3, 8} dividing h_q, varlen × causal × zero lengths, bf16 and fp16.
pub fn head_grid_sample(n: usize, seed: u64) -> Vec<CaseSpec> {
    let mut rng = SplitMix64::new(seed);
    let mut pick = |v: &[usize]| v[rng.below(v.len() as u64) as usize];
    let mut cases = Vec::new();
    while cases.len() < n {
        let h_q = pick(&[1, 3, 9, 63, 64, 126, 128]);
        let h_kv = pick(&[1, 2, 3, 8]);
        if h_q % h_kv != 0 {
            continue;
        }
        let shape = DecodeShape::new(pick(&[1, 2, 6, 64]), pick(&[1, 2, 4]), h_q, h_kv)
            .expect("valid shape");
        let flags = pick(&[0, 1, 2, 3, 4, 5, 6, 7]);
        let dtype = if pick(&[0, 1, 2]) == 0 {
            DType::F16
        } else {
            DType::Bf16
        };
        let mut spec = CaseSpec::new(
            shape,
            pick(&[20, 140, 4096]),
            flags & 1 != 0,
            flags & 2 != 0,
            dtype,
            seed ^ ((cases.len() as u64 + 1) * 104_729),
        );
        spec.zero_lengths = flags & 4 != 0;
        cases.push(spec);
    }
    cases
}

/// Cases FlashMLA's sweeps leave out or that stress one mechanism: zero-length sequences at FlashMLA's
/// corner-case shape, a single request, h_q not a multiple of 64, long s_q, sharp softmaxes (logits with
/// standard deviation ≈ 3, where a wrong rescale shows), a custom scale, non-causal, and fp16.
pub fn corner_cases(seed: u64) -> Vec<CaseSpec> {
    let shape = |b, s_q, h_q, h_kv| DecodeShape::new(b, s_q, h_q, h_kv).expect("valid shape");
    let mut cases = Vec::new();
    let mut add = |spec: CaseSpec| {
        let n = cases.len() as u64;
        cases.push(CaseSpec {
            seed: spec.seed ^ (n * 6151),
            ..spec
        });
    };
    for h_q in [16, 64, 128] {
        for causal in [false, true] {
            add(CaseSpec {
                zero_lengths: true,
                ..CaseSpec::new(shape(128, 2, h_q, 1), 4096, true, causal, DType::Bf16, seed)
            });
        }
    }
    add(CaseSpec::new(
        shape(1, 1, 128, 1),
        4096,
        false,
        false,
        DType::Bf16,
        seed,
    ));
    add(CaseSpec::new(
        shape(1, 4, 16, 1),
        65,
        false,
        true,
        DType::Bf16,
        seed,
    ));
    add(CaseSpec::new(
        shape(8, 1, 128, 1),
        8192,
        false,
        false,
        DType::F16,
        seed,
    ));
    add(CaseSpec::new(
        shape(16, 4, 16, 1),
        1000,
        true,
        true,
        DType::Bf16,
        seed,
    ));
    add(CaseSpec::new(
        shape(3, 3, 126, 2),
        777,
        true,
        true,
        DType::F16,
        seed,
    ));
    add(CaseSpec::new(
        shape(5, 1, 24, 8),
        300,
        true,
        false,
        DType::Bf16,
        seed,
    ));
    add(CaseSpec::new(
        shape(2, 2, 1, 1),
        1,
        false,
        true,
        DType::Bf16,
        seed,
    ));
    for dtype in [DType::Bf16, DType::F16] {
        add(CaseSpec {
            amplitude: 3.0,
            ..CaseSpec::new(shape(32, 2, 64, 1), 2048, true, true, dtype, seed)
        });
    }
    add(CaseSpec {
        softmax_scale: Some(0.3),
        amplitude: 1.0,
        ..CaseSpec::new(shape(16, 1, 128, 1), 3000, true, false, DType::Bf16, seed)
    });
    add(CaseSpec {
        softmax_scale: Some(-0.05),
        ..CaseSpec::new(shape(4, 2, 32, 2), 500, false, true, DType::Bf16, seed)
    });
    for s_k in [4096, 16384] {
        add(CaseSpec::new(
            shape(128, 2, 128, 1),
            s_k,
            true,
            true,
            DType::F16,
            seed,
        ));
    }
    cases
}

/// Generates `spec`, runs it and checks it (see [`check_case`]).
pub fn run_case(
    fm: &FlashMla,
    stream: &Arc<CudaStream>,
    spec: &CaseSpec,
    row_budget: usize,
) -> Result<CaseReport> {
    let mut plan = fm.plan_decode(stream, spec.shape)?;
    match spec.dtype {
        DType::Bf16 => check_case(
            fm,
            stream,
            &DeviceCase::<half::bf16>::generate(fm, stream, spec)?,
            &mut plan,
            row_budget,
        ),
        DType::F16 => check_case(
            fm,
            stream,
            &DeviceCase::<half::f16>::generate(fm, stream, spec)?,
            &mut plan,
            row_budget,
        ),
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
    fn flashmla_sweep_is_its_48_case_grid() {
        let cases = flashmla_sweep(DType::Bf16, 1);
        assert_eq!(cases.len(), 48);
        for s_k in [4096, 8192, 16384] {
            for h_q in [16, 32, 64, 128] {
                for s_q in [1, 2] {
                    for varlen in [false, true] {
                        assert!(cases.iter().any(|c| c.mean_seqlen_k == s_k
                            && c.shape == DecodeShape::new(128, s_q, h_q, 1).unwrap()
                            && c.varlen == varlen
                            && c.causal));
                    }
                }
            }
        }
    }

    #[test]
    fn comparison_follows_flashmla_rules() {
        let c = Comparison::of(
            &[1.0, f64::INFINITY, 0.5],
            &[1.0005, f64::INFINITY, 0.5],
            OUT_TOLERANCE,
        );
        assert!(c.passes(OUT_TOLERANCE), "{c:?}");
        let c = Comparison::of(&[1.1], &[1.0], OUT_TOLERANCE);
        assert!(!c.passes(OUT_TOLERANCE));
        let c = Comparison::of(&[f64::NAN], &[0.0], OUT_TOLERANCE);
        assert_eq!(c.special_mismatches, 1);
        let c = Comparison::of(&[0.0], &[f64::INFINITY], LSE_TOLERANCE);
        assert!(!c.passes(LSE_TOLERANCE));
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
        l.key_row(1, 0, 65, &mut b);
        assert_eq!(a, b);
        assert!(a
            .iter()
            .all(|&x| x.abs() <= FLASHMLA_AMPLITUDE && DType::Bf16.round(x) == x));
        assert!(a.iter().any(|&x| x != 0.0));
        assert_eq!(l.q_value(1, 0, 1, 5), l.q_value(1, 0, 1, 5));
    }
}

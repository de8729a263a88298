//! Checking a decode against the `f64` CPU reference: poison the outputs, decode, and compare every
//! written element and the rows the reference computes with FlashMLA's tolerances ([`check_case`],
//! [`run_case`]); or check outputs a decode made by other means ([`check_outputs`]).

use crate::case::{CaseLayout, CaseSpec, DeviceCase};
use crate::compare::{Comparison, Tolerance, LSE_TOLERANCE, OUT_TOLERANCE};
use crate::cuda;
use crate::reference::{attend_row, attended_keys, RowResult};
use crate::rng::SplitMix64;
use flashmla::abi::{HEAD_DIM_K, HEAD_DIM_V};
use flashmla::cudarc::driver::{sys, CudaStream, DevicePtrMut};
use flashmla::{half, DType, DecodePlan, Element, FlashMla, OutputBuffers, Result};
use std::sync::Arc;

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
    let results: Vec<Vec<(usize, usize, usize, RowResult)>> = std::thread::scope(|scope| {
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
                            done.push((*i, t, h, attend_row(&q, &keys[..n * HEAD_DIM_K], scale)));
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

/// Generates `spec`, runs it and checks it (see [`check_case`]).
pub fn run_case(
    fm: &FlashMla,
    stream: &Arc<CudaStream>,
    spec: &CaseSpec,
    row_budget: usize,
) -> Result<CaseReport> {
    let mut plan = fm.plan_decode(stream, spec.shape)?;
    // NaN partials: any the combine read without the decode writing it would fail the check.
    fm.poison_plan_workspaces(stream, &mut plan)?;
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

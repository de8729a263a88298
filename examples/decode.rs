//! The README's example, complete: one MLA decode step over a paged KV cache on GPU 0, checked against
//! the same attention computed in f64 on the CPU.
//!
//! ```sh
//! cargo run --release --example decode
//! ```
//!
//! Only `flashmla` is a dependency: `flashmla::cudarc` and `flashmla::half` are the versions it is built
//! against. Without a GPU it prints `Error: no CUDA driver: ...` and exits with status 1.
use flashmla::abi::fill::fill_value;
// q/k rows of 576 columns (512 latent + 64 RoPE), V the first 512 of each K row, 64 tokens per page.
use flashmla::abi::{HEAD_DIM_K as D_K, HEAD_DIM_V as D_V, PAGE_BLOCK_SIZE as PAGE};
use flashmla::half::bf16;
use flashmla::{
    DecodeArgs, DecodeOptions, DecodeOutputs, DecodeShape, FlashMla, TensorView, TensorViewMut,
};

// What flashmla's test harness uses too (its FLASHMLA_AMPLITUDE, OUT_TOLERANCE and LSE_TOLERANCE; a
// test there keeps these equal), written out so that the example depends on `flashmla` alone.
/// Inputs uniform in [-a, a): standard deviation 0.1, as in FlashMLA's tests.
const AMPLITUDE: f32 = 0.173_205_08;
/// FlashMLA's tolerances (abs, rel, cos) for out.
const OUT_TOLERANCE: (f64, f64, f64) = (8e-4, 2.01 / 128.0, 5e-6);
/// FlashMLA's tolerances (abs, rel, cos) for lse.
const LSE_TOLERANCE: (f64, f64, f64) = (1e-6, 8.01 / 65536.0, 1e-7);

fn main() -> flashmla::Result<()> {
    // Two requests, two new tokens each (MTP), 16 query heads sharing one latent KV head.
    let (b, s_q, h_q, h_kv) = (2, 2, 16, 1);
    let cache_seqlens = [100i32, 300];
    let max_pages_per_seq = 300usize.div_ceil(PAGE);
    let num_pages = b * max_pages_per_seq;
    // Reproducible pseudo-random values (the ones flashmla's tests generate on the GPU).
    let random = |n: usize, seed: u64| -> Vec<bf16> {
        (0..n as u64)
            .map(|i| bf16::from_f32(fill_value(seed, i, AMPLITUDE)))
            .collect()
    };
    let q_host = random(b * s_q * h_q * D_K, 7);
    // Request i owns pages i·5 .. i·5+4, in reverse order; slots past its length hold NaN, which the
    // kernels never read.
    let mut k_host = random(num_pages * PAGE * h_kv * D_K, 8);
    let mut block_table_host = vec![0i32; b * max_pages_per_seq];
    for i in 0..b {
        for j in 0..max_pages_per_seq {
            let page = i * max_pages_per_seq + (max_pages_per_seq - 1 - j);
            block_table_host[i * max_pages_per_seq + j] = page as i32;
            let used = (cache_seqlens[i] as usize)
                .saturating_sub(j * PAGE)
                .min(PAGE);
            k_host[(page * PAGE + used) * h_kv * D_K..(page + 1) * PAGE * h_kv * D_K]
                .fill(bf16::NAN);
        }
    }

    let fm = FlashMla::new(0)?; // or FlashMla::with_context(your cudarc context)
    let stream = fm.new_stream()?;
    let q = stream.clone_htod(&q_host)?; // `?` turns cudarc's DriverError into flashmla::Error
    let k_cache = stream.clone_htod(&k_host)?;
    let block_table = stream.clone_htod(&block_table_host)?;
    let seqlens = stream.clone_htod(&cache_seqlens)?;
    let mut out = stream.alloc_zeros::<bf16>(b * s_q * h_q * D_V)?;
    let mut lse = stream.alloc_zeros::<f32>(b * h_q * s_q)?;

    let mut plan = fm.plan_decode(&stream, DecodeShape::new(b, s_q, h_q, h_kv)?)?; // once per batch shape
    fm.get_mla_metadata(&stream, &seqlens, plan.metadata_mut())?; // once per decode step
    let args = DecodeArgs {
        q: TensorView::contiguous("q", q.as_view(), [b, s_q, h_q, D_K])?,
        k_cache: TensorView::contiguous(
            "k_cache",
            k_cache.as_view(),
            [num_pages, PAGE, h_kv, D_K],
        )?,
        block_table: TensorView::contiguous(
            "block_table",
            block_table.as_view(),
            [b, max_pages_per_seq],
        )?,
        cache_seqlens: seqlens.as_view(),
    };
    let mut outputs = DecodeOutputs {
        out: TensorViewMut::contiguous("out", out.as_view_mut(), [b, s_q, h_q, D_V])?,
        lse: TensorViewMut::contiguous("lse", lse.as_view_mut(), [b, h_q, s_q])?,
    };
    let options = DecodeOptions {
        causal: true,
        ..Default::default()
    };
    fm.decode(&stream, &mut plan, &args, &mut outputs, options)?; // once per layer
    let out_host = stream.clone_dtoh(&out)?;
    let lse_host = stream.clone_dtoh(&lse)?;

    // The same attention in f64 on the CPU, row by row.
    let (mut got_out, mut ref_out, mut got_lse, mut ref_lse) = (vec![], vec![], vec![], vec![]);
    for i in 0..b {
        let len = cache_seqlens[i] as usize;
        let keys: Vec<f32> = (0..len)
            .flat_map(|t| {
                let page = block_table_host[i * max_pages_per_seq + t / PAGE] as usize;
                let row = (page * PAGE + t % PAGE) * h_kv;
                k_host[row * D_K..(row + 1) * D_K]
                    .iter()
                    .map(|x| x.to_f32())
            })
            .collect();
        for t in 0..s_q {
            // Causal: token t of s_q sees the keys up to its own position (bottom-right aligned).
            let attended = if options.causal && s_q > 1 {
                (len + t + 1).saturating_sub(s_q)
            } else {
                len
            };
            for h in 0..h_q {
                let row = (i * s_q + t) * h_q + h;
                let q_row: Vec<f32> = q_host[row * D_K..(row + 1) * D_K]
                    .iter()
                    .map(|x| x.to_f32())
                    .collect();
                let (out_ref, lse) =
                    attend_row(&q_row, &keys[..attended * D_K], options.scale() as f64);
                got_out.extend(
                    out_host[row * D_V..(row + 1) * D_V]
                        .iter()
                        .map(|x| x.to_f64()),
                );
                // Compared with the reference rounded to the output type, as FlashMLA does.
                ref_out.extend(out_ref.iter().map(|&x| bf16::from_f64(x).to_f64()));
                got_lse.push(lse_host[(i * h_q + h) * s_q + t] as f64);
                ref_lse.push(lse);
            }
        }
    }
    let out_cmp = Comparison::of(&got_out, &ref_out, OUT_TOLERANCE);
    let lse_cmp = Comparison::of(&got_lse, &ref_lse, LSE_TOLERANCE);
    println!(
        "{} on {}: out max |err| {:.2e} (cos diff {:.1e}), lse max |err| {:.2e} vs the f64 reference",
        fm.resolve_kernel(options.kernel)?,
        fm.device_info().name,
        out_cmp.max_abs,
        out_cmp.cos_diff,
        lse_cmp.max_abs
    );
    if !(out_cmp.passed && lse_cmp.passed) {
        eprintln!(
            "outside FlashMLA's tolerances: out {} mismatches (cos diff {:.1e}), lse {} mismatches (cos diff {:.1e})",
            out_cmp.mismatches, out_cmp.cos_diff, lse_cmp.mismatches, lse_cmp.cos_diff
        );
        std::process::exit(1);
    }
    Ok(())
}

/// Attention of one query row (`[576]`) over `keys` (`n × 576`; V is the first 512 columns of each),
/// in f64: `(out [512], lse)`, with zeros and `+inf` when no key is attended.
fn attend_row(q: &[f32], keys: &[f32], scale: f64) -> (Vec<f64>, f64) {
    let logits: Vec<f64> = keys
        .chunks_exact(D_K)
        .map(|k| {
            q.iter()
                .zip(k)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                * scale
        })
        .collect();
    if logits.is_empty() {
        return (vec![0.0; D_V], f64::INFINITY);
    }
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f64 = weights.iter().sum();
    let mut out = vec![0.0f64; D_V];
    for (w, k) in weights.iter().zip(keys.chunks_exact(D_K)) {
        for (o, &v) in out.iter_mut().zip(&k[..D_V]) {
            *o += w * v as f64;
        }
    }
    out.iter_mut().for_each(|o| *o /= sum);
    (out, max + sum.ln())
}

/// FlashMLA's check (`kernelkit.check_is_allclose`): no value outside both the absolute and the
/// relative tolerance, infinities and NaNs where the reference has them, and a cosine difference
/// `1 − 2Σxy / Σ(x² + y²)` within its tolerance.
struct Comparison {
    max_abs: f64,
    cos_diff: f64,
    mismatches: usize,
    passed: bool,
}

impl Comparison {
    fn of(got: &[f64], reference: &[f64], (abs_tol, rel_tol, cos_tol): (f64, f64, f64)) -> Self {
        let (mut max_abs, mut mismatches, mut xy, mut xx_yy) = (0.0f64, 0, 0.0f64, 0.0f64);
        for (&x, &r) in got.iter().zip(reference) {
            if !x.is_finite() || !r.is_finite() {
                mismatches += !((x.is_nan() && r.is_nan()) || x == r) as usize;
                continue;
            }
            let abs = (x - r).abs();
            max_abs = max_abs.max(abs);
            mismatches += (abs > abs_tol && abs / (r.abs() + 1e-6) > rel_tol) as usize;
            xy += x * r;
            xx_yy += x * x + r * r;
        }
        let cos_diff = if xx_yy == 0.0 {
            0.0
        } else {
            1.0 - 2.0 * xy / xx_yy
        };
        Comparison {
            max_abs,
            cos_diff,
            mismatches,
            passed: mismatches == 0 && cos_diff <= cos_tol,
        }
    }
}

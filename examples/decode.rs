//! The README's example, complete: one MLA decode step over a paged KV cache on GPU 0, checked against
//! the f64 CPU reference.
//!
//! ```sh
//! cargo run --release --example decode
//! ```
//!
//! Only `flashmla` is a dependency: `flashmla::cudarc` and `flashmla::half` are the versions it is built
//! against. Without a GPU it prints `Error: no CUDA driver: ...` and exits with status 1.
use flashmla::half::bf16;
use flashmla::reference::{attend_row, attended_keys};
use flashmla::rng::SplitMix64;
use flashmla::testdata::{Comparison, FLASHMLA_AMPLITUDE, LSE_TOLERANCE, OUT_TOLERANCE};
use flashmla::{
    DecodeArgs, DecodeOptions, DecodeOutputs, DecodeShape, FlashMla, TensorView, TensorViewMut,
};

const D_K: usize = 576; // q/k row: 512 latent + 64 RoPE columns
const D_V: usize = 512; // V is the first 512 columns of each K row
const PAGE: usize = 64; // tokens per KV-cache page

fn main() -> flashmla::Result<()> {
    // Two requests, two new tokens each (MTP), 16 query heads sharing one latent KV head.
    let (b, s_q, h_q, h_kv) = (2, 2, 16, 1);
    let cache_seqlens = [100i32, 300];
    let max_pages_per_seq = 300usize.div_ceil(PAGE);
    let num_pages = b * max_pages_per_seq;
    let mut rng = SplitMix64::new(7);
    let mut random = |n: usize| -> Vec<bf16> {
        let a = FLASHMLA_AMPLITUDE as f64;
        (0..n)
            .map(|_| bf16::from_f64((2.0 * rng.uniform() - 1.0) * a))
            .collect()
    };
    let q_host = random(b * s_q * h_q * D_K);
    // Request i owns pages i·5 .. i·5+4, in reverse order; slots past its length hold NaN, which the
    // kernels never read.
    let mut k_host = random(num_pages * PAGE * h_kv * D_K);
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
            let attended = attended_keys(len, s_q, t, options.causal);
            for h in 0..h_q {
                let row = (i * s_q + t) * h_q + h;
                let q_row: Vec<f32> = q_host[row * D_K..(row + 1) * D_K]
                    .iter()
                    .map(|x| x.to_f32())
                    .collect();
                let r = attend_row(&q_row, &keys[..attended * D_K], options.scale() as f64);
                got_out.extend(
                    out_host[row * D_V..(row + 1) * D_V]
                        .iter()
                        .map(|x| x.to_f64()),
                );
                ref_out.extend(r.out.iter().map(|&x| bf16::from_f64(x).to_f64()));
                got_lse.push(lse_host[(i * h_q + h) * s_q + t] as f64);
                ref_lse.push(r.lse);
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
    if !(out_cmp.passes(OUT_TOLERANCE) && lse_cmp.passes(LSE_TOLERANCE)) {
        eprintln!("outside FlashMLA's tolerances: {out_cmp:?} {lse_cmp:?}");
        std::process::exit(1);
    }
    Ok(())
}

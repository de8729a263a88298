//! MLA decode on candle tensors: FlashMLA's kernels (flashmla-candle) over a paged KV cache, next to
//! the same attention written with candle ops, the way candle-transformers' DeepSeek-V2/V3 attention
//! computes it today (the request's keys gathered, `q·kᵀ`, softmax, `·v`), which it can replace.
//!
//! ```sh
//! eval "$(scripts/cuda-toolkit.sh)"; cd candle && cargo run --release --example mla_decode
//! ```
use candle_core::{DType, Device, IndexOp, Tensor, D};

fn main() -> candle_core::Result<()> {
    let device = Device::new_cuda(0)?;
    // Four requests of different lengths, two new tokens each (MTP), 64 heads on one latent KV head.
    let (b, s_q, h_q, h_kv) = (4, 2, 64, 1);
    let lens = [700i32, 64, 2, 2049];
    let pages_per_seq = 2049usize.div_ceil(64);
    let pages = b * pages_per_seq;
    let q = Tensor::randn(0f32, 0.1, (b, s_q, h_q, 576), &device)?.to_dtype(DType::BF16)?;
    let k_cache =
        Tensor::randn(0f32, 0.1, (pages, 64, h_kv, 576), &device)?.to_dtype(DType::BF16)?;
    // Request i owns pages i, i + b, i + 2b, ...: interleaved, as a page allocator hands them out.
    let page_of = move |i: usize, j: usize| j * b + i;
    let table: Vec<i32> = (0..b)
        .flat_map(|i| (0..pages_per_seq).map(move |j| page_of(i, j) as i32))
        .collect();
    let block_table = Tensor::from_vec(table, (b, pages_per_seq), &device)?;
    let cache_seqlens = Tensor::new(&lens, &device)?;

    // Once per decode step, then once per layer.
    let metadata = flashmla_candle::get_mla_metadata(&cache_seqlens, s_q, h_q, h_kv)?;
    let (out, lse) = flashmla_candle::flash_mla_with_kvcache(
        &q,
        &k_cache,
        &block_table,
        &cache_seqlens,
        &metadata,
        None,
        true,
    )?;

    // The same attention with candle ops, in f32, one request at a time.
    let scale = 1.0 / (576f64).sqrt();
    let (mut max_out_err, mut max_lse_err) = (0f32, 0f32);
    for (i, &len) in lens.iter().enumerate() {
        let len = len as usize;
        let ids: Vec<u32> = (0..pages_per_seq).map(|j| page_of(i, j) as u32).collect();
        let ids = Tensor::from_vec(ids, pages_per_seq, &device)?;
        let keys = k_cache
            .index_select(&ids, 0)?
            .reshape((pages_per_seq * 64, 576))?
            .narrow(0, 0, len)?
            .to_dtype(DType::F32)?;
        let rows = q.i(i)?.reshape((s_q * h_q, 576))?.to_dtype(DType::F32)?; // row = token · h_q + head
        let logits = (rows.matmul(&keys.t()?)? * scale)?;
        // Causal, bottom-right aligned: new token t sees the first len - (s_q - 1 - t) keys.
        let mask: Vec<f32> = (0..s_q * h_q)
            .flat_map(|r| {
                let visible = len - (s_q - 1 - r / h_q);
                (0..len).map(move |j| if j < visible { 0.0 } else { f32::NEG_INFINITY })
            })
            .collect();
        let logits = (logits + Tensor::from_vec(mask, (s_q * h_q, len), &device)?)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let weights = logits.broadcast_sub(&max)?.exp()?;
        let sum = weights.sum_keepdim(D::Minus1)?;
        let reference = weights
            .broadcast_div(&sum)?
            .matmul(&keys.narrow(1, 0, 512)?.contiguous()?)?;
        let reference_lse = (max + sum.log()?)?.reshape((s_q, h_q))?.t()?; // [h_q, s_q]
        let got = out.i(i)?.reshape((s_q * h_q, 512))?.to_dtype(DType::F32)?;
        let max_abs = |t: Tensor| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>();
        max_out_err = max_out_err.max(max_abs((&got - &reference)?)?);
        let lse_error = ((&lse.i(i)? - &reference_lse)? / &reference_lse)?;
        max_lse_err = max_lse_err.max(max_abs(lse_error)?);
    }
    println!(
        "out {:?} {:?}, lse {:?} {:?}: FlashMLA vs candle ops: max |Δout| {max_out_err:.2e}, max |Δlse/lse| {max_lse_err:.2e}",
        out.dims(),
        out.dtype(),
        lse.dims(),
        lse.dtype()
    );
    // out is rounded to bf16 (3 significant digits of values below 0.1); lse is f32, held by FlashMLA's
    // own test to a relative 8/65536 (doubled here for the f32 reference).
    if max_out_err > 2e-3 || max_lse_err > 16.0 / 65536.0 {
        candle_core::bail!("FlashMLA and the candle-ops attention disagree");
    }
    Ok(())
}

//! The candle integration on a GPU: FlashMLA's decode through candle tensors against the f64 CPU
//! reference (FlashMLA's tolerances, fresh random inputs with NaN in every unused KV slot), strided
//! candle views, the scheduler against the CPU one, and the refusals. Every case is skipped, not passed,
//! where there is no usable GPU, and fails then under `FLASHMLA_REQUIRE_GPU=1`.
use candle_core::cuda::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType as CandleDType, Device, Storage, Tensor};
use flashmla::cudarc::driver::CudaSlice;
use flashmla::half::{bf16, f16};
use flashmla::{get_mla_metadata_cpu, DType, DecodeKernel, DecodeShape, Element, FlashMla};
use flashmla_candle::{
    flash_mla_with_kvcache, flash_mla_with_kvcache_options, get_mla_metadata, DecodeOptions,
};
use flashmla_harness::case::{CaseSpec, DeviceCase};
use flashmla_harness::check::check_outputs;
use flashmla_harness::rng::SplitMix64;
use flashmla_harness::runner::{self, check, Fail, Outcome, Skip};

/// Device 0 as candle and flashmla see it, or the reason the case is skipped.
fn device() -> Result<(Device, FlashMla), Outcome> {
    let skip = |why: String| {
        if std::env::var("FLASHMLA_REQUIRE_GPU").as_deref() == Ok("1") {
            Fail(format!("{why}, and FLASHMLA_REQUIRE_GPU=1"))
        } else {
            Skip(why)
        }
    };
    // flashmla's check first: candle's device constructor panics where the driver has no device.
    let flashmla = match FlashMla::new(0) {
        Ok(fm) => fm,
        Err(
            e @ (flashmla::Error::NoDriver
            | flashmla::Error::NoDevice { .. }
            | flashmla::Error::UnsupportedArch { .. }),
        ) => return Err(skip(e.to_string())),
        Err(e) => return Err(Fail(format!("opening device 0: {e}"))),
    };
    let device = Device::new_cuda(0).map_err(|e| Fail(format!("candle device 0: {e}")))?;
    Ok((device, flashmla))
}

macro_rules! gpu_case {
    ($name:ident, |$device:ident| $body:block) => {
        fn $name() -> Outcome {
            fn body($device: Device) -> Result<String, String> {
                $body
            }
            match device() {
                Ok((device, _)) => check(body(device)),
                Err(outcome) => outcome,
            }
        }
    };
}

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A candle tensor owning `slice`, on `device`.
fn tensor<T: CudaDType>(
    slice: CudaSlice<T>,
    device: &Device,
    shape: &[usize],
) -> Result<Tensor, String> {
    let cuda = device.as_cuda_device().map_err(text)?;
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, cuda.clone()));
    Ok(Tensor::from_storage(
        storage,
        shape,
        BackpropOp::none(),
        false,
    ))
}

/// A row budget (key·row products) above every case here, so the reference checks all rows.
const EVERY_ROW: usize = 100_000_000;

fn seed() -> u64 {
    let (_, seed) = SplitMix64::from_time();
    println!("    seed {seed}");
    seed
}

/// Generates `spec` on the candle device (flashmla's generator: NaN in every unused KV slot, unused
/// block-table entries past each sequence), decodes it through candle tensors and checks `out` and
/// `lse` against the f64 reference. With `strided`, q and k_cache are passed as candle views into
/// wider tensors (row stride 640, a leading page that is not part of the cache) and the result must
/// be bit-identical to the contiguous one.
fn decode_case<T: Element + CudaDType + candle_core::WithDType>(
    device: &Device,
    spec: &CaseSpec,
    strided: bool,
) -> Result<String, String> {
    let cuda = device.as_cuda_device().map_err(text)?;
    let stream = cuda.cuda_stream();
    let fm = FlashMla::with_context(stream.context().clone()).map_err(text)?;
    let case = DeviceCase::<T>::generate(&fm, &stream, spec).map_err(text)?;
    let layout = case.layout.clone();
    let s = spec.shape;
    let (b, s_q, h_q, h_kv) = (
        s.batch_size(),
        s.seqlen_q(),
        s.num_heads_q(),
        s.num_heads_kv(),
    );
    let pages = layout.num_blocks;
    let q = tensor(case.q, device, &[b, s_q, h_q, 576])?;
    let k_cache = tensor(case.k_cache, device, &[pages, 64, h_kv, 576])?;
    let block_table = tensor(case.block_table, device, &[b, layout.max_blocks_per_seq])?;
    let cache_seqlens = tensor(case.cache_seqlens, device, &[b])?;

    let metadata = get_mla_metadata(&cache_seqlens, s_q, h_q, h_kv).map_err(text)?;
    let cpu = get_mla_metadata_cpu(
        &layout.seqlens,
        metadata
            .schedule()
            .map_err(text)?
            .tile_scheduler_metadata
            .len(),
    )
    .map_err(text)?;
    if metadata.schedule().map_err(text)? != cpu {
        return Err("the metadata differs from the CPU scheduler's".into());
    }
    let options = DecodeOptions {
        softmax_scale: spec.softmax_scale,
        causal: spec.causal,
        max_seqlen_k: None,
        kernel: spec.kernel,
    };
    let (out, lse) = flash_mla_with_kvcache_options(
        &q,
        &k_cache,
        &block_table,
        &cache_seqlens,
        &metadata,
        options,
    )
    .map_err(text)?;
    if out.dims() != [b, s_q, h_q, 512]
        || lse.dims() != [b, h_q, s_q]
        || lse.dtype() != CandleDType::F32
    {
        return Err(format!(
            "out {:?} / lse {:?} {:?}",
            out.dims(),
            lse.dims(),
            lse.dtype()
        ));
    }
    let out_host: Vec<f32> = out
        .to_dtype(CandleDType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(text)?;
    let lse_host: Vec<f32> = lse
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(text)?;
    // The op allocates its outputs itself, so they cannot be poisoned beforehand: every row is compared
    // with the reference instead (these cases are small enough), and an unwritten row cannot pass.
    let report = check_outputs(&layout, &out_host, &lse_host, EVERY_ROW);
    if !report.passed() || report.rows_checked.0 != report.rows_checked.1 {
        return Err(format!("FAILED {}", report.summary()));
    }
    let mut summary = format!(
        "{}: out max_abs {:.2e} cos {:.1e}, lse max_abs {:.2e}, {} of {} rows checked",
        report.label,
        report.out.max_abs,
        report.out.cos_diff,
        report.lse.max_abs,
        report.rows_checked.0,
        report.rows_checked.1
    );
    if strided {
        // q as the first 576 columns of [b, s_q, h_q, 640]; k_cache behind one extra page, its rows 640 wide.
        let q_wide = Tensor::cat(&[&q, &q.narrow(3, 0, 64).map_err(text)?], 3)
            .and_then(|t| t.narrow(3, 0, 576))
            .map_err(text)?;
        let k_wide = Tensor::cat(&[&k_cache, &k_cache.narrow(3, 0, 64).map_err(text)?], 3)
            .and_then(|t| Tensor::cat(&[&t.narrow(0, 0, 1)?, &t], 0))
            .and_then(|t| t.narrow(0, 1, pages))
            .and_then(|t| t.narrow(3, 0, 576))
            .map_err(text)?;
        if q_wide.is_contiguous() || k_wide.is_contiguous() {
            return Err("the strided views came out contiguous".into());
        }
        let (out2, lse2) = flash_mla_with_kvcache_options(
            &q_wide,
            &k_wide,
            &block_table,
            &cache_seqlens,
            &metadata,
            options,
        )
        .map_err(text)?;
        let same = |a: &Tensor, b: &Tensor| -> Result<bool, String> {
            let bits = |t: &Tensor| {
                t.to_dtype(CandleDType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
            };
            let (a, b) = (bits(a).map_err(text)?, bits(b).map_err(text)?);
            Ok(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()))
        };
        if !same(&out, &out2)? || !same(&lse, &lse2)? {
            return Err(format!(
                "{summary}; strided candle views gave a different result"
            ));
        }
        summary += "; strided views bit-identical";
    }
    Ok(summary)
}

fn spec(
    shape: (usize, usize, usize, usize),
    s_k: usize,
    varlen: bool,
    causal: bool,
    dtype: DType,
    seed: u64,
) -> Result<CaseSpec, String> {
    let shape = DecodeShape::new(shape.0, shape.1, shape.2, shape.3).map_err(text)?;
    Ok(CaseSpec::new(shape, s_k, varlen, causal, dtype, seed))
}

gpu_case!(candle_decode_bf16_matches_f64_reference, |device| {
    let seed = seed();
    let mut lines = Vec::new();
    for (n, (shape, s_k, varlen, causal)) in [
        ((4, 1, 128, 1), 4096, true, false),
        ((16, 2, 64, 1), 3000, true, true),
        ((3, 3, 126, 2), 777, true, true),
        ((128, 1, 16, 1), 1000, true, false),
    ]
    .into_iter()
    .enumerate()
    {
        let spec = CaseSpec {
            zero_lengths: n == 1,
            ..spec(
                shape,
                s_k,
                varlen,
                causal,
                DType::Bf16,
                seed ^ (n as u64 * 7919),
            )?
        };
        lines.push(decode_case::<bf16>(&device, &spec, n == 0)?);
    }
    Ok(lines.join("\n    "))
});

gpu_case!(candle_decode_fp16_matches_f64_reference, |device| {
    let seed = seed();
    let mut lines = Vec::new();
    for (n, (shape, s_k, varlen, causal)) in [
        ((8, 2, 32, 2), 2000, true, true),
        ((2, 1, 128, 1), 8192, false, false),
    ]
    .into_iter()
    .enumerate()
    {
        let spec = spec(
            shape,
            s_k,
            varlen,
            causal,
            DType::F16,
            seed ^ (n as u64 * 104_729),
        )?;
        lines.push(decode_case::<f16>(&device, &spec, n == 0)?);
    }
    Ok(lines.join("\n    "))
});

// The portable kernel through the same candle path (on Hopper the cases above run the wgmma one).
gpu_case!(candle_decode_portable_kernel, |device| {
    let spec = CaseSpec {
        kernel: DecodeKernel::Portable,
        ..spec((8, 2, 64, 1), 1500, true, true, DType::Bf16, seed())?
    };
    decode_case::<bf16>(&device, &spec, false)
});

gpu_case!(candle_metadata_matches_cpu_scheduler, |device| {
    let (mut rng, seed) = SplitMix64::from_time();
    for n in 0..100 {
        let b = 1 + rng.below(300) as usize;
        let lens: Vec<i32> = (0..b)
            .map(|_| {
                if rng.below(5) == 0 {
                    0
                } else {
                    rng.below(70_000) as i32
                }
            })
            .collect();
        let seqlens = Tensor::new(lens.as_slice(), &device).map_err(text)?;
        let metadata =
            get_mla_metadata(&seqlens, 1 + rng.below(2) as usize, 128, 1).map_err(text)?;
        let gpu = metadata.schedule().map_err(text)?;
        let cpu = get_mla_metadata_cpu(&lens, gpu.tile_scheduler_metadata.len()).map_err(text)?;
        if gpu != cpu {
            return Err(format!(
                "batch {n} (seed {seed}, b = {b}) differs from the CPU scheduler"
            ));
        }
        // The next step: new lengths into the same metadata.
        let next: Vec<i32> = lens.iter().map(|&l| l + 1).collect();
        metadata
            .update(&Tensor::new(next.as_slice(), &device).map_err(text)?)
            .map_err(text)?;
        if metadata.schedule().map_err(text)?
            != get_mla_metadata_cpu(&next, gpu.tile_scheduler_metadata.len()).map_err(text)?
        {
            return Err(format!(
                "batch {n} (seed {seed}): update() differs from the CPU scheduler"
            ));
        }
    }
    Ok(format!(
        "100 random batches and their updates identical (seed {seed})"
    ))
});

gpu_case!(candle_rejects_bad_inputs_with_errors, |device| {
    let (b, s_q, h_q, h_kv, pages) = (2, 1, 16, 1, 4);
    let q = Tensor::zeros((b, s_q, h_q, 576), CandleDType::BF16, &device).map_err(text)?;
    let k = Tensor::zeros((pages, 64, h_kv, 576), CandleDType::BF16, &device).map_err(text)?;
    let bt = Tensor::new(&[[0i32, 1], [2, 3]], &device).map_err(text)?;
    let lens = Tensor::new(&[10i32, 100], &device).map_err(text)?;
    let metadata = get_mla_metadata(&lens, s_q, h_q, h_kv).map_err(text)?;
    let run = |q: &Tensor, k: &Tensor, bt: &Tensor, lens: &Tensor| {
        flash_mla_with_kvcache(q, k, bt, lens, &metadata, None, false)
    };
    run(&q, &k, &bt, &lens).map_err(|e| format!("valid call refused: {e}"))?;
    let cpu = Device::Cpu;
    let bad: Vec<(&str, candle_core::Result<(Tensor, Tensor)>)> = vec![
        (
            "f32 q",
            q.to_dtype(CandleDType::F32)
                .and_then(|q32| run(&q32, &k, &bt, &lens)),
        ),
        (
            "f16 k with bf16 q",
            k.to_dtype(CandleDType::F16)
                .and_then(|k16| run(&q, &k16, &bt, &lens)),
        ),
        (
            "q head dim 512",
            q.narrow(3, 0, 512)
                .and_then(|q512| run(&q512, &k, &bt, &lens)),
        ),
        (
            "q on the CPU",
            q.to_device(&cpu).and_then(|qc| run(&qc, &k, &bt, &lens)),
        ),
        (
            "3-d block table",
            bt.unsqueeze(0).and_then(|bt3| run(&q, &k, &bt3, &lens)),
        ),
        (
            "f32 lengths",
            lens.to_dtype(CandleDType::F32)
                .and_then(|l| run(&q, &k, &bt, &l)),
        ),
        (
            "batch other than the metadata's",
            Tensor::zeros((3, s_q, h_q, 576), CandleDType::BF16, &device)
                .and_then(|q3| run(&q3, &k, &bt, &lens)),
        ),
        (
            "h_q not a multiple of h_kv",
            get_mla_metadata(&lens, 1, 12, 5).map(|_| (q.clone(), q.clone())),
        ),
    ];
    let mut messages = Vec::new();
    for (what, result) in bad {
        match result {
            Ok(_) => return Err(format!("{what}: accepted")),
            Err(e) => messages.push(format!("{what}: {e}")),
        }
    }
    Ok(format!(
        "valid call ran; refused with errors:\n    {}",
        messages.join("\n    ")
    ))
});

fn main() {
    runner::run(
        "candle-gpu",
        flashmla_harness::cases![
            candle_rejects_bad_inputs_with_errors,
            candle_metadata_matches_cpu_scheduler,
            candle_decode_bf16_matches_f64_reference,
            candle_decode_fp16_matches_f64_reference,
            candle_decode_portable_kernel,
        ],
    );
}

//! The GPU suite: runs on a machine with an NVIDIA GPU (and no Rust: see `scripts/gpu-suite.sh`).
//! Every case is skipped, not passed, where there is no driver or no suitable device.
use flashmla::abi::params::{DecodingSchedMeta, SCHED_META_WORDS};
use flashmla::cudarc::driver::{sys, CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use flashmla::half::bf16;
use flashmla::ptx::PtxArch;
use flashmla::{
    get_mla_metadata_cpu, DType, DecodeArgs, DecodeKernel, DecodeOptions, DecodeOutputs,
    DecodePlan, DecodeShape, Error, FlashMla, OutputBuffers, TensorView, TensorViewMut,
};
use flashmla_harness::case::{CaseSpec, DeviceCase};
use flashmla_harness::check::{check_outputs, run_case, DEFAULT_ROW_BUDGET};
use flashmla_harness::rng::SplitMix64;
use flashmla_harness::runner::{self, check, Fail, Outcome, Skip};
use flashmla_harness::shapes::{corner_cases, flashmla_sweep, head_grid_sample};
use flashmla_harness::EventTrackingOff;
use std::sync::Arc;

/// The device under test, or the reason the case is skipped.
fn device() -> Result<FlashMla, Outcome> {
    match FlashMla::new(0) {
        Ok(fm) => Ok(fm),
        Err(e @ (Error::NoDriver | Error::NoDevice { .. } | Error::UnsupportedArch { .. })) => {
            if std::env::var("FLASHMLA_REQUIRE_GPU").as_deref() == Ok("1") {
                Err(Fail(format!("{e}, and FLASHMLA_REQUIRE_GPU=1")))
            } else {
                Err(Skip(e.to_string()))
            }
        }
        Err(e) => Err(Fail(format!("opening device 0: {e}"))),
    }
}

macro_rules! gpu_case {
    ($name:ident, |$fm:ident| $body:block) => {
        gpu_case!($name, skip_if = runs_anywhere, |$fm| $body);
    };
    // `skip_if(&fm)` says why the case cannot run on this device (a skip, never a pass), or None.
    ($name:ident, skip_if = $skip_if:ident, |$fm:ident| $body:block) => {
        fn $name() -> Outcome {
            fn body($fm: FlashMla) -> Result<String, String> {
                $body
            }
            match device() {
                Ok(fm) => match $skip_if(&fm) {
                    Some(why) => Skip(why),
                    None => check(body(fm)),
                },
                Err(outcome) => outcome,
            }
        }
    };
}

fn runs_anywhere(_: &FlashMla) -> Option<String> {
    None
}

fn no_hopper_kernel(fm: &FlashMla) -> Option<String> {
    (!matches!(
        fm.resolve_kernel(DecodeKernel::Auto),
        Ok(DecodeKernel::Hopper)
    ))
    .then(|| "no Hopper kernel on this device: the sweeps ran the portable one".to_string())
}

fn cuda<T>(r: Result<T, flashmla::cudarc::driver::DriverError>) -> Result<T, String> {
    r.map_err(|e| format!("CUDA: {e}"))
}

/// Fills an `i32` buffer with a poison value, so words the kernel fails to write are caught.
fn poison<B: DevicePtrMut<i32>>(stream: &Arc<CudaStream>, buf: &mut B) -> Result<(), String> {
    let n = buf.len();
    let (ptr, _guard) = buf.device_ptr_mut(stream);
    // SAFETY: `ptr` addresses n i32s of this context; ordered on `stream`.
    cuda(unsafe { sys::cuMemsetD32Async(ptr, 0x7FBA_DBAD, n, stream.cu_stream()) }.result())
}

fn random_seqlens(rng: &mut SplitMix64, b: usize) -> Vec<i32> {
    let kind = rng.below(5);
    let mean = 1 + rng.below(20_000) as i64;
    (0..b)
        .map(|i| match kind {
            0 => rng.below(70_000) as i32,
            1 => ((mean as f64 + rng.normal() * mean as f64 / 2.0).max(1.0)) as i32,
            2 if rng.below(2) == 0 => 0,
            2 => rng.below(5000) as i32,
            3 if i == 0 => 1 << (20 + rng.below(6)),
            3 => rng.below(300) as i32,
            _ => [0, 1, 63, 64, 65, 128][rng.below(6) as usize],
        })
        .collect()
}

gpu_case!(device_info_and_kernels, |fm| {
    let d = fm.device_info();
    if d.sm_count == 0 {
        return Err("device reports 0 SMs".into());
    }
    let kernels = fm.kernels().map_err(|e| e.to_string())?;
    let mut lines = String::new();
    for k in &kernels {
        if k.local_bytes != 0 {
            return Err(format!(
                "{} uses {} B of local memory per thread",
                k.name, k.local_bytes
            ));
        }
        lines += &format!(
            "\n    {} regs={} smem={} local={}",
            k.name, k.registers, k.static_shared_bytes, k.local_bytes
        );
    }
    Ok(format!(
        "{} sm_{}{} {} SMs, module {}{lines}",
        d.name,
        d.compute_capability.0,
        d.compute_capability.1,
        d.sm_count,
        fm.ptx_module().name
    ))
});

gpu_case!(sched_meta_matches_cpu_on_random_batches, |fm| {
    let stream = fm.new_stream().map_err(|e| e.to_string())?;
    let (mut rng, seed) = SplitMix64::from_time();
    let batches = 1200;
    let mut max_parts = 0;
    for n in 0..batches {
        let b = ((1usize << rng.below(13)) + rng.below(64) as usize).min(4096);
        let seqlens = random_seqlens(&mut rng, b);
        let d_seqlens = cuda(stream.clone_htod(&seqlens))?;
        // Half the batches go through the shape API (FlashMLA's num_sm_parts), half through the raw
        // entry point with every part count 1..=160 in turn.
        let (gpu, parts) = if n % 2 == 0 {
            let h_kv = [1, 1, 2, 8][rng.below(4) as usize];
            let h_q = h_kv * [1, 3, 16, 64, 128][rng.below(5) as usize];
            let shape = DecodeShape::new(b, 1 + rng.below(4) as usize, h_q, h_kv)
                .map_err(|e| e.to_string())?;
            let mut meta = fm
                .alloc_sched_metadata(&stream, shape)
                .map_err(|e| e.to_string())?;
            // SAFETY: get_mla_metadata overwrites both buffers right below, before anything decodes.
            let (mut m, mut p) = unsafe { meta.buffers_mut() };
            poison(&stream, &mut m)?;
            poison(&stream, &mut p)?;
            fm.get_mla_metadata(&stream, &d_seqlens, &mut meta)
                .map_err(|e| e.to_string())?;
            (
                meta.to_host(&stream).map_err(|e| e.to_string())?,
                meta.num_sm_parts(),
            )
        } else {
            // Every part count 1..=160 in turn, and now and then many more (up to 3160).
            let parts = if n % 20 == 1 {
                161 + rng.below(3000) as usize
            } else {
                1 + (n / 2) % 160
            };
            let mut d_meta = cuda(stream.alloc_zeros::<i32>(parts * SCHED_META_WORDS))?;
            let mut d_splits = cuda(stream.alloc_zeros::<i32>(b + 1))?;
            poison(&stream, &mut d_meta)?;
            poison(&stream, &mut d_splits)?;
            {
                let (s, _g0) = d_seqlens.device_ptr(&stream);
                let (m, _g1) = d_meta.device_ptr(&stream);
                let (p, _g2) = d_splits.device_ptr(&stream);
                // SAFETY: the three buffers have b, parts·8 and b+1 elements on this device.
                unsafe { fm.get_mla_metadata_raw(stream.cu_stream(), s, b, m, p, parts) }
                    .map_err(|e| e.to_string())?;
            }
            let words = cuda(stream.clone_dtoh(&d_meta))?;
            let num_splits = cuda(stream.clone_dtoh(&d_splits))?;
            let tile_scheduler_metadata = words
                .chunks_exact(SCHED_META_WORDS)
                .map(|w| DecodingSchedMeta::from_words(w.try_into().unwrap()))
                .collect();
            (
                flashmla::Schedule {
                    tile_scheduler_metadata,
                    num_splits,
                },
                parts,
            )
        };
        max_parts = max_parts.max(parts);
        let cpu = get_mla_metadata_cpu(&seqlens, parts).map_err(|e| e.to_string())?;
        if gpu != cpu {
            return Err(format!(
                "batch {n} (seed {seed}, b={b}, parts={parts}) differs:\n gpu {:?}\n cpu {:?}",
                gpu.num_splits, cpu.num_splits
            ));
        }
    }
    Ok(format!(
        "{batches} random batches identical (seed {seed}, up to {max_parts} parts)"
    ))
});

gpu_case!(sched_meta_large_batch_uses_opt_in_smem, |fm| {
    let stream = fm.new_stream().map_err(|e| e.to_string())?;
    let mut rng = SplitMix64::new(11);
    let mut out = String::new();
    for b in [12_289, 40_000, flashmla::abi::MAX_SCHED_BATCH] {
        let seqlens = random_seqlens(&mut rng, b);
        let d_seqlens = cuda(stream.clone_htod(&seqlens))?;
        let shape = DecodeShape::new(b, 1, 128, 1).map_err(|e| e.to_string())?;
        let mut meta = fm
            .alloc_sched_metadata(&stream, shape)
            .map_err(|e| e.to_string())?;
        fm.get_mla_metadata(&stream, &d_seqlens, &mut meta)
            .map_err(|e| e.to_string())?;
        let gpu = meta.to_host(&stream).map_err(|e| e.to_string())?;
        let cpu = get_mla_metadata_cpu(&seqlens, meta.num_sm_parts()).map_err(|e| e.to_string())?;
        if gpu != cpu {
            return Err(format!("b={b} differs"));
        }
        out += &format!("b={b} ok; ");
    }
    // The kernel's serial path: prefix costs beyond 31 bits (lengths near i32::MAX), or a batch and
    // part count whose arrays do not fit in shared memory.
    let max = flashmla::abi::MAX_SCHED_BATCH;
    for (b, parts, huge) in [
        (300, 66, true),
        (1000, 132, true),
        (129, 7, true),
        (max, 5000, false),
    ] {
        let seqlens: Vec<i32> = if huge {
            (0..b)
                .map(|i| i32::MAX - rng.below(1 << 20) as i32 * (i % 3) as i32)
                .collect()
        } else {
            random_seqlens(&mut rng, b)
        };
        let d_seqlens = cuda(stream.clone_htod(&seqlens))?;
        let shape = DecodeShape::new(b, 1, 128, 1)
            .and_then(|s| s.with_num_sm_parts(parts))
            .map_err(|e| e.to_string())?;
        let mut meta = fm
            .alloc_sched_metadata(&stream, shape)
            .map_err(|e| e.to_string())?;
        fm.get_mla_metadata(&stream, &d_seqlens, &mut meta)
            .map_err(|e| e.to_string())?;
        let gpu = meta.to_host(&stream).map_err(|e| e.to_string())?;
        let cpu = get_mla_metadata_cpu(&seqlens, parts).map_err(|e| e.to_string())?;
        if gpu != cpu {
            return Err(format!("b={b} parts={parts} (serial path) differs"));
        }
        out += &format!("b={b} parts={parts} (serial) ok; ");
    }
    Ok(out)
});

gpu_case!(sched_meta_rejects_bad_arguments_before_launch, |fm| {
    let stream = fm.new_stream().map_err(|e| e.to_string())?;
    let shape = DecodeShape::new(4, 1, 16, 1).map_err(|e| e.to_string())?;
    let mut meta = fm
        .alloc_sched_metadata(&stream, shape)
        .map_err(|e| e.to_string())?;
    let wrong_len = cuda(stream.clone_htod(&[1i32, 2, 3]))?;
    match fm.get_mla_metadata(&stream, &wrong_len, &mut meta) {
        Err(Error::Shape {
            name: "cache_seqlens",
            ..
        }) => {}
        other => return Err(format!("wrong-length seqlens gave {other:?}")),
    }
    // SAFETY: rejected before any pointer is used.
    match unsafe { fm.get_mla_metadata_raw(stream.cu_stream(), 0, 0, 0, 0, 1) } {
        Err(Error::EmptyBatch) => {}
        other => return Err(format!("empty batch gave {other:?}")),
    }
    // SAFETY: rejected before any pointer is used.
    match unsafe { fm.get_mla_metadata_raw(stream.cu_stream(), 0, 1, 0, 0, 0) } {
        Err(Error::ZeroSize {
            name: "num_sm_parts",
        }) => {}
        other => return Err(format!("zero parts gave {other:?}")),
    }
    cuda(stream.synchronize())?;
    Ok("typed errors, nothing launched".into())
});

/// Runs `cases` and reports the worst errors; fails on the first case outside FlashMLA's tolerances.
fn run_sweep(fm: &FlashMla, cases: &[CaseSpec]) -> Result<String, String> {
    let stream = fm.new_stream().map_err(|e| e.to_string())?;
    let (mut worst_out, mut worst_lse, mut worst_cos, mut rows) = (0f64, 0f64, 0f64, 0usize);
    for spec in cases {
        let r = run_case(fm, &stream, spec, DEFAULT_ROW_BUDGET)
            .map_err(|e| format!("{}: {e}", spec.label()))?;
        if !r.passed() {
            return Err(format!("FAILED {}", r.summary()));
        }
        worst_out = worst_out.max(r.out.max_abs);
        worst_lse = worst_lse.max(r.lse.max_abs);
        worst_cos = worst_cos.max(r.out.cos_diff);
        rows += r.rows_checked.0;
    }
    Ok(format!(
        "{} cases ({} module, kernel {}), {rows} rows vs f64 reference; worst out abs {worst_out:.2e}, cos {worst_cos:.1e}; worst lse abs {worst_lse:.2e}",
        cases.len(),
        fm.ptx_module().name,
        cases
            .first()
            .map_or(Ok(DecodeKernel::Auto), |c| fm.resolve_kernel(c.kernel))
            .map_err(|e| e.to_string())?
    ))
}

fn seed() -> u64 {
    let (_, seed) = SplitMix64::from_time();
    println!("    seed {seed}");
    seed
}

gpu_case!(decode_flashmla_sweep_bf16, |fm| {
    run_sweep(&fm, &flashmla_sweep(DType::Bf16, seed()))
});

gpu_case!(decode_flashmla_sweep_fp16_subset, |fm| {
    let cases: Vec<CaseSpec> = flashmla_sweep(DType::F16, seed())
        .into_iter()
        .step_by(5)
        .collect();
    run_sweep(&fm, &cases)
});

gpu_case!(decode_head_grid_sample, |fm| {
    run_sweep(&fm, &head_grid_sample(80, seed()))
});

gpu_case!(decode_corner_cases, |fm| {
    run_sweep(&fm, &corner_cases(seed()))
});

gpu_case!(decode_portable_sm80_module, |fm| {
    let portable = FlashMla::with_module(fm.context().clone(), Some(PtxArch::Sm80))
        .map_err(|e| e.to_string())?;
    let seed = seed();
    let mut cases = head_grid_sample(12, seed);
    cases.extend(flashmla_sweep(DType::Bf16, seed).into_iter().step_by(12));
    run_sweep(&portable, &cases)
});

// On Hopper the sweeps above run the wgmma/TMA kernel; the portable kernel in the same module stays
// the oracle and the fallback, so it is checked too.
gpu_case!(
    decode_portable_kernel_in_sm90a_module,
    skip_if = no_hopper_kernel,
    |fm| {
        let seed = seed();
        let mut cases = corner_cases(seed);
        cases.extend(head_grid_sample(12, seed));
        for c in &mut cases {
            c.kernel = DecodeKernel::Portable;
        }
        run_sweep(&fm, &cases)
    }
);

// The kernel choice: Auto is the Hopper kernel exactly on compute capability 9.0; asking for it on a
// handle without it is a typed error before anything runs, and nothing is written.
gpu_case!(decode_kernel_selection, |fm| {
    let cc = fm.device_info().compute_capability;
    let auto = fm
        .resolve_kernel(DecodeKernel::Auto)
        .map_err(|e| e.to_string())?;
    let expected = if cc == (9, 0) {
        DecodeKernel::Hopper
    } else {
        DecodeKernel::Portable
    };
    if auto != expected {
        return Err(format!("Auto resolved to {auto} on {cc:?}"));
    }
    let portable = FlashMla::with_module(fm.context().clone(), Some(PtxArch::Sm80))
        .map_err(|e| e.to_string())?;
    let stream = portable.new_stream().map_err(|e| e.to_string())?;
    let shape = DecodeShape::new(2, 1, 16, 1).map_err(|e| e.to_string())?;
    let spec = CaseSpec {
        kernel: DecodeKernel::Hopper,
        ..CaseSpec::new(shape, 100, false, false, DType::Bf16, seed())
    };
    let case =
        DeviceCase::<bf16>::generate(&portable, &stream, &spec).map_err(|e| e.to_string())?;
    let mut plan = portable
        .plan_decode(&stream, shape)
        .map_err(|e| e.to_string())?;
    portable
        .get_mla_metadata(&stream, &case.cache_seqlens, plan.metadata_mut())
        .map_err(|e| e.to_string())?;
    let mut out = cuda(stream.alloc_zeros::<u16>(2 * 16 * 512))?;
    poison_u16(&stream, &mut out)?;
    let mut lse = cuda(stream.alloc_zeros::<f32>(2 * 16))?;
    // SAFETY: bf16 and u16 have the same size; any bit pattern is a valid bf16.
    let out_t = unsafe { out.transmute_mut::<bf16>(2 * 16 * 512) }.ok_or("transmute")?;
    let mut outputs = DecodeOutputs {
        out: TensorViewMut::contiguous("out", out_t, [2, 1, 16, 512]).map_err(|e| e.to_string())?,
        lse: TensorViewMut::contiguous("lse", lse.as_view_mut(), [2, 16, 1])
            .map_err(|e| e.to_string())?,
    };
    let args = case.args().map_err(|e| e.to_string())?;
    match portable.decode(&stream, &mut plan, &args, &mut outputs, case.options()) {
        Err(Error::KernelUnavailable { .. }) => {}
        other => return Err(format!("Hopper kernel on the sm_80 module gave {other:?}")),
    }
    let host = cuda(stream.clone_dtoh(&out))?;
    if host.iter().any(|&x| x != DType::Bf16.nan_bits()) {
        return Err("a rejected call wrote to out".into());
    }
    Ok(format!(
        "Auto = {auto} on {cc:?}; Hopper on the sm_80 module refused, out untouched"
    ))
});

// Where the Hopper kernel cannot take a call, DecodeKernel::Auto runs the portable kernel (and the
// result matches the reference) and DecodeKernel::Hopper is a typed error before anything runs: a plan
// made by a handle without the Hopper kernels (no tensor-map slots), and a KV cache view TMA cannot
// describe (KV-head stride 0: two KV heads reading one head's cache).
gpu_case!(
    decode_auto_falls_back_where_the_hopper_kernel_cannot_run,
    |fm| {
        let err = |e: Error| e.to_string();
        if fm.resolve_kernel(DecodeKernel::Auto).map_err(err)? != DecodeKernel::Hopper {
            return Ok(
                "no Hopper kernel on this device: Auto runs the portable kernel anyway".into(),
            );
        }
        let stream = fm.new_stream().map_err(err)?;
        let (b, s_q, h_q) = (2, 1, 32);
        let shape = DecodeShape::new(b, s_q, h_q, 1).map_err(err)?;
        let spec = CaseSpec::new(shape, 300, true, false, DType::Bf16, seed());
        let case = DeviceCase::<bf16>::generate(&fm, &stream, &spec).map_err(err)?;
        let hopper = DecodeOptions {
            kernel: DecodeKernel::Hopper,
            ..case.options()
        };
        // Decodes `args` with `options` into NaN-poisoned outputs; returns them as f32, or the error.
        let decode = |plan: &mut DecodePlan,
                      args: &DecodeArgs<'_, bf16>,
                      options: DecodeOptions| {
            let mut out = cuda(stream.alloc_zeros::<u16>(b * s_q * h_q * 512))?;
            poison_u16(&stream, &mut out)?;
            let mut lse = cuda(stream.alloc_zeros::<f32>(b * h_q * s_q))?;
            // SAFETY: bf16 and u16 have the same size; any bit pattern is a valid bf16.
            let out_t =
                unsafe { out.transmute_mut::<bf16>(b * s_q * h_q * 512) }.ok_or("transmute")?;
            let mut outputs = DecodeOutputs {
                out: TensorViewMut::contiguous("out", out_t, [b, s_q, h_q, 512]).map_err(err)?,
                lse: TensorViewMut::contiguous("lse", lse.as_view_mut(), [b, h_q, s_q])
                    .map_err(err)?,
            };
            fm.get_mla_metadata(&stream, &case.cache_seqlens, plan.metadata_mut())
                .map_err(err)?;
            let result = fm.decode(&stream, plan, args, &mut outputs, options);
            let out_host: Vec<f32> = cuda(stream.clone_dtoh(&out))?
                .into_iter()
                .map(|x| DType::Bf16.bits_to_f32(x))
                .collect();
            Ok::<_, String>((result, out_host, cuda(stream.clone_dtoh(&lse))?))
        };
        let check = |what: &str, (result, out, lse): (flashmla::Result<()>, Vec<f32>, Vec<f32>)| {
            result.map_err(|e| format!("{what}: {e}"))?;
            let report = check_outputs(&case.layout, &out, &lse, DEFAULT_ROW_BUDGET);
            if !report.passed() {
                return Err(format!("{what}: {}", report.summary()));
            }
            Ok(())
        };
        let untouched =
            |what: &str,
             expected: &dyn Fn(&Error) -> bool,
             (result, out, _): (flashmla::Result<()>, Vec<f32>, Vec<f32>)| {
                match result {
                    Err(e) if expected(&e) => {}
                    other => return Err(format!("{what}: got {other:?}")),
                }
                if out.iter().any(|x| !x.is_nan()) {
                    return Err(format!("{what}: a rejected call wrote to out"));
                }
                Ok(())
            };

        let portable =
            FlashMla::with_module(fm.context().clone(), Some(PtxArch::Sm80)).map_err(err)?;
        let mut sm80_plan = portable.plan_decode(&stream, shape).map_err(err)?;
        let args = case.args().map_err(err)?;
        check(
            "Auto with a plan without tensor-map slots",
            decode(&mut sm80_plan, &args, case.options())?,
        )?;
        untouched(
            "Hopper with a plan without tensor-map slots",
            &|e| matches!(e, Error::PlanWithoutTensorMaps),
            decode(&mut sm80_plan, &args, hopper)?,
        )?;

        // The same attention with h_kv = 2, both KV heads viewing the one head of the cache.
        let nb = case.layout.num_blocks;
        let broadcast = DecodeArgs {
            k_cache: TensorView::new(
                "k_cache",
                case.k_cache.as_view(),
                [nb, 64, 2, 576],
                [64 * 576, 576, 0, 1],
            )
            .map_err(err)?,
            ..case.args().map_err(err)?
        };
        let two_heads = DecodeShape::new(b, s_q, h_q, 2).map_err(err)?;
        let mut plan = fm.plan_decode(&stream, two_heads).map_err(err)?;
        check(
            "Auto with KV-head stride 0",
            decode(&mut plan, &broadcast, case.options())?,
        )?;
        untouched(
            "Hopper with KV-head stride 0",
            &|e| {
                matches!(
                    e,
                    Error::TmaStride {
                        name: "k_cache",
                        dim: 2,
                        stride: 0,
                        ..
                    }
                )
            },
            decode(&mut plan, &broadcast, hopper)?,
        )?;
        Ok("Auto ran the portable kernel (matching the reference) for a plan without tensor-map slots and a KV-head stride of 0; Hopper refused both, outputs untouched".into())
    }
);

// A decode written through strided views (q inside a wider buffer, the KV cache head-major with padded
// rows, out with padded rows, lse transposed to [b, s_q, h_q]) must equal the contiguous decode bit for
// bit.
gpu_case!(decode_strided_views_match_contiguous, |fm| {
    strided_views_match_contiguous(&fm, DecodeKernel::Auto)
});

gpu_case!(decode_strided_views_match_contiguous_portable, |fm| {
    strided_views_match_contiguous(&fm, DecodeKernel::Portable)
});

fn strided_views_match_contiguous(fm: &FlashMla, kernel: DecodeKernel) -> Result<String, String> {
    let stream = fm.new_stream().map_err(|e| e.to_string())?;
    let shape = DecodeShape::new(5, 2, 32, 2).map_err(|e| e.to_string())?;
    let spec = CaseSpec {
        kernel,
        ..CaseSpec::new(shape, 700, true, true, DType::Bf16, seed())
    };
    let case = DeviceCase::<bf16>::generate(fm, &stream, &spec).map_err(|e| e.to_string())?;
    let mut plan = fm.plan_decode(&stream, shape).map_err(|e| e.to_string())?;
    fm.get_mla_metadata(&stream, &case.cache_seqlens, plan.metadata_mut())
        .map_err(|e| e.to_string())?;
    let (b, s_q, h_q) = (5, 2, 32);
    let (out_ref, lse_ref) = fm
        .decode_alloc(
            &stream,
            &mut plan,
            &case.args().map_err(|e| e.to_string())?,
            case.options(),
        )
        .map_err(|e| e.to_string())?;
    // q copied into a [b, s_q, h_q, 640] buffer.
    let q_host = cuda(stream.clone_dtoh(&case.q))?;
    let mut wide = vec![bf16::ZERO; b * s_q * h_q * 640];
    for row in 0..b * s_q * h_q {
        wide[row * 640..row * 640 + 576].copy_from_slice(&q_host[row * 576..row * 576 + 576]);
    }
    let q_wide = cuda(stream.clone_htod(&wide))?;
    // k_cache stored head-major within each page with padded rows, [pages, h_kv, 64, 640], and viewed as
    // [pages, 64, h_kv, 576]: the head stride exceeds the token stride (the TMA tensor map of the Hopper
    // kernel must follow any strides the views allow).
    let (pages, h_kv) = (case.layout.num_blocks, 2);
    let k_host = cuda(stream.clone_dtoh(&case.k_cache))?;
    let mut k_wide = vec![bf16::ZERO; pages * h_kv * 64 * 640];
    for page in 0..pages {
        for token in 0..64 {
            for g in 0..h_kv {
                let from = ((page * 64 + token) * h_kv + g) * 576;
                let to = ((page * h_kv + g) * 64 + token) * 640;
                k_wide[to..to + 576].copy_from_slice(&k_host[from..from + 576]);
            }
        }
    }
    let k_wide = cuda(stream.clone_htod(&k_wide))?;
    let mut out = cuda(stream.alloc_zeros::<bf16>(b * s_q * h_q * 520))?;
    let mut lse = cuda(stream.alloc_zeros::<f32>(b * s_q * h_q))?;
    {
        let base = case.args().map_err(|e| e.to_string())?;
        let args = DecodeArgs {
            q: TensorView::new(
                "q",
                q_wide.as_view(),
                [b, s_q, h_q, 576],
                [s_q * h_q * 640, h_q * 640, 640, 1],
            )
            .map_err(|e| e.to_string())?,
            k_cache: TensorView::new(
                "k_cache",
                k_wide.as_view(),
                [pages, 64, h_kv, 576],
                [h_kv * 64 * 640, 640, 64 * 640, 1],
            )
            .map_err(|e| e.to_string())?,
            ..base
        };
        let mut outputs = DecodeOutputs {
            out: TensorViewMut::new(
                "out",
                out.as_view_mut(),
                [b, s_q, h_q, 512],
                [s_q * h_q * 520, h_q * 520, 520, 1],
            )
            .map_err(|e| e.to_string())?,
            // lse [b, h_q, s_q] stored as [b, s_q, h_q].
            lse: TensorViewMut::new("lse", lse.as_view_mut(), [b, h_q, s_q], [s_q * h_q, 1, h_q])
                .map_err(|e| e.to_string())?,
        };
        fm.decode(&stream, &mut plan, &args, &mut outputs, case.options())
            .map_err(|e| e.to_string())?;
    }
    let (o1, l1) = (
        cuda(stream.clone_dtoh(&out_ref))?,
        cuda(stream.clone_dtoh(&lse_ref))?,
    );
    let (o2, l2) = (
        cuda(stream.clone_dtoh(&out))?,
        cuda(stream.clone_dtoh(&lse))?,
    );
    for row in 0..b * s_q * h_q {
        if o1[row * 512..row * 512 + 512]
            .iter()
            .zip(&o2[row * 520..row * 520 + 512])
            .any(|(x, y)| x.to_bits() != y.to_bits())
        {
            return Err(format!("out row {row} differs"));
        }
    }
    for i in 0..b {
        for h in 0..h_q {
            for t in 0..s_q {
                let (x, y) = (l1[(i * h_q + h) * s_q + t], l2[(i * s_q + t) * h_q + h]);
                if x.to_bits() != y.to_bits() {
                    return Err(format!("lse [{i},{h},{t}] {x} vs {y}"));
                }
            }
        }
    }
    Ok(format!(
        "kernel {}: strided q/k_cache/out/lse identical to contiguous",
        fm.resolve_kernel(kernel).map_err(|e| e.to_string())?
    ))
}

// The metadata + decode sequence of one step, captured in a CUDA graph and replayed with new KV
// lengths, gives the same result as running it directly.
gpu_case!(decode_cuda_graph_capture_and_replay, |fm| {
    let stream = fm.new_stream().map_err(|e| e.to_string())?;
    let shape = DecodeShape::new(16, 2, 64, 1).map_err(|e| e.to_string())?;
    let seed = seed();
    let spec = CaseSpec::new(shape, 3000, true, true, DType::Bf16, seed);
    let case = DeviceCase::<bf16>::generate(&fm, &stream, &spec).map_err(|e| e.to_string())?;
    let mut plan = fm.plan_decode(&stream, shape).map_err(|e| e.to_string())?;
    let mut captured_out =
        OutputBuffers::<bf16>::alloc(&stream, [16, 2, 64]).map_err(|e| e.to_string())?;
    // Lengths live in one device buffer that the graph reads; the replay uses the updated values.
    let mut seqlens = cuda(stream.clone_htod(&case.layout.seqlens))?;
    let short: Vec<i32> = case.layout.seqlens.iter().map(|&l| l / 2).collect();
    // cudarc's cross-stream event tracking records events that cannot be captured; the whole step runs on
    // one stream, so it is off for this case (back on when the guard drops, on every way out).
    // SAFETY: every buffer created below is used on `stream` only.
    let _tracking_off = unsafe { EventTrackingOff::new(fm.context()) };
    let run = |plan: &mut DecodePlan,
               outputs: &mut OutputBuffers<bf16>,
               seqlens: &CudaSlice<i32>|
     -> Result<(), String> {
        fm.get_mla_metadata(&stream, seqlens, plan.metadata_mut())
            .map_err(|e| e.to_string())?;
        let args = DecodeArgs {
            cache_seqlens: seqlens.as_view(),
            ..case.args().map_err(|e| e.to_string())?
        };
        let mut views = outputs.views().map_err(|e| e.to_string())?;
        fm.decode(&stream, plan, &args, &mut views, case.options())
            .map_err(|e| e.to_string())
    };
    cuda(stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL))?;
    let captured = run(&mut plan, &mut captured_out, &seqlens);
    let graph = cuda(stream.end_capture(
        sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
    ))?;
    captured?;
    let graph = graph.ok_or("capture produced no graph")?;
    let mut results = Vec::new();
    for lens in [&case.layout.seqlens, &short] {
        cuda(stream.memcpy_htod(lens.as_slice(), &mut seqlens))?;
        cuda(graph.launch())?;
        let replayed = (
            cuda(stream.clone_dtoh(&captured_out.out))?,
            cuda(stream.clone_dtoh(&captured_out.lse))?,
        );
        let mut plan2 = fm.plan_decode(&stream, shape).map_err(|e| e.to_string())?;
        let mut direct_out =
            OutputBuffers::<bf16>::alloc(&stream, [16, 2, 64]).map_err(|e| e.to_string())?;
        run(&mut plan2, &mut direct_out, &seqlens)?;
        let direct = (
            cuda(stream.clone_dtoh(&direct_out.out))?,
            cuda(stream.clone_dtoh(&direct_out.lse))?,
        );
        let same = replayed
            .0
            .iter()
            .zip(&direct.0)
            .all(|(a, b)| a.to_bits() == b.to_bits())
            && replayed
                .1
                .iter()
                .zip(&direct.1)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            return Err("graph replay differs from the direct run".into());
        }
        results.push(replayed.1[0]);
    }
    if results[0] == results[1] {
        return Err("replay with new lengths returned the old lse: the graph did not read the updated buffer".into());
    }
    // And the captured result is right, not just repeatable.
    let report = run_case(&fm, &stream, &spec, DEFAULT_ROW_BUDGET).map_err(|e| e.to_string())?;
    if !report.passed() {
        return Err(report.summary());
    }
    Ok(
        "graph replay (two length sets) bit-identical to direct runs; reference check passed"
            .into(),
    )
});

// Errors that need device buffers: views past their buffer, buffers of another context, metadata never
// computed. Nothing may be written to the outputs.
gpu_case!(decode_rejects_bad_buffers_before_launch, |fm| {
    let stream = fm.new_stream().map_err(|e| e.to_string())?;
    let shape = DecodeShape::new(2, 1, 16, 1).map_err(|e| e.to_string())?;
    let spec = CaseSpec::new(shape, 200, false, false, DType::Bf16, 5);
    let case = DeviceCase::<bf16>::generate(&fm, &stream, &spec).map_err(|e| e.to_string())?;
    let mut plan = fm.plan_decode(&stream, shape).map_err(|e| e.to_string())?;
    let mut out = cuda(stream.alloc_zeros::<u16>(2 * 16 * 512))?;
    let mut lse = cuda(stream.alloc_zeros::<f32>(2 * 16))?;
    poison_u16(&stream, &mut out)?;
    let expect =
        |what: &str, r: flashmla::Result<()>, ok: fn(&Error) -> bool| -> Result<(), String> {
            match r {
                Err(e) if ok(&e) => Ok(()),
                other => Err(format!("{what}: got {other:?}")),
            }
        };
    // Metadata never computed.
    {
        // SAFETY: bf16 and u16 have the same size; any bit pattern is a valid bf16.
        let out_t = unsafe { out.transmute_mut::<bf16>(2 * 16 * 512) }.ok_or("transmute")?;
        let mut outputs = DecodeOutputs {
            out: TensorViewMut::contiguous("out", out_t, [2, 1, 16, 512])
                .map_err(|e| e.to_string())?,
            lse: TensorViewMut::contiguous("lse", lse.as_view_mut(), [2, 16, 1])
                .map_err(|e| e.to_string())?,
        };
        let r = fm.decode(
            &stream,
            &mut plan,
            &case.args().map_err(|e| e.to_string())?,
            &mut outputs,
            case.options(),
        );
        expect("uncomputed metadata", r, |e| {
            matches!(e, Error::MetadataNotComputed)
        })?;
    }
    // A view longer than its buffer.
    match TensorView::contiguous("q", case.q.as_view(), [3, 1, 16, 576]) {
        Err(Error::OutOfBounds { name: "q", .. }) => {}
        other => return Err(format!("oversized view: {:?}", other.err())),
    }
    // A buffer from another context on the same device.
    let other_ctx = cuda(CudaContext::new_non_primary(0, 0))?;
    let other_stream = other_ctx.default_stream();
    let foreign = cuda(other_stream.clone_htod(&case.layout.seqlens))?;
    fm.get_mla_metadata(&stream, &case.cache_seqlens, plan.metadata_mut())
        .map_err(|e| e.to_string())?;
    {
        // SAFETY: bf16 and u16 have the same size; any bit pattern is a valid bf16.
        let out_t = unsafe { out.transmute_mut::<bf16>(2 * 16 * 512) }.ok_or("transmute")?;
        let mut outputs = DecodeOutputs {
            out: TensorViewMut::contiguous("out", out_t, [2, 1, 16, 512])
                .map_err(|e| e.to_string())?,
            lse: TensorViewMut::contiguous("lse", lse.as_view_mut(), [2, 16, 1])
                .map_err(|e| e.to_string())?,
        };
        let args = DecodeArgs {
            cache_seqlens: foreign.as_view(),
            ..case.args().map_err(|e| e.to_string())?
        };
        let r = fm.decode(&stream, &mut plan, &args, &mut outputs, case.options());
        expect("foreign buffer", r, |e| {
            matches!(
                e,
                Error::WrongContext {
                    name: "cache_seqlens",
                    device: 0,
                }
            )
        })?;
        let args = case.args().map_err(|e| e.to_string())?;
        let r = fm.decode(
            &stream,
            &mut plan,
            &args,
            &mut outputs,
            DecodeOptions {
                max_seqlen_k: Some(1 << 20),
                ..case.options()
            },
        );
        expect("small block table", r, |e| {
            matches!(e, Error::BlockTableTooSmall { .. })
        })?;
    }
    let host = cuda(stream.clone_dtoh(&out))?;
    if host.iter().any(|&x| x != DType::Bf16.nan_bits()) {
        return Err("a rejected call wrote to out".into());
    }
    Ok("typed errors, outputs untouched".into())
});

fn poison_u16(stream: &Arc<CudaStream>, buf: &mut CudaSlice<u16>) -> Result<(), String> {
    let n = buf.len();
    let (ptr, _guard) = buf.device_ptr(stream);
    // SAFETY: `ptr` addresses n u16s of this context; ordered on `stream`.
    cuda(
        unsafe { sys::cuMemsetD16Async(ptr, DType::Bf16.nan_bits(), n, stream.cu_stream()) }
            .result(),
    )
}

fn main() {
    runner::run(
        "gpu",
        flashmla_harness::cases![
            device_info_and_kernels,
            sched_meta_matches_cpu_on_random_batches,
            sched_meta_large_batch_uses_opt_in_smem,
            sched_meta_rejects_bad_arguments_before_launch,
            decode_rejects_bad_buffers_before_launch,
            decode_corner_cases,
            decode_strided_views_match_contiguous,
            decode_strided_views_match_contiguous_portable,
            decode_cuda_graph_capture_and_replay,
            decode_head_grid_sample,
            decode_portable_sm80_module,
            decode_portable_kernel_in_sm90a_module,
            decode_kernel_selection,
            decode_auto_falls_back_where_the_hopper_kernel_cannot_run,
            decode_flashmla_sweep_fp16_subset,
            decode_flashmla_sweep_bf16,
        ],
    );
}

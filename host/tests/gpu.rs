//! The GPU suite: runs on a machine with an NVIDIA GPU (and no Rust: see `scripts/gpu-suite.sh`).
//! Every case is skipped, not passed, where there is no driver or no suitable device.
mod harness;

use cudarc::driver::{sys, CudaSlice, CudaStream, DevicePtr};
use flashmla::abi::{DecodingSchedMeta, SCHED_META_WORDS};
use flashmla::rng::SplitMix64;
use flashmla::{get_mla_metadata_cpu, DecodeShape, Error, FlashMla};
use harness::{check, Fail, Outcome, Skip};
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
        fn $name() -> Outcome {
            let $fm = match device() {
                Ok(fm) => fm,
                Err(outcome) => return outcome,
            };
            check((|| -> Result<String, String> { $body })())
        }
    };
}

fn cuda<T>(r: Result<T, cudarc::driver::DriverError>) -> Result<T, String> {
    r.map_err(|e| format!("CUDA: {e}"))
}

/// Fills an `i32` buffer with a poison value, so words the kernel fails to write are caught.
fn poison(stream: &Arc<CudaStream>, buf: &mut CudaSlice<i32>) -> Result<(), String> {
    let (ptr, _guard) = buf.device_ptr(stream);
    // SAFETY: `ptr` addresses buf.len() i32s of this context; ordered on `stream`.
    cuda(unsafe { sys::cuMemsetD32Async(ptr, 0x7FBA_DBAD, buf.len(), stream.cu_stream()) }.result())
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
            let (m, p) = meta.buffers_mut();
            poison(&stream, m)?;
            poison(&stream, p)?;
            fm.get_mla_metadata(&stream, &d_seqlens, &mut meta)
                .map_err(|e| e.to_string())?;
            (
                meta.to_host(&stream).map_err(|e| e.to_string())?,
                meta.num_sm_parts(),
            )
        } else {
            let parts = 1 + (n / 2) % 160;
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
    match unsafe { fm.get_mla_metadata_raw(stream.cu_stream(), 0, 1, 0, 0, 0) } {
        Err(Error::ZeroSize {
            name: "num_sm_parts",
        }) => {}
        other => return Err(format!("zero parts gave {other:?}")),
    }
    cuda(stream.synchronize())?;
    Ok("typed errors, nothing launched".into())
});

fn main() {
    harness::run(
        "gpu",
        &[
            ("device_info_and_kernels", device_info_and_kernels),
            (
                "sched_meta_matches_cpu_on_random_batches",
                sched_meta_matches_cpu_on_random_batches,
            ),
            (
                "sched_meta_large_batch_uses_opt_in_smem",
                sched_meta_large_batch_uses_opt_in_smem,
            ),
            (
                "sched_meta_rejects_bad_arguments_before_launch",
                sched_meta_rejects_bad_arguments_before_launch,
            ),
        ],
    );
}

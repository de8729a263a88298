//! Scheduler metadata: the CPU pass and the GPU kernel, skipped without a GPU. `gpu/b` times eager
//! launches back to back (CUDA events; the host's launch cost included), `gpu-graph/b` the kernel
//! without it: 64 launches captured in one CUDA graph, replayed, time per launch.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use flashmla::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use flashmla::{get_mla_metadata_cpu, DecodeShape};
use flashmla_harness::gpu_time;
use flashmla_harness::rng::SplitMix64;

fn seqlens(b: usize) -> Vec<i32> {
    let mut rng = SplitMix64::new(b as u64);
    (0..b)
        .map(|_| (4096.0 + rng.normal() * 2048.0).max(1.0) as i32)
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("get_mla_metadata");
    for b in [1usize, 128, 4096] {
        let lens = seqlens(b);
        group.bench_with_input(BenchmarkId::new("cpu", b), &lens, |bencher, lens| {
            bencher.iter(|| get_mla_metadata_cpu(lens, 66).expect("valid batch"))
        });
    }
    match flashmla_harness::bench_device("get_mla_metadata/gpu") {
        None => {}
        Some(fm) => {
            let stream = fm.new_stream().expect("stream");
            for b in [1usize, 128, 4096] {
                let lens = stream.clone_htod(&seqlens(b)).expect("upload");
                let shape = DecodeShape::new(b, 1, 128, 1).expect("shape");
                let mut meta = fm.alloc_sched_metadata(&stream, shape).expect("alloc");
                group.bench_function(BenchmarkId::new("gpu", b), |bencher| {
                    bencher.iter_custom(|iters| {
                        gpu_time(&stream, || {
                            for _ in 0..iters {
                                fm.get_mla_metadata(&stream, &lens, &mut meta)
                                    .expect("launch");
                            }
                        })
                    })
                });
            }
            // cudarc's cross-stream event tracking records events a capture cannot hold.
            // SAFETY: everything here runs on one stream, which orders every buffer's uses.
            let _tracking_off = unsafe { flashmla_harness::EventTrackingOff::new(fm.context()) };
            const LAUNCHES: usize = 64;
            for b in [1usize, 128, 4096] {
                let lens = stream.clone_htod(&seqlens(b)).expect("upload");
                let shape = DecodeShape::new(b, 1, 128, 1).expect("shape");
                let mut meta = fm.alloc_sched_metadata(&stream, shape).expect("alloc");
                stream
                    .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                    .expect("begin capture");
                for _ in 0..LAUNCHES {
                    fm.get_mla_metadata(&stream, &lens, &mut meta)
                        .expect("launch");
                }
                let graph = stream
                    .end_capture(
                        CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
                    )
                    .expect("end capture")
                    .expect("a graph");
                group.bench_function(BenchmarkId::new("gpu-graph", b), |bencher| {
                    bencher.iter_custom(|iters| {
                        let replays = iters.div_ceil(LAUNCHES as u64);
                        let time = gpu_time(&stream, || {
                            for _ in 0..replays {
                                graph.launch().expect("replay");
                            }
                        });
                        // Time per launch, times the launches criterion asked for.
                        time.mul_f64(iters as f64 / (replays * LAUNCHES as u64) as f64)
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

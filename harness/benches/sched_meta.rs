//! Scheduler metadata: the CPU pass and the GPU kernel, skipped without a GPU. `gpu/b` times eager
//! launches back to back (CUDA events; bound by the host's launch cost for small batches), `gpu-graph/b`
//! the kernel alone: 64 launches captured in one CUDA graph, replayed, time per launch.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use flashmla::{get_mla_metadata_cpu, DecodeShape, FlashMla};
use flashmla_harness::rng::SplitMix64;
use std::time::Duration;

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
    match FlashMla::new(0) {
        Err(e) => eprintln!("get_mla_metadata/gpu: skipped: {e}"),
        Ok(fm) => {
            let stream = fm.new_stream().expect("stream");
            for b in [1usize, 128, 4096] {
                let lens = stream.clone_htod(&seqlens(b)).expect("upload");
                let shape = DecodeShape::new(b, 1, 128, 1).expect("shape");
                let mut meta = fm.alloc_sched_metadata(&stream, shape).expect("alloc");
                group.bench_function(BenchmarkId::new("gpu", b), |bencher| {
                    bencher.iter_custom(|iters| {
                        let start = stream
                            .record_event(Some(
                                flashmla::cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT,
                            ))
                            .expect("event");
                        for _ in 0..iters {
                            fm.get_mla_metadata(&stream, &lens, &mut meta)
                                .expect("launch");
                        }
                        let end = stream
                            .record_event(Some(
                                flashmla::cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT,
                            ))
                            .expect("event");
                        end.synchronize().expect("sync");
                        Duration::from_secs_f64(
                            start.elapsed_ms(&end).expect("elapsed") as f64 / 1e3,
                        )
                    })
                });
            }
            // cudarc's cross-stream event tracking records events a capture cannot hold; everything
            // here runs on one stream.
            unsafe { fm.context().disable_event_tracking() };
            const LAUNCHES: usize = 64;
            for b in [1usize, 128, 4096] {
                let lens = stream.clone_htod(&seqlens(b)).expect("upload");
                let shape = DecodeShape::new(b, 1, 128, 1).expect("shape");
                let mut meta = fm.alloc_sched_metadata(&stream, shape).expect("alloc");
                stream
                    .begin_capture(
                        flashmla::cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                    )
                    .expect("begin capture");
                for _ in 0..LAUNCHES {
                    fm.get_mla_metadata(&stream, &lens, &mut meta)
                        .expect("launch");
                }
                let graph = stream
                    .end_capture(
                        flashmla::cudarc::driver::sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
                    )
                    .expect("end capture")
                    .expect("a graph");
                group.bench_function(BenchmarkId::new("gpu-graph", b), |bencher| {
                    bencher.iter_custom(|iters| {
                        let start = stream
                            .record_event(Some(
                                flashmla::cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT,
                            ))
                            .expect("event");
                        for _ in 0..iters.div_ceil(LAUNCHES as u64) {
                            graph.launch().expect("replay");
                        }
                        let end = stream
                            .record_event(Some(
                                flashmla::cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT,
                            ))
                            .expect("event");
                        end.synchronize().expect("sync");
                        let launches = iters.div_ceil(LAUNCHES as u64) * LAUNCHES as u64;
                        Duration::from_secs_f64(
                            start.elapsed_ms(&end).expect("elapsed") as f64 / 1e3 * iters as f64
                                / launches as f64,
                        )
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

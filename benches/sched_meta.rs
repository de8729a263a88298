//! Scheduler metadata: the CPU pass and the GPU kernel (CUDA-event timed; skipped without a GPU).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use flashmla::rng::SplitMix64;
use flashmla::{get_mla_metadata_cpu, DecodeShape, FlashMla};
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
                                cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT,
                            ))
                            .expect("event");
                        for _ in 0..iters {
                            fm.get_mla_metadata(&stream, &lens, &mut meta)
                                .expect("launch");
                        }
                        let end = stream
                            .record_event(Some(
                                cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT,
                            ))
                            .expect("event");
                        end.synchronize().expect("sync");
                        Duration::from_secs_f64(
                            start.elapsed_ms(&end).expect("elapsed") as f64 / 1e3,
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

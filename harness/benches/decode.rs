//! Decode (split + combine, metadata reused) on a few representative shapes, CUDA-event timed.
//! Skipped without a GPU. `flashmla bench` is the full grid with ceilings and an L2 flush per run; here
//! the KV caches of the b = 128 shapes (≥ 600 MB) dwarf the 60 MB L2, so back-to-back runs do not hit it.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flashmla::half::bf16;
use flashmla::{DType, DecodeShape, OutputBuffers};
use flashmla_harness::bench::{flashmla_bytes, flashmla_flops};
use flashmla_harness::case::{CaseSpec, DeviceCase};
use flashmla_harness::gpu_time;
use std::time::Duration;

/// (b, s_q, mean s_k, h_q, varlen): memory-bound, compute-bound, MTP, varlen, small batch.
const SHAPES: [(usize, usize, usize, usize, bool); 5] = [
    (128, 1, 4096, 16, false),
    (128, 1, 4096, 128, false),
    (128, 2, 8192, 64, false),
    (128, 1, 8192, 128, true),
    (8, 1, 8192, 128, false),
];

fn bench(c: &mut Criterion) {
    let Some(fm) = flashmla_harness::bench_device("decode") else {
        return;
    };
    let stream = fm.new_stream().expect("stream");
    let mut group = c.benchmark_group("decode_bf16");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for (b, s_q, s_k, h_q, varlen) in SHAPES {
        let shape = DecodeShape::new(b, s_q, h_q, 1).expect("shape");
        let spec = CaseSpec::new(shape, s_k, varlen, true, DType::Bf16, 7);
        let case = DeviceCase::<bf16>::generate(&fm, &stream, &spec).expect("case");
        let mut plan = fm.plan_decode(&stream, shape).expect("plan");
        fm.get_mla_metadata(&stream, &case.cache_seqlens, plan.metadata_mut())
            .expect("metadata");
        let args = case.args().expect("args");
        let mut buffers = OutputBuffers::<bf16>::alloc(&stream, [b, s_q, h_q]).expect("alloc");
        let mut outputs = buffers.views().expect("views");
        let total = case.layout.total_seqlen_k();
        eprintln!(
            "decode b={b} s_q={s_q} s_k={s_k} h_q={h_q}: {:.1} GFLOP, {:.1} MB by FlashMLA's formulas",
            flashmla_flops(s_q, total, h_q) / 1e9,
            flashmla_bytes(b, s_q, h_q, 1, total) / 1e6
        );
        group.throughput(Throughput::Bytes(
            flashmla_bytes(b, s_q, h_q, 1, total) as u64
        ));
        let id = format!(
            "b{b}_sq{s_q}_sk{s_k}_hq{h_q}{}",
            if varlen { "_varlen" } else { "" }
        );
        group.bench_function(BenchmarkId::from_parameter(id), |bencher| {
            bencher.iter_custom(|iters| {
                gpu_time(&stream, || {
                    for _ in 0..iters {
                        fm.decode(&stream, &mut plan, &args, &mut outputs, case.options())
                            .expect("decode");
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

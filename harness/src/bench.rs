//! Benchmark procedure shared by `flashmla bench` and the criterion benches: FlashMLA's FLOP and byte
//! formulas, CUDA-event timing with an L2 flush before every run, the two ceilings measured in the same
//! run (device-to-device copy bandwidth and cuBLAS bf16 matmul rate), and FlashMLA's times measured
//! side by side. The shapes it times are [`shapes::flashmla_grid`](crate::shapes::flashmla_grid).

use crate::case::{CaseSpec, DeviceCase};
use crate::cuda;
use crate::shapes::{BenchShape, ShapeKey};
use flashmla::abi::fill::FillParams;
use flashmla::abi::{HEAD_DIM_K, HEAD_DIM_V};
use flashmla::cudarc::driver::{sys, CudaEvent, CudaSlice, CudaStream, DevicePtrMut};
use flashmla::half;
use flashmla::{
    DType, DecodeKernel, DecodeOptions, DecodePlan, DecodeShape, Element, Error, FlashMla,
    OutputBuffers, Result,
};
use std::sync::Arc;

/// FlashMLA's times measured in the same run as ours, from the CSV files that
/// `shared/tools/flashmla-anchor/time_flashmla.py` prints (`b,s_q,s_k,h_q,varlen,total_seqlen_k,us`),
/// one file per FlashMLA version and round. Per shape the bar is the fastest time across the files.
#[derive(Clone, Debug, Default)]
pub struct FlashMlaTimes {
    by_shape: Vec<FlashMlaTime>,
}

/// FlashMLA's fastest time for one shape across the files read.
#[derive(Clone, Debug)]
struct FlashMlaTime {
    key: ShapeKey,
    /// Σ s_k FlashMLA ran on.
    total_seqlen_k: usize,
    us: f64,
    /// The file it came from.
    origin: String,
}

impl FlashMlaTimes {
    /// Adds one CSV file's rows (`origin` names it in errors and in the table).
    pub fn add_csv(&mut self, origin: &str, text: &str) -> Result<()> {
        let err = |message: String| Error::BenchData {
            origin: origin.to_string(),
            message,
        };
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header = lines.next().ok_or_else(|| err("empty file".into()))?;
        if header.trim() != "b,s_q,s_k,h_q,varlen,total_seqlen_k,us" {
            return Err(err(format!(
                "expected the header `b,s_q,s_k,h_q,varlen,total_seqlen_k,us` of time_flashmla.py, got `{header}`"
            )));
        }
        for line in lines {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let bad = || err(format!("malformed row `{line}`"));
            if f.len() != 7 {
                return Err(bad());
            }
            let n = |i: usize| f[i].parse::<usize>().map_err(|_| bad());
            let us: f64 = f[6].parse().map_err(|_| bad())?;
            if !(us.is_finite() && us > 0.0) {
                return Err(bad());
            }
            let key = (n(0)?, n(1)?, n(2)?, n(3)?, n(4)? == 1);
            let total = n(5)?;
            match self.by_shape.iter_mut().find(|e| e.key == key) {
                Some(entry) => {
                    if entry.total_seqlen_k != total {
                        return Err(err(format!(
                            "shape {key:?} ran on Σs_k = {total}, another file on {}",
                            entry.total_seqlen_k
                        )));
                    }
                    if us < entry.us {
                        entry.us = us;
                        entry.origin = origin.to_string();
                    }
                }
                None => self.by_shape.push(FlashMlaTime {
                    key,
                    total_seqlen_k: total,
                    us,
                    origin: origin.to_string(),
                }),
            }
        }
        Ok(())
    }

    /// Reads and adds a CSV file.
    pub fn add_file(&mut self, path: &std::path::Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::BenchData {
            origin: path.display().to_string(),
            message: e.to_string(),
        })?;
        self.add_csv(&path.display().to_string(), &text)
    }

    /// Whether no file was added.
    pub fn is_empty(&self) -> bool {
        self.by_shape.is_empty()
    }

    /// FlashMLA's best time for `shape` (µs) and the file it came from, checked to have run on the same
    /// Σs_k as ours (`total_seqlen_k`): a comparison on other lengths is an error, not a number.
    pub fn best_us(
        &self,
        shape: &BenchShape,
        total_seqlen_k: usize,
    ) -> Result<Option<(f64, &str)>> {
        if shape.h_kv != 1 || !shape.causal {
            return Ok(None);
        }
        match self.by_shape.iter().find(|e| e.key == shape.key()) {
            None => Ok(None),
            Some(e) if e.total_seqlen_k != total_seqlen_k => Err(Error::BenchData {
                origin: e.origin.clone(),
                message: format!(
                    "FlashMLA ran {:?} on Σs_k = {}, this benchmark on {total_seqlen_k}: not the same inputs",
                    shape.key(),
                    e.total_seqlen_k
                ),
            }),
            Some(e) => Ok(Some((e.us, e.origin.as_str()))),
        }
    }
}

/// FlashMLA's FLOP count (`tests/test_flash_mla.py`): `s_q · Σs_k · h_q · (576 + 512) · 2` (no causal
/// savings, no padding).
pub fn flashmla_flops(s_q: usize, total_seqlen_k: usize, h_q: usize) -> f64 {
    s_q as f64 * total_seqlen_k as f64 * h_q as f64 * (HEAD_DIM_K + HEAD_DIM_V) as f64 * 2.0
}

/// FlashMLA's byte count: `(Σs_k · h_kv · 576 + b·s_q·h_q·576 + b·s_q·h_q·512) · sizeof(dtype)`.
pub fn flashmla_bytes(b: usize, s_q: usize, h_q: usize, h_kv: usize, total_seqlen_k: usize) -> f64 {
    let elems = total_seqlen_k * h_kv * HEAD_DIM_K
        + b * s_q * h_q * HEAD_DIM_K
        + b * s_q * h_q * HEAD_DIM_V;
    elems as f64 * 2.0
}

/// Median of a list: the middle value, or the mean of the two middle values for an even length (what
/// `torch.quantile(…, 0.5)` gives, and so FlashMLA's `triton.testing.do_bench(return_mode="median")`);
/// NaN for an empty list.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The roofs measured in the same run.
#[derive(Clone, Debug)]
pub struct Ceilings {
    /// Device-to-device copy of 2 GiB, bytes read + written per second, GB/s.
    pub copy_gbps: f64,
    /// cuBLAS bf16 8192³ matmul on random data, TFLOPS (None where cuBLAS cannot be loaded).
    pub matmul_tflops: Option<f64>,
    /// Why the matmul rate is missing, if it is.
    pub matmul_note: String,
}

/// Buffers reused across measurements: an L2-flush buffer and timing events.
pub struct Bencher {
    fm: FlashMla,
    stream: Arc<CudaStream>,
    flush: CudaSlice<u32>,
    events: Vec<(CudaEvent, CudaEvent)>,
    /// The split-KV kernel the decode rows time.
    pub kernel: DecodeKernel,
    /// SM parts for every decode row ([`DecodeShape::with_num_sm_parts`]); `None`: FlashMLA's formula.
    pub num_sm_parts: Option<usize>,
    /// Also time the whole decode step (metadata + decode), eagerly and as a CUDA-graph replay
    /// ([`BenchRow::step_us`], [`BenchRow::step_graph_us`]).
    pub step: bool,
}

impl Bencher {
    /// Timed repetitions per measurement.
    pub const DEFAULT_ITERS: usize = 30;

    /// Allocates a flush buffer of 4 × L2.
    pub fn new(fm: &FlashMla, stream: &Arc<CudaStream>, iters: usize) -> Result<Self> {
        // u32 words: as many words as L2 has bytes, i.e. 4 × L2.
        let words = (fm.device_info().l2_cache_bytes as usize).max(1 << 20);
        let flush = stream
            .alloc_zeros::<u32>(words)
            .map_err(cuda("cuMemAlloc"))?;
        let ctx = fm.context();
        let events = (0..iters.max(1))
            .map(|_| {
                Ok((
                    ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                        .map_err(cuda("cuEventCreate"))?,
                    ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                        .map_err(cuda("cuEventCreate"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            fm: fm.clone(),
            stream: stream.clone(),
            flush,
            events,
            kernel: DecodeKernel::Auto,
            num_sm_parts: None,
            step: false,
        })
    }

    fn flush_l2(&mut self) -> Result<()> {
        let n = self.flush.len();
        let (ptr, _g) = self.flush.device_ptr_mut(&self.stream);
        // SAFETY: writes the flush buffer only.
        unsafe { sys::cuMemsetD32Async(ptr, 0x1234_5678, n, self.stream.cu_stream()) }
            .result()
            .map_err(cuda("cuMemsetD32Async"))
    }

    /// Median GPU time in µs of `work`, each repetition preceded by an L2 flush (outside the timed
    /// region); `warmup` untimed repetitions first.
    pub fn time_us(
        &mut self,
        warmup: usize,
        mut work: impl FnMut() -> Result<()>,
    ) -> Result<(f64, f64)> {
        for _ in 0..warmup {
            work()?;
        }
        for i in 0..self.events.len() {
            self.flush_l2()?;
            self.events[i]
                .0
                .record(&self.stream)
                .map_err(cuda("cuEventRecord"))?;
            work()?;
            self.events[i]
                .1
                .record(&self.stream)
                .map_err(cuda("cuEventRecord"))?;
        }
        self.stream
            .synchronize()
            .map_err(cuda("cuStreamSynchronize"))?;
        let mut times = self
            .events
            .iter()
            .map(|(a, b)| {
                a.elapsed_ms(b)
                    .map(|ms| ms as f64 * 1e3)
                    .map_err(cuda("cuEventElapsedTime"))
            })
            .collect::<Result<Vec<_>>>()?;
        let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
        Ok((median(&mut times), min))
    }

    /// Copy bandwidth and matmul rate of this device, now.
    pub fn ceilings(&mut self) -> Result<Ceilings> {
        let stream = self.stream.clone();
        let bytes = 2usize << 30;
        let src = stream
            .alloc_zeros::<u8>(bytes)
            .map_err(cuda("cuMemAlloc"))?;
        let mut dst = stream
            .alloc_zeros::<u8>(bytes)
            .map_err(cuda("cuMemAlloc"))?;
        let (copy_us, _) = self.time_us(2, || {
            stream
                .memcpy_dtod(&src, &mut dst)
                .map_err(cuda("cuMemcpyDtoD"))
        })?;
        let copy_gbps = 2.0 * bytes as f64 / copy_us / 1e3;
        drop((src, dst));
        let (matmul_tflops, matmul_note) = match self.matmul_tflops() {
            Ok(t) => (Some(t), String::new()),
            Err(e) => (None, e.to_string()),
        };
        Ok(Ceilings {
            copy_gbps,
            matmul_tflops,
            matmul_note,
        })
    }

    fn matmul_tflops(&mut self) -> Result<f64> {
        use flashmla::cudarc::cublas::{sys as blas_sys, CudaBlas, Gemm, GemmConfig};
        if !cublas_available() {
            return Err(Error::Cublas(
                "libcublas could not be loaded (add the CUDA toolkit's lib64 to LD_LIBRARY_PATH)"
                    .into(),
            ));
        }
        let n = 8192usize;
        let stream = self.stream.clone();
        let mut a = stream
            .alloc_zeros::<half::bf16>(n * n)
            .map_err(cuda("cuMemAlloc"))?;
        let mut b = stream
            .alloc_zeros::<half::bf16>(n * n)
            .map_err(cuda("cuMemAlloc"))?;
        let mut c = stream
            .alloc_zeros::<half::bf16>(n * n)
            .map_err(cuda("cuMemAlloc"))?;
        for (buf, seed) in [(&mut a, 1u64), (&mut b, 2u64)] {
            let (ptr, _g) = buf.device_ptr_mut(&stream);
            // SAFETY: fills n·n bf16 values of a live buffer (random data: zeros run faster).
            unsafe {
                self.fm.fill_raw(
                    stream.cu_stream(),
                    DType::Bf16,
                    &FillParams {
                        data: ptr,
                        valid_rows: 0,
                        seed,
                        rows: n as u64,
                        row_len: n as u32,
                        rows_per_page: 1,
                        tokens_divisor: 1,
                        amplitude: 1.0,
                    },
                )?;
            }
        }
        let blas = CudaBlas::new(stream.clone()).map_err(|e| Error::Cublas(format!("{e:?}")))?;
        let cfg = GemmConfig {
            transa: blas_sys::cublasOperation_t::CUBLAS_OP_N,
            transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: n as i32,
            k: n as i32,
            alpha: half::bf16::ONE,
            lda: n as i32,
            ldb: n as i32,
            beta: half::bf16::ZERO,
            ldc: n as i32,
        };
        let (us, _) = self.time_us(3, || {
            // SAFETY: three n×n bf16 buffers of this context.
            unsafe { blas.gemm(cfg, &a, &b, &mut c) }.map_err(|e| Error::Cublas(format!("{e:?}")))
        })?;
        Ok(2.0 * (n as f64).powi(3) / us / 1e6)
    }

    /// Times one shape end to end (metadata computed once and reused, as across layers; each timed run
    /// is decode + combine after an L2 flush). Returns the row for the table.
    pub fn decode_row(&mut self, shape: &BenchShape, dtype: DType, seed: u64) -> Result<BenchRow> {
        match dtype {
            DType::Bf16 => self.decode_row_typed::<half::bf16>(shape, seed),
            DType::F16 => self.decode_row_typed::<half::f16>(shape, seed),
        }
    }

    fn decode_row_typed<T: Element>(&mut self, shape: &BenchShape, seed: u64) -> Result<BenchRow> {
        let (fm, stream) = (self.fm.clone(), self.stream.clone());
        let mut dshape = DecodeShape::new(shape.b, shape.s_q, shape.h_q, shape.h_kv)?;
        if let Some(parts) = self.num_sm_parts {
            dshape = dshape.with_num_sm_parts(parts)?;
        }
        let spec = CaseSpec {
            kernel: self.kernel,
            seqlens: shape.seqlens(),
            ..CaseSpec::new(
                dshape,
                shape.s_k,
                shape.varlen,
                shape.causal,
                T::DTYPE,
                seed,
            )
        };
        let case = DeviceCase::<T>::generate(&fm, &stream, &spec)?;
        let mut plan: DecodePlan = fm.plan_decode(&stream, dshape)?;
        fm.get_mla_metadata(&stream, &case.cache_seqlens, plan.metadata_mut())?;
        let (b, s_q, h_q) = (shape.b, shape.s_q, shape.h_q);
        let mut buffers = OutputBuffers::<T>::alloc(&stream, [b, s_q, h_q])?;
        let mut outputs = buffers.views()?;
        let args = case.args()?;
        let options: DecodeOptions = case.options();
        let (us, min_us) = self.time_us(3, || {
            fm.decode(&stream, &mut plan, &args, &mut outputs, options)
        })?;
        let (mut step_us, mut step_graph_us) = (None, None);
        if self.step {
            let mut step = || -> Result<()> {
                fm.get_mla_metadata(&stream, &case.cache_seqlens, plan.metadata_mut())?;
                fm.decode(&stream, &mut plan, &args, &mut outputs, options)
            };
            step_us = Some(self.time_us(3, &mut step)?.0);
            // cudarc's cross-stream event tracking records events a capture cannot hold; the bench runs
            // on one stream. Back on when this block ends.
            // SAFETY: every buffer here is used on `stream` only.
            let _tracking_off = unsafe { crate::EventTrackingOff::new(fm.context()) };
            stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(cuda("cuStreamBeginCapture"))?;
            let captured = step();
            let graph = stream
                .end_capture(
                    sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
                )
                .map_err(cuda("cuStreamEndCapture"))?;
            captured?;
            if let Some(graph) = graph {
                step_graph_us = Some(
                    self.time_us(3, || graph.launch().map_err(cuda("cuGraphLaunch")))?
                        .0,
                );
            }
        }
        let total = case.layout.total_seqlen_k();
        let flops = flashmla_flops(s_q, total, h_q);
        let bytes = flashmla_bytes(b, s_q, h_q, shape.h_kv, total);
        Ok(BenchRow {
            shape: *shape,
            dtype: T::DTYPE,
            total_seqlen_k: total,
            num_sm_parts: plan.metadata().num_sm_parts(),
            us,
            min_us,
            tflops: flops / us / 1e6,
            gbps: bytes / us / 1e3,
            step_us,
            step_graph_us,
        })
    }
}

impl BenchRow {
    /// FLOPs of the shape by FlashMLA's formula.
    pub fn flops(&self) -> f64 {
        self.tflops * self.us * 1e6
    }

    /// Bytes of the shape by FlashMLA's formula.
    pub fn bytes(&self) -> f64 {
        self.gbps * self.us * 1e3
    }

    /// The memory floor: FlashMLA's bytes over the copy bandwidth measured in the same run, µs.
    pub fn memory_floor_us(&self, c: &Ceilings) -> f64 {
        self.bytes() / (c.copy_gbps * 1e3)
    }

    /// The compute floor: FlashMLA's FLOPs over the matmul rate measured in the same run, µs.
    pub fn compute_floor_us(&self, c: &Ceilings) -> Option<f64> {
        c.matmul_tflops.map(|t| self.flops() / (t * 1e6))
    }
}

/// Whether cuBLAS (only the matmul ceiling uses it) can be loaded. Checked by name, like
/// [`flashmla::driver_available`], so a missing library is a note in the table, not a panic.
fn cublas_available() -> bool {
    let names: &[&str] = if cfg!(windows) {
        &["cublas64_13.dll", "cublas64_12.dll"]
    } else {
        &["libcublas.so", "libcublas.so.13", "libcublas.so.12"]
    };
    names.iter().any(|name| {
        // SAFETY: loading an NVIDIA library runs only its own initialisers, as cudarc's loading of it
        // would; the handle is closed again when dropped.
        unsafe { libloading::Library::new(*name) }.is_ok()
    })
}

/// One measured shape.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// The shape.
    pub shape: BenchShape,
    /// Input type.
    pub dtype: DType,
    /// Σ s_k of the generated batch.
    pub total_seqlen_k: usize,
    /// SM parts of the schedule.
    pub num_sm_parts: usize,
    /// Median µs (decode + combine).
    pub us: f64,
    /// Fastest µs.
    pub min_us: f64,
    /// TFLOPS by FlashMLA's formula.
    pub tflops: f64,
    /// GB/s by FlashMLA's formula.
    pub gbps: f64,
    /// Median µs of the whole decode step, metadata + decode + combine, launched eagerly
    /// ([`Bencher::step`]).
    pub step_us: Option<f64>,
    /// Median µs of the same step captured once in a CUDA graph and replayed.
    pub step_graph_us: Option<f64>,
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::flashmla_grid;

    #[test]
    fn median_of_odd_and_even_lengths() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn flashmla_times_take_the_best_and_check_lengths() {
        let shape = flashmla_grid()[0];
        let mut t = FlashMlaTimes::default();
        assert!(t.is_empty());
        t.add_csv(
            "v1",
            "b,s_q,s_k,h_q,varlen,total_seqlen_k,us\n128,1,4096,16,0,524288,170.0\n",
        )
        .unwrap();
        t.add_csv(
            "v0",
            "b,s_q,s_k,h_q,varlen,total_seqlen_k,us\n128,1,4096,16,0,524288,160.5\n",
        )
        .unwrap();
        assert_eq!(t.best_us(&shape, 524288).unwrap(), Some((160.5, "v0")));
        // Other lengths than ours: an error, never a ratio.
        assert!(t.best_us(&shape, 524289).is_err());
        let other = BenchShape { h_q: 32, ..shape };
        assert_eq!(t.best_us(&other, 524288).unwrap(), None);
        let non_causal = BenchShape {
            causal: false,
            ..shape
        };
        assert_eq!(t.best_us(&non_causal, 524288).unwrap(), None);
        assert!(t
            .add_csv(
                "bad",
                "b,s_q,s_k,h_q,varlen,total_seqlen_k,us\n128,1,4096,16,0,524000,150\n"
            )
            .is_err());
        assert!(t.add_csv("bad", "b,s_q,us\n1,2,3\n").is_err());
        assert!(t
            .add_csv(
                "bad",
                "b,s_q,s_k,h_q,varlen,total_seqlen_k,us\n128,1,4096\n"
            )
            .is_err());
        assert!(t
            .add_csv(
                "bad",
                "b,s_q,s_k,h_q,varlen,total_seqlen_k,us\n128,1,4096,16,0,524288,nan\n"
            )
            .is_err());
    }
}

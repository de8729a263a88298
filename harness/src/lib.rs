//! # flashmla-harness
//!
//! The test and benchmark harness of [`flashmla`], kept out of the library users depend on (this crate
//! is not published). The `flashmla` CLI (`src/bin/flashmla/`), the GPU and PTX test suites (`tests/`),
//! the criterion benches (`benches/`) and the candle integration's GPU test use it:
//!
//! - [`shapes`]: the one catalogue of benchmark and test shapes (FlashMLA's benchmark grid, its
//!   reference times and varlen lengths, the correctness sweeps);
//! - [`case`]: FlashMLA-style test cases generated on the GPU (NaN in every unused KV slot);
//! - [`check`]: a decode of a case checked against the reference, with [`compare`]'s FlashMLA
//!   tolerances;
//! - [`reference`](mod@reference): an `f64` CPU reference of FlashMLA's dense decode, the executable
//!   specification;
//! - [`bench`](mod@bench): the benchmark procedure behind `flashmla bench` (FlashMLA's FLOP and byte
//!   formulas, CUDA-event timing, the copy and matmul ceilings, FlashMLA's times measured side by
//!   side);
//! - [`rng`]: the reproducible random source of all of them;
//! - [`runner`]: the pass/fail/skip runner of the test suites (a check that could not run is skipped,
//!   never passed).
//!
//! The modules depend on each other in one direction only: `rng`, `reference`, `compare` and `runner`
//! on nothing here; `case` on `rng` and `compare`; `check` on `case`, `compare`, `reference` and
//! `rng`; `shapes` on `case` and `rng`; `bench` on `shapes` and `case`.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod case;
pub mod check;
pub mod compare;
pub mod reference;
pub mod rng;
pub mod runner;
pub mod shapes;

use flashmla::cudarc::driver::sys::CUevent_flags;
use flashmla::cudarc::driver::{CudaContext, CudaStream, DriverError};
use flashmla::Error;
use std::sync::Arc;
use std::time::Duration;

/// Device 0 for a benchmark, or `None` (said on stderr) where this machine cannot run one: no driver, no
/// device, or a GPU older than sm_80 — and `FLASHMLA_REQUIRE_GPU` is not `1`. Any other failure to open
/// the device is a broken run, not a skipped one: it panics (criterion reports it).
pub fn bench_device(bench: &str) -> Option<flashmla::FlashMla> {
    match flashmla::FlashMla::new(0) {
        Ok(fm) => Some(fm),
        Err(e @ (Error::NoDriver | Error::NoDevice { .. } | Error::UnsupportedArch { .. }))
            if std::env::var("FLASHMLA_REQUIRE_GPU").as_deref() != Ok("1") =>
        {
            eprintln!("{bench}: skipped: {e}");
            None
        }
        Err(e) => panic!("{bench}: opening device 0: {e}"),
    }
}

/// GPU time of the work `queue` puts on `stream`, between two CUDA events: what a criterion bench's
/// `iter_custom` returns. A CUDA error panics, which criterion reports as the bench's failure.
pub fn gpu_time(stream: &CudaStream, queue: impl FnOnce()) -> Duration {
    let event = || {
        stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .expect("cuEventRecord")
    };
    let start = event();
    queue();
    let end = event();
    end.synchronize().expect("cuEventSynchronize");
    Duration::from_secs_f64(start.elapsed_ms(&end).expect("cuEventElapsedTime") as f64 / 1e3)
}

/// cudarc's cross-stream event tracking, off for as long as this guard lives (a CUDA-graph capture
/// cannot hold the events it records) and back as it was when the guard drops, on every way out of the
/// scope (an early `?` included).
pub struct EventTrackingOff {
    ctx: Arc<CudaContext>,
    was_on: bool,
}

impl EventTrackingOff {
    /// Switches event tracking off in `ctx`.
    ///
    /// # Safety
    /// As cudarc's `disable_event_tracking`: buffers created while the guard lives are not tracked,
    /// now or later, so each must be used on one stream only, or ordered between streams by the caller.
    pub unsafe fn new(ctx: &Arc<CudaContext>) -> Self {
        let was_on = ctx.is_event_tracking();
        // SAFETY: forwarded to the caller.
        unsafe { ctx.disable_event_tracking() };
        Self {
            ctx: ctx.clone(),
            was_on,
        }
    }
}

impl Drop for EventTrackingOff {
    fn drop(&mut self) {
        if self.was_on {
            // SAFETY: buffers created while tracking was off stay untracked, which `new`'s caller
            // accepted; later ones are tracked again.
            unsafe { self.ctx.enable_event_tracking() };
        }
    }
}

/// For `map_err`: a failed cudarc call `op` as flashmla's [`Error::Cuda`].
pub(crate) fn cuda(op: &'static str) -> impl FnOnce(DriverError) -> Error {
    move |source| Error::Cuda { op, source }
}

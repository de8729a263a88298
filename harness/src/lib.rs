//! # flashmla-harness
//!
//! The test and benchmark harness of [`flashmla`], kept out of the library users depend on (this crate
//! is not published). The `flashmla` CLI (`src/bin/flashmla/`), the GPU and PTX test suites (`tests/`),
//! the criterion benches (`benches/`) and the candle integration's GPU test use it:
//!
//! - [`testdata`]: FlashMLA-style test cases generated on the GPU, and their check against the
//!   reference with FlashMLA's tolerances;
//! - [`reference`]: an `f64` CPU reference of FlashMLA's dense decode, the executable specification;
//! - [`bench`]: the benchmark procedure behind `flashmla bench` (FlashMLA's grid, its FLOP and byte
//!   formulas, CUDA-event timing, the copy and matmul ceilings);
//! - [`rng`]: the reproducible random source of all of them;
//! - [`runner`]: the pass/fail/skip runner of the test suites (a check that could not run is skipped,
//!   never passed).
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod reference;
pub mod rng;
pub mod runner;
pub mod testdata;

use flashmla::cudarc::driver::DriverError;
use flashmla::Error;

/// For `map_err`: a failed cudarc call `op` as flashmla's [`Error::Cuda`].
pub(crate) fn cuda(op: &'static str) -> impl FnOnce(DriverError) -> Error {
    move |source| Error::Cuda { op, source }
}

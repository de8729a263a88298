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

use flashmla::cudarc::driver::DriverError;
use flashmla::Error;

/// For `map_err`: a failed cudarc call `op` as flashmla's [`Error::Cuda`].
pub(crate) fn cuda(op: &'static str) -> impl FnOnce(DriverError) -> Error {
    move |source| Error::Cuda { op, source }
}

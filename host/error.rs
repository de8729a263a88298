//! The crate's error type. Every invalid input is reported before anything is launched or written.

use cudarc::driver::DriverError;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in flashmla.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CUDA driver library (`libcuda.so.1`) could not be loaded: no NVIDIA driver on this machine.
    #[error("no CUDA driver: libcuda could not be loaded (is an NVIDIA driver installed, and on the library path?)")]
    NoDriver,
    /// The driver loaded but there is no device with this ordinal.
    #[error("no CUDA device with ordinal {ordinal} ({count} device(s) found)")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// Devices the driver reports.
        count: usize,
    },
    /// The device is older than anything flashmla has kernels for.
    #[error("{name} has compute capability {major}.{minor}; flashmla needs sm_80 or newer (sm_90 for the Hopper kernels)")]
    UnsupportedArch {
        /// Device name.
        name: String,
        /// Compute capability, major.
        major: i32,
        /// Compute capability, minor.
        minor: i32,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver call {op} failed: {source}")]
    Cuda {
        /// What was being done.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: DriverError,
    },
    /// The batch has no requests.
    #[error("the batch is empty (batch_size must be at least 1)")]
    EmptyBatch,
    /// A size that must be positive is zero.
    #[error("{name} must be at least 1")]
    ZeroSize {
        /// The argument.
        name: &'static str,
    },
    /// The batch is larger than the scheduler kernel supports.
    #[error("batch_size {batch_size} exceeds the scheduler's limit of {max}")]
    BatchTooLarge {
        /// Requested batch.
        batch_size: usize,
        /// The limit ([`crate::abi::MAX_SCHED_BATCH`]).
        max: usize,
    },
    /// `h_q` is not a multiple of `h_kv`.
    #[error("num_heads_q ({h_q}) must be a multiple of num_heads_kv ({h_kv})")]
    HeadsNotDivisible {
        /// Query heads.
        h_q: usize,
        /// KV heads.
        h_kv: usize,
    },
    /// An argument has the wrong length or shape.
    #[error("{name}: expected shape {expected:?}, got {got:?}")]
    Shape {
        /// The argument.
        name: &'static str,
        /// Expected shape.
        expected: Vec<usize>,
        /// Actual shape.
        got: Vec<usize>,
    },
    /// A KV length is negative.
    #[error("cache_seqlens[{index}] = {value} is negative")]
    NegativeSeqlen {
        /// Request index.
        index: usize,
        /// The value.
        value: i32,
    },
    /// A buffer belongs to another device or context than the one doing the work.
    #[error("{name} lives on device {got}, but this FlashMla handle runs on device {expected}")]
    WrongDevice {
        /// The argument.
        name: &'static str,
        /// This handle's device ordinal.
        expected: usize,
        /// The buffer's device ordinal.
        got: usize,
    },
    /// Sizes whose element offsets do not fit the kernels' index arithmetic.
    #[error("{what} is too large: {value} does not fit in {limit}")]
    Overflow {
        /// What overflowed.
        what: &'static str,
        /// The value.
        value: u128,
        /// The limit it exceeds.
        limit: &'static str,
    },
    /// A kernel the host expects is missing from the embedded PTX.
    #[error("kernel {name} is not in the embedded {module} PTX module (was it built with FLASHMLA_PTX_DIR from another version?)")]
    MissingKernel {
        /// Kernel name.
        name: &'static str,
        /// Module name.
        module: &'static str,
    },
}

impl Error {
    pub(crate) fn cuda(op: &'static str) -> impl FnOnce(DriverError) -> Error {
        move |source| Error::Cuda { op, source }
    }
}

//! The crate's error type. Every invalid input is reported before anything is launched or written.

use cudarc::driver::DriverError;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in flashmla.
///
/// `Debug` prints the message too (what `fn main() -> Result<(), Box<dyn Error>>` shows), and a cudarc
/// [`DriverError`] converts with `?`.
#[derive(thiserror::Error)]
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
    /// A stream or buffer of another CUDA context on this handle's device (for example a second
    /// `CudaContext::new` of the same ordinal): its memory and work are not ordered with this handle's.
    #[error(
        "{name} belongs to another CUDA context on device {device} than this FlashMla handle's"
    )]
    WrongContext {
        /// The argument.
        name: &'static str,
        /// The device ordinal both contexts are on.
        device: usize,
    },
    /// A plan or scheduler metadata made by a handle of another CUDA context: its buffers belong to that
    /// context, so this handle cannot use them.
    #[error("{name} was made by a FlashMla handle of another CUDA context (on device {made_on}); this handle's context is on device {device}: make plans and metadata with the handle that uses them")]
    ForeignPlan {
        /// `"plan"` or `"metadata"`.
        name: &'static str,
        /// Device ordinal of the context that made it.
        made_on: usize,
        /// This handle's device ordinal.
        device: usize,
    },
    /// A view whose last element's offset (`Σ (extent − 1) · stride`) does not fit in `usize`: no
    /// buffer holds it.
    #[error("{name}: a view of shape {shape:?} with strides {strides:?} reaches past the largest addressable element (its offsets do not fit in usize)")]
    ViewTooLarge {
        /// The argument.
        name: &'static str,
        /// Its shape.
        shape: Vec<usize>,
        /// Its strides, in elements.
        strides: Vec<usize>,
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
    /// Tensors of different element types where one is required.
    #[error("{name} has dtype {got}, expected {expected}")]
    DTypeMismatch {
        /// The argument.
        name: &'static str,
        /// Required type.
        expected: crate::DType,
        /// Type passed.
        got: crate::DType,
    },
    /// A view reaches past the end of its buffer.
    #[error("{name}: the view needs {needed} elements but the buffer has {len}")]
    OutOfBounds {
        /// The argument.
        name: &'static str,
        /// Elements the view addresses.
        needed: usize,
        /// Elements in the buffer.
        len: usize,
    },
    /// A head dimension other than FlashMLA's (576 for q/k, 512 for v/out).
    #[error("{name}: head dimension must be {expected}, got {got}")]
    HeadDim {
        /// The argument.
        name: &'static str,
        /// The supported value.
        expected: usize,
        /// The value passed.
        got: usize,
    },
    /// The KV cache's page size is not 64 tokens.
    #[error("k_cache: page block size must be {expected} tokens, got {got}")]
    PageBlockSize {
        /// The supported page size.
        expected: usize,
        /// The page size passed.
        got: usize,
    },
    /// The last dimension is not contiguous.
    #[error("{name}: the last dimension must be contiguous (stride 1), got stride {stride}")]
    NonContiguous {
        /// The argument.
        name: &'static str,
        /// Its last stride.
        stride: usize,
    },
    /// A pointer or stride is not aligned as the kernels' vector accesses need.
    #[error("{name}: {what} must be a multiple of {multiple}, got {value}")]
    Misaligned {
        /// The argument.
        name: &'static str,
        /// Which pointer or stride, and its unit: "the base address (bytes)" or "every leading stride
        /// (elements)".
        what: &'static str,
        /// Required multiple, in the unit `what` names.
        multiple: usize,
        /// The offending value, in the unit `what` names.
        value: u64,
    },
    /// An output view in which two indices address the same element: the kernels writing them would race.
    #[error("{name}: shape {shape:?} with strides {strides:?} makes two indices address one element (the stride of dimension {dim} does not step past what the dimensions with smaller strides span); an output must not overlap itself")]
    OverlappingOutput {
        /// The argument.
        name: &'static str,
        /// Its shape.
        shape: Vec<usize>,
        /// Its strides, in elements.
        strides: Vec<usize>,
        /// The first dimension (in stride order) whose stride is too small.
        dim: usize,
    },
    /// [`DecodeKernel::Hopper`](crate::DecodeKernel::Hopper) was asked for, but a `k_cache` stride breaks
    /// a rule of the Hopper kernel's TMA descriptor (`cuTensorMapEncodeTiled`). With
    /// [`DecodeKernel::Auto`](crate::DecodeKernel::Auto) such a view runs the portable kernel.
    #[error("{name}: the Hopper kernel reads it with TMA, whose strides must be {rule}, but dimension {dim} has stride {stride} (elements); DecodeKernel::Auto runs the portable kernel on such a view")]
    TmaStride {
        /// The argument.
        name: &'static str,
        /// The dimension whose stride breaks the rule.
        dim: usize,
        /// Its stride, in elements.
        stride: usize,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// [`DecodeKernel::Hopper`](crate::DecodeKernel::Hopper) was asked for with a plan made by a handle
    /// without the Hopper kernels, which has no tensor-map slots for them.
    #[error("the Hopper decode kernel needs the plan's tensor-map slots, but this plan was made by a FlashMla handle without the Hopper kernels (e.g. the sm_80 module forced), which gives it none: make the plan with this handle, or use DecodeKernel::Auto, which runs the portable kernel with it")]
    PlanWithoutTensorMaps,
    /// The plan (metadata and workspaces) was made for another batch shape.
    #[error("the decode plan was made for {planned:?}, but the inputs have {got:?}")]
    PlanMismatch {
        /// Shape of the plan.
        planned: crate::DecodeShape,
        /// Shape of the inputs.
        got: crate::DecodeShape,
    },
    /// The plan's scheduler metadata was never computed.
    #[error("the scheduler metadata of this plan was never computed: call get_mla_metadata first")]
    MetadataNotComputed,
    /// The block table has too few columns for the longest sequence.
    #[error(
        "block_table has {columns} columns ({tokens} tokens), but a sequence has {seqlen} tokens"
    )]
    BlockTableTooSmall {
        /// Columns of the block table.
        columns: usize,
        /// Tokens they can address.
        tokens: usize,
        /// The longest sequence.
        seqlen: usize,
    },
    /// The softmax scale is not a finite number.
    #[error("softmax_scale must be finite, got {0}")]
    InvalidScale(f32),
    /// The device cannot give a decode CTA the shared memory it needs.
    #[error("the decode kernel needs {needed} bytes of shared memory per block; {device} allows {available}")]
    SharedMemory {
        /// Bytes needed.
        needed: usize,
        /// Bytes the device allows.
        available: usize,
        /// Device name.
        device: String,
    },
    /// cuBLAS (used only to measure the matmul ceiling in benchmarks) could not be loaded.
    #[error("cuBLAS is not available: {0}")]
    Cublas(String),
    /// Benchmark input data (a FlashMLA timing CSV, the grid's lengths) is unreadable or does not match
    /// the benchmarked shapes.
    #[error("benchmark data {origin}: {message}")]
    BenchData {
        /// The file or table.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// Writing a result file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A kernel the host expects is missing from the embedded PTX.
    #[error("kernel {name} is not in the embedded {module} PTX module (was it built with FLASHMLA_PTX_DIR from another version?)")]
    MissingKernel {
        /// Kernel name.
        name: &'static str,
        /// Module name.
        module: &'static str,
    },
    /// [`DecodeKernel::Hopper`](crate::DecodeKernel::Hopper) was asked for on a handle whose module
    /// has no Hopper kernels (not a compute capability 9.0 device, or the sm_80 module was forced).
    #[error("the Hopper decode kernel needs the sm_90a module on a compute capability 9.0 device; this handle runs the {module} module")]
    KernelUnavailable {
        /// Module name.
        module: &'static str,
    },
}

impl std::fmt::Debug for Error {
    /// The message, not the variant's fields: a `main` returning an error prints its `Debug`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A cudarc call made by the caller, e.g. `stream.clone_htod(&data)?` in a function returning
/// [`flashmla::Result`](Result).
impl From<DriverError> for Error {
    fn from(source: DriverError) -> Self {
        Error::Cuda {
            op: "(a cudarc call)",
            source,
        }
    }
}

impl Error {
    pub(crate) fn cuda(op: &'static str) -> impl FnOnce(DriverError) -> Error {
        move |source| Error::Cuda { op, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_the_message() {
        // What `fn main() -> Result<(), Box<dyn std::error::Error>>` prints after "Error: ".
        let e: Box<dyn std::error::Error> = Box::new(Error::NoDriver);
        assert_eq!(format!("{e:?}"), Error::NoDriver.to_string());
        assert!(format!("{e:?}").starts_with("no CUDA driver"));
        let e = Error::HeadsNotDivisible { h_q: 12, h_kv: 5 };
        assert_eq!(
            format!("{e:?}"),
            "num_heads_q (12) must be a multiple of num_heads_kv (5)"
        );
    }

    #[test]
    fn messages_name_what_is_wrong() {
        let e = Error::ForeignPlan {
            name: "plan",
            made_on: 1,
            device: 0,
        };
        assert_eq!(
            e.to_string(),
            "plan was made by a FlashMla handle of another CUDA context (on device 1); this handle's \
             context is on device 0: make plans and metadata with the handle that uses them"
        );
        let e = Error::Misaligned {
            name: "tile_scheduler_metadata",
            what: "the base address (bytes)",
            multiple: 32,
            value: 0x1004,
        };
        assert_eq!(
            e.to_string(),
            "tile_scheduler_metadata: the base address (bytes) must be a multiple of 32, got 4100"
        );
        let e = Error::WrongContext {
            name: "cache_seqlens",
            device: 0,
        };
        assert_eq!(
            e.to_string(),
            "cache_seqlens belongs to another CUDA context on device 0 than this FlashMla handle's"
        );
    }

    #[test]
    fn cudarc_errors_convert_with_question_mark() {
        fn call() -> Result<()> {
            Err(DriverError(
                cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY,
            ))?
        }
        match call() {
            Err(Error::Cuda { op, source }) => {
                assert_eq!(op, "(a cudarc call)");
                assert_eq!(
                    source.0,
                    cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
                );
            }
            other => panic!("{}", other.is_ok()),
        }
    }
}

//! # flashmla
//!
//! DeepSeek's [FlashMLA](https://github.com/deepseek-ai/FlashMLA) multi-head latent attention (MLA)
//! decode kernels, rebuilt in Rust: the GPU kernels are Rust compiled to PTX by rustc's NVPTX backend
//! (`kernels/`), the host side uses [`cudarc`] and loads the CUDA driver at run time, so nothing here
//! needs a C++ or CUDA toolkit and binaries start (and report [`Error::NoDriver`]) on machines without
//! a GPU.
//!
//! The API follows FlashMLA's two calls:
//! 1. scheduling metadata for a batch ([`FlashMla::get_mla_metadata`], or [`get_mla_metadata_cpu`]),
//!    once per decode step, into a [`DecodePlan`] made once per batch shape ([`FlashMla::plan_decode`]);
//! 2. the decode itself, [`FlashMla::decode`] (FlashMLA's `flash_mla_with_kvcache`), once per layer.
//!
//! On compute capability 9.0 (H100, H200) the decode runs a Hopper kernel (TMA, mbarriers, `wgmma`); on
//! other sm_80+ GPUs, and on request ([`DecodeKernel::Portable`]), a portable `mma.sync` kernel.
//!
//! Neither allocates nor synchronises the host, so a step can be captured in a CUDA graph. Every invalid
//! input is a typed [`Error`] before anything is launched; a cudarc `DriverError` converts into it with
//! `?`. Use the re-exported [`cudarc`] and [`half`] for the buffers you pass, so the versions match.
//! `examples/decode.rs` is a complete program; `candle/` (the `flashmla-candle` crate) offers the same two
//! calls on candle tensors. The test and benchmark harness (FlashMLA-style test cases, the `f64` CPU
//! reference they are checked against, the benchmark procedure and the `flashmla` CLI) is the
//! repository's `flashmla-harness` crate (`harness/`), which this library does not depend on.
//!
//! ```no_run
//! use flashmla::{DecodeShape, FlashMla};
//! # fn main() -> flashmla::Result<()> {
//! let flashmla = FlashMla::new(0)?;
//! let stream = flashmla.new_stream()?;
//! let shape = DecodeShape::new(2, 1, 128, 1)?; // b, s_q, h_q, h_kv
//! let seqlens = stream.clone_htod(&[4641i32, 45118]).map_err(|e| flashmla::Error::Cuda { op: "htod", source: e })?;
//! let mut metadata = flashmla.alloc_sched_metadata(&stream, shape)?;
//! flashmla.get_mla_metadata(&stream, &seqlens, &mut metadata)?;
//! let host = metadata.to_host(&stream)?;
//! println!("{} split slots", host.total_splits());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod checks;
mod decode;
mod error;
mod fill;
mod launch;
#[cfg(test)]
mod proptests;
pub mod ptx;
mod runtime;
mod sched;
mod tensor;

/// The `cudarc` this crate is built against: use it (`flashmla::cudarc`) for the device buffers and
/// streams you pass, so the versions match.
pub use cudarc;
/// The `half` crate of [`half::bf16`] and [`half::f16`], the element types the kernels take.
pub use half;

pub use decode::{
    DecodeArgs, DecodeKernel, DecodeOptions, DecodeOutputs, DecodePlan, OutputBuffers,
    RawDecodeArgs,
};
pub use error::{Error, Result};
/// The records and constants shared with the GPU kernels (the `flashmla-abi` crate).
pub use flashmla_abi as abi;
pub use runtime::{driver_available, DeviceInfo, FlashMla, KernelInfo};
pub use sched::{get_mla_metadata_cpu, DecodeShape, SchedMetadata, Schedule};
pub use tensor::{DType, Element, TensorView, TensorViewMut};

#[cfg(test)]
mod readme {
    /// The README's library example is an excerpt of `examples/decode.rs`, which CI builds (and which
    /// the GPU suite runs): every code line of the README's `rust` block is a line of the example.
    #[test]
    fn readme_example_is_an_excerpt_of_examples_decode() {
        let readme = include_str!("../README.md");
        let example = include_str!("../examples/decode.rs");
        let block = readme
            .split("```rust\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("README.md has a ```rust block");
        let lines: std::collections::HashSet<&str> = example.lines().map(str::trim).collect();
        let code = block
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("//"));
        let mut checked = 0;
        for line in code {
            assert!(
                lines.contains(line),
                "README line not in examples/decode.rs: {line}"
            );
            checked += 1;
        }
        assert!(
            checked >= 10,
            "the README block has only {checked} code lines"
        );
    }
}

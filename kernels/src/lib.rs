//! flashmla's GPU kernels, compiled by rustc's own NVPTX backend (`nvptx64-nvidia-cuda`) into PTX
//! modules that the host crate embeds. One module per target architecture; `--cfg flashmla_arch` says
//! which one is being built (set by the root `build.rs`).
//!
//! Kernel entry points are `extern "ptx-kernel"` functions taking one `#[repr(C)]` parameter record from
//! `flashmla-abi`, the crate the host compiles too, so the two sides cannot disagree on a layout.
#![no_std]
#![feature(abi_ptx, stdarch_nvptx, gpu_intrinsics, gpu_launch_sized_workgroup_mem, core_intrinsics, link_llvm_intrinsics)]
#![allow(internal_features)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod arch;
pub mod sched_meta;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    arch::trap()
}

//! flashmla's GPU kernels, compiled by rustc's own NVPTX backend (`nvptx64-nvidia-cuda`) into PTX
//! modules that the host crate embeds. One module per target architecture; `--cfg flashmla_arch` says
//! which one is being built (set by the root `build.rs`).
//!
//! Kernel entry points are `extern "ptx-kernel"` functions taking one `#[repr(C)]` parameter record from
//! `flashmla-abi`, the crate the host compiles too, so the two sides cannot disagree on a layout.
#![no_std]
#![feature(
    abi_ptx,
    stdarch_nvptx,
    asm_experimental_arch,
    gpu_intrinsics,
    gpu_launch_sized_workgroup_mem,
    core_intrinsics,
    link_llvm_intrinsics
)]
#![allow(internal_features)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod arch;
pub mod attn;
pub mod combine;
#[cfg(flashmla_arch = "sm90a")]
pub mod decode_sm90;
#[cfg(flashmla_arch = "sm90a")]
pub mod decode_sm90_single;
pub mod fill;
#[cfg(flashmla_arch = "sm90a")]
pub mod hopper;
pub mod portable;
pub mod sched_meta;

use flashmla_abi::fill::FillParams;
#[cfg(flashmla_arch = "sm90a")]
use flashmla_abi::params::Sm90DecodeParams;
use flashmla_abi::params::{CombineParams, DecodeParams};

/// bf16 split-KV decode. See [`portable::splitkv_decode`].
///
/// # Safety
/// As [`portable::splitkv_decode`].
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn flashmla_splitkv_decode_bf16(params: DecodeParams) {
    // SAFETY: forwarded.
    unsafe { portable::splitkv_decode::<arch::Bf16>(&params) }
}

/// fp16 split-KV decode. See [`portable::splitkv_decode`].
///
/// # Safety
/// As [`portable::splitkv_decode`].
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn flashmla_splitkv_decode_f16(params: DecodeParams) {
    // SAFETY: forwarded.
    unsafe { portable::splitkv_decode::<arch::F16>(&params) }
}

/// bf16 split-KV decode on Hopper (sm_90a module only). See [`decode_sm90::splitkv_decode_sm90`].
///
/// # Safety
/// As [`decode_sm90::splitkv_decode_sm90`].
#[cfg(flashmla_arch = "sm90a")]
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn flashmla_splitkv_decode_sm90_bf16(params: Sm90DecodeParams) {
    // SAFETY: forwarded.
    unsafe { decode_sm90::splitkv_decode_sm90::<arch::Bf16>(&params) }
}

/// fp16 split-KV decode on Hopper (sm_90a module only). See [`decode_sm90::splitkv_decode_sm90`].
///
/// # Safety
/// As [`decode_sm90::splitkv_decode_sm90`].
#[cfg(flashmla_arch = "sm90a")]
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn flashmla_splitkv_decode_sm90_f16(params: Sm90DecodeParams) {
    // SAFETY: forwarded.
    unsafe { decode_sm90::splitkv_decode_sm90::<arch::F16>(&params) }
}

/// bf16 split-KV decode on Hopper with the single-softmax schedule (sm_90a module only). See
/// [`decode_sm90_single::splitkv_decode_sm90_single`].
///
/// # Safety
/// As [`decode_sm90_single::splitkv_decode_sm90_single`].
#[cfg(flashmla_arch = "sm90a")]
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn flashmla_splitkv_decode_sm90_single_bf16(
    params: Sm90DecodeParams,
) {
    // SAFETY: forwarded.
    unsafe { decode_sm90_single::splitkv_decode_sm90_single::<arch::Bf16>(&params) }
}

/// fp16 split-KV decode on Hopper with the single-softmax schedule (sm_90a module only). See
/// [`decode_sm90_single::splitkv_decode_sm90_single`].
///
/// # Safety
/// As [`decode_sm90_single::splitkv_decode_sm90_single`].
#[cfg(flashmla_arch = "sm90a")]
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn flashmla_splitkv_decode_sm90_single_f16(
    params: Sm90DecodeParams,
) {
    // SAFETY: forwarded.
    unsafe { decode_sm90_single::splitkv_decode_sm90_single::<arch::F16>(&params) }
}

/// bf16 combine. See [`combine::combine`].
///
/// # Safety
/// As [`combine::combine`].
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn flashmla_combine_bf16(params: CombineParams) {
    // SAFETY: forwarded.
    unsafe { combine::combine::<arch::Bf16>(&params) }
}

/// fp16 combine. See [`combine::combine`].
///
/// # Safety
/// As [`combine::combine`].
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn flashmla_combine_f16(params: CombineParams) {
    // SAFETY: forwarded.
    unsafe { combine::combine::<arch::F16>(&params) }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    arch::trap()
}

/// Fills bf16 test data. See [`fill::fill`].
///
/// # Safety
/// As [`fill::fill`].
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn flashmla_fill_bf16(params: FillParams) {
    // SAFETY: forwarded; 0x7FC0 is bf16's quiet NaN.
    unsafe { fill::fill::<arch::Bf16>(&params, 0x7FC0_7FC0) }
}

/// Fills fp16 test data. See [`fill::fill`].
///
/// # Safety
/// As [`fill::fill`].
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn flashmla_fill_f16(params: FillParams) {
    // SAFETY: forwarded; 0x7E00 is fp16's quiet NaN.
    unsafe { fill::fill::<arch::F16>(&params, 0x7E00_7E00) }
}

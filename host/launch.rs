//! Kernel launches through `cuLaunchKernelEx`: one `#[repr(C)]` parameter record per kernel, on a raw
//! `CUstream`, optionally with programmatic dependent launch (PDL) so a kernel's prologue overlaps the
//! tail of the previous kernel on the stream.

use crate::{Error, Result};
use cudarc::driver::sys;
use flashmla_abi::params::DeviceRecord;
use std::ffi::c_void;

/// Grid, block, dynamic shared memory and launch attributes of one launch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub dynamic_smem_bytes: u32,
    /// Allow the kernel to start before the previous kernel on the stream has finished
    /// (`CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`); the kernel must wait with
    /// `griddepcontrol.wait` before it reads what the previous kernel writes.
    pub programmatic_serialization: bool,
}

/// Launches `function` with `params` as its single by-value parameter.
///
/// # Safety
/// * `function` must be a live kernel of a module loaded in the context current on this thread, whose
///   only parameter has the layout of `P`;
/// * every device pointer inside `params` must be valid for the accesses the kernel makes, for as long
///   as the kernel runs (the caller keeps the allocations alive and ordered on `stream`);
/// * `stream` must belong to that context.
pub(crate) unsafe fn launch<P: DeviceRecord>(
    function: sys::CUfunction,
    stream: sys::CUstream,
    config: &LaunchConfig,
    params: &P,
) -> Result<()> {
    // SAFETY: the attribute value union is plain data; zero is a valid bit pattern.
    let mut attribute: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attribute.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attribute.value.programmaticStreamSerializationAllowed = 1;
    let launch_config = sys::CUlaunchConfig {
        gridDimX: config.grid.0,
        gridDimY: config.grid.1,
        gridDimZ: config.grid.2,
        blockDimX: config.block.0,
        blockDimY: config.block.1,
        blockDimZ: config.block.2,
        sharedMemBytes: config.dynamic_smem_bytes,
        hStream: stream,
        attrs: &mut attribute,
        numAttrs: config.programmatic_serialization as u32,
    };
    let mut args = [params as *const P as *mut c_void];
    // SAFETY: the caller upholds the kernel/parameter/stream contract; `args` and `attribute` outlive
    // the call, which copies them.
    unsafe {
        sys::cuLaunchKernelEx(
            &launch_config,
            function,
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
    .map_err(Error::cuda("cuLaunchKernelEx"))
}

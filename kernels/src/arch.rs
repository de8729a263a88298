//! Thin wrappers over PTX instructions and `llvm.nvvm.*` intrinsics, one function per instruction.
//!
//! Anything that synchronises threads (barriers, warp shuffles, warp syncs) goes through an LLVM
//! intrinsic, never inline `asm!`: LLVM does not treat inline asm as `convergent` and may duplicate it
//! into divergent branches, which hangs the kernel (toolchain.md, pitfall 1).

use core::arch::nvptx;

#[allow(improper_ctypes)]
unsafe extern "C" {
    #[link_name = "llvm.nvvm.shfl.sync.bfly.i32"]
    fn llvm_shfl_sync_bfly_i32(mask: u32, value: i32, lane_mask: i32, clamp: i32) -> i32;
    #[link_name = "llvm.nvvm.bar.warp.sync"]
    fn llvm_bar_warp_sync(mask: u32);
}

/// All 32 lanes of a warp.
pub const FULL_WARP: u32 = u32::MAX;

/// `%tid.x`.
#[inline(always)]
pub fn thread_idx_x() -> u32 {
    // SAFETY: reads a special register.
    unsafe { nvptx::_thread_idx_x() as u32 }
}

/// `%ctaid.x`.
#[inline(always)]
pub fn block_idx_x() -> u32 {
    // SAFETY: reads a special register.
    unsafe { nvptx::_block_idx_x() as u32 }
}

/// `%ctaid.y`.
#[inline(always)]
pub fn block_idx_y() -> u32 {
    // SAFETY: reads a special register.
    unsafe { nvptx::_block_idx_y() as u32 }
}

/// `%ctaid.z`.
#[inline(always)]
pub fn block_idx_z() -> u32 {
    // SAFETY: reads a special register.
    unsafe { nvptx::_block_idx_z() as u32 }
}

/// `trap;`: aborts the kernel with an error the host sees at the next synchronisation.
#[inline(always)]
pub fn trap() -> ! {
    // SAFETY: ends the thread's execution.
    unsafe { nvptx::trap() }
}

/// `bar.sync 0` for the whole CTA (`__syncthreads`).
///
/// # Safety
/// Every thread of the CTA must reach it.
#[inline(always)]
pub unsafe fn sync_threads() {
    // SAFETY: the caller guarantees CTA-wide convergence.
    unsafe { nvptx::_syncthreads() }
}

/// `bar.warp.sync 0xffffffff` (`__syncwarp`): orders shared-memory accesses among the warp's lanes.
///
/// # Safety
/// Every lane of the warp must reach it.
#[inline(always)]
pub unsafe fn sync_warp() {
    // SAFETY: the caller guarantees warp-wide convergence.
    unsafe { llvm_bar_warp_sync(FULL_WARP) }
}

/// `shfl.sync.bfly.b32` over the full warp: the value held by lane `lane ^ lane_mask`.
///
/// # Safety
/// Every lane of the warp must reach it.
#[inline(always)]
pub unsafe fn shfl_xor_i32(value: i32, lane_mask: u32) -> i32 {
    // SAFETY: the caller guarantees warp-wide convergence; clamp 0x1f = whole warp.
    unsafe { llvm_shfl_sync_bfly_i32(FULL_WARP, value, lane_mask as i32, 0x1f) }
}

/// Butterfly sum of an `i64` over the 32 lanes of a warp (two 32-bit shuffles per step).
///
/// # Safety
/// Every lane of the warp must reach it.
#[inline(always)]
pub unsafe fn warp_sum_i64(mut value: i64) -> i64 {
    let mut lane_mask = 16;
    while lane_mask >= 1 {
        // SAFETY: forwarded from the caller.
        let lo = unsafe { shfl_xor_i32(value as i32, lane_mask) } as u32 as i64;
        let hi = unsafe { shfl_xor_i32((value >> 32) as i32, lane_mask) } as i64;
        value += (hi << 32) | lo;
        lane_mask /= 2;
    }
    value
}

/// The CTA's dynamic shared memory (`.extern .shared`), sized at launch.
#[inline(always)]
pub fn dynamic_smem<T>() -> *mut T {
    core::intrinsics::gpu::gpu_launch_sized_workgroup_mem::<T>()
}

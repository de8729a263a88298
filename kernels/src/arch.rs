//! Thin wrappers over PTX instructions and `llvm.nvvm.*` intrinsics, one function per instruction.
//!
//! Anything that synchronises threads (barriers, warp shuffles, warp syncs) goes through an LLVM
//! intrinsic, never inline `asm!`: LLVM does not treat inline asm as `convergent` and may duplicate it
//! into divergent branches, which hangs the kernel (kernels/PITFALLS.md, pitfall 1).

use core::arch::nvptx;

#[allow(improper_ctypes)]
unsafe extern "C" {
    #[link_name = "llvm.nvvm.shfl.sync.bfly.i32"]
    fn llvm_shfl_sync_bfly_i32(mask: u32, value: i32, lane_mask: i32, clamp: i32) -> i32;
    #[link_name = "llvm.nvvm.shfl.sync.idx.i32"]
    fn llvm_shfl_sync_idx_i32(mask: u32, value: i32, lane: i32, clamp: i32) -> i32;
    #[link_name = "llvm.nvvm.shfl.sync.up.i32"]
    fn llvm_shfl_sync_up_i32(mask: u32, value: i32, delta: i32, clamp: i32) -> i32;
    #[link_name = "llvm.nvvm.redux.sync.umax"]
    fn llvm_redux_sync_umax(value: u32, mask: u32) -> u32;
    #[link_name = "llvm.nvvm.vote.ballot.sync"]
    fn llvm_vote_ballot_sync(mask: u32, predicate: bool) -> u32;
    #[link_name = "llvm.nvvm.vote.all.sync"]
    fn llvm_vote_all_sync(mask: u32, predicate: bool) -> bool;
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

/// `%ntid.x`.
#[inline(always)]
pub fn block_dim_x() -> u32 {
    // SAFETY: reads a special register.
    unsafe { nvptx::_block_dim_x() as u32 }
}

/// `%nctaid.x`.
#[inline(always)]
pub fn grid_dim_x() -> u32 {
    // SAFETY: reads a special register.
    unsafe { nvptx::_grid_dim_x() as u32 }
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

/// `shfl.sync.idx.b32` over the full warp: lane 0's `value` in every lane. Besides broadcasting, it
/// tells `ptxas` the result is warp-uniform (CUTLASS's `canonical_warp_group_idx`): without it, `ptxas`
/// treats branches on a thread-index-derived warpgroup number as divergent and serialises the
/// `wgmma`s inside them.
///
/// # Safety
/// Every lane of the warp must reach it.
#[inline(always)]
pub unsafe fn warp_broadcast_lane0(value: u32) -> u32 {
    // SAFETY: the caller guarantees warp-wide convergence.
    unsafe { llvm_shfl_sync_idx_i32(FULL_WARP, value as i32, 0, 0x1f) as u32 }
}

/// `vote.sync.all.pred` over the full warp: whether `predicate` holds in every lane.
///
/// # Safety
/// Every lane of the warp must reach it.
#[inline(always)]
pub unsafe fn warp_all(predicate: bool) -> bool {
    // SAFETY: the caller guarantees warp-wide convergence.
    unsafe { llvm_vote_all_sync(FULL_WARP, predicate) }
}

/// `shfl.sync.idx.b32` over the full warp: the value held by lane `lane`.
///
/// # Safety
/// Every lane of the warp must reach it.
#[inline(always)]
pub unsafe fn shfl_idx_u32(value: u32, lane: u32) -> u32 {
    // SAFETY: the caller guarantees warp-wide convergence.
    unsafe { llvm_shfl_sync_idx_i32(FULL_WARP, value as i32, lane as i32, 0x1f) as u32 }
}

/// `vote.sync.ballot.b32` over the full warp: bit `l` set where lane `l`'s `predicate` holds.
///
/// # Safety
/// Every lane of the warp must reach it.
#[inline(always)]
pub unsafe fn warp_ballot(predicate: bool) -> u32 {
    // SAFETY: the caller guarantees warp-wide convergence.
    unsafe { llvm_vote_ballot_sync(FULL_WARP, predicate) }
}

/// `redux.sync.max.u32` over the full warp (sm_80+): the largest `value` of the 32 lanes.
///
/// # Safety
/// Every lane of the warp must reach it.
#[inline(always)]
pub unsafe fn warp_max_u32(value: u32) -> u32 {
    // SAFETY: the caller guarantees warp-wide convergence.
    unsafe { llvm_redux_sync_umax(value, FULL_WARP) }
}

/// Inclusive prefix sum of an `i64` over the 32 lanes of a warp (Hillis–Steele, two 32-bit
/// `shfl.sync.up` per step; lanes below the distance keep their value).
///
/// # Safety
/// Every lane of the warp must reach it.
#[inline(always)]
pub unsafe fn warp_inclusive_scan_i64(mut value: i64, lane: u32) -> i64 {
    let mut delta = 1;
    while delta < 32 {
        // SAFETY: forwarded from the caller; clamp 0 = the whole warp for `.up`.
        let lo = unsafe { llvm_shfl_sync_up_i32(FULL_WARP, value as i32, delta as i32, 0) } as u32;
        let hi = unsafe { llvm_shfl_sync_up_i32(FULL_WARP, (value >> 32) as i32, delta as i32, 0) };
        if lane >= delta {
            value += ((hi as i64) << 32) | lo as i64;
        }
        delta *= 2;
    }
    value
}

/// `shfl.sync.idx.b32` of an `f32` over the full warp: the value held by lane `lane`.
///
/// # Safety
/// Every lane of the warp must reach it.
#[inline(always)]
pub unsafe fn shfl_idx_f32(value: f32, lane: u32) -> f32 {
    // SAFETY: the caller guarantees warp-wide convergence.
    f32::from_bits(unsafe {
        llvm_shfl_sync_idx_i32(FULL_WARP, value.to_bits() as i32, lane as i32, 0x1f)
    } as u32)
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

/// The CTA's dynamic shared memory (`.extern .shared`), sized at launch (not a `.shared` link
/// section: kernels/PITFALLS.md, pitfall 2).
#[inline(always)]
pub fn dynamic_smem<T>() -> *mut T {
    core::intrinsics::gpu::gpu_launch_sized_workgroup_mem::<T>()
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core and async-copy instructions (sm_80+). These are per-thread or warp-wide (`.sync.aligned`)
// instructions used only in warp-uniform control flow.

/// Generic pointer to shared memory → 32-bit `.shared` address (`cvta.to.shared.u64`).
#[inline(always)]
pub fn smem_addr<T>(p: *const T) -> u32 {
    let a: u64;
    // SAFETY: pure address arithmetic.
    unsafe {
        core::arch::asm!("cvta.to.shared.u64 {a}, {p};", a = out(reg64) a, p = in(reg64) p, options(pure, nomem, nostack))
    };
    a as u32
}

/// `cp.async.cg.shared.global [dst], [src], 16, src_size`: copies 16 bytes global → shared, bypassing
/// L1; with `src_bytes = 0` it writes 16 zero bytes and reads nothing.
///
/// # Safety
/// `dst` must be a 16-byte aligned shared address; if `src_bytes > 0`, `src` must be 16 readable,
/// 16-byte aligned global bytes.
#[inline(always)]
pub unsafe fn cp_async_16(dst: u32, src: *const u8, src_bytes: u32) {
    // SAFETY: forwarded.
    unsafe {
        core::arch::asm!(
            "cp.async.cg.shared.global [{d}], [{s}], 16, {n};",
            d = in(reg32) dst, s = in(reg64) src, n = in(reg32) src_bytes, options(nostack)
        )
    }
}

/// `cp.async.commit_group`.
#[inline(always)]
pub fn cp_async_commit() {
    // SAFETY: groups this thread's issued cp.async operations.
    unsafe { core::arch::asm!("cp.async.commit_group;", options(nostack)) }
}

/// `cp.async.wait_group N`: waits until at most `N` of this thread's groups are pending.
#[inline(always)]
pub fn cp_async_wait<const N: u32>() {
    // SAFETY: waits on this thread's own copies.
    unsafe { core::arch::asm!("cp.async.wait_group {n};", n = const N, options(nostack)) }
}

/// `ldmatrix.sync.aligned.m8n8.x4.shared.b16 [addr + OFFSET]`: four 8×8 b16 matrices; lane `i` gives the
/// address of row `i % 8` of matrix `i / 8`. The constant byte offset rides in the instruction's
/// immediate: with a register per offset, LLVM hoists every unrolled address out of the KV loop and the
/// 128 output accumulators no longer fit beside them.
///
/// # Safety
/// Warp-wide; `addr + OFFSET` must be a 16-byte aligned shared address of 16 readable bytes.
#[inline(always)]
pub unsafe fn ldmatrix_x4<const OFFSET: u32>(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: forwarded.
    unsafe {
        core::arch::asm!(
            "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{a}, {b}, {c}, {d}}}, [{p}+{off}];",
            a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d, p = in(reg32) addr,
            off = const OFFSET, options(nostack, readonly)
        )
    };
    [a, b, c, d]
}

/// `ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [addr + OFFSET]`: as [`ldmatrix_x4`], each matrix
/// transposed.
///
/// # Safety
/// As [`ldmatrix_x4`], for `addr + OFFSET`.
#[inline(always)]
pub unsafe fn ldmatrix_x4_trans<const OFFSET: u32>(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: forwarded.
    unsafe {
        core::arch::asm!(
            "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{a}, {b}, {c}, {d}}}, [{p}+{off}];",
            a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d, p = in(reg32) addr,
            off = const OFFSET, options(nostack, readonly)
        )
    };
    [a, b, c, d]
}

/// `ex2.approx.ftz.f32`: 2^x (2 ulp; `-inf` → 0).
#[inline(always)]
pub fn exp2(x: f32) -> f32 {
    let r: f32;
    // SAFETY: pure arithmetic.
    unsafe {
        core::arch::asm!("ex2.approx.ftz.f32 {r}, {x};", r = out(reg32) r, x = in(reg32) x, options(pure, nomem, nostack))
    };
    r
}

/// `lg2.approx.ftz.f32`: log2(x).
#[inline(always)]
pub fn log2(x: f32) -> f32 {
    let r: f32;
    // SAFETY: pure arithmetic.
    unsafe {
        core::arch::asm!("lg2.approx.ftz.f32 {r}, {x};", r = out(reg32) r, x = in(reg32) x, options(pure, nomem, nostack))
    };
    r
}

/// `rcp.rn.f32`: correctly rounded 1/x.
#[inline(always)]
pub fn rcp(x: f32) -> f32 {
    let r: f32;
    // SAFETY: pure arithmetic.
    unsafe {
        core::arch::asm!("rcp.rn.f32 {r}, {x};", r = out(reg32) r, x = in(reg32) x, options(pure, nomem, nostack))
    };
    r
}

/// `shfl.sync.bfly` of an `f32` over the full warp.
///
/// # Safety
/// Every lane of the warp must reach it.
#[inline(always)]
pub unsafe fn shfl_xor_f32(value: f32, lane_mask: u32) -> f32 {
    // SAFETY: forwarded.
    f32::from_bits(unsafe { shfl_xor_i32(value.to_bits() as i32, lane_mask) } as u32)
}

/// `griddepcontrol.wait`: with programmatic dependent launch, blocks until the grids this one depends
/// on have completed and their memory is visible. A no-op when launched without PDL. Emitted only in
/// the sm_90a module (the instruction needs sm_90).
#[inline(always)]
pub fn grid_dependency_wait() {
    #[cfg(flashmla_arch = "sm90a")]
    // SAFETY: orders this thread after the prerequisite grids; the asm is a memory clobber, so no load
    // is hoisted above it (FlashMLA 01a2772 fixed exactly such a hoisted load).
    unsafe {
        core::arch::asm!("griddepcontrol.wait;", options(nostack))
    }
}

/// `griddepcontrol.launch_dependents`: lets the next PDL kernel on the stream start its prologue.
#[inline(always)]
pub fn launch_dependents() {
    #[cfg(flashmla_arch = "sm90a")]
    // SAFETY: a scheduling hint; memory visibility is still given by the dependent's wait.
    unsafe {
        core::arch::asm!("griddepcontrol.launch_dependents;", options(nostack))
    }
}

/// The 16-bit floating-point types the kernels take: bf16 and fp16, carried as raw bits.
pub trait Element {
    /// `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}`: `d += a · b` with f32 accumulators.
    ///
    /// # Safety
    /// Warp-wide instruction.
    unsafe fn mma(d: &mut [f32; 4], a: [u32; 4], b0: u32, b1: u32);
    /// Two f32 → two 16-bit values, round to nearest even, `lo` in the low half.
    fn pack(lo: f32, hi: f32) -> u32;
}

macro_rules! element {
    ($name:ident, $mma:literal, $cvt:literal) => {
        /// Marker for this 16-bit float type.
        pub struct $name;
        impl Element for $name {
            #[inline(always)]
            unsafe fn mma(d: &mut [f32; 4], a: [u32; 4], b0: u32, b1: u32) {
                // SAFETY: the caller guarantees warp-wide execution.
                unsafe {
                    core::arch::asm!(
                        concat!($mma, " {{{d0}, {d1}, {d2}, {d3}}}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{d0}, {d1}, {d2}, {d3}}};"),
                        d0 = inout(reg32) d[0], d1 = inout(reg32) d[1], d2 = inout(reg32) d[2], d3 = inout(reg32) d[3],
                        a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
                        b0 = in(reg32) b0, b1 = in(reg32) b1,
                        // Not `pure`: a warp-collective must not be moved or dropped by the optimiser.
                        options(nomem, nostack)
                    )
                }
            }
            #[inline(always)]
            fn pack(lo: f32, hi: f32) -> u32 {
                let r: u32;
                // SAFETY: pure conversion; PTX puts the first source in the upper half.
                unsafe {
                    core::arch::asm!(concat!($cvt, " {r}, {hi}, {lo};"), r = out(reg32) r, hi = in(reg32) hi, lo = in(reg32) lo, options(pure, nomem, nostack))
                };
                r
            }
        }
    };
}

element!(
    Bf16,
    "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
    "cvt.rn.bf16x2.f32"
);
element!(
    F16,
    "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
    "cvt.rn.f16x2.f32"
);

/// Expands `$body` once per listed value with `$i` bound as a `const usize`, so register arrays are only
/// ever indexed by constants (a run-time index would move them to local memory: kernels/PITFALLS.md,
/// pitfall 4).
#[macro_export]
macro_rules! unroll {
    ($i:ident in [$($n:literal),* $(,)?] $body:block) => {
        $( { const $i: usize = $n; $body } )*
    };
}

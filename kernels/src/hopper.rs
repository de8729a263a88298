//! Hopper (sm_90a) instructions: mbarriers, TMA (`cp.async.bulk.tensor`), `wgmma`, named barriers and
//! proxy fences. Only in the sm_90a module.
//!
//! CTA- and warpgroup-wide barriers go through LLVM intrinsics (kernels/PITFALLS.md, pitfall 1). The
//! `wgmma.*.sync.aligned` instructions are inline asm because their accumulators must be asm operands
//! (pitfall 4); they are only ever executed in warpgroup-uniform control flow.

use crate::arch::{Bf16, Element, F16};
use core::arch::asm;

#[allow(improper_ctypes)]
unsafe extern "C" {
    #[link_name = "llvm.nvvm.barrier.cta.sync.aligned.count"]
    fn llvm_barrier_sync_count(id: u32, threads: u32);
    #[link_name = "llvm.nvvm.barrier.cta.arrive.aligned.count"]
    fn llvm_barrier_arrive_count(id: u32, threads: u32);
}

/// An asm statement `$text` that also names every accumulator as an in/out operand (in a comment).
macro_rules! acc_asm {
    ($acc:ident, $text:literal $(, ($($extra:tt)*))?, [$i0:literal $(, $i:literal)*]) => {
        asm!(
            $text,
            concat!("// {", $i0, "}" $(, " {", $i, "}")*),
            inout(reg32) $acc[$i0], $(inout(reg32) $acc[$i],)*
            $($($extra)*,)?
            options(nostack)
        )
    };
}
/// Invokes `$m!($($args)*, [0, 1, .., 127])`: the accumulator indices of an m64n256 fragment, written once.
macro_rules! with_indices_128 {
    ($m:ident!($($args:tt)*)) => {
        $m!($($args)*, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127])
    };
}
/// Invokes `$m!($($args)*, [0, 1, .., 31])`: the accumulator indices of an m64n64 fragment.
macro_rules! with_indices_32 {
    ($m:ident!($($args:tt)*)) => {
        $m!($($args)*, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31])
    };
}
macro_rules! wgmma_ss_64 {
    ($ty:literal, $acc:ident, $a:ident, $b:ident, $sd:ident, $off:ident, [$i0:literal $(, $i:literal)*]) => {
        asm!(
            "{{",
            ".reg .pred p;",
            ".reg .b64 da, db;",
            "setp.ne.b32 p, {sd}, 0;",
            "add.s64 da, {da}, {off};",
            "add.s64 db, {db}, {off};",
            concat!("wgmma.mma_async.sync.aligned.m64n64k16.f32.", $ty, ".", $ty, " {{{", $i0, "}" $(, ", {", $i, "}")*, "}}, da, db, p, 1, 1, 0, 0;"),
            "}}",
            inout(reg32) $acc[$i0], $(inout(reg32) $acc[$i],)*
            da = in(reg64) $a, db = in(reg64) $b, sd = in(reg32) $sd, off = const $off,
            options(nostack)
        )
    };
}
macro_rules! wgmma_rs_64 {
    ($ty:literal, $acc:ident, $a:ident, $b:ident, $sd:ident, $off:ident, [$i0:literal $(, $i:literal)*]) => {
        asm!(
            "{{",
            ".reg .pred p;",
            ".reg .b64 db;",
            "setp.ne.b32 p, {sd}, 0;",
            "add.s64 db, {db}, {off};",
            concat!("wgmma.mma_async.sync.aligned.m64n64k16.f32.", $ty, ".", $ty, " {{{", $i0, "}" $(, ", {", $i, "}")*, "}}, {{{a0}, {a1}, {a2}, {a3}}}, db, p, 1, 1, 0;"),
            "}}",
            inout(reg32) $acc[$i0], $(inout(reg32) $acc[$i],)*
            a0 = in(reg32) $a[0], a1 = in(reg32) $a[1], a2 = in(reg32) $a[2], a3 = in(reg32) $a[3],
            db = in(reg64) $b, sd = in(reg32) $sd, off = const $off,
            options(nostack)
        )
    };
}
macro_rules! wgmma_rs_64_overwrite {
    ($ty:literal, $acc:ident, $a:ident, $b:ident, $off:ident, [$i0:literal $(, $i:literal)*]) => {
        asm!(
            "{{",
            ".reg .pred p;",
            ".reg .b64 db;",
            "setp.ne.b32 p, {zero}, 0;",
            "add.s64 db, {db}, {off};",
            concat!("wgmma.mma_async.sync.aligned.m64n64k16.f32.", $ty, ".", $ty, " {{{", $i0, "}" $(, ", {", $i, "}")*, "}}, {{{a0}, {a1}, {a2}, {a3}}}, db, p, 1, 1, 0;"),
            "}}",
            out(reg32) $acc[$i0], $(out(reg32) $acc[$i],)*
            a0 = in(reg32) $a[0], a1 = in(reg32) $a[1], a2 = in(reg32) $a[2], a3 = in(reg32) $a[3],
            db = in(reg64) $b, zero = in(reg32) 0u32, off = const $off,
            options(nostack)
        )
    };
}
macro_rules! wgmma_rs_256 {
    ($ty:literal, $acc:ident, $a:ident, $b:ident, $off:ident, [$i0:literal $(, $i:literal)*]) => {
        asm!(
            "{{",
            ".reg .pred p;",
            ".reg .b64 db;",
            "setp.ne.b32 p, {one}, 0;",
            "add.s64 db, {db}, {off};",
            concat!("wgmma.mma_async.sync.aligned.m64n256k16.f32.", $ty, ".", $ty, " {{{", $i0, "}" $(, ", {", $i, "}")*, "}}, {{{a0}, {a1}, {a2}, {a3}}}, db, p, 1, 1, 1;"),
            "}}",
            inout(reg32) $acc[$i0], $(inout(reg32) $acc[$i],)*
            a0 = in(reg32) $a[0], a1 = in(reg32) $a[1], a2 = in(reg32) $a[2], a3 = in(reg32) $a[3],
            db = in(reg64) $b, one = in(reg32) 1u32, off = const $off,
            options(nostack)
        )
    };
}
macro_rules! wgmma_ss_256 {
    ($ty:literal, $acc:ident, $a:ident, $b:ident, $aoff:ident, $boff:ident, [$i0:literal $(, $i:literal)*]) => {
        asm!(
            "{{",
            ".reg .pred p;",
            ".reg .b64 da, db;",
            "setp.ne.b32 p, {one}, 0;",
            "add.s64 da, {da}, {aoff};",
            "add.s64 db, {db}, {boff};",
            concat!("wgmma.mma_async.sync.aligned.m64n256k16.f32.", $ty, ".", $ty, " {{{", $i0, "}" $(, ", {", $i, "}")*, "}}, da, db, p, 1, 1, 0, 1;"),
            "}}",
            inout(reg32) $acc[$i0], $(inout(reg32) $acc[$i],)*
            da = in(reg64) $a, db = in(reg64) $b, one = in(reg32) 1u32, aoff = const $aoff, boff = const $boff,
            options(nostack)
        )
    };
}

/// `bar.sync id, threads`: waits until `threads` threads (warps entirely) have arrived at named barrier
/// `id`.
///
/// # Safety
/// Every thread of each participating warp must reach it; `threads` counts all participants.
#[inline(always)]
pub unsafe fn named_barrier_sync(id: u32, threads: u32) {
    // SAFETY: forwarded.
    unsafe { llvm_barrier_sync_count(id, threads) }
}

/// `bar.arrive id, threads`: signals named barrier `id` without waiting.
///
/// # Safety
/// As [`named_barrier_sync`].
#[inline(always)]
pub unsafe fn named_barrier_arrive(id: u32, threads: u32) {
    // SAFETY: forwarded.
    unsafe { llvm_barrier_arrive_count(id, threads) }
}

/// `mbarrier.init.shared::cta.b64 [bar], count`.
///
/// # Safety
/// `bar` is an 8-byte aligned shared address no other thread uses until a fence + barrier.
#[inline(always)]
pub unsafe fn mbarrier_init(bar: u32, count: u32) {
    // SAFETY: forwarded.
    unsafe {
        asm!("mbarrier.init.shared::cta.b64 [{b}], {c};", b = in(reg32) bar, c = in(reg32) count, options(nostack))
    }
}

/// `fence.mbarrier_init.release.cluster`: makes initialised mbarriers visible to the async proxy.
#[inline(always)]
pub fn fence_mbarrier_init() {
    // SAFETY: a fence.
    unsafe { asm!("fence.mbarrier_init.release.cluster;", options(nostack)) }
}

/// Spins until the phase with parity `parity` of the mbarrier at shared address `base + OFF` has
/// completed (`mbarrier.try_wait.parity`, which itself suspends the thread for a while before reporting
/// "not yet"). The offset is an immediate, so LLVM keeps one base register instead of hoisting an
/// address per unrolled barrier.
///
/// # Safety
/// `base + OFF` is an initialised mbarrier in shared memory.
#[inline(always)]
pub unsafe fn mbarrier_wait_at<const OFF: u32>(base: u32, parity: u32) {
    loop {
        let done: u32;
        // SAFETY: forwarded.
        unsafe {
            asm!(
                "{{",
                ".reg .pred p;",
                "mbarrier.try_wait.parity.shared::cta.b64 p, [{b}+{off}], {ph};",
                "selp.u32 {d}, 1, 0, p;",
                "}}",
                b = in(reg32) base, off = const OFF, ph = in(reg32) parity, d = out(reg32) done, options(nostack)
            )
        };
        if done != 0 {
            break;
        }
    }
}

/// `createpolicy.fractional.L2::evict_first.b64`: an L2 cache policy that marks the lines a copy brings
/// in as the first to evict (FlashMLA loads KV pages with it: each page is read once per CTA, while the
/// other m-block CTAs of a request read it soon after, if at all).
#[inline(always)]
pub fn l2_evict_first_policy() -> u64 {
    let policy: u64;
    // SAFETY: computes a value.
    unsafe {
        asm!("createpolicy.fractional.L2::evict_first.b64 {p}, 1.0;", p = out(reg64) policy, options(pure, nomem, nostack))
    };
    policy
}

/// `createpolicy.fractional.L2::evict_normal.b64`: the default L2 policy, as an explicit cache hint.
#[inline(always)]
pub fn l2_evict_normal_policy() -> u64 {
    let policy: u64;
    // SAFETY: computes a value.
    unsafe {
        asm!("createpolicy.fractional.L2::evict_normal.b64 {p}, 1.0;", p = out(reg64) policy, options(pure, nomem, nostack))
    };
    policy
}

/// `cp.async.bulk.tensor.4d` (TMA): copies the box at `coords` of the tensor described by the tensor
/// map at `tensor_map` (global memory) into shared memory at `dst + DST_OFF`, completing the
/// transactions of the mbarrier at `bar + BAR_OFF`, with an L2 cache policy from
/// [`l2_evict_first_policy`]. Coordinates outside the tensor read as zeros. The offsets are
/// immediates: computed outside, ptxas hoists one register per tile and per barrier out of the loop
/// that issues the copies.
///
/// # Safety
/// `tensor_map` is a valid, acquired tensor map; `dst + DST_OFF` has room for one box, aligned as its
/// swizzle needs; the mbarrier expects the box's bytes.
#[inline(always)]
pub unsafe fn tma_load_4d_hinted<const DST_OFF: u32, const BAR_OFF: u32>(
    dst: u32,
    tensor_map: u64,
    bar: u32,
    coords: [i32; 4],
    policy: u64,
) {
    // SAFETY: forwarded.
    unsafe {
        asm!(
            "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint [{d}+{doff}], [{m}, {{{c0}, {c1}, {c2}, {c3}}}], [{b}+{boff}], {pol};",
            d = in(reg32) dst, m = in(reg64) tensor_map, b = in(reg32) bar,
            c0 = in(reg32) coords[0], c1 = in(reg32) coords[1], c2 = in(reg32) coords[2], c3 = in(reg32) coords[3],
            pol = in(reg64) policy, doff = const DST_OFF, boff = const BAR_OFF,
            options(nostack)
        )
    }
}

/// `mbarrier.arrive.expect_tx` on the mbarrier at `bar + OFF` (immediate offset, see
/// [`tma_load_4d_hinted`]).
///
/// # Safety
/// `bar + OFF` is an initialised mbarrier in shared memory.
#[inline(always)]
pub unsafe fn mbarrier_arrive_expect_tx_at<const OFF: u32>(bar: u32, bytes: u32) {
    // SAFETY: forwarded.
    unsafe {
        asm!("mbarrier.arrive.expect_tx.shared::cta.b64 _, [{b}+{off}], {n};", b = in(reg32) bar, off = const OFF, n = in(reg32) bytes, options(nostack))
    }
}

/// `stmatrix.sync.aligned.m8n8.x4.shared.b16 [addr], {r0, r1, r2, r3}` (sm_90): stores four 8 × 8
/// matrices of 16-bit values held in the mma fragment layout (register `i` of lane `l` holds row `l / 4`,
/// columns `2·(l % 4)`, `+1` of matrix `i`); lane `l` gives the address of row `l % 8` of matrix `l / 8`.
/// Like `ldmatrix` (arch.rs), it is only used in warp-uniform control flow.
///
/// # Safety
/// Warp-wide; each lane's `addr` is a 16-byte aligned shared address of 16 writable bytes.
#[inline(always)]
pub unsafe fn stmatrix_x4(addr: u32, values: [u32; 4]) {
    // SAFETY: forwarded.
    unsafe {
        asm!(
            "stmatrix.sync.aligned.m8n8.x4.shared.b16 [{a}], {{{r0}, {r1}, {r2}, {r3}}};",
            a = in(reg32) addr, r0 = in(reg32) values[0], r1 = in(reg32) values[1],
            r2 = in(reg32) values[2], r3 = in(reg32) values[3], options(nostack)
        )
    }
}

/// `st.shared.v4.b32 [addr], {0, 0, 0, 0}`: zeroes 16 bytes of shared memory.
///
/// # Safety
/// `addr` is a 16-byte aligned shared address of 16 writable bytes.
#[inline(always)]
pub unsafe fn st_shared_zero_16(addr: u32) {
    // SAFETY: forwarded.
    unsafe { asm!("st.shared.v4.b32 [{a}], {{0, 0, 0, 0}};", a = in(reg32) addr, options(nostack)) }
}

/// Stores a 128-byte tensor map to global memory and makes it usable by this thread's TMA copies:
/// generic-proxy stores, then `fence.proxy.tensormap::generic.release` and `.acquire` on the object.
/// (A tensor map cannot be a kernel parameter from Rust: kernels/PITFALLS.md, pitfall 3.)
///
/// # Safety
/// `dst` is 64-byte aligned global memory of 128 bytes that no TMA is reading.
#[inline(always)]
pub unsafe fn publish_tensor_map(dst: u64, words: &[u64; 16]) {
    let p = dst as *mut u64;
    crate::unroll!(I in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
        // SAFETY: inside the 128-byte slot.
        unsafe { core::ptr::write_volatile(p.add(I), words[I]) };
    });
    // SAFETY: fences on the caller's slot.
    unsafe {
        asm!(
            "fence.proxy.tensormap::generic.release.gpu;",
            options(nostack)
        );
        asm!("fence.proxy.tensormap::generic.acquire.gpu [{m}], 128;", m = in(reg64) dst, options(nostack));
    }
}

/// `fence.proxy.tensormap::generic.acquire.gpu`: this thread's TMA copies see the tensor map another
/// thread of the CTA published (ordered by a barrier after its release).
///
/// # Safety
/// `map` is the address of a published tensor map.
#[inline(always)]
pub unsafe fn acquire_tensor_map(map: u64) {
    // SAFETY: forwarded.
    unsafe {
        asm!("fence.proxy.tensormap::generic.acquire.gpu [{m}], 128;", m = in(reg64) map, options(nostack))
    }
}

/// `cp.async.bulk.global.shared::cta.bulk_group [dst], [src], bytes`: one bulk copy shared → global by
/// the copy engine, completed with [`bulk_commit_and_wait_read`].
///
/// # Safety
/// `dst` is 16-byte aligned global memory and `src` a 16-byte aligned shared address, both of `bytes`
/// (a multiple of 16); the shared source was written before a `fence.proxy.async`.
#[inline(always)]
pub unsafe fn bulk_store(dst: u64, src: u32, bytes: u32) {
    // SAFETY: forwarded.
    unsafe {
        asm!(
            "cp.async.bulk.global.shared::cta.bulk_group [{d}], [{s}], {n};",
            d = in(reg64) dst, s = in(reg32) src, n = in(reg32) bytes, options(nostack)
        )
    }
}

/// Commits this thread's bulk copies and waits until their shared-memory sources have been read
/// (`cp.async.bulk.commit_group` + `cp.async.bulk.wait_group.read 0`): the source may be reused, and
/// the global writes complete before the kernel does.
#[inline(always)]
pub fn bulk_commit_and_wait_read() {
    // SAFETY: waits on this thread's own copies.
    unsafe {
        asm!(
            "cp.async.bulk.commit_group;",
            "cp.async.bulk.wait_group.read 0;",
            options(nostack)
        )
    }
}

/// `fence.proxy.async.shared::cta`: this thread's ordinary shared-memory writes become visible to the
/// async proxy (wgmma operand reads, TMA).
#[inline(always)]
pub fn fence_proxy_async_shared() {
    // SAFETY: a fence.
    unsafe { asm!("fence.proxy.async.shared::cta;", options(nostack)) }
}

/// A shared-memory matrix descriptor for `wgmma` with the 128-byte swizzle: start address, leading and
/// stride byte offsets (PTX ISA "Matrix Descriptor Format"; bits 62–63 = 1 select the 128-byte swizzle).
#[inline(always)]
pub const fn sw128_desc(addr: u32, leading_bytes: u32, stride_bytes: u32) -> u64 {
    (((addr & 0x3_FFFF) >> 4) as u64)
        | ((((leading_bytes >> 4) & 0x3FFF) as u64) << 16)
        | ((((stride_bytes >> 4) & 0x3FFF) as u64) << 32)
        | (1u64 << 62)
}

/// `wgmma.fence.sync.aligned` with the 128 accumulators as operands: orders the ordinary instructions
/// that last wrote them before the wgmmas that follow.
///
/// # Safety
/// Warpgroup-wide, in warpgroup-uniform control flow.
#[inline(always)]
pub unsafe fn wgmma_fence_128(acc: &mut [f32; 128]) {
    // SAFETY: forwarded.
    unsafe { with_indices_128!(acc_asm!(acc, "wgmma.fence.sync.aligned;")) }
}

/// `wgmma.fence.sync.aligned` with no register operands: before a wgmma that overwrites its
/// accumulators.
///
/// # Safety
/// As [`wgmma_fence_128`].
#[inline(always)]
pub unsafe fn wgmma_fence() {
    // SAFETY: forwarded.
    unsafe { asm!("wgmma.fence.sync.aligned;", options(nostack)) }
}

/// `wgmma.fence.sync.aligned` with 32 accumulators as operands.
///
/// # Safety
/// As [`wgmma_fence_128`].
#[inline(always)]
pub unsafe fn wgmma_fence_32(acc: &mut [f32; 32]) {
    // SAFETY: forwarded.
    unsafe { with_indices_32!(acc_asm!(acc, "wgmma.fence.sync.aligned;")) }
}

/// `wgmma.commit_group.sync.aligned`.
///
/// # Safety
/// Warpgroup-wide, in warpgroup-uniform control flow.
#[inline(always)]
pub unsafe fn wgmma_commit() {
    // SAFETY: forwarded.
    unsafe { asm!("wgmma.commit_group.sync.aligned;", options(nostack)) }
}

/// `wgmma.wait_group.sync.aligned N` (at most `N` of this warpgroup's committed groups still pending)
/// with the 128 accumulators of a finished group as operands, so that nothing reads them before the
/// wait (CUTLASS's `warpgroup_fence_operand`).
///
/// # Safety
/// As [`wgmma_fence_128`]; `acc` belongs to a group that is complete once `N` remain.
#[inline(always)]
pub unsafe fn wgmma_wait_128<const N: u32>(acc: &mut [f32; 128]) {
    // SAFETY: forwarded.
    unsafe { with_indices_128!(acc_asm!(acc, "wgmma.wait_group.sync.aligned {n};", (n = const N))) }
}

/// As [`wgmma_wait_128`], for 32 accumulators.
///
/// # Safety
/// As [`wgmma_wait_128`].
#[inline(always)]
pub unsafe fn wgmma_wait_32<const N: u32>(acc: &mut [f32; 32]) {
    // SAFETY: forwarded.
    unsafe { with_indices_32!(acc_asm!(acc, "wgmma.wait_group.sync.aligned {n};", (n = const N))) }
}

/// `wgmma` for one 16-bit input type. Accumulators are f32; `m64nNk16` accumulator `i` of a thread
/// (lane `l` of warp `w` of the warpgroup) is row `16w + l/4 + 8·((i/2) % 2)`, column `8·(i/4) + 2·(l%4) + i%2`.
pub trait WgmmaElement: Element {
    /// `S (+)= A·Bᵀ`, 64 × 64 × 16, both operands K-major in shared memory, at descriptors `a + OFF`
    /// and `b + OFF` (OFF in 16-byte units); `accumulate == 0` overwrites. The constant offset is added
    /// inside the asm: computed outside, LLVM hoists every unrolled descriptor out of the KV loop and
    /// the accumulators no longer fit beside them.
    ///
    /// # Safety
    /// Warpgroup-wide, after [`wgmma_fence_32`]; descriptors address valid shared-memory operands.
    unsafe fn wgmma_m64n64k16_ss<const OFF: u64>(
        acc: &mut [f32; 32],
        a: u64,
        b: u64,
        accumulate: u32,
    );
    /// `S (+)= A·Bᵀ`, 64 × 64 × 16, A from registers (four packed pairs in the m16n8k16 `A` layout per
    /// 16-row slice), B K-major in shared memory at descriptor `b + OFF`; `accumulate == 0` overwrites.
    ///
    /// # Safety
    /// As [`WgmmaElement::wgmma_m64n64k16_ss`]; `a` must not be written before the wgmma completes.
    unsafe fn wgmma_m64n64k16_rs<const OFF: u64>(
        acc: &mut [f32; 32],
        a: [u32; 4],
        b: u64,
        accumulate: u32,
    );
    /// `S = A·Bᵀ`, 64 × 64 × 16, as [`WgmmaElement::wgmma_m64n64k16_rs`] with `accumulate == 0`, but
    /// the accumulators are outputs only: their old values are not kept alive for it (with in/out
    /// operands LLVM would hold the previous block's 32 scores in registers until the next `Q·Kᵀ`).
    ///
    /// # Safety
    /// As [`WgmmaElement::wgmma_m64n64k16_rs`], after [`wgmma_fence`].
    unsafe fn wgmma_m64n64k16_rs_overwrite<const OFF: u64>(
        acc: &mut [f32; 32],
        a: [u32; 4],
        b: u64,
    );
    /// `O += A·B`, 64 × 256 × 16, A from registers (four packed pairs in the m16n8k16 `A` layout per
    /// 16-row slice), B MN-major ("transposed") in shared memory at descriptor `b + B_OFF`.
    ///
    /// # Safety
    /// As [`WgmmaElement::wgmma_m64n64k16_ss`], after [`wgmma_fence_128`].
    unsafe fn wgmma_m64n256k16_rs_tb<const B_OFF: u64>(acc: &mut [f32; 128], a: [u32; 4], b: u64);
    /// `O += A·B`, 64 × 256 × 16, A K-major (at `a + A_OFF`) and B MN-major (at `b + B_OFF`) in shared
    /// memory.
    ///
    /// # Safety
    /// As [`WgmmaElement::wgmma_m64n256k16_rs_tb`].
    unsafe fn wgmma_m64n256k16_ss_tb<const A_OFF: u64, const B_OFF: u64>(
        acc: &mut [f32; 128],
        a: u64,
        b: u64,
    );
}

macro_rules! wgmma_element {
    ($name:ident, $ty:literal) => {
        impl WgmmaElement for $name {
            #[inline(always)]
            unsafe fn wgmma_m64n64k16_ss<const OFF: u64>(
                acc: &mut [f32; 32],
                a: u64,
                b: u64,
                accumulate: u32,
            ) {
                // SAFETY: forwarded.
                unsafe { with_indices_32!(wgmma_ss_64!($ty, acc, a, b, accumulate, OFF)) }
            }
            #[inline(always)]
            unsafe fn wgmma_m64n64k16_rs<const OFF: u64>(
                acc: &mut [f32; 32],
                a: [u32; 4],
                b: u64,
                accumulate: u32,
            ) {
                // SAFETY: forwarded.
                unsafe { with_indices_32!(wgmma_rs_64!($ty, acc, a, b, accumulate, OFF)) }
            }
            #[inline(always)]
            unsafe fn wgmma_m64n64k16_rs_overwrite<const OFF: u64>(
                acc: &mut [f32; 32],
                a: [u32; 4],
                b: u64,
            ) {
                // SAFETY: forwarded.
                unsafe { with_indices_32!(wgmma_rs_64_overwrite!($ty, acc, a, b, OFF)) }
            }
            #[inline(always)]
            unsafe fn wgmma_m64n256k16_rs_tb<const B_OFF: u64>(
                acc: &mut [f32; 128],
                a: [u32; 4],
                b: u64,
            ) {
                // SAFETY: forwarded.
                unsafe { with_indices_128!(wgmma_rs_256!($ty, acc, a, b, B_OFF)) }
            }
            #[inline(always)]
            unsafe fn wgmma_m64n256k16_ss_tb<const A_OFF: u64, const B_OFF: u64>(
                acc: &mut [f32; 128],
                a: u64,
                b: u64,
            ) {
                // SAFETY: forwarded.
                unsafe { with_indices_128!(wgmma_ss_256!($ty, acc, a, b, A_OFF, B_OFF)) }
            }
        }
    };
}
wgmma_element!(Bf16, "bf16");
wgmma_element!(F16, "f16");

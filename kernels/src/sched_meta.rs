//! The tile-scheduler metadata kernel. Computes what FlashMLA HEAD
//! `csrc/smxx/decode/get_decoding_sched_meta/get_decoding_sched_meta.cu::get_mla_metadata_kernel`
//! computes, in parallel where FlashMLA's one lane walks the batch request by request:
//! 1. the CTA sums the request costs into prefix costs `C` in shared memory (a scan);
//! 2. one warp runs the only serial part, the chain of the parts' start positions
//!    (`flashmla_abi::sched::sched_next_start`), finding each part's last reachable boundary with one
//!    `redux.sync.max` over a window of `C` that only moves forward;
//! 3. the CTA turns the positions into every work list (`flashmla_abi::sched::sched_part_meta`) and every
//!    `num_splits` entry, with binary searches.
//!
//! The results are those of `flashmla_abi::sched::schedule`, the serial pass the host runs, which the kernel
//! also runs where the parallel path's arrays do not fit in shared memory or the costs exceed 32 bits
//! (abi and GPU tests compare both paths with it).

use crate::arch;
use flashmla_abi::params::{DecodingSchedMeta, SchedMetaParams};
use flashmla_abi::sched::{
    sched_end_request, sched_next_start, sched_part_meta, sched_payload, sched_request_cost,
    schedule, SchedCursor, SCHED_MAX_CHAIN_COST,
};
use flashmla_abi::{sched_meta_parallel_fits, SCHED_META_SCRATCH_BYTES, SCHED_META_THREADS};

const WARPS: usize = SCHED_META_THREADS as usize / 32;

/// The parallel path's shared-memory arrays (after the scratch): `prefix[i] = C[i + 1]`, and per part
/// boundary `p ≤ num_sm_parts` its start position, the request it lies in and the cuts (parts that
/// ended inside a request) among boundaries `1..=p`.
struct Chain {
    /// Part boundaries the chain recorded: it stops once every request is assigned, and the
    /// boundaries after it all start at the end (request b, block 0).
    recorded: *mut u32,
    prefix: *mut u32,
    starts: *mut u32,
    reqs: *mut i32,
    cuts: *mut i32,
}

/// Computes the decode work lists and `num_splits` from `cache_seqlens` on the device, so a decode step
/// needs no host round trip (and can be captured in a CUDA graph).
///
/// Launch: 1 CTA of [`SCHED_META_THREADS`] threads,
/// `flashmla_abi::sched_meta_smem_bytes(batch_size, num_sm_parts)` bytes of dynamic shared memory.
///
/// # Safety
/// The pointers in `params` must be valid device allocations of `batch_size`, `num_sm_parts` records and
/// `batch_size + 1` elements; `batch_size ≥ 1`, `num_sm_parts ≥ 1`.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn flashmla_get_decoding_sched_meta(params: SchedMetaParams) {
    let tid = arch::thread_idx_x() as usize;
    let (warp, lane) = (tid / 32, (tid % 32) as u32);
    let b = params.batch_size as usize;
    let num_parts = params.num_sm_parts as usize;
    let seqlens = params.seqlens_k as *const i32;
    let metas = params.tile_scheduler_metadata as *mut DecodingSchedMeta;
    let num_splits = params.num_splits as *mut i32;
    // Typed as i64 so the dynamic shared memory is declared 8-byte aligned.
    let warp_totals = arch::dynamic_smem::<i64>();
    let arrays = unsafe { (warp_totals as *mut u8).add(SCHED_META_SCRATCH_BYTES) };
    // SAFETY (all four): the launch gives the scratch plus 4·b + 12·(parts + 1) bytes wherever
    // sched_meta_parallel_fits holds, the only case they are used in.
    let chain = Chain {
        recorded: unsafe { (warp_totals as *mut u8).add(8 * WARPS) } as *mut u32,
        prefix: arrays as *mut u32,
        starts: unsafe { (arrays as *mut u32).add(b) },
        reqs: unsafe { (arrays as *mut i32).add(b + num_parts + 1) },
        cuts: unsafe { (arrays as *mut i32).add(b + 2 * (num_parts + 1)) },
    };

    // Each thread sums the costs of a contiguous run of requests; a warp scan and the warp totals give
    // every run its offset.
    let run = b.div_ceil(SCHED_META_THREADS as usize);
    let first = (tid * run).min(b);
    let end = (first + run).min(b);
    let mut cost = 0i64;
    for i in first..end {
        // SAFETY: i < batch_size.
        cost += sched_request_cost(unsafe { seqlens.add(i).read() });
    }
    // SAFETY: every lane of every warp reaches the scan and the barrier (no divergence above).
    let inclusive = unsafe { arch::warp_inclusive_scan_i64(cost, lane) };
    if lane == 31 {
        unsafe { warp_totals.add(warp).write(inclusive) };
    }
    unsafe { arch::sync_threads() };
    let (mut offset, mut total) = (0i64, 0i64);
    for w in 0..WARPS {
        // SAFETY: WARPS slots, written before the barrier.
        let t = unsafe { warp_totals.add(w).read() };
        offset += if w < warp { t } else { 0 };
        total += t;
    }

    if total > SCHED_MAX_CHAIN_COST || !sched_meta_parallel_fits(b, num_parts) {
        // The serial pass (uniform branch: every thread returns here).
        if tid == 0 {
            let complete = schedule(
                b,
                num_parts,
                // SAFETY: the scheduler asks only for requests < batch_size.
                |req| unsafe { seqlens.add(req).read() },
                total,
                // SAFETY: part < num_sm_parts and idx <= batch_size, the output sizes.
                |part, meta| unsafe { metas.add(part).write(meta) },
                |idx, value| unsafe { num_splits.add(idx).write(value) },
            );
            if !complete {
                arch::trap();
            }
        }
        return;
    }

    let mut running = offset + inclusive - cost;
    for i in first..end {
        // SAFETY: i < batch_size (the second read hits L1); the total fits 32 bits, so does every
        // prefix.
        running += sched_request_cost(unsafe { seqlens.add(i).read() });
        unsafe { chain.prefix.add(i).write(running as u32) };
    }
    // Orders the prefix costs before warp 0 searches them.
    unsafe { arch::sync_threads() };
    if warp == 0 {
        // SAFETY: the whole of warp 0 calls it, after the barrier.
        unsafe { start_positions(&chain, b, num_parts, total as u32, lane) };
    }
    // Orders warp 0's start positions before every thread reads them.
    unsafe { arch::sync_threads() };

    let mut part = tid;
    while part < num_parts {
        // SAFETY: part + 1 <= num_parts, the arrays' last boundary.
        let (begin, next) = unsafe { (chain.cursor(part, b), chain.cursor(part + 1, b)) };
        // SAFETY: sched_end_request is in 0..batch_size.
        let end_len = unsafe { seqlens.add(sched_end_request(next) as usize).read() };
        // SAFETY: part < num_sm_parts.
        unsafe { metas.add(part).write(sched_part_meta(begin, next, end_len)) };
        part += SCHED_META_THREADS as usize;
    }
    let mut i = tid;
    while i < b {
        // num_splits[i + 1] = (i + 1) + the cuts before the end of request i.
        // SAFETY: i < batch_size; the boundaries 1..=num_parts are written.
        unsafe {
            let end = chain.prefix.add(i).read();
            let recorded = chain.recorded.read() as usize;
            let q = partition_point(chain.starts.add(1), recorded - 1, |v| v < end);
            num_splits
                .add(i + 1)
                .write(i as i32 + 1 + chain.cuts.add(q).read());
        }
        i += SCHED_META_THREADS as usize;
    }
    if tid == 0 {
        // SAFETY: slot 0 of b + 1.
        unsafe { num_splits.write(0) };
    }
}

/// Warp 0: the start position of every part, in order (FlashMLA's greedy pass restated on the cost line,
/// see `flashmla_abi::sched::SchedCursor`), with the request it lies in and the running count of cuts. The
/// window `C[window .. window + 32]` (one boundary per lane) only moves forward, as the positions do;
/// a `redux.sync.max` over the boundaries within reach gives the last one, `C[e]`.
///
/// # Safety
/// Every lane of one warp must call it, after the prefix costs of the batch are written;
/// `total = C[b] ≤ SCHED_MAX_CHAIN_COST`.
#[inline(always)]
unsafe fn start_positions(chain: &Chain, b: usize, num_parts: usize, total: u32, lane: u32) {
    let payload = sched_payload(total as i64, num_parts) as u32;
    // C[index] for index in 1..=b; past the batch, a value no reach searched for attains (every reach
    // searched for is below the total).
    let boundary = |index: usize| -> u32 {
        if index <= b {
            // SAFETY: prefix slot index - 1 < b.
            unsafe { chain.prefix.add(index - 1).read() }
        } else {
            u32::MAX
        }
    };
    let mut window = 1usize;
    let mut in_window = boundary(window + lane as usize);
    let mut before_window = 0u32; // C[window - 1]
    let (mut start, mut cuts, mut recorded) = (0u32, 0i32, 1usize);
    if lane == 0 {
        // SAFETY: boundary 0 of num_parts + 1.
        unsafe { chain.record(0, 0, 0, 0) };
    }
    for part in 0..num_parts {
        let reach = start + payload;
        let (mut e, mut c_e) = (b, total);
        if reach < total {
            loop {
                // SAFETY: warp-uniform loop: start, reach and the ballot are the same in every lane.
                let within = in_window <= reach;
                let below = unsafe { arch::warp_ballot(within) }.count_ones() as usize;
                // The last boundary within reach (C[window - 1] if none in the window), found without
                // waiting for the count.
                let candidate = if within { in_window } else { before_window };
                let last = unsafe { arch::warp_max_u32(candidate) };
                if below < 32 {
                    (e, c_e) = (window - 1 + below, last);
                    break;
                }
                // Boundary b = total > reach stops the search before the window leaves the batch.
                before_window = last;
                window += 32;
                in_window = boundary(window + lane as usize);
            }
        }
        start = sched_next_start(start, payload, total, c_e);
        // The part ends inside request e (a cut) unless it stops at its boundary or at the end.
        let cut = start != c_e;
        cuts += cut as i32;
        if lane == 0 {
            // SAFETY: boundary part + 1 of num_parts + 1.
            unsafe { chain.record(part + 1, start, e as i32, cuts) };
        }
        recorded = part + 2;
        if start == total {
            // Every later part starts at the end too (`Chain::cursor` knows); nothing to search.
            break;
        }
    }
    if lane == 0 {
        if start != total {
            // Unassigned blocks (FlashMLA's FLASH_DEVICE_ASSERT); the cost bound rules it out.
            arch::trap();
        }
        // SAFETY: the scratch slot after the warp totals.
        unsafe { chain.recorded.write(recorded as u32) };
    }
}

impl Chain {
    /// # Safety
    /// `p ≤ num_sm_parts`.
    #[inline(always)]
    unsafe fn record(&self, p: usize, start: u32, req: i32, cuts: i32) {
        // SAFETY: forwarded.
        unsafe {
            self.starts.add(p).write(start);
            self.reqs.add(p).write(req);
            self.cuts.add(p).write(cuts);
        }
    }

    /// The cursor at part boundary `p`: request, block, and the chunks earlier parts took from the
    /// request (the parts `0..=p` that started inside it).
    ///
    /// # Safety
    /// `p ≤ num_sm_parts`, after the chain (boundaries from `recorded` on start at the end).
    #[inline(always)]
    unsafe fn cursor(&self, p: usize, b: usize) -> SchedCursor {
        // SAFETY: forwarded; req ≤ b, so req - 1 < b is a prefix slot.
        unsafe {
            if p >= self.recorded.read() as usize {
                return SchedCursor {
                    req: b as i32,
                    block: 0,
                    n_split: 0,
                };
            }
            let start = self.starts.add(p).read();
            let req = self.reqs.add(p).read();
            let c_req = if req == 0 {
                0
            } else {
                self.prefix.add(req as usize - 1).read()
            };
            let block = if req as usize >= b { 0 } else { start - c_req };
            let first_inside = partition_point(self.starts, p + 1, |v| v <= c_req);
            SchedCursor {
                req,
                block: block as i32,
                n_split: if block > 0 {
                    (p + 1 - first_inside) as i32
                } else {
                    0
                },
            }
        }
    }
}

/// The number of leading elements of the sorted `values[..len]` for which `pred` holds.
///
/// # Safety
/// `values` must point to `len` readable `u32`s.
#[inline(always)]
unsafe fn partition_point(values: *const u32, len: usize, pred: impl Fn(u32) -> bool) -> usize {
    let (mut lo, mut hi) = (0usize, len);
    while lo < hi {
        let mid = (lo + hi) / 2;
        // SAFETY: mid < len.
        if pred(unsafe { values.add(mid).read() }) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

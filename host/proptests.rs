//! Property tests of everything the host checks before a launch, over random shapes, strides, pointers
//! and lengths: no check panics, each accepts exactly what the kernels can run (stated here from the
//! kernels' side, independently of the checks' code), and the CPU scheduler keeps the invariants the
//! decode and combine kernels rely on.

use crate::decode::{
    check_no_self_overlap, validate, Available, DecodeKernel, DecodeOptions, LaunchKernel,
    RawDecodeArgs,
};
use crate::tensor::DType;
use crate::{get_mla_metadata_cpu, DecodeShape, Error};
use flashmla_abi::sched::{max_total_splits, part_range};
use flashmla_abi::{HEAD_DIM_K, HEAD_DIM_V, MAX_GRID_Y_Z, MAX_SCHED_BATCH, PAGE_BLOCK_SIZE};
use proptest::prelude::*;

/// Runs `property` on `cases` inputs drawn from `strategy` (on a thread with the stack that nested
/// strategies need in debug builds). `property` returns whether the input was accepted; both outcomes
/// must each occur at least `min_each` times, or the generator misses a side and the test tests nothing.
fn check_both_sides<S>(
    cases: u32,
    min_each: usize,
    strategy: S,
    property: fn(S::Value) -> Result<bool, TestCaseError>,
) where
    S: Strategy + Send + 'static,
{
    let run = move || {
        let accepted = std::sync::atomic::AtomicUsize::new(0);
        let rejected = std::sync::atomic::AtomicUsize::new(0);
        let config = ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        proptest::test_runner::TestRunner::new(config)
            .run(&strategy, |input| {
                let counter = if property(input)? {
                    &accepted
                } else {
                    &rejected
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let (accepted, rejected) = (accepted.into_inner(), rejected.into_inner());
        assert!(
            accepted >= min_each && rejected >= min_each,
            "{accepted} inputs accepted, {rejected} rejected: the generator misses one side"
        );
    };
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(run)
        .expect("spawn the property test")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// Sizes that hit the edges: 0, 1, small, a few awkward ones, and values near the 32/64-bit limits.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..5,
        4 => 1usize..200,
        1 => Just(MAX_SCHED_BATCH),
        1 => Just(MAX_SCHED_BATCH + 1),
        1 => Just(65_536),
        1 => Just(i32::MAX as usize),
        1 => Just(i32::MAX as usize + 1),
        1 => Just(usize::MAX),
        1 => any::<usize>(),
    ]
}

/// What the kernels take as a batch shape: every size at least 1, KV heads dividing query heads (the
/// kernels fold `h_q / h_kv` heads onto one KV head), a batch whose metadata the scheduler kernel
/// computes in parallel with up to 1024 parts (a `u32` per request, 12 bytes per part boundary and
/// 8 bytes per warp of its 512 threads and 8 more in 227 KiB of shared memory), and `s_q · h_q` query rows addressable with 32-bit indices.
fn shape_is_runnable(b: usize, s_q: usize, h_q: usize, h_kv: usize) -> bool {
    b >= 1
        && s_q >= 1
        && h_q >= 1
        && h_kv >= 1
        && h_q.is_multiple_of(h_kv)
        && b as u128 * 4 + 12 * 1025 + 8 * 16 + 8 <= 227 * 1024
        && (s_q as u128) * (h_q as u128) <= i32::MAX as u128
}

#[test]
fn decode_shape_accepts_exactly_the_runnable_shapes() {
    let any_sizes = (size(), size(), size(), size());
    // Mostly valid: h_q a multiple of h_kv.
    let near_valid = (size(), size(), 1usize..9, 1usize..300)
        .prop_map(|(b, s_q, h_kv, heads_per_kv)| (b, s_q, h_kv * heads_per_kv, h_kv));
    let sizes = (prop_oneof![any_sizes, near_valid], any::<u32>());
    check_both_sides(4000, 200, sizes, |((b, s_q, h_q, h_kv), sms)| {
        let shape = DecodeShape::new(b, s_q, h_q, h_kv);
        prop_assert_eq!(
            shape.is_ok(),
            shape_is_runnable(b, s_q, h_q, h_kv),
            "{:?}",
            shape
        );
        if let Ok(shape) = shape {
            prop_assert_eq!(shape.q_seq_per_hk(), s_q * (h_q / h_kv));
            prop_assert!(shape.num_m_blocks() >= 1);
            let parts = shape.num_sm_parts(sms);
            prop_assert!(parts >= 1 && parts <= (sms as usize).max(1));
        }
        Ok(shape.is_ok())
    });
}

/// Random decode arguments around a valid call: each field is either right or perturbed, so both
/// acceptance and every kind of refusal are reached.
#[derive(Clone, Debug)]
struct Call {
    plan: (usize, usize, usize, usize),
    args: RawDecodeArgs,
    metadata_computed: bool,
    available: Available,
}

fn dims4(b: usize, s_q: usize, h: usize, d: usize) -> impl Strategy<Value = [usize; 4]> {
    (
        prop_oneof![60 => Just(b), 1 => 0usize..4, 1 => size()],
        prop_oneof![60 => Just(s_q), 1 => 0usize..4],
        prop_oneof![60 => Just(h), 1 => 0usize..130],
        prop_oneof![60 => Just(d), 1 => Just(512usize), 1 => Just(576usize), 1 => 0usize..1024],
    )
        .prop_map(|(a, b, c, d)| [a, b, c, d])
}

/// Strides for `shape`: row-major with each leading stride padded by a random amount (often a
/// multiple of 8 elements, sometimes not), sometimes arbitrary, sometimes huge.
fn strides<const N: usize>(shape: [usize; N]) -> impl Strategy<Value = [usize; N]> {
    let pads = proptest::collection::vec(
        prop_oneof![30 => Just(0usize), 15 => (0usize..4).prop_map(|k| 8 * k), 1 => 0usize..17],
        N,
    );
    let wild = proptest::array::uniform3(
        prop_oneof![1 => 0usize..4096, 1 => Just(1usize << 40), 1 => Just(usize::MAX)],
    );
    (pads, wild, 0u8..40).prop_map(move |(pads, wild, pick)| {
        let mut s = [1usize; N];
        for i in (0..N - 1).rev() {
            s[i] = s[i + 1]
                .saturating_mul(shape[i + 1])
                .saturating_add(pads[i]);
        }
        match pick {
            0 => {
                // One arbitrary stride, maybe on a dimension of extent 1.
                let i = wild[0] % N;
                s[i] = wild[1];
            }
            1 => s[N - 1] = 1 + wild[2] % 3,
            _ => {}
        }
        s
    })
}

fn pointer() -> impl Strategy<Value = u64> {
    prop_oneof![60 => (1u64..1 << 20).prop_map(|p| p << 8), 1 => 1u64..1 << 40]
}

fn call() -> impl Strategy<Value = Call> {
    (1usize..9, 1usize..5, 1usize..4, 1usize..9, 1usize..40, 1usize..20).prop_flat_map(
        |(b, s_q, h_kv, hpk, pages, cols)| {
            let h_q = h_kv * hpk;
            let q = dims4(b, s_q, h_q, HEAD_DIM_K);
            let k = dims4(pages, PAGE_BLOCK_SIZE, h_kv, HEAD_DIM_K);
            let out = dims4(b, s_q, h_q, HEAD_DIM_V);
            let bt = (prop_oneof![60 => Just(b), 1 => 0usize..9], prop_oneof![60 => Just(cols), 1 => 0usize..3, 1 => Just(1usize << 26)])
                .prop_map(|(r, c)| [r, c]);
            let lse = prop_oneof![30 => Just([b, h_q, s_q]), 1 => Just([b, s_q, h_q])];
            let options = (
                prop_oneof![20 => Just(None), 1 => Just(Some(f32::NAN)), 1 => Just(Some(f32::INFINITY)), 10 => (-4f32..4.0).prop_map(Some)],
                any::<bool>(),
                prop_oneof![2 => Just(None), 2 => (0usize..cols * 64 + 2).prop_map(Some)],
            );
            // The kernel asked for, what the handle and plan have (mostly an sm_90a handle and its own
            // plan), and k_cache strides at TMA's edges: 0, 2^40 bytes, just below.
            let kernel = (
                prop_oneof![Just(DecodeKernel::Auto), Just(DecodeKernel::Hopper), Just(DecodeKernel::Portable)],
                prop::bool::weighted(0.8),
                prop::bool::weighted(0.9),
                0u8..12,
                0usize..3,
            );
            (q, k, out, bt, lse, options, prop::bool::weighted(0.97), any::<bool>(), 0u8..40, kernel)
                .prop_flat_map(move |(q, k, out, bt, lse, options, computed, bf16, plan_edit, kernel)| {
                    let (kernel, hopper, plan_tensor_map_slots, k_edit, k_dim) = kernel;
                    (
                        strides(q),
                        strides(k).prop_map(move |mut ks| {
                            match k_edit {
                                0 => ks[k_dim] = 0,
                                1 => ks[k_dim] = 1 << 39,
                                2 => ks[k_dim] = (1 << 39) - 8,
                                _ => {}
                            }
                            ks
                        }),
                        strides(out),
                        strides(bt),
                        strides(lse),
                        [pointer(), pointer(), pointer(), pointer(), pointer(), pointer()],
                    )
                        .prop_map(move |(qs, ks, os, bts, ls, ptrs)| {
                            let plan = match plan_edit {
                                0 => (b + 1, s_q, h_q, h_kv),
                                _ => (b, s_q, h_q, h_kv),
                            };
                            Call {
                                plan,
                                args: RawDecodeArgs {
                                    dtype: if bf16 { DType::Bf16 } else { DType::F16 },
                                    q: (ptrs[0], q, qs),
                                    k_cache: (ptrs[1], k, ks),
                                    block_table: (ptrs[2], bt, bts),
                                    cache_seqlens: ptrs[3],
                                    out: (ptrs[4], out, os),
                                    lse: (ptrs[5], lse, ls),
                                    options: DecodeOptions {
                                        softmax_scale: options.0,
                                        causal: options.1,
                                        max_seqlen_k: options.2,
                                        kernel,
                                    },
                                },
                                metadata_computed: computed,
                                available: Available {
                                    module: "test",
                                    hopper,
                                    plan_tensor_map_slots,
                                },
                            }
                        })
                })
        },
    )
}

/// Largest element offset a view reaches, if it fits in 128 bits.
fn max_offset<const N: usize>(shape: [usize; N], strides: [usize; N]) -> Option<u128> {
    shape.iter().zip(strides).try_fold(0u128, |acc, (&d, s)| {
        acc.checked_add((d.max(1) as u128 - 1).checked_mul(s as u128)?)
    })
}

/// Whether a view's dimensions nest: in some order, each dimension of extent > 1 has a stride beyond the
/// largest offset the ones before it reach. (Enumerates the orders, unlike the check, which sorts.) Then
/// no two indices share an element, so the kernels' writes through it cannot race.
fn dims_nest<const N: usize>(shape: [usize; N], strides: [usize; N]) -> bool {
    fn try_order(rest: &[(usize, usize)], reach: u128) -> bool {
        rest.is_empty()
            || (0..rest.len()).any(|i| {
                let (extent, stride) = rest[i];
                let mut others = rest.to_vec();
                others.remove(i);
                stride as u128 > reach
                    && try_order(&others, reach + (extent as u128 - 1) * stride as u128)
            })
    }
    let dims: Vec<(usize, usize)> = shape
        .into_iter()
        .zip(strides)
        .filter(|&(extent, _)| extent > 1)
        .collect();
    try_order(&dims, 0)
}

/// The byte strides (tokens, heads, pages) TMA reads `k_cache` with, if `cuTensorMapEncodeTiled`'s
/// documented rules take them: multiples of 16 bytes, below 2^40 bytes, and non-zero (a dimension of
/// extent 1 is never stepped along, so it gets any valid value: 16).
fn tma_strides(k: ([usize; 4], [usize; 4])) -> Option<[u64; 3]> {
    let bytes = |d: usize| {
        let b = k.1[d] as u128 * 2;
        if k.0[d] == 1 {
            Some(16)
        } else if b > 0 && b < 1 << 40 && b.is_multiple_of(16) {
            Some(b as u64)
        } else {
            None
        }
    };
    Some([bytes(1)?, bytes(2)?, bytes(0)?])
}

/// Whether the kernels can run `c`, stated from their side: the inputs have the plan's shape and
/// FlashMLA's head dims and page size; rows are contiguous; every row a kernel loads with 16-byte
/// `cp.async`/TMA (q, k) or stores in 4-byte pairs (out) starts aligned, counting only the strides a
/// non-zero index multiplies; no two indices of `out` or of `lse` share an element (their dimensions
/// nest, [`dims_nest`]); every offset fits the kernels' i64 arithmetic and every count their i32
/// arithmetic and the decode grid's y limit (the combine grid is within CUDA's limits for every
/// shape: compile-time asserts in the abi); the scale is finite and the metadata was computed.
fn kernels_can_run(c: &Call) -> bool {
    let (b, s_q, h_q, h_kv) = c.plan;
    let a = &c.args;
    let (q, k, bt, out, lse) = (a.q, a.k_cache, a.block_table, a.out, a.lse);
    let aligned = |ptr: u64, shape: &[usize], strides: &[usize], elem: u64, bytes: u64| {
        ptr.is_multiple_of(bytes)
            && shape
                .iter()
                .zip(strides)
                .all(|(&d, &s)| d <= 1 || (s as u128 * elem as u128).is_multiple_of(bytes as u128))
    };
    let fits_i64 = |shape: &[usize], strides: &[usize]| {
        shape
            .iter()
            .zip(strides)
            .all(|(&d, &s)| d <= 1 || s as u128 <= i64::MAX as u128)
    };
    let table_tokens = bt.1[1] as u128 * 64;
    q.1 == [b, s_q, h_q, HEAD_DIM_K]
        && k.1[1] == PAGE_BLOCK_SIZE
        && k.1[2] == h_kv
        && k.1[3] == HEAD_DIM_K
        && k.1[0] >= 1
        && k.1[0] <= i32::MAX as usize
        && out.1 == [b, s_q, h_q, HEAD_DIM_V]
        && lse.1 == [b, h_q, s_q]
        && bt.1[0] == b
        && bt.1[1] >= 1
        && table_tokens <= i32::MAX as u128
        && a.options
            .max_seqlen_k
            .is_none_or(|s| s as u128 <= table_tokens)
        && q.2[3] == 1
        && k.2[3] == 1
        && (bt.1[1] <= 1 || bt.2[1] == 1)
        && out.2[3] == 1
        && aligned(q.0, &q.1[..3], &q.2[..3], 2, 16)
        && aligned(k.0, &k.1[..3], &k.2[..3], 2, 16)
        && aligned(out.0, &out.1[..3], &out.2[..3], 2, 4)
        && lse.0 % 4 == 0
        && dims_nest(out.1, out.2)
        && dims_nest(lse.1, lse.2)
        && bt.0 % 4 == 0
        && a.cache_seqlens.is_multiple_of(4)
        && fits_i64(&q.1, &q.2)
        && fits_i64(&k.1, &k.2)
        && fits_i64(&bt.1, &bt.2)
        && fits_i64(&out.1, &out.2)
        && fits_i64(&lse.1, &lse.2)
        && a.options.scale().is_finite()
        && h_kv <= MAX_GRID_Y_Z
        && c.metadata_computed
        && (a.options.kernel != DecodeKernel::Hopper
            || (c.available.hopper
                && c.available.plan_tensor_map_slots
                && tma_strides((k.1, k.2)).is_some()))
}

#[test]
fn decode_validation_accepts_exactly_what_the_kernels_run() {
    check_both_sides(4000, 400, call(), |c| {
        let (b, s_q, h_q, h_kv) = c.plan;
        let plan = DecodeShape::new(b, s_q, h_q, h_kv).expect("generated plans are valid");
        let result = validate(&plan, 66, c.metadata_computed, c.available, &c.args);
        prop_assert_eq!(
            result.is_ok(),
            kernels_can_run(&c),
            "{:?} for {:?}",
            result.as_ref().err(),
            c
        );
        if let Ok(launch) = &result {
            // Only strides that a non-zero index multiplies reach the kernels.
            let q = c.args.q;
            let expected = if q.1[0] > 1 { q.2[0] as i64 } else { 0 };
            prop_assert_eq!(launch.decode_params().q_batch_stride, expected);
            // Auto runs the Hopper kernel wherever it can, the portable one elsewhere.
            let k = c.args.k_cache;
            let hopper = match c.args.options.kernel {
                DecodeKernel::Portable => None,
                DecodeKernel::Hopper => tma_strides((k.1, k.2)),
                DecodeKernel::Auto => tma_strides((k.1, k.2))
                    .filter(|_| c.available.hopper && c.available.plan_tensor_map_slots),
            };
            let expected = match hopper {
                Some(k_strides) => LaunchKernel::Hopper { k_strides },
                None => LaunchKernel::Portable,
            };
            prop_assert_eq!(launch.kernel(), expected);
        }
        Ok(result.is_ok())
    });
}

/// The overlap check never accepts an output view on which two indices share an element: checked by
/// listing every offset of small views.
#[test]
fn the_overlap_check_accepts_only_views_without_shared_elements() {
    let extent = prop_oneof![1 => Just(1usize), 3 => 2usize..5];
    let stride =
        prop_oneof![1 => Just(0usize), 4 => 1usize..40, 1 => (1usize..4).prop_map(|k| k * 16)];
    let views = (
        proptest::array::uniform3(extent),
        proptest::array::uniform3(stride),
    );
    check_both_sides(4000, 400, views, |(shape, strides)| {
        let accepted = check_no_self_overlap("v", shape, strides).is_ok();
        let mut offsets = Vec::new();
        for i in 0..shape[0] {
            for j in 0..shape[1] {
                for k in 0..shape[2] {
                    offsets.push(i * strides[0] + j * strides[1] + k * strides[2]);
                }
            }
        }
        offsets.sort_unstable();
        let disjoint = offsets.windows(2).all(|w| w[0] != w[1]);
        prop_assert!(!accepted || disjoint, "{:?} {:?} accepted", shape, strides);
        prop_assert_eq!(accepted, dims_nest(shape, strides));
        Ok(accepted)
    });
}

#[test]
fn tensor_views_accept_exactly_what_fits_their_buffer() {
    let sizes = (
        proptest::array::uniform3(size()),
        proptest::array::uniform3(size()),
        size(),
    );
    check_both_sides(4000, 200, sizes, |(shape, strides, len)| {
        let needed: Option<u128> = if shape.contains(&0) {
            Some(0)
        } else {
            max_offset(shape, strides).and_then(|m| m.checked_add(1))
        };
        let fits = needed.is_some_and(|n| n <= len as u128);
        let r = crate::tensor::check_view_extent("v", shape, strides, len);
        prop_assert_eq!(r.is_ok(), fits, "{:?}", r);
        Ok(fits)
    });
}

/// FlashMLA-style lengths: empty requests, one-block requests, page borders, long tails, negatives.
fn seqlens() -> impl Strategy<Value = Vec<i32>> {
    proptest::collection::vec(
        prop_oneof![
            2 => Just(0i32),
            2 => 1i32..=65,
            1 => Just(64i32),
            1 => Just(128i32),
            4 => 1i32..20_000,
            1 => 100_000i32..1_000_000,
        ],
        1..300,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    /// The invariants the decode and combine kernels rely on: every request is scheduled; each
    /// non-empty request's KV blocks are covered exactly once, in order, by chunks that the part records
    /// describe; a request cut into `n` chunks has split slots `num_splits[i] .. num_splits[i] + n` with
    /// chunk `j` writing slot `j`, an unsplit request has one chunk and writes the output directly;
    /// `num_splits` is an exclusive prefix sum within `max_total_splits`.
    #[test]
    fn cpu_scheduler_keeps_its_invariants(lens in seqlens(), parts in 1usize..200) {
        let s = get_mla_metadata_cpu(&lens, parts).expect("valid lengths and part count");
        let b = lens.len();
        prop_assert_eq!(s.tile_scheduler_metadata.len(), parts);
        prop_assert_eq!(s.num_splits.len(), b + 1);
        prop_assert_eq!(s.num_splits[0], 0);
        prop_assert!(s.total_splits() <= max_total_splits(b, parts));
        // (request, start, end, split index, is split) of every chunk, in part order.
        let mut chunks: Vec<Vec<(i32, i32, i32, bool)>> = vec![Vec::new(); b];
        for m in &s.tile_scheduler_metadata {
            if m.begin_req_idx > m.end_req_idx {
                prop_assert!(m.begin_req_idx as usize >= b, "an empty part that is not past the end: {m:?}");
                continue;
            }
            prop_assert!(m.begin_req_idx >= 0 && (m.end_req_idx as usize) < b, "{m:?}");
            for req in m.begin_req_idx..=m.end_req_idx {
                let blocks = (lens[req as usize].max(0) as usize).div_ceil(PAGE_BLOCK_SIZE) as i32;
                let (start, end, split, is_split) = part_range(m, req, blocks);
                chunks[req as usize].push((start, end, split, is_split));
            }
        }
        for (i, c) in chunks.iter().enumerate() {
            let blocks = (lens[i].max(0) as usize).div_ceil(PAGE_BLOCK_SIZE) as i32;
            let slots = s.num_splits[i + 1] - s.num_splits[i];
            prop_assert!(!c.is_empty(), "request {i} is never scheduled");
            prop_assert!(slots >= 1, "request {i} has no split slot");
            if blocks == 0 {
                prop_assert!(c.iter().all(|&(st, en, ..)| st == 0 && en == 0), "empty request {i}: {c:?}");
                continue;
            }
            let mut next = 0;
            for (j, &(start, end, split, is_split)) in c.iter().enumerate() {
                prop_assert_eq!(start, next, "request {} chunk {} of {:?}", i, j, c);
                prop_assert!(end > start, "request {i}: empty chunk in {c:?}");
                prop_assert_eq!(is_split, c.len() > 1, "request {} {:?}", i, c);
                if c.len() > 1 {
                    prop_assert_eq!(split, j as i32, "request {} {:?}", i, c);
                }
                next = end;
            }
            prop_assert_eq!(next, blocks, "request {} is not covered: {:?}", i, c);
            prop_assert_eq!(slots, c.len() as i32, "request {}: {} slots for {:?}", i, slots, c);
        }
    }

    #[test]
    fn cpu_scheduler_never_panics(
        lens in proptest::collection::vec(any::<i32>(), 0..40),
        parts in size(),
    ) {
        match get_mla_metadata_cpu(&lens, parts) {
            Ok(s) => prop_assert_eq!(s.num_splits.len(), lens.len() + 1),
            Err(Error::EmptyBatch) => prop_assert!(lens.is_empty()),
            Err(Error::ZeroSize { .. }) => prop_assert_eq!(parts, 0),
            Err(Error::NegativeSeqlen { value, .. }) => prop_assert!(value < 0),
            Err(Error::Overflow { .. }) => prop_assert!(parts > MAX_GRID_Y_Z),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

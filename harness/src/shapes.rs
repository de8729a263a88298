//! The one catalogue of benchmark and test shapes: FlashMLA's benchmark grid with its reference times
//! and varlen lengths ([`flashmla_grid`], what `flashmla bench` runs), and the correctness suites built
//! from it and from FlashMLA's test grids ([`flashmla_sweep`], [`head_grid_sample`], [`corner_cases`],
//! what `flashmla check` and the GPU suite run).

use crate::case::CaseSpec;
use crate::rng::SplitMix64;
use flashmla::{DType, DecodeShape};

// ---------------------------------------------------------------------------------------------------
// FlashMLA's benchmark grid (`flashmla bench`, the criterion benches).

/// FlashMLA measured on this project's H200 on 2026-11-30, for orientation only (absolute times on these
/// GPUs move by ~15% with thermal and power state): both upstream versions built with the CUTLASS commit
/// each pins (9edee0c, the v1 "seesaw" kernel; b31bfe7, the original kernel FlashMLA recommends for
/// memory-bound shapes), `triton.testing.do_bench` median over split + combine with an L2 flush, causal,
/// bf16, h_kv = 1, FlashMLA's own varlen lengths ([`FLASHMLA_GRID_SEQLENS`]). Columns: `b, s_q, s_k, h_q,
/// varlen, total_seqlen_k, flashmla_9edee0c_us, flashmla_b31bfe7_us, best_us, best_tflops, best_gbps`.
/// A speed claim against FlashMLA needs FlashMLA timed in the same run: see
/// [`FlashMlaTimes`](crate::bench::FlashMlaTimes).
pub const FLASHMLA_H200: &str = include_str!("../benches/flashmla_h200.csv");

/// FlashMLA's varlen KV lengths for its benchmark grid (`random.seed(0)`, then
/// `max(int(normalvariate(s_k, s_k / 2)), s_q)` per request, as in its `tests/test_flash_mla.py`), one
/// line `b s_q s_k: len_0 … len_{b-1}` per (b, s_q, s_k). The benchmark's varlen shapes use these, so
/// both sides are timed on the same Σs_k.
pub const FLASHMLA_GRID_SEQLENS: &str = include_str!("../benches/flashmla_grid_seqlens.txt");

/// FlashMLA's times for one shape from the 2026-11-30 reference run ([`FLASHMLA_H200`]), µs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlashMlaReference {
    /// Σ s_k of the lengths FlashMLA was timed on.
    pub total_seqlen_k: usize,
    /// FlashMLA 9edee0c (v1 kernel).
    pub v1_us: f64,
    /// FlashMLA b31bfe7 (original kernel).
    pub v0_us: f64,
    /// The better of the two: the bar.
    pub best_us: f64,
}

/// One benchmark shape (FlashMLA's test grid uses causal, h_kv = 1, bf16).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchShape {
    /// Batch.
    pub b: usize,
    /// Query tokens per request.
    pub s_q: usize,
    /// Mean KV length.
    pub s_k: usize,
    /// Query heads.
    pub h_q: usize,
    /// KV heads.
    pub h_kv: usize,
    /// Varlen lengths.
    pub varlen: bool,
    /// Causal.
    pub causal: bool,
    /// FlashMLA's times in the 2026-11-30 reference run, for this exact configuration (None for shapes
    /// or settings it was not timed on).
    pub reference: Option<FlashMlaReference>,
}

impl BenchShape {
    /// The shape's (b, s_q, s_k, h_q, varlen) key, as in FlashMLA's CSV files.
    pub fn key(&self) -> ShapeKey {
        (self.b, self.s_q, self.s_k, self.h_q, self.varlen)
    }

    /// The KV lengths to benchmark: FlashMLA's own for its varlen grid shapes, `s_k` for fixed-length
    /// shapes, `None` (drawn by the case generator) for varlen shapes FlashMLA's grid lacks.
    pub fn seqlens(&self) -> Option<Vec<i32>> {
        if !self.varlen {
            return Some(vec![self.s_k as i32; self.b]);
        }
        flashmla_grid_seqlens(self.b, self.s_q, self.s_k).or_else(|| {
            SKEWED_BATCHES
                .iter()
                .find(|k| (k.b, k.s_q, k.mean_s_k()) == (self.b, self.s_q, self.s_k))
                .map(|k| k.seqlens.to_vec())
        })
    }
}

/// FlashMLA's varlen lengths for (b, s_q, s_k) from [`FLASHMLA_GRID_SEQLENS`], if listed.
pub fn flashmla_grid_seqlens(b: usize, s_q: usize, s_k: usize) -> Option<Vec<i32>> {
    FLASHMLA_GRID_SEQLENS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (head, lens) = line.split_once(':')?;
            let key: Vec<usize> = head
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            if key != [b, s_q, s_k] {
                return None;
            }
            let lens: Vec<i32> = lens
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            (lens.len() == b).then_some(lens)
        })
}

/// A batch whose lengths are spread far apart, benchmarked with its exact lengths.
#[derive(Clone, Copy, Debug)]
pub struct SkewedBatch {
    /// Where it comes from.
    pub origin: &'static str,
    /// Batch.
    pub b: usize,
    /// Query tokens per request.
    pub s_q: usize,
    /// Query heads.
    pub h_q: usize,
    /// The KV length of each request.
    pub seqlens: &'static [i32],
}

impl SkewedBatch {
    /// Mean length (rounded down): the `s_k` the bench table shows and filters by.
    pub fn mean_s_k(&self) -> usize {
        self.seqlens.iter().map(|&l| l as usize).sum::<usize>() / self.seqlens.len()
    }

    /// As a benchmark shape (causal, h_kv = 1, varlen with [`Self::seqlens`]).
    pub fn shape(&self) -> BenchShape {
        BenchShape {
            b: self.b,
            s_q: self.s_q,
            s_k: self.mean_s_k(),
            h_q: self.h_q,
            h_kv: 1,
            varlen: true,
            causal: true,
            reference: None,
        }
    }
}

/// Skewed batches the bench runs beside FlashMLA's grid: ThunderMLA's (its blog post's H100
/// comparison with FlashMLA: b = 4, s_q = 4, h_q = 16, one long request among short ones).
pub const SKEWED_BATCHES: &[SkewedBatch] = &[SkewedBatch {
    origin: "ThunderMLA",
    b: 4,
    s_q: 4,
    h_q: 16,
    seqlens: &[4641, 45118, 1730, 1696],
}];

/// The shapes of [`FLASHMLA_H200`]: FlashMLA's grid (b = 128, s_q ∈ {1, 2}, s_k ∈ {4096, 8192, 16384},
/// h_q ∈ {16, 32, 64, 128}, varlen off/on) and five small or skewed batches.
pub fn flashmla_grid() -> Vec<BenchShape> {
    FLASHMLA_H200
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let n = |i: usize| f.get(i).and_then(|v| v.trim().parse::<usize>().ok());
            let x = |i: usize| f.get(i).and_then(|v| v.trim().parse::<f64>().ok());
            Some(BenchShape {
                b: n(0)?,
                s_q: n(1)?,
                s_k: n(2)?,
                h_q: n(3)?,
                h_kv: 1,
                varlen: n(4)? == 1,
                causal: true,
                reference: Some(FlashMlaReference {
                    total_seqlen_k: n(5)?,
                    v1_us: x(6)?,
                    v0_us: x(7)?,
                    best_us: x(8)?,
                }),
            })
        })
        .collect()
}

/// (b, s_q, s_k, h_q, varlen).
pub type ShapeKey = (usize, usize, usize, usize, bool);

// ---------------------------------------------------------------------------------------------------
// The correctness suites (`flashmla check`, the GPU suite).

/// FlashMLA's test sweep (`tests/test_flash_mla.py`): b = 128, mean s_k ∈ {4096, 8192, 16384},
/// h_q ∈ {16, 32, 64, 128}, s_q ∈ {1, 2}, varlen off/on, causal, h_kv = 1.
pub fn flashmla_sweep(dtype: DType, seed: u64) -> Vec<CaseSpec> {
    // The same shapes as the benchmark grid's b = 128 rows: one list.
    flashmla_grid()
        .into_iter()
        .filter(|g| g.b == 128)
        .enumerate()
        .map(|(n, g)| {
            let shape =
                DecodeShape::new(g.b, g.s_q, g.h_q, g.h_kv).expect("the grid's shapes are valid");
            CaseSpec::new(
                shape,
                g.s_k,
                g.varlen,
                g.causal,
                dtype,
                seed ^ (n as u64 * 7919),
            )
        })
        .collect()
}

/// `n` cases drawn from FlashMLA HEAD's correctness grid (`tests/test_flash_mla_dense_decoding.py`):
/// b ∈ {1, 2, 6, 64}, s_q ∈ {1, 2, 4}, s_k ∈ {20, 140, 4096}, h_q ∈ {1, 3, 9, 63, 64, 126, 128},
/// h_kv ∈ {1, 2, 3, 8} dividing h_q, varlen × causal × zero lengths, bf16 and fp16.
pub fn head_grid_sample(n: usize, seed: u64) -> Vec<CaseSpec> {
    let mut rng = SplitMix64::new(seed);
    let mut pick = |v: &[usize]| v[rng.below(v.len() as u64) as usize];
    let mut cases = Vec::new();
    while cases.len() < n {
        let h_q = pick(&[1, 3, 9, 63, 64, 126, 128]);
        let h_kv = pick(&[1, 2, 3, 8]);
        if h_q % h_kv != 0 {
            continue;
        }
        let shape = DecodeShape::new(pick(&[1, 2, 6, 64]), pick(&[1, 2, 4]), h_q, h_kv)
            .expect("valid shape");
        let flags = pick(&[0, 1, 2, 3, 4, 5, 6, 7]);
        let dtype = if pick(&[0, 1, 2]) == 0 {
            DType::F16
        } else {
            DType::Bf16
        };
        let mut spec = CaseSpec::new(
            shape,
            pick(&[20, 140, 4096]),
            flags & 1 != 0,
            flags & 2 != 0,
            dtype,
            seed ^ ((cases.len() as u64 + 1) * 104_729),
        );
        spec.zero_lengths = flags & 4 != 0;
        cases.push(spec);
    }
    cases
}

/// Cases FlashMLA's sweeps leave out or that stress one mechanism: zero-length sequences at FlashMLA's
/// corner-case shape, a single request, h_q not a multiple of 64, long s_q, sharp softmaxes (logits with
/// standard deviation ≈ 3, where a wrong rescale shows), a custom scale, non-causal, and fp16.
pub fn corner_cases(seed: u64) -> Vec<CaseSpec> {
    let shape = |b, s_q, h_q, h_kv| DecodeShape::new(b, s_q, h_q, h_kv).expect("valid shape");
    let mut cases = Vec::new();
    let mut add = |spec: CaseSpec| {
        let n = cases.len() as u64;
        cases.push(CaseSpec {
            seed: spec.seed ^ (n * 6151),
            ..spec
        });
    };
    for h_q in [16, 64, 128] {
        for causal in [false, true] {
            add(CaseSpec {
                zero_lengths: true,
                ..CaseSpec::new(shape(128, 2, h_q, 1), 4096, true, causal, DType::Bf16, seed)
            });
        }
    }
    add(CaseSpec::new(
        shape(1, 1, 128, 1),
        4096,
        false,
        false,
        DType::Bf16,
        seed,
    ));
    add(CaseSpec::new(
        shape(1, 4, 16, 1),
        65,
        false,
        true,
        DType::Bf16,
        seed,
    ));
    add(CaseSpec::new(
        shape(8, 1, 128, 1),
        8192,
        false,
        false,
        DType::F16,
        seed,
    ));
    add(CaseSpec::new(
        shape(16, 4, 16, 1),
        1000,
        true,
        true,
        DType::Bf16,
        seed,
    ));
    add(CaseSpec::new(
        shape(3, 3, 126, 2),
        777,
        true,
        true,
        DType::F16,
        seed,
    ));
    add(CaseSpec::new(
        shape(5, 1, 24, 8),
        300,
        true,
        false,
        DType::Bf16,
        seed,
    ));
    add(CaseSpec::new(
        shape(2, 2, 1, 1),
        1,
        false,
        true,
        DType::Bf16,
        seed,
    ));
    for dtype in [DType::Bf16, DType::F16] {
        add(CaseSpec {
            amplitude: 3.0,
            ..CaseSpec::new(shape(32, 2, 64, 1), 2048, true, true, dtype, seed)
        });
    }
    add(CaseSpec {
        softmax_scale: Some(0.3),
        amplitude: 1.0,
        ..CaseSpec::new(shape(16, 1, 128, 1), 3000, true, false, DType::Bf16, seed)
    });
    add(CaseSpec {
        softmax_scale: Some(-0.05),
        ..CaseSpec::new(shape(4, 2, 32, 2), 500, false, true, DType::Bf16, seed)
    });
    for s_k in [4096, 16384] {
        add(CaseSpec::new(
            shape(128, 2, 128, 1),
            s_k,
            true,
            true,
            DType::F16,
            seed,
        ));
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_has_flashmla_reference_for_every_shape() {
        let grid = flashmla_grid();
        assert_eq!(grid.len(), 53);
        assert_eq!(grid.iter().filter(|s| s.b == 128).count(), 48);
        for s in &grid {
            let r = s.reference.expect("every grid row has FlashMLA's times");
            assert_eq!(r.best_us, r.v1_us.min(r.v0_us), "{s:?}");
        }
    }

    #[test]
    fn skewed_batches_run_on_their_own_lengths() {
        for k in SKEWED_BATCHES {
            let shape = k.shape();
            assert_eq!(shape.seqlens().as_deref(), Some(k.seqlens), "{}", k.origin);
            assert_eq!(k.seqlens.len(), k.b);
        }
        assert_eq!(SKEWED_BATCHES[0].mean_s_k(), 13296);
    }

    #[test]
    fn varlen_shapes_use_flashmla_lengths() {
        for s in flashmla_grid() {
            let lens = s.seqlens();
            let total: usize = lens
                .as_ref()
                .expect("every grid shape has fixed or FlashMLA lengths")
                .iter()
                .map(|&l| l as usize)
                .sum();
            // The same Σs_k FlashMLA was timed on, varlen or not.
            assert_eq!(total, s.reference.unwrap().total_seqlen_k, "{s:?}");
            assert!(lens.unwrap().iter().all(|&l| l >= s.s_q as i32));
        }
        assert_eq!(flashmla_grid_seqlens(128, 1, 5000), None);
    }

    #[test]
    fn flashmla_sweep_is_its_48_case_grid() {
        let cases = flashmla_sweep(DType::Bf16, 1);
        assert_eq!(cases.len(), 48);
        for s_k in [4096, 8192, 16384] {
            for h_q in [16, 32, 64, 128] {
                for s_q in [1, 2] {
                    for varlen in [false, true] {
                        assert!(cases.iter().any(|c| c.mean_seqlen_k == s_k
                            && c.shape == DecodeShape::new(128, s_q, h_q, 1).unwrap()
                            && c.varlen == varlen
                            && c.causal));
                    }
                }
            }
        }
    }
}

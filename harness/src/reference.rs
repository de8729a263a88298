//! A plainly written CPU reference of FlashMLA's dense decode, in `f64`: the executable specification the
//! GPU results are checked against (FlashMLA `tests/test_flash_mla_dense_decoding.py::reference_torch`).
//!
//! For batch `i`, KV head `g` and folded row `r` (query token `t = r / hpk`, head `g·hpk + r % hpk`):
//! keys `j < limit` are attended, `limit = s_k − (s_q − 1 − t)` when causal (bottom-right aligned), else
//! `s_k`; `lse = ln Σ exp(scale·q·k_j)`, `out = Σ softmax_j · v_j` with `v_j = k_j[..512]`. A row with no
//! attended key has `lse = +inf` and `out = 0`.

use flashmla::abi::{HEAD_DIM_K, HEAD_DIM_V};

/// Output of one query row.
#[derive(Clone, Debug, PartialEq)]
pub struct RowResult {
    /// `[512]` attention output.
    pub out: Vec<f64>,
    /// Natural-log sum of exponentials of the scaled logits (`+inf` when no key is attended).
    pub lse: f64,
}

/// The last attended key (exclusive) of query token `t` of `s_q` over a sequence of `seqlen` keys.
pub fn attended_keys(seqlen: usize, s_q: usize, t: usize, causal: bool) -> usize {
    if causal && s_q > 1 {
        (seqlen + t + 1).saturating_sub(s_q)
    } else {
        seqlen
    }
}

/// Attention of one query row (`[576]`) over `keys` (`n × 576`, row-major; V = first 512 columns).
pub fn attend_row(q: &[f32], keys: &[f32], scale: f64) -> RowResult {
    assert_eq!(q.len(), HEAD_DIM_K);
    assert_eq!(keys.len() % HEAD_DIM_K, 0);
    let n = keys.len() / HEAD_DIM_K;
    if n == 0 {
        return RowResult {
            out: vec![0.0; HEAD_DIM_V],
            lse: f64::INFINITY,
        };
    }
    let logits: Vec<f64> = keys
        .chunks_exact(HEAD_DIM_K)
        .map(|k| {
            q.iter()
                .zip(k)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                * scale
        })
        .collect();
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f64 = weights.iter().sum();
    let mut out = vec![0.0f64; HEAD_DIM_V];
    for (w, k) in weights.iter().zip(keys.chunks_exact(HEAD_DIM_K)) {
        for (o, &v) in out.iter_mut().zip(&k[..HEAD_DIM_V]) {
            *o += w * v as f64;
        }
    }
    out.iter_mut().for_each(|o| *o /= sum);
    RowResult {
        out,
        lse: max + sum.ln(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_row_is_zero_with_infinite_lse() {
        let r = attend_row(&[0.5; HEAD_DIM_K], &[], 0.1);
        assert_eq!(r.lse, f64::INFINITY);
        assert!(r.out.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn single_key_returns_its_value_and_logit() {
        let q = vec![0.25f32; HEAD_DIM_K];
        let k: Vec<f32> = (0..HEAD_DIM_K).map(|i| i as f32 / 1000.0).collect();
        let r = attend_row(&q, &k, 0.5);
        let logit: f64 = k.iter().map(|&x| 0.25 * x as f64).sum::<f64>() * 0.5;
        assert!((r.lse - logit).abs() < 1e-12);
        for (o, &v) in r.out.iter().zip(&k[..HEAD_DIM_V]) {
            assert!((o - v as f64).abs() < 1e-12);
        }
    }

    #[test]
    fn softmax_weights_two_keys() {
        let q = vec![1.0f32; HEAD_DIM_K];
        let mut keys = vec![0.0f32; 2 * HEAD_DIM_K];
        keys[HEAD_DIM_K..]
            .iter_mut()
            .for_each(|x| *x = 1.0 / HEAD_DIM_K as f32); // logit 1 · scale
        let r = attend_row(&q, &keys, 2.0);
        let l1 = 2.0 * keys[HEAD_DIM_K..].iter().map(|&x| x as f64).sum::<f64>();
        let l0 = 0.0f64;
        let lse = (l0.exp() + l1.exp()).ln();
        assert!((r.lse - lse).abs() < 1e-12);
        let w1 = (l1 - lse).exp();
        assert!((r.out[0] - w1 / HEAD_DIM_K as f64).abs() < 1e-9);
    }

    #[test]
    fn causal_border_is_bottom_right() {
        // s_q = 3 new tokens at the end of 10 keys: token 0 sees 8 keys, token 2 sees all 10.
        assert_eq!(attended_keys(10, 3, 0, true), 8);
        assert_eq!(attended_keys(10, 3, 2, true), 10);
        assert_eq!(attended_keys(1, 3, 0, true), 0);
        assert_eq!(attended_keys(10, 1, 0, true), 10);
        assert_eq!(attended_keys(10, 3, 0, false), 10);
    }
}

//! FlashMLA's correctness check (`kernelkit.check_is_allclose`): elementwise absolute and relative
//! tolerances, non-finite values where the reference has them, and a cosine-difference bound, with
//! FlashMLA HEAD's tolerances for `out` and `lse`.

/// Elementwise tolerance check in FlashMLA's style (`kernelkit.check_is_allclose`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute tolerance.
    pub abs: f64,
    /// Relative tolerance (`|Δ| / (|ref| + 1e-6)`).
    pub rel: f64,
    /// Largest allowed cosine difference `1 − 2Σxy / Σ(x² + y²)`.
    pub cos: f64,
}

/// FlashMLA HEAD's tolerance for `out`.
pub const OUT_TOLERANCE: Tolerance = Tolerance {
    abs: 8e-4,
    rel: 2.01 / 128.0,
    cos: 5e-6,
};
/// FlashMLA HEAD's tolerance for `lse`.
pub const LSE_TOLERANCE: Tolerance = Tolerance {
    abs: 1e-6,
    rel: 8.01 / 65536.0,
    cos: 1e-7,
};

/// Error statistics of one tensor against its reference.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Comparison {
    /// Values compared.
    pub count: usize,
    /// Values outside both elementwise tolerances.
    pub mismatches: usize,
    /// Positions where exactly one side is ±inf/NaN, or both are but differ.
    pub special_mismatches: usize,
    /// Largest absolute error among finite values.
    pub max_abs: f64,
    /// Largest relative error among finite values.
    pub max_rel: f64,
    /// Cosine difference over finite values.
    pub cos_diff: f64,
}

impl Comparison {
    /// Compares `got` with `reference`.
    pub fn of(got: &[f64], reference: &[f64], tol: Tolerance) -> Self {
        let mut c = Comparison {
            count: got.len(),
            ..Default::default()
        };
        let (mut xy, mut xx_yy) = (0.0f64, 0.0f64);
        for (&x, &r) in got.iter().zip(reference) {
            if !r.is_finite() || !x.is_finite() {
                let same = (r.is_nan() && x.is_nan()) || r == x;
                c.special_mismatches += !same as usize;
                continue;
            }
            let abs = (x - r).abs();
            let rel = abs / (r.abs() + 1e-6);
            c.max_abs = c.max_abs.max(abs);
            c.max_rel = c.max_rel.max(rel);
            c.mismatches += (abs > tol.abs && rel > tol.rel) as usize;
            xy += x * r;
            xx_yy += x * x + r * r;
        }
        c.cos_diff = if xx_yy == 0.0 {
            0.0
        } else {
            1.0 - 2.0 * xy / xx_yy
        };
        c
    }

    /// Whether the comparison passes `tol`.
    pub fn passes(&self, tol: Tolerance) -> bool {
        self.mismatches == 0 && self.special_mismatches == 0 && self.cos_diff <= tol.cos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `examples/decode.rs` depends on `flashmla` alone, so it writes FlashMLA's tolerances and input
    /// amplitude out: they must be the harness's.
    #[test]
    fn the_decode_example_checks_with_these_tolerances() {
        let example = include_str!("../../examples/decode.rs");
        let number = |s: &str| -> f64 { s.trim().replace('_', "").parse().expect(s) };
        // `(a, b / c, d)`: numbers and quotients of numbers.
        let constant = |name: &str| -> Vec<f64> {
            let line = example
                .lines()
                .find(|l| l.starts_with(&format!("const {name}:")))
                .unwrap_or_else(|| panic!("examples/decode.rs has no const {name}"));
            let value = line.split_once(" = ").expect("an initialiser").1;
            value
                .trim_end_matches(';')
                .trim_matches(|c| c == '(' || c == ')')
                .split(", ")
                .map(|term| match term.split_once(" / ") {
                    Some((a, b)) => number(a) / number(b),
                    None => number(term),
                })
                .collect()
        };
        for (name, t) in [
            ("OUT_TOLERANCE", OUT_TOLERANCE),
            ("LSE_TOLERANCE", LSE_TOLERANCE),
        ] {
            assert_eq!(constant(name), [t.abs, t.rel, t.cos], "{name}");
        }
        // An f32 in both.
        let amplitude: Vec<f32> = constant("AMPLITUDE").iter().map(|&a| a as f32).collect();
        assert_eq!(amplitude, [crate::case::FLASHMLA_AMPLITUDE]);
    }

    #[test]
    fn comparison_follows_flashmla_rules() {
        let c = Comparison::of(
            &[1.0, f64::INFINITY, 0.5],
            &[1.0005, f64::INFINITY, 0.5],
            OUT_TOLERANCE,
        );
        assert!(c.passes(OUT_TOLERANCE), "{c:?}");
        let c = Comparison::of(&[1.1], &[1.0], OUT_TOLERANCE);
        assert!(!c.passes(OUT_TOLERANCE));
        let c = Comparison::of(&[f64::NAN], &[0.0], OUT_TOLERANCE);
        assert_eq!(c.special_mismatches, 1);
        let c = Comparison::of(&[0.0], &[f64::INFINITY], LSE_TOLERANCE);
        assert!(!c.passes(LSE_TOLERANCE));
    }
}

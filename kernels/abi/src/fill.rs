//! Reproducible test and benchmark inputs, generated on the GPU (no host buffers, no copies) and
//! recomputable on the host element by element for the reference. Both sides call [`fill_value`].

/// Deterministic pseudo-random value of element `index` for `seed`: uniform in `[-amplitude, amplitude)`.
/// SplitMix64's finaliser over `seed ⊕ index·φ`; 24 random bits.
#[inline(always)]
pub fn fill_value(seed: u64, index: u64, amplitude: f32) -> f32 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let unit = (z >> 40) as f32 * (1.0 / (1u64 << 24) as f32); // [0, 1)
    (2.0 * unit - 1.0) * amplitude
}

/// Parameters of the `flashmla_fill_*` kernels: `rows × row_len` 16-bit values at `data` get
/// `fill_value(seed, row · row_len + col, amplitude)` rounded to the dtype, except rows that a page mask
/// marks unused, which get NaN (FlashMLA's tests fill unused KV-cache slots with NaN).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FillParams {
    /// `u16 [rows, row_len]`, contiguous.
    pub data: u64,
    /// `i32 [rows / rows_per_page]`: valid leading token rows of each page, or 0 (null) for "all valid".
    /// Row `r` is valid iff `(r % rows_per_page) / tokens_divisor < valid_rows[r / rows_per_page]`.
    pub valid_rows: u64,
    /// Seed of the values.
    pub seed: u64,
    /// Number of rows.
    pub rows: u64,
    /// Elements per row.
    pub row_len: u32,
    /// Rows per page (`64 · h_kv` for a KV cache).
    pub rows_per_page: u32,
    /// Rows per token within a page (`h_kv`).
    pub tokens_divisor: u32,
    /// Half-width of the uniform distribution.
    pub amplitude: f32,
}

// SAFETY: repr(C), integers and floats only.
unsafe impl crate::params::DeviceRecord for FillParams {}

/// Threads per block of the fill kernels.
pub const FILL_THREADS: u32 = 256;

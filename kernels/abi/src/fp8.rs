//! FP8 (e4m3) KV-cache formats, as serving stacks store them: the conversions and the quantisers, written
//! once for the host's reference and test data (and for kernels that need a bit-exact software decode).
//!
//! * **e4m3** here is `float8_e4m3fn` (OCP FP8): 1 sign, 4 exponent (bias 7) and 3 mantissa bits, no
//!   infinities, `S.1111.111` is NaN, the largest finite value is 448, subnormals go down to 2⁻⁹.
//! * **Per-cache scale** (vLLM's dense FP8 cache): every one of the 576 values of every token is stored as
//!   `e4m3(x / scale)` with one `f32` scale for the whole cache; [`per_cache_scale`] is the calibrated
//!   choice `amax / 448`. Values beyond ±448 after the division saturate to ±448, as vLLM's conversion
//!   does.
//! * **DeepSeek V3.2's 656-byte token** ([`DS_V32_TOKEN_BYTES`]): the 512 latent (NoPE) values as e4m3
//!   in four tiles of 128, each tile with its own `f32` scale, a power of two at least `amax / 448`
//!   ([`ds_tile_scale`]); then the four scales (little-endian), then the 64 RoPE values unquantised, as
//!   16-bit floats.
//!
//! Conversions round to nearest, ties to even.

use crate::{HEAD_DIM_K, HEAD_DIM_V};

/// Largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;
/// The e4m3 NaN with the sign bit clear.
pub const E4M3_NAN: u8 = 0x7F;
/// Values of one token's latent (NoPE) part.
pub const DS_V32_NOPE: usize = HEAD_DIM_V;
/// Values of one token's RoPE part.
pub const DS_V32_ROPE: usize = HEAD_DIM_K - HEAD_DIM_V;
/// Latent values that share one scale in DeepSeek V3.2's layout.
pub const DS_V32_TILE: usize = 128;
/// Scales per token in DeepSeek V3.2's layout.
pub const DS_V32_TILES: usize = DS_V32_NOPE / DS_V32_TILE;
/// Bytes of one token in DeepSeek V3.2's layout: 512 e4m3, 4 `f32` scales, 64 16-bit RoPE values.
pub const DS_V32_TOKEN_BYTES: usize = DS_V32_NOPE + 4 * DS_V32_TILES + 2 * DS_V32_ROPE;

const _: () = assert!(DS_V32_TOKEN_BYTES == 656 && DS_V32_TILES == 4 && DS_V32_ROPE == 64);

/// The value of e4m3 code `bits`.
///
/// ```
/// use flashmla_abi::fp8::e4m3_to_f32;
/// assert_eq!(e4m3_to_f32(0x7E), 448.0);
/// assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
/// assert!(e4m3_to_f32(0xFF).is_nan());
/// ```
#[inline]
pub fn e4m3_to_f32(bits: u8) -> f32 {
    let negative = bits & 0x80 != 0;
    let exponent = ((bits >> 3) & 0x0F) as i32;
    let mantissa = (bits & 0x07) as u32;
    let magnitude = if exponent == 0x0F && mantissa == 0x07 {
        f32::NAN
    } else if exponent == 0 {
        // Subnormal: mantissa · 2⁻⁹ (exact in f32).
        mantissa as f32 * f32::from_bits((127 - 9) << 23)
    } else {
        // (8 + mantissa) / 8 · 2^(exponent − 7), built from its f32 bits: exact.
        f32::from_bits((((exponent - 7 + 127) as u32) << 23) | (mantissa << 20))
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// The e4m3 code nearest to `x` (ties to even); finite values beyond ±448 saturate to ±448, NaN is
/// [`E4M3_NAN`] (with `x`'s sign), infinities saturate like large finite values.
///
/// ```
/// use flashmla_abi::fp8::{f32_to_e4m3, e4m3_to_f32};
/// assert_eq!(e4m3_to_f32(f32_to_e4m3(1.0625)), 1.0); // halfway between 1.0 and 1.125: even code
/// assert_eq!(e4m3_to_f32(f32_to_e4m3(1000.0)), 448.0);
/// assert_eq!(e4m3_to_f32(f32_to_e4m3(-0.3)), -0.3125);
/// ```
#[inline]
pub fn f32_to_e4m3(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    if x.is_nan() {
        return sign | E4M3_NAN;
    }
    let abs = bits & 0x7FFF_FFFF;
    if abs >= 0x43E0_0000 {
        // |x| ≥ 448 (0x43E00000): the largest finite code.
        return sign | 0x7E;
    }
    let f32_exponent = (abs >> 23) as i32;
    if f32_exponent == 0 {
        // f32 subnormals are below 2⁻¹²⁶: they round to zero.
        return sign;
    }
    let exponent = f32_exponent - 127;
    // 24-bit significand with its implicit bit.
    let significand = (abs & 0x007F_FFFF) | 0x0080_0000;
    // Keep 4 significant bits (1 + 3 mantissa) for normal results; for results below 2⁻⁶ keep the bits
    // of units of 2⁻⁹ (subnormal e4m3).
    let shift = if exponent >= -6 { 20 } else { 14 - exponent };
    if shift >= 32 {
        // Below 2⁻¹⁰ (half the smallest subnormal, exactly representable only as a tie at 2⁻¹⁰,
        // which has shift 24): rounds to zero.
        return sign;
    }
    let kept = significand >> shift;
    let rest = significand & ((1u32 << shift) - 1);
    let half = 1u32 << (shift - 1);
    let rounded = kept + (rest > half || (rest == half && kept & 1 == 1)) as u32;
    let code = if exponent >= -6 {
        // rounded is 8..=16; 16 carries into the next binade.
        let (e, m) = if rounded == 16 {
            (exponent + 1, 0)
        } else {
            (exponent, rounded - 8)
        };
        let biased = (e + 7) as u32;
        if biased > 15 || (biased == 15 && m == 7) {
            0x7E
        } else {
            ((biased << 3) | m) as u8
        }
    } else {
        // rounded is 0..=8 units of 2⁻⁹; 8 is the smallest normal, code 0x08, the same bits.
        rounded as u8
    };
    sign | code
}

/// vLLM's calibrated per-cache scale for a cache whose largest magnitude is `amax`: `amax / 448`, so the
/// largest value maps to the largest e4m3 value; 1 for an all-zero (or non-finite) cache.
#[inline]
pub fn per_cache_scale(amax: f32) -> f32 {
    if amax > 0.0 && amax.is_finite() {
        amax / E4M3_MAX
    } else {
        1.0
    }
}

/// DeepSeek V3.2's scale for a 128-value tile whose largest magnitude is `amax`: the smallest power of two
/// at least `max(amax / 448, 1e-4)`, so that every value of the tile fits in e4m3 without saturating.
///
/// ```
/// use flashmla_abi::fp8::ds_tile_scale;
/// assert_eq!(ds_tile_scale(448.0), 1.0);
/// assert_eq!(ds_tile_scale(449.0), 2.0);
/// assert_eq!(ds_tile_scale(0.0), 2f32.powi(-13)); // 1e-4 rounded up to a power of two
/// ```
#[inline]
pub fn ds_tile_scale(amax: f32) -> f32 {
    let v = amax / E4M3_MAX;
    let v = if v >= 1e-4 { v } else { 1e-4 };
    if !v.is_finite() {
        return f32::MAX;
    }
    let bits = v.to_bits();
    if bits & 0x007F_FFFF == 0 {
        v
    } else {
        f32::from_bits(((bits >> 23) + 1) << 23)
    }
}

/// Packs one token of a 576-wide row into DeepSeek V3.2's 656-byte layout. `values` are the 576 values
/// as `f32` (exactly the cache's 16-bit floats); `rope_bits` the 64 RoPE values' 16-bit encodings, copied
/// as they are.
pub fn ds_v32_pack_token(
    values: &[f32; HEAD_DIM_K],
    rope_bits: &[u16; DS_V32_ROPE],
) -> [u8; DS_V32_TOKEN_BYTES] {
    let mut out = [0u8; DS_V32_TOKEN_BYTES];
    for tile in 0..DS_V32_TILES {
        let range = tile * DS_V32_TILE..(tile + 1) * DS_V32_TILE;
        let amax = values[range.clone()].iter().fold(0.0f32, |m, v| {
            // |v| by its bits: `f32::abs` is not in `core` for every toolchain this crate supports.
            let a = f32::from_bits(v.to_bits() & 0x7FFF_FFFF);
            if a > m {
                a
            } else {
                m
            }
        });
        let scale = ds_tile_scale(amax);
        for i in range {
            out[i] = f32_to_e4m3(values[i] / scale);
        }
        let at = DS_V32_NOPE + 4 * tile;
        out[at..at + 4].copy_from_slice(&scale.to_le_bytes());
    }
    for (i, bits) in rope_bits.iter().enumerate() {
        let at = DS_V32_NOPE + 4 * DS_V32_TILES + 2 * i;
        out[at..at + 2].copy_from_slice(&bits.to_le_bytes());
    }
    out
}

/// The latent values of a 656-byte token, dequantised (`e4m3 · scale`), and its RoPE values' 16-bit
/// encodings.
pub fn ds_v32_unpack_token(
    token: &[u8; DS_V32_TOKEN_BYTES],
) -> ([f32; DS_V32_NOPE], [u16; DS_V32_ROPE]) {
    let mut nope = [0.0f32; DS_V32_NOPE];
    for tile in 0..DS_V32_TILES {
        let at = DS_V32_NOPE + 4 * tile;
        let scale = f32::from_le_bytes([token[at], token[at + 1], token[at + 2], token[at + 3]]);
        for i in tile * DS_V32_TILE..(tile + 1) * DS_V32_TILE {
            nope[i] = e4m3_to_f32(token[i]) * scale;
        }
    }
    let mut rope = [0u16; DS_V32_ROPE];
    for (i, r) in rope.iter_mut().enumerate() {
        let at = DS_V32_NOPE + 4 * DS_V32_TILES + 2 * i;
        *r = u16::from_le_bytes([token[at], token[at + 1]]);
    }
    (nope, rope)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Every finite code's value, by brute force over the code table: the nearest (ties to the even
    /// code) with saturation at ±448.
    fn nearest_code(x: f32) -> u8 {
        let finite: Vec<u8> = (0u8..=255)
            .filter(|&c| !e4m3_to_f32(c).is_nan() && (c & 0x80 == (x.to_bits() >> 24) as u8 & 0x80))
            .collect();
        let clamped = x.clamp(-E4M3_MAX, E4M3_MAX) as f64;
        let mut best = finite[0];
        for &c in &finite {
            let (d, db) = (
                (e4m3_to_f32(c) as f64 - clamped).abs(),
                (e4m3_to_f32(best) as f64 - clamped).abs(),
            );
            if d < db || (d == db && c & 1 == 0 && best & 1 == 1) {
                best = c;
            }
        }
        best
    }

    #[test]
    fn every_code_round_trips() {
        for c in 0u8..=255 {
            let v = e4m3_to_f32(c);
            if v.is_nan() {
                assert_eq!(c & 0x7F, E4M3_NAN);
                assert_eq!(f32_to_e4m3(v) & 0x7F, E4M3_NAN);
            } else {
                assert_eq!(f32_to_e4m3(v), c, "code {c:#04x} = {v}");
            }
        }
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(e4m3_to_f32(0x07), 7.0 * 2f32.powi(-9));
    }

    #[test]
    fn conversion_is_nearest_ties_to_even_with_saturation() {
        // Every midpoint between neighbouring codes, a little either side of it, and random values.
        let mut xs: Vec<f32> = Vec::new();
        for c in 0u8..0x7E {
            let (a, b) = (e4m3_to_f32(c), e4m3_to_f32(c + 1));
            let mid = (a + b) / 2.0;
            xs.extend([mid, mid * (1.0 + 1e-6), mid * (1.0 - 1e-6), a, b]);
        }
        let mut state = 0x1234_5678_9ABC_DEF0u64;
        for _ in 0..200_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let exponent = (state >> 59) as i32 - 14; // 2^-14 .. 2^17
            let mantissa = ((state >> 20) & 0xFFFF) as f32 / 65536.0;
            xs.push((1.0 + mantissa) * 2f32.powi(exponent));
        }
        xs.extend([
            0.0,
            448.0,
            464.0,
            1e30,
            f32::INFINITY,
            2f32.powi(-10),
            2f32.powi(-11),
            1e-40,
        ]);
        for x in xs {
            for v in [x, -x] {
                assert_eq!(f32_to_e4m3(v), nearest_code(v), "{v:e}");
            }
        }
        assert_eq!(f32_to_e4m3(f32::NAN) & 0x7F, E4M3_NAN);
    }

    #[test]
    fn deepseek_token_round_trips_within_its_quantisation_error() {
        let mut values = [0.0f32; HEAD_DIM_K];
        let mut rope = [0u16; DS_V32_ROPE];
        for (i, v) in values.iter_mut().enumerate() {
            // Tiles with very different magnitudes, both signs.
            let magnitude = [0.01f32, 3.0, 700.0, 1e-6][(i / DS_V32_TILE).min(3)];
            *v = magnitude * (((i * 7919) % 200) as f32 / 100.0 - 1.0);
        }
        for (i, r) in rope.iter_mut().enumerate() {
            *r = (0x3C00 + i as u16) ^ ((i as u16 & 1) << 15);
        }
        let token = ds_v32_pack_token(&values, &rope);
        let (nope, rope_back) = ds_v32_unpack_token(&token);
        assert_eq!(rope_back, rope);
        for tile in 0..DS_V32_TILES {
            let scale = f32::from_le_bytes(
                token[DS_V32_NOPE + 4 * tile..DS_V32_NOPE + 4 * tile + 4]
                    .try_into()
                    .unwrap(),
            );
            assert_eq!(scale.to_bits() & 0x007F_FFFF, 0, "power of two");
            for i in tile * DS_V32_TILE..(tile + 1) * DS_V32_TILE {
                // e4m3 keeps 3 mantissa bits: relative error ≤ 2⁻⁴ above the subnormal range, and
                // never more than half a subnormal step (2⁻¹⁰ · scale) below it.
                let err = (nope[i] - values[i]).abs();
                assert!(
                    err <= values[i].abs() / 16.0 + scale * 2f32.powi(-10),
                    "tile {tile} value {} -> {}",
                    values[i],
                    nope[i]
                );
            }
        }
    }

    #[test]
    fn scales() {
        assert_eq!(per_cache_scale(448.0), 1.0);
        assert_eq!(per_cache_scale(0.0), 1.0);
        assert_eq!(ds_tile_scale(448.0 * 3.0), 4.0);
        assert_eq!(ds_tile_scale(448.0 * 0.25), 0.25);
        assert_eq!(ds_tile_scale(f32::INFINITY), f32::MAX);
    }
}

//! Fixed-point encoding of bounded deltas into wrapping `u32` arithmetic.
//!
//! Masks live in `Z / 2^32`, so the values they hide must too. A value `x` with `|x| <= B` is
//! encoded as `round(x s)` in two's complement, with the scale `s = (i32::MAX / n - 1) / B` for at
//! most `n` members: each encoded value is then below `i32::MAX / n` in magnitude, so the sum of
//! `n` of them stays inside `i32` and reading the wrapped `u32` sum as `i32` gives the exact
//! integer sum. Decoding divides by `s`; each of the `n` roundings is off by at most `1 / (2 s)`.

use super::SecAggError;

/// The most members one quantiser admits (the scale is still about `2^15 / B` there).
pub const MAX_MEMBERS: usize = 1 << 16;

/// An encoding of per-coordinate bounded values for sums of at most `max_members` of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantizer {
    /// Per-coordinate bound `B`: larger values are clamped to `+-B` (and counted).
    bound: f32,
    /// Integer units per unit of value.
    scale: f64,
    /// Sums of more members than this could wrap, so decoding refuses them.
    max_members: usize,
}

/// One member's encoded vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// `round(clamp(x, -B, B) * s)` as two's complement `u32`.
    pub values: Vec<u32>,
    /// How many coordinates were outside `[-B, B]` and clamped.
    pub clamped: usize,
}

impl Quantizer {
    /// A quantiser for values in `[-bound, bound]` summed over at most `max_members` members.
    pub fn new(bound: f32, max_members: usize) -> Result<Self, SecAggError> {
        if !(bound.is_finite() && bound > 0.0) {
            return Err(SecAggError::BadBound { bound });
        }
        if max_members == 0 || max_members > MAX_MEMBERS {
            return Err(SecAggError::TooManyMembers {
                members: max_members,
                max: MAX_MEMBERS,
            });
        }
        let scale = (f64::from(i32::MAX) / max_members as f64 - 1.0) / f64::from(bound);
        Ok(Quantizer {
            bound,
            scale,
            max_members,
        })
    }

    /// The per-coordinate bound `B`.
    pub fn bound(&self) -> f32 {
        self.bound
    }

    /// Integer units per unit of value (`s`).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The largest error of one coordinate of a decoded sum of `members` encoded values:
    /// `members / (2 s)` (clamping aside).
    pub fn sum_error(&self, members: usize) -> f64 {
        members as f64 * 0.5 / self.scale
    }

    /// Encodes `x`, clamping coordinates outside `[-B, B]`; a non-finite coordinate is refused.
    pub fn encode(&self, x: &[f32]) -> Result<Encoded, SecAggError> {
        let mut clamped = 0usize;
        let mut values = Vec::with_capacity(x.len());
        for (index, &v) in x.iter().enumerate() {
            if !v.is_finite() {
                return Err(SecAggError::NonFinite { index });
            }
            let c = v.clamp(-self.bound, self.bound);
            clamped += usize::from(c != v);
            // |c s| <= i32::MAX / n - 1, so the rounded value fits i32 (and i64) exactly.
            let q = (f64::from(c) * self.scale).round() as i64;
            values.push(q as i32 as u32);
        }
        Ok(Encoded { values, clamped })
    }

    /// Decodes the wrapping sum of `members` encoded vectors. More members than the quantiser
    /// was built for could have wrapped, so they are refused rather than decoded wrongly.
    pub fn decode_sum(&self, sum: &[u32], members: usize) -> Result<Vec<f64>, SecAggError> {
        if members == 0 || members > self.max_members {
            return Err(SecAggError::TooManyMembers {
                members,
                max: self.max_members,
            });
        }
        Ok(sum
            .iter()
            .map(|&v| f64::from(v as i32) / self.scale)
            .collect())
    }
}

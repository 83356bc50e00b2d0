//! Attacks for experiments: what a Byzantine node sends instead of its honest delta.

use crate::error::{Error, Result, parse_err};
use crate::rng::Rng;

/// A Byzantine behaviour at the model level (or, for `LabelFlip`, the data level).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Attack {
    /// Sends `-scale * honest_delta`.
    SignFlip {
        /// Multiplier on the flipped delta.
        scale: f64,
    },
    /// Sends pure Gaussian noise N(0, sigma^2) per coordinate.
    Gaussian {
        /// Standard deviation.
        sigma: f64,
    },
    /// "A little is enough" (Baruch et al. 2019): `mean - z * std` of the honest deltas per
    /// coordinate, small enough to pass robust rules. `z = None` uses the paper's z_max for n and f.
    Alie {
        /// Deviation in standard deviations.
        z: Option<f64>,
    },
    /// Trains honestly on labels `y -> 9 - y`.
    LabelFlip,
    /// Sends an all-zero delta (a free rider).
    Zeros,
    /// Sends `-scale * honest_delta` and claims `u64::MAX` training samples, to take over
    /// sample-weighted rules (the claim is capped by `aggregate::bounded_weights`, and the node
    /// refuses claims above the genesis bound).
    InflateSamples {
        /// Multiplier on the flipped delta.
        scale: f64,
    },
}

impl std::str::FromStr for Attack {
    type Err = Error;
    /// `sign-flip[:SCALE]` (default 10), `gaussian[:SIGMA]` (default 1), `alie[:Z]`, `label-flip`, `zeros`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, arg) = s.split_once(':').unwrap_or((s, ""));
        let num = |default: f64| -> Result<f64> {
            if arg.is_empty() {
                return Ok(default);
            }
            arg.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| parse_err("attack", s, format!("bad number {arg:?}")))
        };
        match name {
            "sign-flip" | "signflip" => Ok(Self::SignFlip { scale: num(10.0)? }),
            "gaussian" | "noise" => Ok(Self::Gaussian { sigma: num(1.0)? }),
            "alie" => Ok(Self::Alie {
                z: if arg.is_empty() {
                    None
                } else {
                    Some(num(0.0)?)
                },
            }),
            "label-flip" | "labelflip" => Ok(Self::LabelFlip),
            "zeros" | "zero" => Ok(Self::Zeros),
            "inflate-samples" => Ok(Self::InflateSamples { scale: num(1.0)? }),
            _ => Err(parse_err(
                "attack",
                s,
                "expected sign-flip[:SCALE], gaussian[:SIGMA], alie[:Z], label-flip, zeros or \
                 inflate-samples[:SCALE]",
            )),
        }
    }
}

impl std::fmt::Display for Attack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SignFlip { scale } => write!(f, "sign-flip:{scale}"),
            Self::InflateSamples { scale } => write!(f, "inflate-samples:{scale}"),
            Self::Gaussian { sigma } => write!(f, "gaussian:{sigma}"),
            Self::Alie { z: Some(z) } => write!(f, "alie:{z}"),
            Self::Alie { z: None } => write!(f, "alie"),
            Self::LabelFlip => write!(f, "label-flip"),
            Self::Zeros => write!(f, "zeros"),
        }
    }
}

/// The inverse standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9).
pub fn inv_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let plow = 0.02425;
    if p < plow {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - plow {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -inv_normal_cdf(1.0 - p)
    }
}

/// ALIE's z_max for `n` nodes of which `f` are Byzantine: s = floor(n/2 + 1) - f supporters needed,
/// z = Phi^-1((n - s) / n).
pub fn alie_z(n: usize, f: usize) -> f64 {
    let s = (n / 2 + 1).saturating_sub(f).max(1);
    inv_normal_cdf((n.saturating_sub(s)) as f64 / n.max(1) as f64).max(0.0)
}

impl Attack {
    /// True when the attack changes the training data rather than the delta.
    pub fn is_data_level(&self) -> bool {
        matches!(self, Attack::LabelFlip)
    }

    /// The delta a Byzantine node sends. `honest` is what it would have sent; `benign` are the
    /// honest deltas it can see this round (used by ALIE); `n` and `f` are the node counts.
    /// The sample count this attacker claims for `honest` samples.
    pub fn claimed_samples(&self, honest: u64) -> u64 {
        match self {
            Attack::InflateSamples { .. } => u64::MAX,
            _ => honest,
        }
    }

    /// The corrupted delta.
    pub fn corrupt(
        &self,
        honest: &[f32],
        benign: &[&[f32]],
        n: usize,
        f: usize,
        rng: &mut Rng,
    ) -> Vec<f32> {
        match *self {
            Attack::SignFlip { scale } | Attack::InflateSamples { scale } => honest
                .iter()
                .map(|v| (-scale * f64::from(*v)) as f32)
                .collect(),
            Attack::Gaussian { sigma } => honest
                .iter()
                .map(|_| (rng.normal() * sigma) as f32)
                .collect(),
            Attack::Alie { z } => {
                let z = z.unwrap_or_else(|| alie_z(n, f));
                let sources: Vec<&[f32]> = if benign.is_empty() {
                    vec![honest]
                } else {
                    benign.to_vec()
                };
                let k = sources.len() as f64;
                (0..honest.len())
                    .map(|j| {
                        let mean = sources.iter().map(|d| f64::from(d[j])).sum::<f64>() / k;
                        let var = sources
                            .iter()
                            .map(|d| (f64::from(d[j]) - mean).powi(2))
                            .sum::<f64>()
                            / k;
                        (mean - z * var.sqrt()) as f32
                    })
                    .collect()
            }
            Attack::LabelFlip => honest.to_vec(),
            Attack::Zeros => vec![0.0; honest.len()],
        }
    }
}

/// Flips labels `y -> classes - 1 - y` (the label-flip attack's training data; `9 - y` on the
/// ten digits).
pub fn flip_labels(y: &mut [u8], classes: usize) {
    let top = u8::try_from(classes.saturating_sub(1)).unwrap_or(u8::MAX);
    for l in y {
        *l = top - (*l).min(top);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_cdf_known_points() {
        assert!(inv_normal_cdf(0.5).abs() < 1e-9);
        assert!((inv_normal_cdf(0.975) - 1.959_963_985).abs() < 1e-8);
        assert!((inv_normal_cdf(0.01) + 2.326_347_874).abs() < 1e-8);
        // n = 8, f = 2: s = 3, z = Phi^-1(5/8) = 0.318639.
        assert!((alie_z(8, 2) - 0.318_639_364).abs() < 1e-6);
    }

    #[test]
    fn corruptions_exact() {
        let mut rng = Rng::seed(0);
        let h = [1.0f32, -2.0];
        assert_eq!(
            Attack::SignFlip { scale: 10.0 }.corrupt(&h, &[], 8, 2, &mut rng),
            vec![-10.0, 20.0]
        );
        assert_eq!(
            Attack::Zeros.corrupt(&h, &[], 8, 2, &mut rng),
            vec![0.0, 0.0]
        );
        let a = [0.0f32, 2.0];
        let b = [2.0f32, 2.0];
        // mean (1, 2), std (1, 0); z = 1.5 -> (-0.5, 2).
        assert_eq!(
            Attack::Alie { z: Some(1.5) }.corrupt(&h, &[&a, &b], 8, 2, &mut rng),
            vec![-0.5, 2.0]
        );
        let g = Attack::Gaussian { sigma: 1.0 }.corrupt(&[0.0; 1000], &[], 8, 2, &mut rng);
        assert!(g.iter().any(|v| *v != 0.0));
        let mut y = [0u8, 3, 9];
        flip_labels(&mut y, 10);
        assert_eq!(y, [9, 6, 0]);
        let mut y = [0u8, 1, 2];
        flip_labels(&mut y, 3);
        assert_eq!(y, [2, 1, 0]);
    }

    #[test]
    fn parses() {
        assert_eq!(
            "sign-flip".parse::<Attack>().unwrap(),
            Attack::SignFlip { scale: 10.0 }
        );
        assert_eq!(
            "sign-flip:3".parse::<Attack>().unwrap(),
            Attack::SignFlip { scale: 3.0 }
        );
        assert_eq!("alie".parse::<Attack>().unwrap(), Attack::Alie { z: None });
        assert!("flood".parse::<Attack>().is_err());
    }
}

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

/// The inverse standard normal CDF, `-sqrt(2) erfc^-1(2p)` with statrs's `erfc_inv` (what its
/// `Normal::inverse_cdf` computes), `p` clamped into `(0, 1)` so the tails stay finite.
pub fn inv_normal_cdf(p: f64) -> f64 {
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    -std::f64::consts::SQRT_2 * statrs::function::erf::erfc_inv(2.0 * p)
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
        // Closer than Acklam's 1.2e-9 relative error, in the centre and the tails.
        assert!((inv_normal_cdf(0.975) - 1.959_963_984_540_054).abs() < 1e-12);
        assert!((inv_normal_cdf(1e-10) + 6.361_340_902_404_056).abs() < 1e-9);
        assert!((inv_normal_cdf(0.3) + inv_normal_cdf(0.7)).abs() < 1e-15);
        assert!(inv_normal_cdf(0.0).is_finite() && inv_normal_cdf(1.0).is_finite());
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

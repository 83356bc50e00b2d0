//! Differential privacy for deltas: L2 clipping to `C`, Gaussian noise with standard deviation
//! `sigma * C`, and a Rényi-DP accountant for the (subsampled) Gaussian mechanism.
//!
//! Each round a node's delta is one release of the Gaussian mechanism with sensitivity `C` (the
//! client-level DP of McMahan et al. 2018, "Learning differentially private recurrent language
//! models"). With sampling rate `q` (the fraction of nodes whose deltas a round uses; 1.0 when every
//! node takes part) the accountant composes the RDP of the sampled Gaussian mechanism over rounds
//! (Mironov, Talwar, Zhang 2019, integer orders, exact binomial expansion) and converts to
//! (epsilon, delta) with Balle et al. 2020's tighter conversion
//! `eps = rdp + ln((a-1)/a) - (ln(delta) + ln(a)) / (a-1)`, minimised over the orders.

use crate::error::{Result, parse_err};
use crate::rng::Rng;

/// Clip-and-noise settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DpConfig {
    /// L2 clipping bound `C`.
    pub clip: f64,
    /// Noise multiplier `sigma`; the noise standard deviation is `sigma * C`.
    pub noise: f64,
}

impl std::str::FromStr for DpConfig {
    type Err = crate::error::Error;
    /// `clip:C,noise:SIGMA` (noise may be 0 for clipping only).
    fn from_str(s: &str) -> Result<Self> {
        let mut clip = None;
        let mut noise = 0.0;
        for part in s.split(',') {
            let (k, v) = part
                .split_once(':')
                .ok_or_else(|| parse_err("dp", s, "expected clip:C,noise:SIGMA"))?;
            let v: f64 = v
                .parse()
                .map_err(|_| parse_err("dp", s, format!("bad number {v:?}")))?;
            if !(v.is_finite() && v >= 0.0) {
                return Err(parse_err("dp", s, "values must be finite and >= 0"));
            }
            match k {
                "clip" => clip = Some(v),
                "noise" => noise = v,
                _ => return Err(parse_err("dp", s, format!("unknown key {k:?}"))),
            }
        }
        let clip = clip
            .filter(|c| *c > 0.0)
            .ok_or_else(|| parse_err("dp", s, "clip:C with C > 0 is required"))?;
        Ok(DpConfig { clip, noise })
    }
}

/// L2 norm, accumulated in f64 in index order.
pub fn l2_norm(x: &[f32]) -> f64 {
    x.iter()
        .map(|v| f64::from(*v) * f64::from(*v))
        .sum::<f64>()
        .sqrt()
}

/// Scales `x` so that its L2 norm is at most `c`. Returns the factor applied (1.0 if none).
pub fn clip_l2(x: &mut [f32], c: f64) -> f64 {
    let norm = l2_norm(x);
    if norm <= c || norm == 0.0 {
        return 1.0;
    }
    let s = c / norm;
    for v in x.iter_mut() {
        *v = (f64::from(*v) * s) as f32;
    }
    s
}

/// Clips to `cfg.clip` and adds N(0, (sigma C)^2) to every coordinate, drawing from `rng`.
pub fn privatise(x: &mut [f32], cfg: &DpConfig, rng: &mut Rng) {
    clip_l2(x, cfg.clip);
    let std = cfg.noise * cfg.clip;
    if std > 0.0 {
        for v in x.iter_mut() {
            *v += (rng.normal() * std) as f32;
        }
    }
}

/// Rényi-DP accountant for `rounds` compositions of the sampled Gaussian mechanism.
#[derive(Debug, Clone, Copy)]
pub struct Accountant {
    /// Noise multiplier sigma.
    pub noise: f64,
    /// Sampling rate q in (0, 1].
    pub sampling_rate: f64,
}

/// The RDP orders the accountant minimises over.
const ORDERS: std::ops::RangeInclusive<u32> = 2..=256;

fn ln_binomial(n: u32, k: u32) -> f64 {
    // Exact enough for n <= 256: sum of logs.
    let k = k.min(n - k);
    (0..k)
        .map(|i| (f64::from(n - i)).ln() - f64::from(i + 1).ln())
        .sum()
}

fn log_sum_exp(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

impl Accountant {
    /// RDP of one round at integer order `alpha` (>= 2).
    pub fn rdp(&self, alpha: u32) -> f64 {
        let (q, s) = (self.sampling_rate, self.noise);
        if s <= 0.0 {
            return f64::INFINITY;
        }
        if q >= 1.0 {
            return f64::from(alpha) / (2.0 * s * s);
        }
        if q <= 0.0 {
            return 0.0;
        }
        // A_alpha = sum_k C(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 sigma^2)).
        let log_a = log_sum_exp((0..=alpha).map(|k| {
            let kf = f64::from(k);
            ln_binomial(alpha, k)
                + f64::from(alpha - k) * (1.0 - q).ln()
                + kf * q.ln()
                + (kf * kf - kf) / (2.0 * s * s)
        }));
        log_a / f64::from(alpha - 1)
    }

    /// (epsilon, best order) after `rounds` rounds at the given `delta`.
    pub fn epsilon(&self, rounds: u64, delta: f64) -> (f64, u32) {
        let mut best = (f64::INFINITY, 0);
        if rounds == 0 {
            return (0.0, 0);
        }
        for a in ORDERS {
            let af = f64::from(a);
            let eps = rounds as f64 * self.rdp(a) + ((af - 1.0) / af).ln()
                - (delta.ln() + af.ln()) / (af - 1.0);
            if eps < best.0 {
                best = (eps.max(0.0), a);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_exact() {
        let mut x = [3.0f32, 4.0];
        assert_eq!(clip_l2(&mut x, 10.0), 1.0);
        assert_eq!(x, [3.0, 4.0]);
        assert_eq!(clip_l2(&mut x, 1.0), 0.2);
        assert_eq!(x, [0.6, 0.8]);
        assert!((l2_norm(&x) - 1.0).abs() < 1e-7);
    }

    #[test]
    fn noise_has_the_configured_scale() {
        let mut x = vec![0.0f32; 50_000];
        let cfg = DpConfig {
            clip: 2.0,
            noise: 0.5,
        };
        privatise(&mut x, &cfg, &mut Rng::seed(1));
        let var = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64;
        assert!((var.sqrt() - 1.0).abs() < 0.02, "std {}", var.sqrt());
    }

    #[test]
    fn accountant_full_participation_closed_form() {
        // q = 1: rdp(a) = a / (2 sigma^2). sigma = 1, one round, delta = 1e-5:
        // eps(a) = a/2 + ln((a-1)/a) - (ln 1e-5 + ln a)/(a-1), minimised at a = 5:
        // 2.5 + ln(0.8) + (11.512925465 - 1.609437912)/4 = 4.752728.
        let acc = Accountant {
            noise: 1.0,
            sampling_rate: 1.0,
        };
        assert_eq!(acc.rdp(4), 2.0);
        let (eps, a) = acc.epsilon(1, 1e-5);
        assert_eq!(a, 5);
        let want = 2.5 + 0.8f64.ln() + (11.512_925_464_970_229 - 5f64.ln()) / 4.0;
        assert!((eps - want).abs() < 1e-9, "{eps} vs {want}");
        // More rounds, more epsilon; more noise, less.
        assert!(acc.epsilon(10, 1e-5).0 > eps);
        let quieter = Accountant {
            noise: 2.0,
            sampling_rate: 1.0,
        };
        assert!(quieter.epsilon(1, 1e-5).0 < eps);
    }

    #[test]
    fn accountant_subsampled_exact_small_case() {
        // alpha = 2: A = (1-q)^2 + 2 q (1-q) + q^2 e^(1/sigma^2).
        let acc = Accountant {
            noise: 1.0,
            sampling_rate: 0.1,
        };
        let a2 = 0.81 + 2.0 * 0.1 * 0.9 + 0.01 * 1f64.exp();
        assert!((acc.rdp(2) - a2.ln()).abs() < 1e-12);
        // Subsampling amplifies privacy.
        let full = Accountant {
            noise: 1.0,
            sampling_rate: 1.0,
        };
        assert!(acc.epsilon(100, 1e-5).0 < full.epsilon(100, 1e-5).0);
    }

    #[test]
    fn parses() {
        let c: DpConfig = "clip:1.0,noise:0.5".parse().unwrap();
        assert_eq!(
            c,
            DpConfig {
                clip: 1.0,
                noise: 0.5
            }
        );
        assert!("noise:0.5".parse::<DpConfig>().is_err());
        assert!("clip:-1".parse::<DpConfig>().is_err());
    }
}

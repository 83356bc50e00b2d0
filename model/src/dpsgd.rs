//! Record-level differential privacy for local training: DP-SGD (Abadi et al. 2016, "Deep
//! learning with differential privacy", CCS), as Opacus implements it.
//!
//! Every step:
//! 1. **Poisson sampling**: each of the `N` local records joins the batch independently with
//!    probability `q` (so the batch size is Binomial(N, q), possibly 0);
//! 2. **per-example clipping**: each sampled record's gradient `g_i` (over all parameters
//!    jointly) is scaled to `g_i * min(1, C / ||g_i||_2)`;
//! 3. **noise**: `N(0, (sigma C)^2)` is added to every coordinate of the sum of the clipped
//!    gradients, and the result is divided by the *expected* batch size `q N` (not the drawn
//!    one, which would leak it):
//!    `g = (sum_i clip(g_i) + N(0, sigma^2 C^2 I)) / (q N)`;
//! 4. the configured optimiser step (SGD, momentum, Adam, FedProx's pull) on `g`: all
//!    post-processing of a private quantity. An empty batch still takes a noise-only step.
//!
//! Each step is one sampled Gaussian mechanism with sampling rate `q` and noise multiplier
//! `sigma` (sensitivity `C` under add/remove-one-record adjacency); [`crate::dp::Accountant`]
//! composes them over `steps` in Rényi DP.
//!
//! The schedule: `Work::Steps(s)` takes `s` steps; `Work::Epochs(e)` takes `round(e / q)` steps,
//! which is `e` passes over the data *in expectation* (`e N / (q N)`). `TrainConfig::batch` is
//! not used: the expected batch is `q N`.
//!
//! The randomness of steps 1 and 3 must be secret from everyone who sees the result, or the
//! noise could be subtracted. It comes from a ChaCha20 CSPRNG ([`NoiseSource`]) seeded from 32
//! bytes that the caller supplies (the node reads them from the OS CSPRNG), never from the
//! crate's xoshiro [`crate::rng::Rng`], whose seeds are public.

use rand::{Rng as _, RngCore as _, SeedableRng as _};
use rand_chacha::ChaCha20Rng;

use crate::error::{Error, Result, parse_err};
use crate::train::{TrainConfig, Work};

/// DP-SGD's settings, parsed from `clip:C,noise:SIGMA,rate:Q`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DpSgdConfig {
    /// Per-example L2 clipping bound `C` (> 0).
    pub clip: f64,
    /// Noise multiplier `sigma` (>= 0): the noise added to the clipped sum has standard deviation
    /// `sigma * C` per coordinate.
    pub noise: f64,
    /// Poisson sampling rate `q` in (0, 1]: each record joins each step's batch with this
    /// probability.
    pub rate: f64,
}

impl DpSgdConfig {
    /// The expected batch size `q N` the noisy sum is divided by.
    pub fn expected_batch(&self, records: usize) -> f64 {
        self.rate * records as f64
    }

    /// The steps one round takes: `Work::Steps(s)` is `s`; `Work::Epochs(e)` is
    /// `round(e / q)`, `e` passes over the data in expectation.
    pub fn steps(&self, work: Work) -> usize {
        match work {
            Work::Steps(s) => s,
            Work::Epochs(e) => (e as f64 / self.rate).round() as usize,
        }
    }

    /// Checks the ranges (`C > 0`, `sigma >= 0`, `0 < q <= 1`, all finite), e.g. after
    /// deserialising.
    pub fn validate(&self) -> Result<()> {
        let why = if !(self.clip.is_finite() && self.clip > 0.0) {
            "clip C must be finite and > 0"
        } else if !(self.noise.is_finite() && self.noise >= 0.0) {
            "noise SIGMA must be finite and >= 0"
        } else if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1.0) {
            "rate Q must be in (0, 1]"
        } else {
            return Ok(());
        };
        Err(parse_err("dp-sgd", &self.to_string(), why))
    }
}

impl std::str::FromStr for DpSgdConfig {
    type Err = Error;
    /// `clip:C,noise:SIGMA,rate:Q`, all three required, in any order.
    fn from_str(s: &str) -> Result<Self> {
        let (mut clip, mut noise, mut rate) = (None, None, None);
        for part in s.split(',') {
            let (k, v) = part
                .split_once(':')
                .ok_or_else(|| parse_err("dp-sgd", s, "expected clip:C,noise:SIGMA,rate:Q"))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| parse_err("dp-sgd", s, format!("bad number {v:?}")))?;
            let slot = match k.trim() {
                "clip" => &mut clip,
                "noise" => &mut noise,
                "rate" => &mut rate,
                _ => return Err(parse_err("dp-sgd", s, format!("unknown key {k:?}"))),
            };
            if slot.replace(v).is_some() {
                return Err(parse_err("dp-sgd", s, format!("{k} given twice")));
            }
        }
        let need = |v: Option<f64>, k: &str| {
            v.ok_or_else(|| parse_err("dp-sgd", s, format!("missing {k}")))
        };
        let cfg = DpSgdConfig {
            clip: need(clip, "clip:C")?,
            noise: need(noise, "noise:SIGMA")?,
            rate: need(rate, "rate:Q")?,
        };
        cfg.validate().map_err(|e| match e {
            Error::Parse { why, .. } => parse_err("dp-sgd", s, why),
            other => other,
        })?;
        Ok(cfg)
    }
}

impl std::fmt::Display for DpSgdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "clip:{},noise:{},rate:{}",
            self.clip, self.noise, self.rate
        )
    }
}

/// DP-SGD's secret randomness: a ChaCha20 stream (RFC 8439's cipher as a CSPRNG) from a 32-byte
/// key. It draws the Poisson batches and the Gaussian noise, in that order, step by step.
///
/// `Debug` prints nothing of the state.
pub struct NoiseSource {
    rng: ChaCha20Rng,
    zig: Ziggurat,
}

/// Layers of the ziggurat (a power of two: the index is the low bits of a draw).
const LAYERS: usize = 128;
/// Right edge of the base layer, and the area of every layer, for 128 layers under
/// `f(x) = exp(-x^2/2)` (Marsaglia and Tsang 2000, "The ziggurat method for generating random
/// variables", J. Stat. Software 5(8)).
const ZIG_R: f64 = 3.442_619_855_899;
const ZIG_V: f64 = 9.912_563_035_262_17e-3;

/// Tables of the 128-layer ziggurat for the half-normal, built once per [`NoiseSource`].
///
/// Layer `i` is the rectangle `[0, x_i] x [f(x_i), f(x_{i+1})]`, each of area `v` (layer 0: the
/// rectangle `[0, r] x [0, f(r)]` plus the tail beyond `r`, with virtual width `x_0 = v / f(r)`);
/// `x_1 = r`, `x_{i+1} = sqrt(-2 ln(v / x_i + f(x_i)))`, `x_128 = 0`. A draw picks a layer and a
/// point `z = u x_i` uniformly; `z < x_{i+1}` (98.8% of draws) lies under the curve at once,
/// otherwise the wedge (or the tail, for layer 0) is sampled exactly.
struct Ziggurat {
    /// `x_i / 2^24`: turns the 24 value bits into `z`.
    scale: [f32; LAYERS],
    /// `floor(2^24 x_{i+1} / x_i)`: the value bits below which `z < x_{i+1}`.
    accept: [u32; LAYERS],
    /// `x_i`, `x_128 = 0`.
    x: [f64; LAYERS + 1],
    /// `f(x_i)`.
    f: [f64; LAYERS + 1],
}

impl Ziggurat {
    fn new() -> Self {
        let f = |x: f64| (-0.5 * x * x).exp();
        let mut x = [0.0f64; LAYERS + 1];
        x[0] = ZIG_V / f(ZIG_R);
        x[1] = ZIG_R;
        for i in 1..LAYERS - 1 {
            x[i + 1] = (-2.0 * (ZIG_V / x[i] + f(x[i])).ln()).sqrt();
        }
        x[LAYERS] = 0.0;
        let two24 = f64::from(1u32 << 24);
        let mut z = Ziggurat {
            scale: [0.0; LAYERS],
            accept: [0; LAYERS],
            x,
            f: [0.0; LAYERS + 1],
        };
        for (fi, xi) in z.f.iter_mut().zip(&x) {
            *fi = f(*xi);
        }
        for i in 0..LAYERS {
            z.scale[i] = (x[i] / two24) as f32;
            z.accept[i] = (two24 * x[i + 1] / x[i]) as u32;
        }
        z
    }
}

impl std::fmt::Debug for NoiseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoiseSource { .. }")
    }
}

impl NoiseSource {
    /// A source keyed with `secret`. For privacy the bytes must be secret and fresh for every
    /// training run (e.g. 32 bytes from the OS CSPRNG per round): whoever knows them can replay
    /// the batches and subtract the noise.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        NoiseSource {
            rng: ChaCha20Rng::from_seed(secret),
            zig: Ziggurat::new(),
        }
    }

    /// A **reproducible, not secret** source for simulations and tests: the key is
    /// SHA-256("cohort dp-sgd reproducible" || seed || stream), so anyone who knows the seed can
    /// recompute the noise. A simulation's epsilon then describes the mechanism, not a guarantee
    /// about the run's own output.
    pub fn reproducible(seed: u64, stream: u64) -> Self {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"cohort dp-sgd reproducible");
        h.update(seed.to_le_bytes());
        h.update(stream.to_le_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(&h.finalize());
        Self::from_secret(key)
    }

    /// Uniform in (0, 1] (53 bits).
    fn open_unit(&mut self) -> f64 {
        ((self.rng.random::<u64>() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Poisson sampling: fills `out` with the indices in `0..n` that join this step's batch,
    /// each independently with probability `q`, in increasing order.
    ///
    /// Rather than `n` Bernoulli draws, it draws the gaps between members: the number of records
    /// skipped before the next member is Geometric(q), `floor(ln U / ln(1 - q))` for `U`
    /// uniform in (0, 1], since `P(skip >= k) = P(U <= (1-q)^k) = (1-q)^k`. The same
    /// distribution, at `q n + 1` draws instead of `n` (about 64 instead of 60,000 on MNIST).
    pub fn poisson_sample(&mut self, n: usize, q: f64, out: &mut Vec<usize>) {
        out.clear();
        if q >= 1.0 {
            out.extend(0..n);
            return;
        }
        if q <= 0.0 {
            return;
        }
        let log_keep = (-q).ln_1p();
        let mut i = 0usize;
        loop {
            let skip = (self.open_unit().ln() / log_keep).floor();
            // `skip` is >= 0; a huge one (q tiny) saturates and ends the pass.
            let Some(next) = i.checked_add(skip as usize) else {
                return;
            };
            if next >= n {
                return;
            }
            out.push(next);
            i = next + 1;
        }
    }

    /// Uniform in (0, 1) from 32 bits, for the ziggurat's rare slow paths.
    fn open_unit32(&mut self) -> f64 {
        (f64::from(self.rng.next_u32()) + 0.5) * (1.0 / 4_294_967_296.0)
    }

    /// One standard normal draw, from 32 bits of the stream on the fast path: the low 7 bits
    /// pick the layer, bit 7 the sign, the high 24 the point (separate bits for index and value:
    /// Doornik 2005, "An improved ziggurat method to generate normal random samples", fixes the
    /// correlation of the original's shared bits). rand_distr's `StandardNormal` takes 64 bits a
    /// draw; ChaCha20's keystream is most of the cost, so this is faster (measured in
    /// `examples/train_speed.rs --dp`). Its
    /// resolution is 2^-24 of a layer's width, finer than the f32 the noise is added to.
    pub fn standard_normal(&mut self) -> f32 {
        loop {
            let bits = self.rng.next_u32();
            let i = (bits as usize) & (LAYERS - 1);
            // Bit 7 moved to the f32 sign bit: a coin-flip branch here would be mispredicted
            // half the time (it tripled the cost of a draw).
            let sign_bit = (bits & 0x80) << 24;
            let signed = |z: f32| f32::from_bits(z.to_bits() ^ sign_bit);
            let u = bits >> 8;
            if u < self.zig.accept[i] {
                return signed(u as f32 * self.zig.scale[i]);
            }
            let zf = f64::from(u) * self.zig.x[i] / f64::from(1u32 << 24);
            if i == 0 {
                // The tail beyond r (Marsaglia 1964): r + a with a ~ Exp(r), accepted with
                // probability exp(-a^2 / 2).
                loop {
                    let a = -self.open_unit32().ln() / ZIG_R;
                    let b = -self.open_unit32().ln();
                    if 2.0 * b > a * a {
                        return signed((ZIG_R + a) as f32);
                    }
                }
            }
            // The wedge between x_{i+1} and x_i: accept under the curve.
            let y = self.zig.f[i] + self.open_unit32() * (self.zig.f[i + 1] - self.zig.f[i]);
            if y < (-0.5 * zf * zf).exp() {
                return signed(zf as f32);
            }
        }
    }

    /// Adds `N(0, std^2)` to every element of `x` ([`NoiseSource::standard_normal`]).
    pub fn add_gaussian(&mut self, x: &mut [f32], std: f64) {
        if std <= 0.0 {
            return;
        }
        let std = std as f32;
        for v in x.iter_mut() {
            *v += self.standard_normal() * std;
        }
    }
}

/// DP-SGD's settings from `cfg` with the noise source they need: `None` when `cfg.dp_sgd` is
/// unset (any `noise` is then unused), an error when it is set without a source or out of range.
pub(crate) fn resolve<'a>(
    cfg: &TrainConfig,
    noise: Option<&'a mut NoiseSource>,
) -> Result<Option<(DpSgdConfig, &'a mut NoiseSource)>> {
    let Some(dp) = cfg.dp_sgd else {
        return Ok(None);
    };
    dp.validate()?;
    let noise = noise.ok_or(Error::DpSgdWithoutSecret)?;
    Ok(Some((dp, noise)))
}

/// Per-example clipping factor `min(1, C / norm)` (1 for a zero gradient).
pub fn clip_factor(norm: f64, clip: f64) -> f64 {
    if norm > clip { clip / norm } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let c: DpSgdConfig = "clip:1.5,noise:1.1,rate:0.01".parse().unwrap();
        assert_eq!(
            c,
            DpSgdConfig {
                clip: 1.5,
                noise: 1.1,
                rate: 0.01
            }
        );
        assert_eq!(c.to_string().parse::<DpSgdConfig>().unwrap(), c);
        assert!("rate:1,noise:0,clip:2".parse::<DpSgdConfig>().is_ok());
        for bad in [
            "clip:1,noise:1",
            "clip:0,noise:1,rate:0.1",
            "clip:1,noise:-1,rate:0.1",
            "clip:1,noise:1,rate:0",
            "clip:1,noise:1,rate:1.5",
            "clip:inf,noise:1,rate:0.1",
            "clip:1,noise:NaN,rate:0.1",
            "clip:1,noise:1,rate:0.1,clip:2",
            "clip:1,noise:1,rate:0.1,lr:3",
            "clip:x,noise:1,rate:0.1",
            "clip 1",
        ] {
            let e = bad.parse::<DpSgdConfig>();
            assert!(matches!(e, Err(Error::Parse { .. })), "{bad}: {e:?}");
        }
        let json = r#"{"clip":1.0,"noise":0.5,"rate":0.25}"#;
        let d: DpSgdConfig = serde_json_like(json);
        assert_eq!(d.rate, 0.25);
    }

    /// A tiny hand parser standing in for serde_json (not a dependency of this crate): checks
    /// that the serde derive uses the field names.
    fn serde_json_like(s: &str) -> DpSgdConfig {
        use serde::de::value::{Error as E, MapDeserializer};
        let pairs: Vec<(String, f64)> = s
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
            .map(|kv| {
                let (k, v) = kv.split_once(':').unwrap();
                (k.trim_matches('"').to_string(), v.parse().unwrap())
            })
            .collect();
        serde::Deserialize::deserialize(MapDeserializer::<_, E>::new(pairs.into_iter())).unwrap()
    }

    #[test]
    fn poisson_sampling_has_the_right_law() {
        let mut src = NoiseSource::reproducible(1, 2);
        let (n, q, steps) = (1000usize, 0.05, 2000);
        let mut hits = vec![0u32; n];
        let mut sizes = Vec::new();
        let mut out = Vec::new();
        for _ in 0..steps {
            src.poisson_sample(n, q, &mut out);
            assert!(out.windows(2).all(|w| w[0] < w[1]));
            for &i in &out {
                hits[i] += 1;
            }
            sizes.push(out.len() as f64);
        }
        // Batch size: mean q n = 50, variance q (1-q) n = 47.5; over 2000 steps the mean's
        // standard error is 0.15.
        let mean = sizes.iter().sum::<f64>() / steps as f64;
        let var = sizes.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / steps as f64;
        assert!((mean - 50.0).abs() < 1.0, "mean {mean}");
        assert!((var - 47.5).abs() < 6.0, "var {var}");
        // Every record equally likely: first and second half within noise (each ~50,000 hits).
        let first: u32 = hits[..n / 2].iter().sum();
        let second: u32 = hits[n / 2..].iter().sum();
        assert!(
            (f64::from(first) / f64::from(second) - 1.0).abs() < 0.03,
            "{first} vs {second}"
        );
        src.poisson_sample(7, 1.0, &mut out);
        assert_eq!(out, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn secrets_key_the_stream() {
        let draw = |key: [u8; 32]| {
            let mut x = vec![0.0f32; 64];
            NoiseSource::from_secret(key).add_gaussian(&mut x, 1.0);
            x
        };
        assert_eq!(draw([7; 32]), draw([7; 32]));
        let mut other = [7; 32];
        other[31] = 8;
        assert_ne!(draw([7; 32]), draw(other));
        assert_eq!(
            format!("{:?}", NoiseSource::from_secret([1; 32])),
            "NoiseSource { .. }"
        );
    }

    /// The ziggurat's draws are standard normal: the first four moments, the tail beyond the
    /// base layer, and the Kolmogorov-Smirnov distance to the normal CDF over a million draws
    /// (the 1% critical value is 1.63e-3; with a fixed seed this cannot flake).
    #[test]
    fn ziggurat_is_standard_normal() {
        let mut src = NoiseSource::reproducible(3, 4);
        let n = 1_000_000;
        let mut z: Vec<f64> = (0..n).map(|_| f64::from(src.standard_normal())).collect();
        let m = |k: i32| z.iter().map(|v| v.powi(k)).sum::<f64>() / n as f64;
        let (m1, m2, m3, m4) = (m(1), m(2), m(3), m(4));
        // Standard errors: 1e-3, 1.4e-3, 2.4e-3, 9.8e-3.
        assert!(m1.abs() < 5e-3, "mean {m1}");
        assert!((m2 - 1.0).abs() < 7e-3, "variance {m2}");
        assert!(m3.abs() < 1.2e-2, "third moment {m3}");
        assert!((m4 - 3.0).abs() < 5e-2, "fourth moment {m4}");
        // P(|z| > r) = erfc(r / sqrt 2) = 5.76e-4: about 576 of a million, sd 24.
        let tail = z.iter().filter(|v| v.abs() > ZIG_R).count();
        assert!((450..=700).contains(&tail), "tail {tail}");
        z.sort_by(f64::total_cmp);
        let cdf = |x: f64| 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
        let ks = z
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let c = cdf(*v);
                (c - k as f64 / n as f64).max((k + 1) as f64 / n as f64 - c)
            })
            .fold(0.0f64, f64::max);
        assert!(ks < 1.63e-3, "KS distance {ks}");
        // The tables: the top layer reaches f(0) = 1 (the constants' defining property).
        let zig = Ziggurat::new();
        let top = ZIG_V / zig.x[LAYERS - 1] + zig.f[LAYERS - 1];
        assert!((top - 1.0).abs() < 1e-9, "{top}");
    }
}

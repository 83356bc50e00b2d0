//! Aggregation rules and the server step. Every rule is a deterministic function of its inputs in
//! the order given (the caller sorts them, by digest in the protocol): plain loops, fixed
//! reduction order, f64 accumulation rounded once to f32, no threads splitting a sum, total order
//! (`f32::total_cmp`) with index tie-breaks wherever something is sorted.

use crate::error::{Error, Result, parse_err};

/// A robust (or plain) aggregation rule.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Rule {
    /// Sample-weighted mean (FedAvg, McMahan et al. 2017).
    Mean,
    /// Coordinate-wise median (Yin et al. 2018).
    Median,
    /// Coordinate-wise trimmed mean dropping `floor(beta * n)` values at each end (Yin et al. 2018).
    TrimmedMean(f64),
    /// Multi-Krum (Blanchard et al. 2017): score each delta by the summed squared distance to its
    /// `n - f - 2` nearest neighbours and average the `m` best (sample-weighted).
    MultiKrum {
        /// Assumed number of Byzantine inputs.
        f: usize,
        /// How many deltas to keep.
        m: usize,
    },
    /// CenteredClip (Karimireddy, He, Jaggi 2021): starting from the coordinate-wise median,
    /// `v += mean_i (x_i - v) * min(1, tau / ||x_i - v||)` for `iters` iterations.
    CenteredClip {
        /// Clipping radius.
        tau: f64,
        /// Number of iterations.
        iters: usize,
    },
}

impl std::str::FromStr for Rule {
    type Err = Error;
    /// `mean`, `median`, `trimmed-mean:BETA`, `krum:F[,M]` / `multi-krum:F,M`, `centered-clip:TAU[,ITERS]`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, arg) = s.split_once(':').unwrap_or((s, ""));
        let nums = |what: &str| -> Result<Vec<f64>> {
            if arg.is_empty() {
                return Ok(Vec::new());
            }
            arg.split(',')
                .map(|v| {
                    v.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && *x >= 0.0)
                        .ok_or_else(|| parse_err("rule", s, format!("bad {what} {v:?}")))
                })
                .collect()
        };
        match name {
            "mean" | "fedavg" => Ok(Self::Mean),
            "median" => Ok(Self::Median),
            "trimmed-mean" | "trimmed" => {
                let v = nums("beta")?;
                let beta = v.first().copied().unwrap_or(0.2);
                if beta >= 0.5 {
                    return Err(parse_err("rule", s, "beta must be < 0.5"));
                }
                Ok(Self::TrimmedMean(beta))
            }
            "krum" | "multi-krum" => {
                let v = nums("f,m")?;
                let f = v.first().copied().unwrap_or(1.0) as usize;
                let m = v
                    .get(1)
                    .copied()
                    .unwrap_or(if name == "krum" { 1.0 } else { 0.0 })
                    as usize;
                Ok(Self::MultiKrum { f, m })
            }
            "centered-clip" | "cclip" => {
                let v = nums("tau,iters")?;
                let tau = v.first().copied().unwrap_or(1.0);
                let iters = v.get(1).copied().unwrap_or(3.0) as usize;
                if tau <= 0.0 || iters == 0 {
                    return Err(parse_err("rule", s, "tau and iters must be > 0"));
                }
                Ok(Self::CenteredClip { tau, iters })
            }
            _ => Err(parse_err(
                "rule",
                s,
                "expected mean, median, trimmed-mean:BETA, multi-krum:F,M or centered-clip:TAU,ITERS",
            )),
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Mean => write!(f, "mean"),
            Self::Median => write!(f, "median"),
            Self::TrimmedMean(b) => write!(f, "trimmed-mean:{b}"),
            Self::MultiKrum { f: ff, m } => write!(f, "multi-krum:{ff},{m}"),
            Self::CenteredClip { tau, iters } => write!(f, "centered-clip:{tau},{iters}"),
        }
    }
}

/// One input to aggregation.
#[derive(Debug, Clone, Copy)]
pub struct Contribution<'a> {
    /// The decoded delta.
    pub delta: &'a [f32],
    /// Training samples behind it (the FedAvg weight).
    pub samples: u64,
}

fn check(inputs: &[Contribution<'_>]) -> Result<usize> {
    let first = inputs
        .first()
        .ok_or_else(|| Error::Aggregate("no inputs".into()))?;
    let n = first.delta.len();
    for (i, c) in inputs.iter().enumerate() {
        if c.delta.len() != n {
            return Err(Error::Aggregate(format!(
                "input {i} has {} values, input 0 has {n}",
                c.delta.len()
            )));
        }
        if let Some(j) = c.delta.iter().position(|v| !v.is_finite()) {
            return Err(Error::Aggregate(format!("input {i} is non-finite at {j}")));
        }
    }
    Ok(n)
}

/// Aggregates `inputs` (in the given order) with `rule`.
pub fn aggregate(rule: &Rule, inputs: &[Contribution<'_>]) -> Result<Vec<f32>> {
    let n = check(inputs)?;
    match *rule {
        Rule::Mean => Ok(weighted_mean(inputs, n)),
        Rule::Median => Ok(coordinate_wise(inputs, n, median_sorted)),
        Rule::TrimmedMean(beta) => {
            let k = (beta * inputs.len() as f64).floor() as usize;
            let k = k.min((inputs.len() - 1) / 2);
            Ok(coordinate_wise(inputs, n, |s| {
                let kept = &s[k..s.len() - k];
                (kept.iter().map(|v| f64::from(*v)).sum::<f64>() / kept.len() as f64) as f32
            }))
        }
        Rule::MultiKrum { f, m } => {
            let chosen = krum_select(inputs, f, m);
            let picked: Vec<Contribution<'_>> = chosen.iter().map(|&i| inputs[i]).collect();
            Ok(weighted_mean(&picked, n))
        }
        Rule::CenteredClip { tau, iters } => {
            let mut v: Vec<f64> = coordinate_wise(inputs, n, median_sorted)
                .into_iter()
                .map(f64::from)
                .collect();
            let k = inputs.len() as f64;
            for _ in 0..iters {
                let mut step = vec![0.0f64; n];
                for c in inputs {
                    let dist = c
                        .delta
                        .iter()
                        .zip(&v)
                        .map(|(x, vv)| (f64::from(*x) - vv).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    let w = if dist > tau { tau / dist } else { 1.0 };
                    for ((s, x), vv) in step.iter_mut().zip(c.delta).zip(&v) {
                        *s += (f64::from(*x) - vv) * w;
                    }
                }
                for (vv, s) in v.iter_mut().zip(&step) {
                    *vv += s / k;
                }
            }
            Ok(v.into_iter().map(|x| x as f32).collect())
        }
    }
}

fn weighted_mean(inputs: &[Contribution<'_>], n: usize) -> Vec<f32> {
    let total: u64 = inputs.iter().map(|c| c.samples).sum();
    // Zero samples everywhere: fall back to an unweighted mean.
    let weights: Vec<f64> = if total == 0 {
        vec![1.0 / inputs.len() as f64; inputs.len()]
    } else {
        inputs
            .iter()
            .map(|c| c.samples as f64 / total as f64)
            .collect()
    };
    let mut acc = vec![0.0f64; n];
    for (c, w) in inputs.iter().zip(&weights) {
        for (a, x) in acc.iter_mut().zip(c.delta) {
            *a += f64::from(*x) * w;
        }
    }
    acc.into_iter().map(|x| x as f32).collect()
}

fn median_sorted(s: &[f32]) -> f32 {
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        ((f64::from(s[m - 1]) + f64::from(s[m])) / 2.0) as f32
    }
}

/// Applies `f` to the sorted values of every coordinate.
fn coordinate_wise(inputs: &[Contribution<'_>], n: usize, f: impl Fn(&[f32]) -> f32) -> Vec<f32> {
    let mut col = vec![0.0f32; inputs.len()];
    let mut out = Vec::with_capacity(n);
    for j in 0..n {
        for (c, slot) in inputs.iter().zip(col.iter_mut()) {
            *slot = c.delta[j];
        }
        col.sort_unstable_by(f32::total_cmp);
        out.push(f(&col));
    }
    out
}

/// Indices of the `m` inputs with the lowest Krum score (ascending score, then index).
/// `m = 0` means `n - f`.
pub fn krum_select(inputs: &[Contribution<'_>], f: usize, m: usize) -> Vec<usize> {
    let k = inputs.len();
    let mut d = vec![0.0f64; k * k];
    for i in 0..k {
        for j in i + 1..k {
            let dist: f64 = inputs[i]
                .delta
                .iter()
                .zip(inputs[j].delta)
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                .sum();
            d[i * k + j] = dist;
            d[j * k + i] = dist;
        }
    }
    let neighbours = k.saturating_sub(f + 2).max(1);
    let mut scores: Vec<(f64, usize)> = (0..k)
        .map(|i| {
            let mut row: Vec<f64> = (0..k).filter(|&j| j != i).map(|j| d[i * k + j]).collect();
            row.sort_unstable_by(f64::total_cmp);
            (row.iter().take(neighbours).sum(), i)
        })
        .collect();
    scores.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let m = if m == 0 { k.saturating_sub(f) } else { m }.clamp(1, k);
    let mut chosen: Vec<usize> = scores.iter().take(m).map(|s| s.1).collect();
    chosen.sort_unstable();
    chosen
}

/// The outer ("server") optimiser applied to the aggregate: `theta += lr * step` where `step` is the
/// aggregate itself (FedAvg, lr = 1), heavy-ball momentum (FedAvgM, Hsu et al. 2019) or Nesterov
/// momentum (the DiLoCo outer step, Douillard et al. 2023). The deltas are `local - global`, so they
/// already point downhill.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServerOpt {
    /// Global learning rate.
    pub lr: f64,
    /// Momentum coefficient (0 disables).
    pub momentum: f64,
    /// Nesterov look-ahead.
    pub nesterov: bool,
}

impl Default for ServerOpt {
    fn default() -> Self {
        ServerOpt {
            lr: 1.0,
            momentum: 0.0,
            nesterov: false,
        }
    }
}

impl ServerOpt {
    /// Applies one step to `params` in place; `velocity` is the momentum buffer (resized on first use).
    /// Deterministic: elementwise f64 arithmetic rounded to f32.
    pub fn step(
        &self,
        params: &mut [f32],
        velocity: &mut Vec<f32>,
        aggregate: &[f32],
    ) -> Result<()> {
        if params.len() != aggregate.len() {
            return Err(Error::WrongLength {
                got: aggregate.len(),
                expected: params.len(),
            });
        }
        if self.momentum == 0.0 {
            for (p, a) in params.iter_mut().zip(aggregate) {
                *p = (f64::from(*p) + self.lr * f64::from(*a)) as f32;
            }
            return Ok(());
        }
        velocity.resize(params.len(), 0.0);
        for ((p, v), a) in params.iter_mut().zip(velocity.iter_mut()).zip(aggregate) {
            let a = f64::from(*a);
            let nv = self.momentum * f64::from(*v) + a;
            *v = nv as f32;
            let upd = if self.nesterov {
                self.momentum * nv + a
            } else {
                nv
            };
            *p = (f64::from(*p) + self.lr * upd) as f32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn contribs<'a>(xs: &'a [Vec<f32>], samples: &[u64]) -> Vec<Contribution<'a>> {
        xs.iter()
            .zip(samples)
            .map(|(d, &s)| Contribution {
                delta: d,
                samples: s,
            })
            .collect()
    }

    #[test]
    fn mean_is_sample_weighted() {
        let xs = vec![vec![1.0, 0.0], vec![4.0, 2.0]];
        let out = aggregate(&Rule::Mean, &contribs(&xs, &[3, 1])).unwrap();
        assert_eq!(out, vec![1.75, 0.5]);
        let out = aggregate(&Rule::Mean, &contribs(&xs, &[0, 0])).unwrap();
        assert_eq!(out, vec![2.5, 1.0]);
    }

    #[test]
    fn median_and_trimmed_mean_exact() {
        let xs = vec![
            vec![1.0, 10.0],
            vec![2.0, -10.0],
            vec![100.0, 0.0],
            vec![3.0, 1.0],
            vec![-50.0, 2.0],
        ];
        let c = contribs(&xs, &[1; 5]);
        assert_eq!(aggregate(&Rule::Median, &c).unwrap(), vec![2.0, 1.0]);
        // beta 0.2 of 5 drops one at each end: (1+2+3)/3, (0+1+2)/3.
        assert_eq!(
            aggregate(&Rule::TrimmedMean(0.2), &c).unwrap(),
            vec![2.0, 1.0]
        );
        assert_eq!(aggregate(&Rule::Median, &c[..4]).unwrap(), vec![2.5, 0.5]);
    }

    #[test]
    fn multi_krum_drops_the_outlier() {
        let xs = vec![
            vec![0.0, 0.0],
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![1.0, 1.0],
            vec![100.0, 100.0],
        ];
        let c = contribs(&xs, &[1; 5]);
        assert_eq!(krum_select(&c, 1, 4), vec![0, 1, 2, 3]);
        let out = aggregate(&Rule::MultiKrum { f: 1, m: 4 }, &c).unwrap();
        assert_eq!(out, vec![0.5, 0.5]);
        // m = 0 keeps n - f.
        assert_eq!(krum_select(&c, 1, 0).len(), 4);
    }

    #[test]
    fn centered_clip_exact_one_iteration() {
        // Median of {0, 2, 10} per coordinate is 2; distances to v=2: 2, 0, 8; tau = 4:
        // step = ((0-2)*1 + 0 + (10-2)*0.5) / 3 = 2/3, so v = 2 + 2/3.
        let xs = vec![vec![0.0f32], vec![2.0], vec![10.0]];
        let out = aggregate(
            &Rule::CenteredClip { tau: 4.0, iters: 1 },
            &contribs(&xs, &[1; 3]),
        )
        .unwrap();
        assert_eq!(out, vec![(2.0f64 + 2.0 / 3.0) as f32]);
    }

    #[test]
    fn rejects_bad_inputs() {
        let xs = vec![vec![1.0, f32::NAN], vec![1.0, 2.0]];
        assert!(aggregate(&Rule::Mean, &contribs(&xs, &[1, 1])).is_err());
        let xs = vec![vec![1.0], vec![1.0, 2.0]];
        assert!(aggregate(&Rule::Median, &contribs(&xs, &[1, 1])).is_err());
        assert!(aggregate(&Rule::Median, &[]).is_err());
    }

    /// Every rule, run on inputs shuffled and then sorted back into canonical order, gives the same bytes.
    #[test]
    fn rules_are_bitwise_deterministic() {
        let mut rng = Rng::seed(42);
        let n = 3000;
        let xs: Vec<(u64, Vec<f32>)> = (0..9u64)
            .map(|id| (id, (0..n).map(|_| rng.normal() as f32 * 0.01).collect()))
            .collect();
        let rules = [
            Rule::Mean,
            Rule::Median,
            Rule::TrimmedMean(0.2),
            Rule::MultiKrum { f: 2, m: 5 },
            Rule::CenteredClip { tau: 0.1, iters: 3 },
        ];
        for rule in rules {
            let run = |order_seed: u64| -> Vec<u8> {
                let mut v = xs.clone();
                Rng::seed(order_seed).shuffle(&mut v);
                v.sort_by_key(|(id, _)| *id);
                let c: Vec<Contribution<'_>> = v
                    .iter()
                    .map(|(id, d)| Contribution {
                        delta: d,
                        samples: 10 + id,
                    })
                    .collect();
                aggregate(&rule, &c)
                    .unwrap()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect()
            };
            assert_eq!(run(1), run(2), "{rule}");
        }
    }

    #[test]
    fn server_step_exact() {
        let mut p = vec![1.0f32, 1.0];
        let mut v = Vec::new();
        ServerOpt::default()
            .step(&mut p, &mut v, &[0.5, -1.0])
            .unwrap();
        assert_eq!(p, vec![1.5, 0.0]);
        let opt = ServerOpt {
            lr: 1.0,
            momentum: 0.5,
            nesterov: false,
        };
        let mut p = vec![0.0f32];
        opt.step(&mut p, &mut v, &[1.0]).unwrap();
        opt.step(&mut p, &mut v, &[1.0]).unwrap();
        // v = 1, then 1.5; p = 1 + 1.5.
        assert_eq!((p[0], v[0]), (2.5, 1.5));
        let nest = ServerOpt {
            nesterov: true,
            ..opt
        };
        let (mut p, mut v) = (vec![0.0f32], Vec::new());
        nest.step(&mut p, &mut v, &[1.0]).unwrap();
        assert_eq!(p[0], 1.5);
    }

    #[test]
    fn parses() {
        assert_eq!(
            "trimmed-mean:0.2".parse::<Rule>().unwrap(),
            Rule::TrimmedMean(0.2)
        );
        assert_eq!(
            "multi-krum:2,4".parse::<Rule>().unwrap(),
            Rule::MultiKrum { f: 2, m: 4 }
        );
        assert_eq!(
            "centered-clip:1.5".parse::<Rule>().unwrap(),
            Rule::CenteredClip { tau: 1.5, iters: 3 }
        );
        assert!("trimmed-mean:0.6".parse::<Rule>().is_err());
        assert!("geomed".parse::<Rule>().is_err());
    }
}

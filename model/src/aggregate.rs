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

/// A pre-aggregation step run before the rule, for heterogeneous (non-IID) honest deltas.
/// `f` is the number of Byzantine inputs assumed; `None` takes the BFT bound `(n - 1) / 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Pre {
    /// Nearest Neighbour Mixing (Allouah et al., AISTATS 2023, "Fixing by Mixing"): every input
    /// is replaced by the mean of its `n - f` nearest inputs (itself included). Mixing shrinks the
    /// spread of the honest inputs before a coordinate-wise or distance-based rule, which removes
    /// most of the bias those rules have when honest deltas differ (non-IID data).
    Nnm {
        /// Assumed Byzantine inputs.
        f: Option<usize>,
    },
    /// Adaptive Robust Clipping (Allouah et al., NeurIPS 2024): the `floor(2 f (n - f) / n)`
    /// inputs of largest L2 norm are scaled down to the norm of the largest one left.
    Arc {
        /// Assumed Byzantine inputs.
        f: Option<usize>,
    },
}

impl Pre {
    fn f(self, n: usize) -> usize {
        let (Pre::Nnm { f } | Pre::Arc { f }) = self;
        f.unwrap_or(n.saturating_sub(1) / 3)
    }
}

impl std::fmt::Display for Pre {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, f) = match *self {
            Pre::Nnm { f } => ("nnm", f),
            Pre::Arc { f } => ("arc", f),
        };
        match f {
            Some(f) => write!(out, "{name}:{f}"),
            None => write!(out, "{name}"),
        }
    }
}

/// The whole aggregation: optional pre-steps (applied left to right) and a rule.
/// Written `[arc[:F]+][nnm[:F]+]RULE`, e.g. `nnm+median`, `arc:2+nnm:2+trimmed-mean:0.25`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Aggregator {
    /// Steps run before the rule, in order.
    pub pre: Vec<Pre>,
    /// The rule.
    pub rule: Rule,
}

impl From<Rule> for Aggregator {
    fn from(rule: Rule) -> Self {
        Aggregator {
            pre: Vec::new(),
            rule,
        }
    }
}

impl std::str::FromStr for Aggregator {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut parts: Vec<&str> = s.split('+').map(str::trim).collect();
        let rule = parts
            .pop()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| parse_err("rule", s, "empty"))?
            .parse::<Rule>()?;
        let pre = parts
            .into_iter()
            .map(|p| {
                let (name, arg) = p.split_once(':').unwrap_or((p, ""));
                let f = if arg.is_empty() {
                    None
                } else {
                    Some(
                        arg.parse::<usize>()
                            .map_err(|_| parse_err("rule", s, format!("bad f {arg:?} in {p:?}")))?,
                    )
                };
                match name {
                    "nnm" => Ok(Pre::Nnm { f }),
                    "arc" => Ok(Pre::Arc { f }),
                    _ => Err(parse_err(
                        "rule",
                        s,
                        format!("unknown pre-aggregation step {p:?} (expected nnm[:F] or arc[:F])"),
                    )),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Aggregator { pre, rule })
    }
}

impl std::fmt::Display for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.pre {
            write!(f, "{p}+")?;
        }
        write!(f, "{}", self.rule)
    }
}

impl Aggregator {
    /// Whether the aggregation tolerates some Byzantine inputs: anything but a plain `mean`
    /// (sample-weighted, which one input can move anywhere).
    pub fn is_robust(&self) -> bool {
        !(self.pre.is_empty() && self.rule == Rule::Mean)
    }

    /// This aggregation assuming at least `f` Byzantine inputs: each pre-step's and Multi-Krum's
    /// f is raised to `f` (an explicit larger f is kept). For a round that adds inputs from
    /// untrusted contributors on top of the f validators the quorum tolerates.
    pub fn assuming(&self, f: usize) -> Aggregator {
        let raise = |g: Option<usize>| Some(g.map_or(f, |g| g.max(f)));
        let pre = self
            .pre
            .iter()
            .map(|p| match *p {
                Pre::Nnm { f: g } => Pre::Nnm { f: raise(g) },
                Pre::Arc { f: g } => Pre::Arc { f: raise(g) },
            })
            .collect();
        let rule = match self.rule {
            Rule::MultiKrum { f: g, m } => Rule::MultiKrum { f: g.max(f), m },
            r => r,
        };
        Aggregator { pre, rule }
    }

    /// Runs the pre-steps, then the rule, on `inputs` in the given order.
    pub fn aggregate(&self, inputs: &[Contribution<'_>]) -> Result<Vec<f32>> {
        if self.pre.is_empty() {
            return aggregate(&self.rule, inputs);
        }
        check(inputs)?;
        // The pre-steps read the inputs in place: only their outputs are new vectors (NNM
        // first, as in the default rule, copies nothing; ARC scales a copy).
        let mut cur: Option<Vec<Vec<f32>>> = None;
        for p in &self.pre {
            let next = match (p, cur.take()) {
                (Pre::Arc { .. }, Some(owned)) => {
                    let f = p.f(owned.len());
                    adaptive_robust_clipping(owned, f)
                }
                (Pre::Arc { .. }, None) => {
                    let f = p.f(inputs.len());
                    adaptive_robust_clipping(inputs.iter().map(|c| c.delta.to_vec()).collect(), f)
                }
                (Pre::Nnm { .. }, prev) => {
                    let xs: Vec<&[f32]> = match &prev {
                        Some(v) => v.iter().map(Vec::as_slice).collect(),
                        None => inputs.iter().map(|c| c.delta).collect(),
                    };
                    nearest_neighbour_mixing(&xs, p.f(xs.len()))
                }
            };
            cur = Some(next);
        }
        let cur = cur.unwrap_or_default();
        let mixed: Vec<Contribution<'_>> = cur
            .iter()
            .zip(inputs)
            .map(|(d, c)| Contribution {
                delta: d,
                samples: c.samples,
            })
            .collect();
        aggregate(&self.rule, &mixed)
    }
}

/// Inputs the round's outcome marks as outliers (indices, ascending): those whose L2 distance
/// to `aggregate` exceeds `factor` times the median distance of all inputs. Sums in f64 in
/// coordinate order, so every node computes the same list. A record for reputation, not a
/// rule: the aggregate is what the rule made of every input.
pub fn outliers(inputs: &[Contribution<'_>], aggregate: &[f32], factor: f64) -> Vec<usize> {
    let dist: Vec<f64> = inputs
        .iter()
        .map(|c| {
            c.delta
                .iter()
                .zip(aggregate)
                .map(|(&x, &a)| {
                    let d = f64::from(x) - f64::from(a);
                    d * d
                })
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    if dist.len() < 3 {
        return Vec::new();
    }
    let mut sorted = dist.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    dist.iter()
        .enumerate()
        .filter(|(_, d)| !d.is_finite() || **d > factor * median)
        .map(|(i, _)| i)
        .collect()
}

/// Squared L2 distances between every pair, `d[i * k + j]`, summed in f64 in coordinate order.
fn pairwise_sq_dists(xs: &[&[f32]]) -> Vec<f64> {
    let k = xs.len();
    let mut d = vec![0.0f64; k * k];
    for i in 0..k {
        for j in i + 1..k {
            let dist: f64 = xs[i]
                .iter()
                .zip(xs[j])
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                .sum();
            d[i * k + j] = dist;
            d[j * k + i] = dist;
        }
    }
    d
}

/// NNM: `y_i` = unweighted mean of the `n - f` inputs nearest to `x_i` (itself included; ties by index).
fn nearest_neighbour_mixing(xs: &[&[f32]], f: usize) -> Vec<Vec<f32>> {
    let k = xs.len();
    let keep = k.saturating_sub(f).max(1);
    let d = pairwise_sq_dists(xs);
    (0..k)
        .map(|i| {
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by(|&a, &b| d[i * k + a].total_cmp(&d[i * k + b]).then(a.cmp(&b)));
            let mut acc = vec![0.0f64; xs[i].len()];
            for &j in &order[..keep] {
                for (a, x) in acc.iter_mut().zip(xs[j]) {
                    *a += f64::from(*x);
                }
            }
            acc.into_iter().map(|a| (a / keep as f64) as f32).collect()
        })
        .collect()
}

/// ARC: scale the `floor(2 f (n - f) / n)` largest-norm inputs down to the next largest norm.
fn adaptive_robust_clipping(mut xs: Vec<Vec<f32>>, f: usize) -> Vec<Vec<f32>> {
    let k = xs.len();
    let clipped = (2 * f * k.saturating_sub(f)) / k.max(1);
    if clipped == 0 || clipped >= k {
        return xs;
    }
    let norms: Vec<f64> = xs
        .iter()
        .map(|x| x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt())
        .collect();
    let mut order: Vec<usize> = (0..k).collect();
    // Largest first; ties by index.
    order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]).then(a.cmp(&b)));
    let radius = norms[order[clipped]];
    for &i in &order[..clipped] {
        if norms[i] > radius {
            let scale = radius / norms[i];
            for v in xs[i].iter_mut() {
                *v = (f64::from(*v) * scale) as f32;
            }
        }
    }
    xs
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

/// A sample claim counts at most this many times the (lower) median claim.
pub const SAMPLE_CAP_FACTOR: u64 = 4;

/// The FedAvg weights of `samples`, each claim first capped at [`SAMPLE_CAP_FACTOR`] times the
/// lower median claim, summed in `u128` (no overflow whatever the claims). Claims are the
/// authors' own word: with fewer than half of them inflated, the lower median is at most the
/// largest honest claim, so one inflated claim weighs at most `SAMPLE_CAP_FACTOR` honest
/// medians, however large it is. All zero: equal weights.
pub fn bounded_weights(samples: &[u64]) -> Vec<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let Some(median) = sorted.get(sorted.len().saturating_sub(1) / 2) else {
        return Vec::new();
    };
    let cap = median.saturating_mul(SAMPLE_CAP_FACTOR);
    let capped: Vec<u64> = samples.iter().map(|s| (*s).min(cap)).collect();
    let total: u128 = capped.iter().map(|s| u128::from(*s)).sum();
    if total == 0 {
        return vec![1.0 / samples.len() as f64; samples.len()];
    }
    capped.iter().map(|s| *s as f64 / total as f64).collect()
}

fn weighted_mean(inputs: &[Contribution<'_>], n: usize) -> Vec<f32> {
    let samples: Vec<u64> = inputs.iter().map(|c| c.samples).collect();
    let weights = bounded_weights(&samples);
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
    let refs: Vec<&[f32]> = inputs.iter().map(|c| c.delta).collect();
    let d = pairwise_sq_dists(&refs);
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
    /// The learning rate over rounds (`None`: constant `lr`): linear warm-up then cosine decay to
    /// a tenth of `lr` at the schedule's last round, counted in rounds. Every node knows the
    /// round, so every node applies the same rate.
    #[serde(default)]
    pub schedule: Option<crate::lm_local::RoundSchedule>,
}

impl Default for ServerOpt {
    fn default() -> Self {
        ServerOpt {
            lr: 1.0,
            momentum: 0.0,
            nesterov: false,
            schedule: None,
        }
    }
}

impl ServerOpt {
    /// Checks the ranges: a server learning rate finite in `(0, MAX_LR]` (0 never moves the
    /// model), a momentum in `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        let max = crate::train::MAX_LR;
        let why = if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= max) {
            format!(
                "learning rate {:?} must be finite and in (0, {max}]",
                self.lr
            )
        } else if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            format!("momentum {:?} must be in [0, 1)", self.momentum)
        } else {
            return match self.schedule {
                Some(s) => s.validate(),
                None => Ok(()),
            };
        };
        Err(parse_err(
            "server optimiser",
            &format!("lr {:?}, momentum {:?}", self.lr, self.momentum),
            why,
        ))
    }

    /// The step of round `round` (1-based): this optimiser with the scheduled rate and no
    /// schedule left, so [`ServerOpt::step`] applies it as a constant.
    pub fn at_round(&self, round: u64) -> ServerOpt {
        let lr = match self.schedule {
            Some(s) => s.lr_at(
                self.lr,
                usize::try_from(round.saturating_sub(1)).unwrap_or(usize::MAX),
            ),
            None => self.lr,
        };
        ServerOpt {
            lr,
            schedule: None,
            ..*self
        }
    }

    /// Applies one step to `params` in place; `velocity` is the momentum buffer (resized on first use).
    /// Deterministic: elementwise f64 arithmetic rounded to f32. A step that would make any
    /// parameter or momentum value non-finite (a model driven to overflow by poisoned updates)
    /// is not taken: both stay as they were, so the chain keeps a finite model and goes on.
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
        // Checked before anything is written, so a refused step costs no copy of the model.
        let v_at = |i: usize| velocity.get(i).copied().unwrap_or(0.0);
        let finite = params.iter().zip(aggregate).enumerate().all(|(i, (p, a))| {
            let (np, nv) = self.update(*p, v_at(i), *a);
            np.is_finite() && nv.is_finite()
        });
        if !finite {
            return Ok(());
        }
        if self.momentum == 0.0 {
            for (p, a) in params.iter_mut().zip(aggregate) {
                *p = self.update(*p, 0.0, *a).0;
            }
            return Ok(());
        }
        velocity.resize(params.len(), 0.0);
        for ((p, v), a) in params.iter_mut().zip(velocity.iter_mut()).zip(aggregate) {
            (*p, *v) = self.update(*p, *v, *a);
        }
        Ok(())
    }

    /// One coordinate: (new parameter, new momentum) from (parameter, momentum, aggregate).
    fn update(&self, p: f32, v: f32, a: f32) -> (f32, f32) {
        let a = f64::from(a);
        if self.momentum == 0.0 {
            return ((f64::from(p) + self.lr * a) as f32, v);
        }
        let nv = self.momentum * f64::from(v) + a;
        let upd = if self.nesterov {
            self.momentum * nv + a
        } else {
            nv
        };
        ((f64::from(p) + self.lr * upd) as f32, nv as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn server_opt_is_range_checked() {
        let opt = |lr, momentum| ServerOpt {
            lr,
            momentum,
            nesterov: false,
            schedule: None,
        };
        assert!(ServerOpt::default().validate().is_ok());
        assert!(opt(10.0, 0.99).validate().is_ok());
        for (lr, m, says) in [
            (
                f64::NAN,
                0.0,
                "learning rate NaN must be finite and in (0, 10]",
            ),
            (0.0, 0.0, "learning rate 0.0 must be finite and in (0, 10]"),
            (
                11.0,
                0.0,
                "learning rate 11.0 must be finite and in (0, 10]",
            ),
            (1.0, 2.0, "momentum 2.0 must be in [0, 1)"),
            (1.0, 1.0, "momentum 1.0 must be in [0, 1)"),
            (1.0, -0.1, "momentum -0.1 must be in [0, 1)"),
        ] {
            let got = opt(lr, m).validate().unwrap_err().to_string();
            assert!(got.contains(says), "{got}");
        }
    }

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
    fn inflated_sample_claims_are_bounded_and_never_overflow() {
        // One claim of u64::MAX among honest ones weighs at most SAMPLE_CAP_FACTOR medians.
        let w = bounded_weights(&[100, 120, 90, u64::MAX]);
        let cap = 4.0 * 100.0;
        let total = 100.0 + 120.0 + 90.0 + cap;
        assert_eq!(w[3], cap / total);
        assert!(w[3] < 0.57, "inflated weight {}", w[3]);
        // Every claim at the maximum: equal weights, no overflow.
        let w = bounded_weights(&[u64::MAX; 5]);
        assert!(w.iter().all(|x| (*x - 0.2).abs() < 1e-12));
        assert_eq!(bounded_weights(&[0, 0]), vec![0.5, 0.5]);
        assert!(bounded_weights(&[]).is_empty());
        // The mean itself: the inflated author cannot take it over.
        let xs = vec![vec![0.0f32; 3], vec![0.0; 3], vec![0.0; 3], vec![100.0; 3]];
        let c = contribs(&xs, &[10, 10, 10, u64::MAX]);
        let agg = "mean".parse::<Aggregator>().unwrap().aggregate(&c).unwrap();
        assert!((agg[0] - 100.0 * 40.0 / 70.0).abs() < 1e-3, "{agg:?}");
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
        let rules: Vec<Aggregator> = [
            "mean",
            "median",
            "trimmed-mean:0.2",
            "multi-krum:2,5",
            "centered-clip:0.1,3",
            "nnm+median",
            "arc:2+nnm:2+trimmed-mean:0.25",
            "nnm+centered-clip:0.1",
        ]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
        for rule in &rules {
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
                rule.aggregate(&c)
                    .unwrap()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect()
            };
            assert_eq!(run(1), run(2), "{rule}");
        }
    }

    #[test]
    fn server_step_refuses_to_overflow() {
        let mut p = vec![1.0f32, f32::MAX];
        let mut v = Vec::new();
        ServerOpt::default()
            .step(&mut p, &mut v, &[1.0, f32::MAX])
            .unwrap();
        assert_eq!(p, vec![1.0, f32::MAX]);
        let opt = ServerOpt {
            lr: 1.0,
            momentum: 0.5,
            nesterov: false,
            schedule: None,
        };
        opt.step(&mut p, &mut v, &[1.0, f32::MAX]).unwrap();
        assert_eq!((p, v), (vec![1.0, f32::MAX], vec![]));
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
            schedule: None,
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

    /// DiLoCo's outer step (lr 0.7, Nesterov momentum 0.9) on a toy vector over two rounds:
    /// `v = 0.9 v + a; p += 0.7 (0.9 v + a)` with the aggregate `a` as the pseudo-gradient's
    /// negative (the mean delta).
    #[test]
    fn nesterov_outer_step_matches_the_formula_over_two_rounds() {
        let opt = ServerOpt {
            lr: 0.7,
            momentum: 0.9,
            nesterov: true,
            schedule: None,
        };
        let (mut p, mut v) = (vec![0.0f32, 0.0], Vec::new());
        opt.step(&mut p, &mut v, &[1.0, -2.0]).unwrap();
        // v = (1, -2); p = 0.7 (0.9 v + a) = 0.7 (1.9, -3.8).
        let close = |x: f32, y: f64| (f64::from(x) - y).abs() < 1e-6;
        assert!(close(p[0], 1.33) && close(p[1], -2.66), "{p:?}");
        assert!(close(v[0], 1.0) && close(v[1], -2.0), "{v:?}");
        opt.step(&mut p, &mut v, &[0.5, 1.0]).unwrap();
        // v = 0.9 (1, -2) + (0.5, 1) = (1.4, -0.8); p += 0.7 (0.9 v + a) = 0.7 (1.76, 0.28).
        assert!(close(v[0], 1.4) && close(v[1], -0.8), "{v:?}");
        assert!(
            close(p[0], 1.33 + 1.232) && close(p[1], -2.66 + 0.196),
            "{p:?}"
        );
        // Heavy-ball momentum takes p += 0.7 v instead: a different point after two rounds.
        let heavy = ServerOpt {
            nesterov: false,
            ..opt
        };
        let (mut q, mut w) = (vec![0.0f32, 0.0], Vec::new());
        heavy.step(&mut q, &mut w, &[1.0, -2.0]).unwrap();
        heavy.step(&mut q, &mut w, &[0.5, 1.0]).unwrap();
        assert!(close(q[0], 0.7 + 0.98) && close(q[1], -1.4 - 0.56), "{q:?}");
    }

    /// The scheduled server rate: warm-up from round 1, the peak, then cosine to a tenth of it,
    /// the same function as the transformer's schedule; and a step at a round moves the model
    /// by that round's rate.
    #[test]
    fn the_server_rate_follows_its_schedule_over_rounds() {
        let opt = ServerOpt {
            lr: 2.0,
            momentum: 0.0,
            nesterov: false,
            schedule: Some(crate::lm_local::RoundSchedule {
                warmup: 2,
                total_steps: 10,
            }),
        };
        let lrs: Vec<f64> = [1, 2, 3, 4, 11, 1000]
            .into_iter()
            .map(|r| opt.at_round(r).lr)
            .collect();
        assert_eq!(lrs[0], 1.0, "round 1 is the first warm-up step: {lrs:?}");
        assert_eq!(lrs[1..3], [2.0, 2.0], "{lrs:?}");
        assert!(lrs[3] < 2.0 && lrs[3] > 1.9, "{lrs:?}");
        for late in &lrs[4..] {
            assert!((late - 0.2).abs() < 1e-12, "{lrs:?}");
        }
        assert_eq!(opt.at_round(5).schedule, None);
        let mut p = vec![0.0f32];
        opt.at_round(11)
            .step(&mut p, &mut Vec::new(), &[1.0])
            .unwrap();
        assert!((p[0] - 0.2).abs() < 1e-6, "{p:?}");
        // Without a schedule the rate is constant.
        let flat = ServerOpt {
            schedule: None,
            ..opt
        };
        assert_eq!(flat.at_round(1000).lr, 2.0);
        // A schedule whose warm-up exceeds its length is refused.
        let bad = ServerOpt {
            schedule: Some(crate::lm_local::RoundSchedule {
                warmup: 11,
                total_steps: 10,
            }),
            ..opt
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn nnm_exact() {
        // n = 4, f = 1: each input is replaced by the mean of its 3 nearest (itself included).
        // 0 -> {0, 1, 3}; 1 -> {1, 0, 3}; 3 -> {3, 1, 0}; 100 -> {100, 3, 1}.
        let xs = vec![vec![0.0f32], vec![1.0], vec![3.0], vec![100.0]];
        let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
        let mixed = nearest_neighbour_mixing(&refs, 1);
        let want: Vec<Vec<f32>> = vec![
            vec![(4.0f64 / 3.0) as f32],
            vec![(4.0f64 / 3.0) as f32],
            vec![(4.0f64 / 3.0) as f32],
            vec![(104.0f64 / 3.0) as f32],
        ];
        assert_eq!(mixed, want);
        // Then the median of the mixed values: (4/3 + 4/3) / 2.
        let agg: Aggregator = "nnm:1+median".parse().unwrap();
        let out = agg.aggregate(&contribs(&xs, &[1; 4])).unwrap();
        assert_eq!(out, vec![(4.0f64 / 3.0) as f32]);
        // f = 0 mixes everything into the plain mean.
        assert_eq!(nearest_neighbour_mixing(&refs, 0)[3], vec![26.0]);
    }

    #[test]
    fn arc_exact() {
        // n = 5, f = 1: floor(2 * 1 * 4 / 5) = 1 input clipped, to the second largest norm (5).
        let xs = vec![
            vec![3.0f32, 4.0],
            vec![0.0, 1.0],
            vec![60.0, 80.0],
            vec![1.0, 0.0],
            vec![0.0, 2.0],
        ];
        let out = adaptive_robust_clipping(xs.clone(), 1);
        assert_eq!(out[2], vec![3.0, 4.0]);
        assert_eq!(out[0], xs[0]);
        // n = 8, f = 2: floor(2 * 2 * 6 / 8) = 3 clipped to the 4th largest norm.
        let ys: Vec<Vec<f32>> = (1..=8).map(|i| vec![i as f32]).collect();
        let out = adaptive_robust_clipping(ys, 2);
        let flat: Vec<f32> = out.into_iter().flatten().collect();
        assert_eq!(flat, vec![1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0]);
        // Default f for n = 8 is (8 - 1) / 3 = 2.
        assert_eq!(Pre::Arc { f: None }.f(8), 2);
    }

    #[test]
    fn aggregator_parses_and_prints() {
        let a: Aggregator = "arc+nnm:2+trimmed-mean:0.25".parse().unwrap();
        assert_eq!(
            a,
            Aggregator {
                pre: vec![Pre::Arc { f: None }, Pre::Nnm { f: Some(2) }],
                rule: Rule::TrimmedMean(0.25)
            }
        );
        assert_eq!(a.to_string(), "arc+nnm:2+trimmed-mean:0.25");
        assert_eq!(a.to_string().parse::<Aggregator>().unwrap(), a);
        assert_eq!("mean".parse::<Aggregator>().unwrap(), Rule::Mean.into());
        for bad in ["nnm+", "bucket+median", "nnm:x+median", "", "nnm+geomed"] {
            assert!(bad.parse::<Aggregator>().is_err(), "{bad}");
        }
        let xs = vec![vec![1.0, f32::NAN], vec![1.0, 2.0]];
        assert!(a.aggregate(&contribs(&xs, &[1, 1])).is_err());
    }

    /// With two large sign-flipped inputs among spread-out honest ones, NNM + median lands
    /// nearer the honest mean than the median alone.
    #[test]
    fn assuming_raises_every_f_and_keeps_a_larger_one() {
        let a: Aggregator = "arc+nnm:5+median".parse().unwrap();
        assert_eq!(a.assuming(2).to_string(), "arc:2+nnm:5+median");
        assert!(a.is_robust() && !"mean".parse::<Aggregator>().unwrap().is_robust());
        let k: Aggregator = "multi-krum:1,3".parse().unwrap();
        assert_eq!(
            k.assuming(2).rule,
            Rule::MultiKrum { f: 2, m: 3 },
            "Multi-Krum's f is raised"
        );
        // Two poisoned inputs among 6 (f = 1 assumed by default) poison nnm's neighbourhoods;
        // assuming 2 keeps the median at the honest value.
        let xs: Vec<Vec<f32>> = [1.0f32, 1.01, 0.99, 1.0, 1e6, 1e6]
            .iter()
            .map(|&v| vec![v])
            .collect();
        let inputs = contribs(&xs, &[1; 6]);
        let a: Aggregator = "nnm+median".parse().unwrap();
        let naive = a.aggregate(&inputs).unwrap();
        assert!(naive[0] > 1e4, "{naive:?}");
        let robust = a.assuming(2).aggregate(&inputs).unwrap();
        assert!((robust[0] - 1.0).abs() < 0.02, "{robust:?}");
    }

    #[test]
    fn outliers_are_inputs_far_from_the_aggregate_relative_to_the_median() {
        // Four honest inputs and one far away.
        let xs = vec![
            vec![1.0f32, 0.0],
            vec![1.1, 0.1],
            vec![0.9, -0.1],
            vec![1.0, 0.05],
            vec![-10.0, 0.0],
        ];
        let inputs = contribs(&xs, &[1; 5]);
        let agg = "median"
            .parse::<Aggregator>()
            .unwrap()
            .aggregate(&inputs)
            .unwrap();
        assert_eq!(outliers(&inputs, &agg, 3.0), vec![4]);
        assert!(
            outliers(&inputs[..4], &agg, 3.0).is_empty(),
            "no outlier among honest ones"
        );
        assert!(
            outliers(&inputs[..2], &agg, 3.0).is_empty(),
            "too few to judge"
        );
    }

    #[test]
    fn nnm_reduces_median_bias() {
        let honest: Vec<f32> = vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let mut xs: Vec<Vec<f32>> = honest.iter().map(|v| vec![*v]).collect();
        xs.push(vec![-25.0]);
        xs.push(vec![-50.0]);
        let c = contribs(&xs, &[1; 8]);
        let mean = 2.5f32;
        let plain = aggregate(&Rule::Median, &c).unwrap()[0];
        let mixed = "nnm:2+median"
            .parse::<Aggregator>()
            .unwrap()
            .aggregate(&c)
            .unwrap()[0];
        assert!(
            (mixed - mean).abs() < (plain - mean).abs(),
            "{mixed} vs {plain}"
        );
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

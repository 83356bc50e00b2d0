//! A node's local training of the transformer from round to round: the two levers of local
//! AdamW that federated language-model training depends on (DiLoCo, Douillard et al. 2023; the
//! outer Nesterov step is [`crate::aggregate::ServerOpt`]).
//!
//! - [`LmRounds::keep_moments`]: the node keeps its AdamW moments (and step count) from one round
//!   to the next instead of starting every round from zero moments, whose first steps are
//!   sign-like steps of the full learning rate. The moments are node-local state: they never
//!   leave the node, and only the delta they produce is committed.
//! - [`LmRounds::schedule`]: the learning rate follows warm-up and cosine decay on the global
//!   step `(round - 1) x local_steps + k`, the schedule `cohort lm-train` uses on its steps. Every
//!   node knows the round, so every node computes the same rate.

use candle_core::Device;

use crate::data::Dataset;
use crate::error::{Error, Result, parse_err};
use crate::lm::{LmOptimizer, LmTrainConfig, train_steps};
use crate::rng::Rng;
use crate::spec::ModelSpec;
use crate::train::{Optimizer, TrainConfig, TrainOutput, Work};
use crate::transformer::Transformer;

/// The longest schedule a configuration may name, in global steps.
pub const MAX_SCHEDULE_STEPS: usize = 1_000_000_000;

/// Warm-up then cosine decay over a whole federated run, on the global local-step count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoundSchedule {
    /// Linear warm-up steps.
    pub warmup: usize,
    /// The step at which the cosine reaches a tenth of the peak (and stays there).
    pub total_steps: usize,
}

impl RoundSchedule {
    /// The learning rate at global step `step` (0-based) for the peak rate `peak`: the same
    /// function as [`LmTrainConfig::lr_at`] over `total_steps` steps.
    pub fn lr_at(&self, peak: f64, step: usize) -> f64 {
        LmTrainConfig {
            steps: self.total_steps,
            warmup: self.warmup,
            lr: peak,
            ..LmTrainConfig::default()
        }
        .lr_at(step)
    }

    /// The global step of local step `k` (0-based) of round `round` (1-based) when every round
    /// takes `steps` local steps.
    pub fn global_step(round: u64, steps: usize, k: usize) -> usize {
        let before = usize::try_from(round.saturating_sub(1)).unwrap_or(usize::MAX);
        before.saturating_mul(steps).saturating_add(k)
    }

    /// Checks `1 <= total_steps <= MAX_SCHEDULE_STEPS` and `warmup <= total_steps`.
    pub fn validate(&self) -> Result<()> {
        let why = if !(1..=MAX_SCHEDULE_STEPS).contains(&self.total_steps) {
            format!("total steps must be in [1, {MAX_SCHEDULE_STEPS}]")
        } else if self.warmup > self.total_steps {
            "warm-up must not exceed the total steps".to_string()
        } else {
            return Ok(());
        };
        Err(parse_err("learning-rate schedule", &self.to_string(), why))
    }
}

impl std::str::FromStr for RoundSchedule {
    type Err = Error;
    /// `cosine:WARMUP,TOTAL_STEPS`, range-checked ([`RoundSchedule::validate`]).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            parse_err(
                "learning-rate schedule",
                s,
                "expected cosine:WARMUP,TOTAL_STEPS",
            )
        };
        let arg = s.strip_prefix("cosine:").ok_or_else(bad)?;
        let (w, t) = arg.split_once(',').ok_or_else(bad)?;
        let sched = RoundSchedule {
            warmup: w.trim().parse().map_err(|_| bad())?,
            total_steps: t.trim().parse().map_err(|_| bad())?,
        };
        sched.validate().map_err(|e| match e {
            Error::Parse { why, .. } => parse_err("learning-rate schedule", s, why),
            other => other,
        })?;
        Ok(sched)
    }
}

impl std::fmt::Display for RoundSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cosine:{},{}", self.warmup, self.total_steps)
    }
}

/// How a transformer's local training carries over between rounds. The default (no schedule,
/// fresh moments) is a constant learning rate and a new AdamW every round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct LmRounds {
    /// The learning rate over the run (`None`: the optimiser's constant rate).
    pub schedule: Option<RoundSchedule>,
    /// Keep the AdamW moments from round to round.
    pub keep_moments: bool,
}

/// One node's transformer and its AdamW, kept between rounds.
pub struct LocalLm {
    kind: ModelSpec,
    model: Transformer,
    opt: Option<LmOptimizer>,
}

impl LocalLm {
    /// A node's trainer for the transformer `kind`, holding `params` until its first round.
    pub fn new(kind: &ModelSpec, params: &[f32], device: &Device) -> Result<Self> {
        let lm = kind
            .lm_config()
            .ok_or_else(|| Error::Model(format!("{kind} is not a transformer")))?;
        Ok(LocalLm {
            kind: kind.clone(),
            model: Transformer::new(lm, kind.classes(), params, device)?,
            opt: None,
        })
    }

    /// Round `round` (1-based) of local training from `global`: `cfg.work` steps (or epochs of
    /// `data.len() / (batch * context)` steps) of `cfg.batch` random windows of the token stream
    /// `data` ([`Dataset::tokens`]), AdamW at the peak rate of `cfg.optimizer` (which must be
    /// `adam:LR`; betas 0.9/0.99 and weight decay 0.1 on matrices as in
    /// [`LmTrainConfig::default`]), scheduled and carried over as `rounds` says. The FedAvg
    /// weight (`samples`) is the number of tokens trained on, so nodes doing the same work weigh
    /// the same whatever the size of their text. FedProx and DP-SGD are not implemented for the
    /// transformer: asking for them is an error, not a silent no-op.
    pub fn train_round(
        &mut self,
        global: &[f32],
        data: &Dataset,
        cfg: &TrainConfig,
        rounds: &LmRounds,
        round: u64,
        rng: &mut Rng,
    ) -> Result<TrainOutput> {
        let lr = match cfg.optimizer {
            Optimizer::Adam { lr } => lr,
            other => {
                return Err(Error::Model(format!(
                    "the transformer trains with adam:LR, not {other}"
                )));
            }
        };
        if cfg.prox_mu != 0.0 || cfg.dp_sgd.is_some() {
            return Err(Error::Model(
                "FedProx and DP-SGD are not implemented for the transformer".into(),
            ));
        }
        if let Some(s) = &rounds.schedule {
            s.validate()?;
        }
        if !crate::train::check_data(&self.kind, data)? {
            return Err(Error::Dataset("no text to train on".into()));
        }
        let context = self.model.config().context;
        let per_epoch = data.len().div_ceil(cfg.batch.max(1) * context).max(1);
        let steps = match cfg.work {
            Work::Steps(s) => s,
            Work::Epochs(e) => e * per_epoch,
        };
        self.model.set_flat(global)?;
        let tc = LmTrainConfig {
            steps,
            batch: cfg.batch,
            lr,
            warmup: 0,
            ..LmTrainConfig::default()
        };
        if !rounds.keep_moments || self.opt.is_none() {
            self.opt = Some(LmOptimizer::new(&self.model, lr, tc.weight_decay)?);
        }
        let opt = self
            .opt
            .as_mut()
            .ok_or_else(|| Error::Model("no optimiser".into()))?;
        let schedule = rounds.schedule;
        let lr_at = |k: usize| match schedule {
            Some(s) => s.lr_at(lr, RoundSchedule::global_step(round, steps, k)),
            None => lr,
        };
        let mean_loss = train_steps(&self.model, &data.token_ids(), &tc, opt, &lr_at, rng, None)?;
        let mut delta = self.model.flat()?;
        for (d, g) in delta.iter_mut().zip(global) {
            *d -= g;
        }
        Ok(TrainOutput {
            delta,
            samples: (steps * cfg.batch * context) as u64,
            mean_loss,
            steps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::TransformerConfig;

    fn tiny() -> ModelSpec {
        let t = TransformerConfig {
            layers: 1,
            heads: 2,
            dim: 16,
            context: 8,
        };
        ModelSpec::transformer(t, 9).unwrap()
    }

    fn cfg(steps: usize) -> TrainConfig {
        TrainConfig {
            work: Work::Steps(steps),
            batch: 4,
            optimizer: Optimizer::Adam { lr: 0.01 },
            prox_mu: 0.0,
            dp_sgd: None,
        }
    }

    #[test]
    fn the_schedule_is_lm_trains_on_the_global_step() {
        let s: RoundSchedule = "cosine:10,110".parse().unwrap();
        assert_eq!(
            s,
            RoundSchedule {
                warmup: 10,
                total_steps: 110
            }
        );
        assert_eq!(s.to_string(), "cosine:10,110");
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        // Warm-up from a tenth, the peak, the middle of the cosine, a tenth at the end and after.
        assert!(close(s.lr_at(1e-3, 0), 1e-4));
        assert!(close(s.lr_at(1e-3, 9), 1e-3));
        assert!(close(s.lr_at(1e-3, 60), 5.5e-4));
        assert!(close(s.lr_at(1e-3, 110), 1e-4));
        assert!(close(s.lr_at(1e-3, 500), 1e-4));
        // Round 3 of 10 local steps starts at global step 20.
        assert_eq!(RoundSchedule::global_step(3, 10, 0), 20);
        assert_eq!(RoundSchedule::global_step(3, 10, 9), 29);
        assert_eq!(RoundSchedule::global_step(0, 10, 4), 4);
        assert_eq!(RoundSchedule::global_step(u64::MAX, 10, 4), usize::MAX);
        for (bad, says) in [
            ("cosine:11,10", "warm-up must not exceed"),
            ("cosine:0,0", "total steps must be in"),
            ("cosine:5", "expected cosine:WARMUP,TOTAL_STEPS"),
            ("linear:5,10", "expected cosine:WARMUP,TOTAL_STEPS"),
            ("cosine:-1,10", "expected cosine:WARMUP,TOTAL_STEPS"),
        ] {
            let e = bad.parse::<RoundSchedule>().unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
    }

    /// Two rounds from the same global model and the same batches: with fresh moments the
    /// second round repeats the first exactly; with kept moments it does not (the second round's
    /// first step is no longer a sign-like step of the full rate).
    #[test]
    fn moments_persist_across_rounds_only_when_asked() {
        let spec = tiny();
        let data = Dataset::tokens(&[0, 1, 2, 3, 4, 5, 6, 7, 8].repeat(20)).unwrap();
        let global = spec.init(2);
        let two_rounds = |keep_moments| {
            let rounds = LmRounds {
                schedule: None,
                keep_moments,
            };
            let mut local = LocalLm::new(&spec, &global, &Device::Cpu).unwrap();
            let mut go = |round| {
                local
                    .train_round(&global, &data, &cfg(3), &rounds, round, &mut Rng::seed(7))
                    .unwrap()
                    .delta
            };
            (go(1), go(2))
        };
        let (a1, a2) = two_rounds(false);
        assert_eq!(a1, a2);
        let (b1, b2) = two_rounds(true);
        assert_eq!(a1, b1);
        assert_ne!(b1, b2);
        // Fresh moments equal the one-shot path that the classifiers' rounds also take.
        let once = crate::train::train_local(
            &spec,
            &global,
            &data,
            &cfg(3),
            &mut Rng::seed(7),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(once.delta, a1);
    }

    /// A round of `train_round` on the CPU takes the hand-written path ([`crate::fast_lm`]); the
    /// same round on candle's autograd path (same windows, same AdamW) ends at the same
    /// parameters, on a small model and on the default one: 99.5% of them within 1e-5 and all
    /// within 3e-4 (each step moves a parameter by up to lr = 1e-2). AdamW divides by the
    /// gradient's running magnitude, so a parameter whose gradient nearly cancels turns the two
    /// paths' f32 rounding (1e-6 relative) into a visible step difference: measured, the worst
    /// of 820,554 was 2.1e-4, 0.04% beyond 1e-5 (0.23% of the small model's 7,017).
    #[test]
    fn a_round_on_the_fast_path_equals_the_autograd_round() {
        let small = TransformerConfig {
            layers: 2,
            heads: 2,
            dim: 16,
            context: 8,
        };
        for (lm, vocab, steps) in [(small, 9, 6), (TransformerConfig::default(), 74, 2)] {
            let spec = ModelSpec::transformer(lm, vocab).unwrap();
            let text: Vec<u32> = (0..600).map(|i| ((i * 7 + i / 5) % vocab) as u32).collect();
            let data = Dataset::tokens(&text).unwrap();
            let global = spec.init(4);
            let rounds = LmRounds::default();
            let mut local = LocalLm::new(&spec, &global, &Device::Cpu).unwrap();
            let fast = local
                .train_round(&global, &data, &cfg(steps), &rounds, 1, &mut Rng::seed(9))
                .unwrap();
            assert!(local.opt.as_ref().is_some_and(LmOptimizer::is_fast));
            let model = Transformer::new(lm, vocab, &global, &Device::Cpu).unwrap();
            let tc = LmTrainConfig {
                steps,
                batch: 4,
                lr: 0.01,
                warmup: 0,
                ..LmTrainConfig::default()
            };
            let mut opt = LmOptimizer::autograd(&model, tc.lr, tc.weight_decay).unwrap();
            assert!(!opt.is_fast());
            let ids = data.token_ids();
            let loss = train_steps(
                &model,
                &ids,
                &tc,
                &mut opt,
                &|_| 0.01,
                &mut Rng::seed(9),
                None,
            )
            .unwrap();
            assert!(
                (loss - fast.mean_loss).abs() < 1e-5,
                "{loss} vs {}",
                fast.mean_loss
            );
            let after = model.flat().unwrap();
            let mut moved = 0.0f32;
            let mut diffs = Vec::new();
            for (i, ((d, g), a)) in fast.delta.iter().zip(&global).zip(&after).enumerate() {
                let want = a - g;
                moved = moved.max(want.abs());
                assert!((d - want).abs() < 3e-4, "{lm} [{i}]: {d} vs {want}");
                diffs.push((d - want).abs());
            }
            assert!(moved > 1e-3, "{moved}");
            let loose = diffs.iter().filter(|d| **d > 1e-5).count();
            assert!(
                loose * 200 <= diffs.len(),
                "{lm}: {loose} of {}",
                diffs.len()
            );
        }
    }

    /// The schedule sets each step's rate from the round: round 1 of a warm-up over 4 steps
    /// moves less than the constant peak rate does, and rounds past the decay move less still.
    #[test]
    fn the_schedule_scales_a_rounds_steps() {
        let spec = tiny();
        let data = Dataset::tokens(&[0, 1, 2, 3, 4, 5, 6, 7, 8].repeat(20)).unwrap();
        let global = spec.init(3);
        let norm = |schedule, round| {
            let rounds = LmRounds {
                schedule,
                keep_moments: false,
            };
            let mut local = LocalLm::new(&spec, &global, &Device::Cpu).unwrap();
            let out = local
                .train_round(&global, &data, &cfg(2), &rounds, round, &mut Rng::seed(5))
                .unwrap();
            crate::dp::l2_norm(&out.delta)
        };
        let cosine = Some(RoundSchedule {
            warmup: 4,
            total_steps: 8,
        });
        let peak = norm(None, 1);
        assert!(
            norm(cosine, 1) < 0.5 * peak,
            "{} vs {peak}",
            norm(cosine, 1)
        );
        // Round 3 takes steps 4 and 5: the peak, then 0.87 of it.
        let third = norm(cosine, 3);
        assert!(third > 0.8 * peak && third < peak, "{third} vs {peak}");
        // Round 6 takes steps 10 and 11, past the decay: a tenth of the peak.
        assert!(norm(cosine, 6) < 0.2 * peak);
    }
}

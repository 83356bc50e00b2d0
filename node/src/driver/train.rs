//! The shell's local training: one round on a blocking thread, its secrets from the OS.

use std::sync::Arc;
use std::time::Instant;

use model::data::Dataset;
use model::lm_local::{LmRounds, LocalLm};
use model::rng::Rng;

use super::{Done, Shell};
use crate::protocol::{Core, Event};

impl Shell {
    /// Local training on a blocking thread. The minibatch order is seeded from the key and the
    /// round; the privacy noise seed comes from the OS CSPRNG.
    pub(super) fn train(&self, core: &Core, round: u64, params: Arc<Vec<f32>>) {
        let g = core.genesis();
        let (kind, train_cfg, seed) = (g.model.clone(), g.train, g.file.seed);
        let lm_rounds = g.lm_rounds;
        let lm_local = self.lm_local.clone();
        let me = core.id().0;
        let data = self.train.clone();
        let tx = self.done_tx.clone();
        tokio::task::spawn_blocking(move || {
            let stream =
                u64::from_le_bytes([me[0], me[1], me[2], me[3], me[4], me[5], me[6], me[7]]);
            let mut rng = Rng::derive(seed ^ stream, round);
            let t = Instant::now();
            // DP-SGD's sampling and noise: 32 fresh bytes from the OS CSPRNG every round.
            let mut secret = [0u8; 32];
            let mut noise = match train_cfg.dp_sgd.map(|_| getrandom::fill(&mut secret)) {
                Some(Err(e)) => {
                    tracing::error!(error = %e, "OS random generator failed");
                    return;
                }
                Some(Ok(())) => Some(model::dpsgd::NoiseSource::from_secret(secret)),
                None => None,
            };
            let out = if kind.lm_config().is_some() {
                train_lm_round(
                    &lm_local, &kind, &params, &data, &train_cfg, &lm_rounds, round, &mut rng,
                )
            } else {
                model::train::train_local_with_noise(
                    &kind,
                    &params,
                    &data,
                    &train_cfg,
                    &mut rng,
                    noise.as_mut(),
                    &candle_core::Device::Cpu,
                )
            };
            let ev = match (out, getrandom::u64()) {
                (Ok(out), Ok(noise_seed)) => Event::Trained {
                    round,
                    out,
                    secs: t.elapsed().as_secs_f64(),
                    noise_seed,
                },
                (Err(e), _) => {
                    tracing::error!(error = %e, "local training failed");
                    return;
                }
                (_, Err(e)) => {
                    tracing::error!(error = %e, "OS random generator failed");
                    return;
                }
            };
            let _ = tx.blocking_send(Done::Trained(ev));
        });
    }
}

/// One round of the transformer's local training on the node's kept trainer (built on first
/// use), as `cohort simulate` trains each simulated node ([`model::sim`]).
#[allow(clippy::too_many_arguments)] // the round's inputs, as train_local_with_noise takes them
fn train_lm_round(
    local: &std::sync::Mutex<Option<LocalLm>>,
    kind: &model::net::ModelSpec,
    params: &[f32],
    data: &Dataset,
    cfg: &model::train::TrainConfig,
    rounds: &LmRounds,
    round: u64,
    rng: &mut Rng,
) -> model::Result<model::train::TrainOutput> {
    // A poisoned lock means an earlier round's thread panicked mid-step: start afresh.
    let mut guard = local.lock().unwrap_or_else(|poisoned| {
        let mut g = poisoned.into_inner();
        *g = None;
        g
    });
    if guard.is_none() {
        *guard = Some(LocalLm::new(kind, params, &candle_core::Device::Cpu)?);
    }
    let trainer = guard
        .as_mut()
        .ok_or_else(|| model::Error::Model("no transformer trainer".into()))?;
    trainer.train_round(params, data, cfg, rounds, round, rng)
}

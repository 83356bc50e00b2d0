//! `cohort centralized`: the baseline every decentralized run is compared with.

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use model::net::Model;
use model::rng::Rng;
use model::train::{Optimizer, TrainConfig, Work, evaluate, train_model};

use super::common::DataArgs;

/// Flags of `cohort centralized`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub data: DataArgs,
    /// Passes over the training set.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Minibatch size.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Optimizer: sgd:LR[,MOMENTUM] or adam:LR.
    #[arg(long, default_value = "sgd:0.05,0.9")]
    pub optimizer: Optimizer,
    /// Seed for the initial model and the batch order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write `epoch,accuracy,loss,samples_per_s` rows to this CSV file.
    #[arg(long)]
    pub csv: Option<std::path::PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let (split, kind) = a.data.load()?;
    let model = Model::new(kind, &kind.init(a.seed), &Device::Cpu)?;
    let mut rng = Rng::derive(a.seed, 0xCE47);
    println!(
        "centralized: model {kind} ({} params), dataset {} ({} train / {} test), {} epochs, batch {}, {}",
        kind.num_params(),
        a.data.dataset,
        split.train.len(),
        split.test.len(),
        a.epochs,
        a.batch,
        a.optimizer
    );
    let cfg = TrainConfig {
        work: Work::Epochs(1),
        batch: a.batch,
        optimizer: a.optimizer,
        prox_mu: 0.0,
    };
    let mut csv = String::from("epoch,accuracy,loss,train_loss,samples_per_s\n");
    let show_bar = std::io::stderr().is_terminal();
    for epoch in 1..=a.epochs {
        let bar = show_bar.then(|| {
            let b = ProgressBar::new(split.train.len().div_ceil(a.batch.max(1)) as u64);
            b.set_style(
                ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} steps {per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_message(epoch.to_string());
            b
        });
        let start = Instant::now();
        let mut tick = |s: usize, _t: usize| {
            if let Some(b) = &bar {
                b.set_position(s as u64);
            }
        };
        // Momentum restarts each epoch: the optimiser state lives inside one call.
        let (train_loss, _) = train_model(&model, &split.train, &cfg, &mut rng, Some(&mut tick))?;
        let secs = start.elapsed().as_secs_f64();
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let (acc, loss) = evaluate(&model, &split.test)?;
        let sps = split.train.len() as f64 / secs;
        println!(
            "epoch {epoch:>3}  accuracy {:>6.2}%  test loss {loss:.4}  train loss {train_loss:.4}  {sps:>8.0} samples/s",
            acc * 100.0
        );
        csv.push_str(&format!("{epoch},{acc},{loss},{train_loss},{sps:.0}\n"));
    }
    if let Some(path) = a.csv {
        std::fs::write(&path, csv)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

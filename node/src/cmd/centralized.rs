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
    let loaded = a.data.load(a.seed)?;
    let kind = &loaded.model;
    let train = loaded.union()?;
    let test = &loaded.test;
    let model = Model::new(kind, &kind.init(a.seed), &Device::Cpu)?;
    let mut rng = Rng::derive(a.seed, 0xCE47);
    println!(
        "centralized: model {kind} ({} params), dataset {} ({} train / {} test), {} epochs, batch {}, {}",
        kind.num_params(),
        a.data.describe(),
        train.len(),
        test.len(),
        a.epochs,
        a.batch,
        a.optimizer
    );
    let cfg = TrainConfig {
        work: Work::Epochs(a.epochs),
        batch: a.batch,
        optimizer: a.optimizer,
        prox_mu: 0.0,
        dp_sgd: None,
    };
    let per_epoch = train.len().div_ceil(a.batch.clamp(1, train.len().max(1)));
    let mut csv = String::from("epoch,accuracy,loss,samples_per_s\n");
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new((per_epoch * a.epochs) as u64);
        b.set_style(
            ProgressStyle::with_template("[{bar:30}] {pos}/{len} steps {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let mut epoch_start = Instant::now();
    let mut failure: Option<anyhow::Error> = None;
    // One optimiser state across all epochs; evaluate at every epoch boundary.
    let mut on_step = |step: usize, _total: usize| {
        if let Some(b) = &bar {
            b.set_position(step as u64);
        }
        if !step.is_multiple_of(per_epoch) || failure.is_some() {
            return;
        }
        let secs = epoch_start.elapsed().as_secs_f64();
        let epoch = step / per_epoch;
        match evaluate(&model, test) {
            Ok((acc, loss)) => {
                let sps = train.len() as f64 / secs;
                let line = format!(
                    "epoch {epoch:>3}  accuracy {:>6.2}%  test loss {loss:.4}  {sps:>8.0} samples/s",
                    acc * 100.0
                );
                match &bar {
                    Some(b) => b.println(line),
                    None => println!("{line}"),
                }
                csv.push_str(&format!("{epoch},{acc},{loss},{sps:.0}\n"));
            }
            Err(e) => failure = Some(e.into()),
        }
        epoch_start = Instant::now();
    };
    let (train_loss, _) = train_model(&model, &train, &cfg, &mut rng, Some(&mut on_step))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    println!("mean train loss over the run {train_loss:.4}");
    if let Some(path) = a.csv {
        std::fs::write(&path, csv)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

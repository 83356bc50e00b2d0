//! `cohort lm-train`: trains the character transformer on one machine (the centralized baseline
//! for the language-model task), on the Shakespeare plays split by role or on plain text files,
//! optionally on one node's share of a partition; `--show-partition` prints the shares instead.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use model::lm::{LmTrainConfig, evaluate_lm, save_lm, train_lm};
use model::rng::Rng;
use model::text::{Doc, Vocab};
use model::text_partition::{TextPartition, describe, partition_text};
use model::transformer::{Transformer, TransformerConfig};

/// Flags of `cohort lm-train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset: shakespeare (the plays by speaking role, from --dataset-dir) or text (the
    /// --text files, each one document).
    #[arg(long, default_value = "shakespeare")]
    pub dataset: String,
    /// Directory with shakespeare-texts.tar.gz or the *_gut.txt plays.
    #[arg(long, visible_alias = "data-dir")]
    pub dataset_dir: Option<PathBuf>,
    /// Plain UTF-8 text files (with --dataset text).
    #[arg(long)]
    pub text: Vec<PathBuf>,
    /// Model: transformer[:layers=L,heads=H,dim=C,context=T].
    #[arg(long, default_value = "transformer")]
    pub model: TransformerConfig,
    #[command(flatten)]
    pub opt: LmOptArgs,
    /// Fraction of each document's tail held out for validation.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Evaluate every this many steps (and at the end).
    #[arg(long, default_value_t = 250)]
    pub eval_every: usize,
    /// Validation windows scored per evaluation (evenly spaced over the validation text).
    #[arg(long, default_value_t = 400)]
    pub eval_windows: usize,
    /// Split over this many nodes (with --node or --show-partition).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// How the text is split over nodes: by-role or iid.
    #[arg(long, default_value = "by-role")]
    pub partition: TextPartition,
    /// Train on this node's share only (0-based), validating on the whole validation text.
    #[arg(long)]
    pub node: Option<usize>,
    /// Print the characters each node gets and exit.
    #[arg(long)]
    pub show_partition: bool,
    /// Seed for the initial model, the batches and the IID split.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the trained model here (safetensors with the shape and vocabulary as metadata).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write `step,train_loss,val_loss,val_accuracy,tokens_per_s` rows to this CSV file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

/// `lm-train`'s optimiser schedule.
#[derive(clap::Args, Debug, Clone)]
pub struct LmOptArgs {
    /// Optimiser steps.
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    /// Windows of `context` characters per step.
    #[arg(long, default_value_t = 12)]
    pub batch: usize,
    /// Peak learning rate (AdamW; linear warm-up, cosine decay to a tenth).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// AdamW weight decay on matrices and embeddings.
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
}

/// The documents the flags name.
fn load_docs(a: &Args) -> Result<Vec<Doc>> {
    match a.dataset.as_str() {
        "shakespeare" => {
            let dir = a
                .dataset_dir
                .as_deref()
                .context("--dataset shakespeare needs --dataset-dir")?;
            Ok(model::text::load_shakespeare_roles(dir)?)
        }
        "text" => {
            if a.text.is_empty() {
                bail!("--dataset text needs at least one --text FILE");
            }
            a.text
                .iter()
                .map(|p| Ok(model::text::load_plain_text(p)?))
                .collect()
        }
        other => bail!("unknown dataset '{other}': expected shakespeare or text"),
    }
}

pub fn run(a: Args) -> Result<()> {
    let docs = load_docs(&a)?;
    // The vocabulary of the whole corpus, so every node of a partition derives the same one.
    let vocab = Vocab::from_texts(docs.iter().map(|d| d.text.as_str()))?;
    let parts = partition_text(&docs, a.nodes, a.partition, a.val_fraction, a.seed);
    if a.show_partition {
        println!(
            "{} documents, {} nodes, partition {}, validation fraction {}",
            docs.len(),
            parts.len(),
            a.partition,
            a.val_fraction
        );
        print!("{}", describe(&parts));
        return Ok(());
    }
    let train_text: String = match a.node {
        Some(i) => parts
            .get(i)
            .with_context(|| format!("--node {i} but only {} nodes", parts.len()))?
            .train
            .clone(),
        None => parts.iter().map(|p| p.train.as_str()).collect(),
    };
    let val_text: String = parts.iter().map(|p| p.val.as_str()).collect();
    let train = vocab.encode("training text", &train_text)?;
    let val = vocab.encode("validation text", &val_text)?;
    let cfg = a.model;
    let lm = Transformer::new(
        cfg,
        vocab.len(),
        &cfg.init(vocab.len(), a.seed),
        &Device::Cpu,
    )?;
    let tc = LmTrainConfig {
        steps: a.opt.steps,
        batch: a.opt.batch,
        lr: a.opt.lr,
        warmup: a.opt.warmup,
        weight_decay: a.opt.weight_decay,
    };
    println!(
        "lm-train: {cfg} ({} params), vocabulary {} characters, {} documents, {} train / {} \
         validation chars{}, {} steps of batch {} ({} tokens), lr {}",
        cfg.num_params(vocab.len()),
        vocab.len(),
        docs.len(),
        train.len(),
        val.len(),
        a.node
            .map(|i| format!(" (node {i} of {}, {})", a.nodes, a.partition))
            .unwrap_or_default(),
        a.opt.steps,
        a.opt.batch,
        a.opt.steps * a.opt.batch * cfg.context,
        a.opt.lr
    );
    let mut csv = String::from("step,train_loss,val_loss,val_accuracy,tokens_per_s\n");
    let mut failure: Option<anyhow::Error> = None;
    let mut since = (Instant::now(), 0usize, 0.0f64);
    let every = a.eval_every.max(1);
    let mut on_step = |step: usize, total: usize, loss: f32| {
        since.1 += 1;
        since.2 += f64::from(loss);
        if failure.is_some() || !(step.is_multiple_of(every) || step == total) {
            return;
        }
        let secs = since.0.elapsed().as_secs_f64();
        let tps = (since.1 * a.opt.batch * cfg.context) as f64 / secs;
        let train_loss = since.2 / since.1 as f64;
        match evaluate_lm(&lm, &val, a.eval_windows, 32) {
            Ok(ev) => {
                println!(
                    "step {step:>6}  train loss {train_loss:.4}  val loss {:.4} nats/char  \
                     accuracy {:>5.2}%  {tps:>7.0} tokens/s",
                    ev.loss,
                    ev.accuracy * 100.0
                );
                csv.push_str(&format!(
                    "{step},{train_loss},{},{},{tps:.0}\n",
                    ev.loss, ev.accuracy
                ));
            }
            Err(e) => failure = Some(e.into()),
        }
        since = (Instant::now(), 0, 0.0);
    };
    let mut rng = Rng::derive(a.seed, 0x1A4);
    let mean = train_lm(&lm, &train, &tc, &mut rng, Some(&mut on_step))?;
    if let Some(e) = failure {
        return Err(e);
    }
    println!("mean train loss over the run {mean:.4}");
    if let Some(path) = &a.csv {
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.out {
        save_lm(path, &cfg, &vocab, &lm.flat()?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

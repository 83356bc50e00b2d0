//! `cohort sample`: generates text from a language-model file written by `cohort lm-train`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use model::lm::{generate, load_lm};
use model::rng::Rng;
use model::transformer::Transformer;

/// Flags of `cohort sample`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model (safetensors from `cohort lm-train --out`; its metadata holds shape and vocabulary).
    #[arg(long)]
    pub model_file: PathBuf,
    /// Text to continue; every character must be in the model's vocabulary.
    #[arg(long, default_value = "ROMEO:\n")]
    pub prompt: String,
    /// Characters to generate.
    #[arg(long, default_value_t = 500)]
    pub tokens: usize,
    /// Softmax temperature; 0 always takes the most likely character.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Seed for the draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    let (cfg, vocab, flat) = load_lm(&a.model_file)?;
    let lm = Transformer::new(cfg, vocab.len(), &flat, &Device::Cpu)?;
    let prompt = vocab.encode("--prompt", &a.prompt)?;
    let ids = generate(
        &lm,
        &prompt,
        a.tokens,
        a.temperature,
        &mut Rng::seed(a.seed),
    )
    .context("sampling")?;
    println!("{}", vocab.decode(&ids)?);
    Ok(())
}

//! `cohort sample`: generates text from a language-model file written by `cohort lm-train` or
//! `cohort export`, or from the model a node committed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use model::lm::{generate, load_lm};
use model::rng::Rng;
use model::text::Vocab;
use model::transformer::{Transformer, TransformerConfig};

use crate::genesis::{DataPlan, Genesis};
use crate::keys::hex;

/// Flags of `cohort sample`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model (safetensors from `cohort lm-train --out` or `cohort export`; its metadata
    /// holds shape and vocabulary).
    #[arg(
        long,
        required_unless_present = "data_dir",
        conflicts_with = "data_dir"
    )]
    pub model_file: Option<PathBuf>,
    /// A node's data directory: sample from the model it committed last (with --genesis, or
    /// the genesis.toml next to the node's directory as `cohort testnet` lays them out).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The network's genesis (with --data-dir): the transformer's shape and vocabulary.
    #[arg(long, requires = "data_dir")]
    pub genesis: Option<PathBuf>,
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
    let (cfg, vocab, flat) = match (&a.model_file, &a.data_dir) {
        (Some(file), _) => load_lm(file)?,
        (None, Some(dir)) => committed(dir, a.genesis.as_deref())?,
        (None, None) => bail!("give --model-file or --data-dir"),
    };
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

/// The transformer a node committed last: its parameters from `dir`, shape and vocabulary from
/// the genesis (`genesis`, else `dir/../../genesis.toml` then `dir/../genesis.toml`). Says which
/// round and model hash on stderr, so stdout holds the text alone.
fn committed(dir: &Path, genesis: Option<&Path>) -> Result<(TransformerConfig, Vocab, Vec<f32>)> {
    let path = match genesis {
        Some(p) => p.to_path_buf(),
        None => [dir.join("../../genesis.toml"), dir.join("../genesis.toml")]
            .into_iter()
            .find(|p| p.is_file())
            .with_context(|| format!("no genesis.toml beside {}: give --genesis", dir.display()))?,
    };
    let g = Genesis::load(&path)?;
    let (Some(cfg), DataPlan::Text(text)) = (g.model.lm_config(), &g.data) else {
        bail!(
            "{} declares {}, not a transformer: nothing to sample",
            path.display(),
            g.model
        );
    };
    let state = crate::store::read_state(dir)?;
    if state.params.len() != g.model.num_params() {
        bail!(
            "{} holds {} parameters; the genesis transformer has {}",
            dir.display(),
            state.params.len(),
            g.model.num_params()
        );
    }
    eprintln!(
        "sampling the model of round {} (model hash {}) from {}",
        state.round,
        hex(&model::params::hash_params(&state.params)),
        dir.display()
    );
    Ok((cfg, text.vocab.clone(), state.params))
}

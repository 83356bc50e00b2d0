//! `cohort status`, `cohort verify`, `cohort export`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::genesis::Genesis;
use crate::keys::hex;
use crate::metrics::Status;

/// Flags of `cohort status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The node's API address, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub api: String,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn status(a: StatusArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = rt.block_on(crate::api::get(&a.api, "/status"))?;
    if a.json {
        println!("{body}");
        return Ok(());
    }
    let s: Status = serde_json::from_str(&body).context("parsing /status")?;
    println!("chain        {}", s.chain_id);
    println!("peer id      {}", s.peer_id);
    println!(
        "role         {}",
        if s.validator { "validator" } else { "observer" }
    );
    println!("round        {} (view {})", s.round, s.view);
    println!("peers        {}", s.peers);
    println!("validators   {}", s.validators);
    println!("last commit  {} ({} deltas)", s.last_value, s.last_included);
    println!("model hash   {}", s.model_hash);
    println!(
        "accuracy     {:.2}%  loss {:.4}",
        s.accuracy * 100.0,
        s.loss
    );
    Ok(())
}

/// Flags of `cohort approve`.
#[derive(clap::Args, Debug)]
pub struct ApproveArgs {
    /// Joining keys: hex public keys or `.pub` files.
    #[arg(required = true)]
    pub keys: Vec<String>,
    /// The approving validator's data directory (its allow-list is `approved.txt` there; the
    /// running node picks the change up within a second).
    #[arg(long)]
    pub data_dir: PathBuf,
}

pub fn approve(a: ApproveArgs) -> Result<()> {
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    let path = a.data_dir.join(crate::allow::FILE);
    for k in crate::allow::append(&path, &a.keys)? {
        println!("approved {k} (in {})", path.display());
    }
    Ok(())
}

/// Flags of `cohort verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The node's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The network's genesis file.
    #[arg(long)]
    pub genesis: PathBuf,
}

/// Re-checks every commit certificate from genesis, the hash chain of values, and that the stored
/// model hashes to the last committed value's model hash. Returns the number of rounds checked.
pub fn verify_dir(data_dir: &std::path::Path, genesis: &Genesis) -> Result<u64> {
    let ledger = crate::store::read_ledger(data_dir)?;
    let mut chain = crate::chain::Chain::new(genesis);
    for e in &ledger {
        chain.follow(e, genesis)?;
    }
    let base = chain.model_hash;
    let state = crate::store::read_state(data_dir)?;
    let rounds = chain.height;
    if state.round != rounds {
        bail!(
            "stored state is for round {}, the ledger ends at {rounds}",
            state.round
        );
    }
    let got = model::params::hash_params(&state.params);
    if got != base {
        bail!(
            "stored model hashes to {}, the last commit says {}",
            hex(&got),
            hex(&base)
        );
    }
    Ok(rounds)
}

pub fn verify(a: VerifyArgs) -> Result<()> {
    let genesis = Genesis::load(&a.genesis)?;
    let rounds = verify_dir(&a.data_dir, &genesis)
        .with_context(|| format!("verifying {}", a.data_dir.display()))?;
    let state = crate::store::read_state(&a.data_dir)?;
    println!(
        "ok: {rounds} rounds, every certificate valid, model hash {}",
        hex(&model::params::hash_params(&state.params))
    );
    Ok(())
}

/// Flags of `cohort export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The node's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// The network's genesis, for its declared model's tensor names and shapes (without it,
    /// the preset whose size matches: mlp, cnn or digits-mlp). With a transformer genesis the
    /// file is a language model carrying its shape and vocabulary, for `cohort sample`.
    #[arg(long)]
    pub genesis: Option<PathBuf>,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let state = crate::store::read_state(&a.data_dir)?;
    let genesis = a
        .genesis
        .as_deref()
        .map(crate::genesis::Genesis::load)
        .transpose()?;
    if let Some(g) = &genesis
        && let (Some(cfg), crate::genesis::DataPlan::Text(text)) = (g.model.lm_config(), &g.data)
    {
        // A language model carries its shape and vocabulary, so `cohort sample` needs the file
        // alone.
        model::lm::save_lm(&a.out, &cfg, &text.vocab, &state.params)?;
        println!(
            "wrote {} ({}, round {}, model hash {})",
            a.out.display(),
            g.model,
            state.round,
            hex(&model::params::hash_params(&state.params))
        );
        return Ok(());
    }
    let kind = match genesis {
        Some(g) => g.model,
        None => model::net::ModelSpec::presets()
            .into_iter()
            .map(|(_, p)| p)
            .find(|k| k.num_params() == state.params.len())
            .context(
                "the stored model matches no preset's size: give --genesis for a declared model",
            )?,
    };
    model::params::save_safetensors(&kind, &state.params, &a.out)?;
    println!(
        "wrote {} ({kind}, round {}, model hash {})",
        a.out.display(),
        state.round,
        hex(&model::params::hash_params(&state.params))
    );
    Ok(())
}

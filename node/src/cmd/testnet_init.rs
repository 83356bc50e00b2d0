//! `cohort testnet-init`: the keys and the genesis of a local testnet, written into one
//! directory (the compose project's one-shot `init` service writes them into a named volume).
//! Idempotent: a directory that already holds a genesis is left as it is, so restarting the
//! compose project keeps its chain.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cmd::genesis::TrainingArgs;
use crate::genesis::{GenesisFile, write};
use crate::keys::NodeKey;

/// Flags of `cohort testnet-init`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output directory: `nodeI/node.key` (0600) and `.pub` for the validators, `joinerJ/...`
    /// for keys that are not in the genesis, and `genesis.toml`.
    #[arg(long)]
    pub out: PathBuf,
    /// Genesis validators (node0 .. nodeN-1).
    #[arg(long, default_value_t = 4)]
    pub validators: usize,
    /// Extra keys, not in the genesis (joiner0 ..).
    #[arg(long, default_value_t = 1)]
    pub joiners: usize,
    /// Chain id.
    #[arg(long, default_value = "cohort-testnet")]
    pub chain_id: String,
    #[command(flatten)]
    pub training: TrainingArgs,
    /// The Shakespeare plays (for --model transformer: the genesis fixes their vocabulary).
    #[arg(long)]
    pub dataset_dir: Option<PathBuf>,
}

/// What `run` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Wrote keys and a genesis.
    Written,
    /// A genesis was there already: nothing changed.
    Kept,
}

pub fn run(a: Args) -> Result<Outcome> {
    let genesis = a.out.join("genesis.toml");
    if genesis.exists() {
        println!(
            "{} exists: keeping this testnet's keys and genesis",
            genesis.display()
        );
        return Ok(Outcome::Kept);
    }
    let (g, keys) = write_keys_and_genesis(
        &a.out,
        a.validators,
        a.joiners,
        &a.chain_id,
        &a.training,
        a.dataset_dir.as_deref(),
    )?;
    for (name, key) in &keys {
        println!("{name}: {}", key.peer_id()?);
    }
    println!(
        "wrote {} ({} validators, chain {})",
        genesis.display(),
        a.validators,
        g.chain_id
    );
    Ok(Outcome::Written)
}

/// Fresh keys `dir/nodeI/node.key` for `validators` genesis validators and
/// `dir/joinerJ/node.key` for `joiners` other keys (returned with their names), then
/// `dir/genesis.toml` naming the validators (written last: its presence means the directory is
/// complete). Shared by `cohort testnet` and `cohort testnet-init`.
pub fn write_keys_and_genesis(
    dir: &Path,
    validators: usize,
    joiners: usize,
    chain_id: &str,
    training: &TrainingArgs,
    dataset_dir: Option<&Path>,
) -> Result<(GenesisFile, Vec<(String, NodeKey)>)> {
    anyhow::ensure!(validators >= 1, "at least one validator is needed");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ids = Vec::new();
    let mut keys = Vec::new();
    let names = (0..validators)
        .map(|i| format!("node{i}"))
        .chain((0..joiners).map(|j| format!("joiner{j}")));
    for (i, name) in names.enumerate() {
        let key = NodeKey::generate()?;
        key.save(&dir.join(&name).join("node.key"))?;
        if i < validators {
            ids.push(key.validator_id());
        }
        keys.push((name, key));
    }
    let g = training.genesis(chain_id, &ids, dataset_dir)?;
    write(&g, &dir.join("genesis.toml"))?;
    Ok((g, keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn writes_keys_and_a_genesis_once_and_keeps_them_after() {
        let dir = std::env::temp_dir().join(format!("cohort-init-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let args =
            || Cli::parse_from(["x", "--out", dir.to_str().expect("utf-8"), "--joiners", "2"]).args;
        assert_eq!(run(args()).expect("init"), Outcome::Written);
        let text = std::fs::read_to_string(dir.join("genesis.toml")).expect("genesis");
        let g = crate::genesis::Genesis::load(&dir.join("genesis.toml")).expect("valid genesis");
        assert_eq!(g.validators.len(), 4);
        for i in 0..4 {
            let k = NodeKey::load_with(&dir.join(format!("node{i}/node.key")), false).expect("key");
            assert!(g.validators.contains(&k.validator_id()));
        }
        let j = NodeKey::load_with(&dir.join("joiner1/node.key"), false).expect("joiner key");
        assert!(!g.validators.contains(&j.validator_id()));
        // Again: nothing changes.
        assert_eq!(run(args()).expect("init"), Outcome::Kept);
        assert_eq!(
            std::fs::read_to_string(dir.join("genesis.toml")).expect("genesis"),
            text
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

//! `cohort testnet-init`: the keys and the genesis of a local testnet, written into one
//! directory (the compose project's one-shot `init` service writes them into a named volume).
//! Idempotent: a directory that already holds a genesis is left as it is, so restarting the
//! compose project keeps its chain.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cmd::genesis::TrainingArgs;
use crate::genesis::write;
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
    anyhow::ensure!(a.validators >= 1, "--validators must be at least 1");
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut ids = Vec::new();
    let names = (0..a.validators)
        .map(|i| format!("node{i}"))
        .chain((0..a.joiners).map(|j| format!("joiner{j}")));
    for (i, name) in names.enumerate() {
        let key = NodeKey::generate()?;
        key.save(&a.out.join(&name).join("node.key"))?;
        if i < a.validators {
            ids.push(key.validator_id());
        }
        println!("{name}: {}", key.peer_id()?);
    }
    let g = a.training.genesis(&a.chain_id, &ids);
    // Written last: its presence means the directory is complete.
    write(&g, &genesis)?;
    println!(
        "wrote {} ({} validators, chain {})",
        genesis.display(),
        a.validators,
        g.chain_id
    );
    Ok(Outcome::Written)
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

//! `cohort keygen`.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::keys::{NodeKey, hex};

/// Flags of `cohort keygen`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write the secret key (0600); the public key goes to `OUT.pub`.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite an existing key file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.out.exists() && !a.force {
        bail!("{} exists (use --force to overwrite)", a.out.display());
    }
    let key = NodeKey::generate()?;
    let pub_path = key.save(&a.out)?;
    println!("peer id:    {}", key.peer_id()?);
    println!("public key: {}", hex(&key.public()));
    println!("wrote {} and {}", a.out.display(), pub_path.display());
    Ok(())
}

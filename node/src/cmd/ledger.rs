//! `cohort ledger`: who contributed what, from a node's verified ledger.
//!
//! Every entry is re-verified from the genesis first (certificates, links, membership), then
//! summed per participant: rounds its delta was included in, of those the rounds it was an
//! outlier against the aggregate (recorded in each value), samples it claimed there (each claim
//! within the genesis bound), rounds whose certificate (as this node stored it) it signed, the
//! rounds it was a validator, and its reputation: included / rounds as a validator. Cohort has no
//! token; this record is what any later incentive scheme would read.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::chain::Chain;
use crate::genesis::Genesis;
use crate::keys::hex;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// Comma-separated, with a header.
    Csv,
    /// One JSON array.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The node's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The network's genesis file.
    #[arg(long)]
    pub genesis: PathBuf,
    /// Only rounds up to this one.
    #[arg(long)]
    pub to: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// One participant's record.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Participant {
    /// Public key (hex).
    pub key: String,
    /// Rounds whose value included its delta.
    pub included: u64,
    /// Of those, rounds its delta was an outlier against the aggregate (`rejected` in the value).
    pub rejected: u64,
    /// Samples it claimed in those rounds.
    pub samples: u128,
    /// Rounds whose stored certificate carries its precommit.
    pub signed: u64,
    /// Rounds (of those in the ledger) it was a validator in.
    pub validator_rounds: u64,
    /// included / validator_rounds.
    pub reputation: f64,
    /// First and last round with an included delta (0: none).
    pub first: u64,
    /// Last round with an included delta.
    pub last: u64,
}

/// Sums a data dir's verified ledger per participant, up to round `to`.
pub fn summarise(
    data_dir: &std::path::Path,
    genesis: &Genesis,
    to: Option<u64>,
) -> Result<Vec<Participant>> {
    let ledger = crate::store::read_ledger(data_dir)?;
    let mut chain = Chain::new(genesis);
    let mut by: BTreeMap<[u8; 32], Participant> = BTreeMap::new();
    for e in ledger.iter().filter(|e| to.is_none_or(|t| e.height <= t)) {
        let set = chain.set_for(e.height).clone();
        let rv = chain
            .follow(e, genesis)
            .with_context(|| format!("verifying round {}", e.height))?;
        for m in set.members() {
            by.entry(m.0).or_default().validator_rounds += 1;
        }
        for i in &rv.included {
            let p = by.entry(i.author).or_default();
            p.included += 1;
            p.samples += u128::from(i.samples);
            if p.first == 0 {
                p.first = e.height;
            }
            p.last = e.height;
        }
        for r in &rv.rejected {
            by.entry(*r).or_default().rejected += 1;
        }
        let cert = consensus::decode_certificate(&e.certificate)
            .map_err(|err| anyhow::anyhow!("certificate of round {}: {err}", e.height))?;
        for s in &cert.precommits {
            by.entry(s.validator.0).or_default().signed += 1;
        }
    }
    Ok(by
        .into_iter()
        .map(|(k, mut p)| {
            p.key = hex(&k);
            p.reputation = if p.validator_rounds == 0 {
                0.0
            } else {
                p.included as f64 / p.validator_rounds as f64
            };
            p
        })
        .collect())
}

/// Column names, in output order.
const COLUMNS: [&str; 9] = [
    "key",
    "included",
    "rejected",
    "samples",
    "signed",
    "validator_rounds",
    "reputation",
    "first",
    "last",
];

impl Participant {
    /// The row's cells, in [`COLUMNS`] order.
    fn cells(&self) -> [String; 9] {
        [
            self.key.clone(),
            self.included.to_string(),
            self.rejected.to_string(),
            self.samples.to_string(),
            self.signed.to_string(),
            self.validator_rounds.to_string(),
            format!("{:.4}", self.reputation),
            self.first.to_string(),
            self.last.to_string(),
        ]
    }
}

pub fn run(a: Args) -> Result<()> {
    let genesis = Genesis::load(&a.genesis)?;
    let rows = summarise(&a.data_dir, &genesis, a.to)?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Csv => {
            println!("{}", COLUMNS.join(","));
            for p in &rows {
                println!("{}", p.cells().join(","));
            }
        }
        Format::Table => {
            // Keys shortened to 16 hex digits; every other column right-aligned.
            let line = |cells: [String; 9]| {
                let mut out = format!("{:<16}", cells[0].chars().take(16).collect::<String>());
                for c in &cells[1..] {
                    out.push_str(&format!("  {c:>16}"));
                }
                out
            };
            println!("{}", line(COLUMNS.map(String::from)));
            for p in &rows {
                println!("{}", line(p.cells()));
            }
        }
    }
    Ok(())
}

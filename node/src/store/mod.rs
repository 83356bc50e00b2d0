//! The data directory: an append-only ledger of commits, the consensus write-ahead record, the
//! committed state, the error-feedback residual and periodic safetensors checkpoints.
//!
//! ```text
//! DIR/ledger.log         one record per committed round (value + certificate), fsynced
//! DIR/consensus.wal      what this validator persisted before signing (consensus votes, its
//!                        secure-aggregation acknowledgement), current height only
//! DIR/state.bin          the committed parameters and momentum after the last ledger entry
//! DIR/residual.bin       error-feedback residual (what compression has not sent yet)
//! DIR/own_delta.bin      this node's signed delta of its current round (written before it
//!                        is published: after a restart the node sends the same one again
//!                        instead of signing a second, different delta for the round)
//! DIR/checkpoints/round-000010.safetensors   every `checkpoint_every` rounds, the last
//!                        [`KEEP_CHECKPOINTS`] kept
//! DIR/evidence.log       two different signed deltas by one author for one round
//! DIR/listen.txt         the node's listen multiaddrs (for launchers)
//! ```
//!
//! Order on commit: append to the ledger (fsync), then replace `state.bin` atomically. A crash
//! between the two leaves the state one round behind the ledger; the node then syncs the state
//! from peers rather than guessing.

pub mod index;
pub mod log;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tokio::sync::watch;

use crate::wire::{LedgerEntry, StateBody};
use index::LedgerIndex;
use log::{AppendLog, write_atomic};

/// An open data directory.
pub struct Store {
    root: PathBuf,
    ledger: AppendLog,
    wal: AppendLog,
    /// Where each committed height's ledger record starts, for readers (the HTTP API) that
    /// look up one round; built at open, one entry pushed per commit.
    index: watch::Sender<LedgerIndex>,
}

/// What was on disk at start-up.
pub struct Recovered {
    /// Every committed entry, in height order.
    pub ledger: Vec<LedgerEntry>,
    /// The consensus WAL records (for the height after the ledger's last).
    pub wal: Vec<Vec<u8>>,
    /// The committed state, if any.
    pub state: Option<StateBody>,
    /// The residual, if any.
    pub residual: Vec<f32>,
    /// This node's last signed delta, if any.
    pub own_delta: Option<Vec<u8>>,
    /// How many deltas this node has released (the privacy accountant's count).
    pub releases: u64,
}

impl Store {
    /// Opens (creating) `root` and reads everything back.
    pub fn open(root: &Path) -> Result<(Store, Recovered)> {
        std::fs::create_dir_all(root.join("checkpoints"))
            .with_context(|| format!("creating data dir {}", root.display()))?;
        let (ledger, records) = AppendLog::open_with_offsets(&root.join("ledger.log"))?;
        let mut entries = Vec::with_capacity(records.len());
        let mut index = LedgerIndex::default();
        for (i, (offset, r)) in records.iter().enumerate() {
            let e = LedgerEntry::decode(r)
                .with_context(|| format!("{}: entry {i}", root.join("ledger.log").display()))?;
            // Heights increase; a state sync leaves a gap (the rounds it skipped).
            if entries
                .last()
                .is_some_and(|p: &LedgerEntry| p.height >= e.height)
            {
                bail!(
                    "{}: entry {i} is for height {}, not after the previous one",
                    root.join("ledger.log").display(),
                    e.height,
                );
            }
            index.push(e.height, *offset)?;
            entries.push(e);
        }
        let (wal, wal_records) = AppendLog::open(&root.join("consensus.wal"))?;
        let state_path = root.join("state.bin");
        let state = if state_path.exists() {
            let bytes = std::fs::read(&state_path)
                .with_context(|| format!("reading {}", state_path.display()))?;
            Some(
                StateBody::decode(&bytes)
                    .with_context(|| format!("{} is corrupt", state_path.display()))?,
            )
        } else {
            None
        };
        let res_path = root.join("residual.bin");
        let residual = match std::fs::read(&res_path) {
            Ok(b) if b.len() % 4 == 0 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Ok(_) => bail!("{} is truncated", res_path.display()),
            Err(_) => Vec::new(),
        };
        let own_delta = std::fs::read(root.join("own_delta.bin")).ok();
        let releases =
            match std::fs::read(root.join("releases.bin")) {
                Ok(b) => u64::from_le_bytes(b.as_slice().try_into().with_context(|| {
                    format!("{} is corrupt", root.join("releases.bin").display())
                })?),
                Err(_) => 0,
            };
        Ok((
            Store {
                root: root.to_path_buf(),
                ledger,
                wal,
                index: watch::Sender::new(index),
            },
            Recovered {
                ledger: entries,
                wal: wal_records,
                state,
                residual,
                own_delta,
                releases,
            },
        ))
    }

    /// Appends a commit durably, then indexes it.
    pub fn append_commit(&mut self, e: &LedgerEntry) -> Result<()> {
        let offset = self.ledger.append(&e.encode()?)?;
        let mut pushed = Ok(());
        self.index
            .send_modify(|index| pushed = index.push(e.height, offset));
        pushed
    }

    /// The ledger index, kept current as commits are appended (for the HTTP API).
    pub fn ledger_index(&self) -> watch::Receiver<LedgerIndex> {
        self.index.subscribe()
    }

    /// The ledger file the index points into.
    pub fn ledger_path(&self) -> PathBuf {
        self.root.join("ledger.log")
    }

    /// Appends a consensus WAL record durably.
    pub fn append_wal(&mut self, bytes: &[u8]) -> Result<()> {
        self.wal.append(bytes).map(|_| ())
    }

    /// Appends equivocation evidence to `evidence.log`.
    pub fn append_evidence(&mut self, ev: &crate::wire::DeltaEvidence) -> Result<()> {
        let (mut log, _) = AppendLog::open(&self.root.join("evidence.log"))?;
        log.append(&ev.encode()?).map(|_| ())
    }

    /// Starts a new, empty WAL (after a height is committed).
    pub fn reset_wal(&mut self) -> Result<()> {
        let path = self.root.join("consensus.wal");
        write_atomic(&path, &[])?;
        let (wal, _) = AppendLog::open(&path)?;
        self.wal = wal;
        Ok(())
    }

    /// Replaces the committed state.
    pub fn write_state(&self, s: &StateBody) -> Result<()> {
        write_atomic(&self.root.join("state.bin"), &s.encode()?)
    }

    /// Replaces this node's own signed delta (durably, before it is published).
    pub fn write_own_delta(&self, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.root.join("own_delta.bin"), bytes)
    }

    /// Records how many deltas this node has released (durably, before the next one leaves).
    pub fn write_releases(&self, n: u64) -> Result<()> {
        write_atomic(&self.root.join("releases.bin"), &n.to_le_bytes())
    }

    /// Replaces the residual.
    pub fn write_residual(&self, r: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = r.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_atomic(&self.root.join("residual.bin"), &bytes)
    }

    /// Writes `checkpoints/round-NNNNNN.safetensors`.
    pub fn write_checkpoint(
        &self,
        kind: &model::net::ModelSpec,
        round: u64,
        params: &[f32],
    ) -> Result<()> {
        let path = self
            .root
            .join("checkpoints")
            .join(format!("round-{round:06}.safetensors"));
        let bytes = model::params::to_safetensors_bytes(kind, params)?;
        write_atomic(&path, &bytes)?;
        prune_checkpoints(&self.root.join("checkpoints"), KEEP_CHECKPOINTS)
    }
}

/// Checkpoints kept: writing one deletes all but the newest this many.
pub const KEEP_CHECKPOINTS: usize = 5;

/// Deletes `round-N.safetensors` files in `dir` but the `keep` of highest N; other files stay.
fn prune_checkpoints(dir: &Path, keep: usize) -> Result<()> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            let round = path
                .file_name()?
                .to_str()?
                .strip_prefix("round-")?
                .strip_suffix(".safetensors")?
                .parse::<u64>()
                .ok()?;
            Some((round, path))
        })
        .collect();
    found.sort();
    let excess = found.len().saturating_sub(keep);
    for (_, path) in found.into_iter().take(excess) {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Reads the ledger of a data dir without opening it for writing.
pub fn read_ledger(root: &Path) -> Result<Vec<LedgerEntry>> {
    let path = root.join("ledger.log");
    AppendLog::read_all(&path)?
        .iter()
        .enumerate()
        .map(|(i, r)| {
            LedgerEntry::decode(r).with_context(|| format!("{}: entry {i}", path.display()))
        })
        .collect()
}

/// Reads the committed state of a data dir.
pub fn read_state(root: &Path) -> Result<StateBody> {
    let path = root.join("state.bin");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    StateBody::decode(&bytes).with_context(|| format!("{} is corrupt", path.display()))
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;

    #[test]
    fn only_the_newest_checkpoints_are_kept() {
        let dir = std::env::temp_dir().join(format!("cohort-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        // Past round 999,999 the name has seven digits: order by number, not by name.
        for r in [10u64, 20, 30, 40, 50, 60, 70, 1_000_000] {
            std::fs::write(dir.join(format!("round-{r:06}.safetensors")), b"x").expect("write");
        }
        std::fs::write(dir.join("notes.txt"), b"keep me").expect("write");
        prune_checkpoints(&dir, 3).expect("prune");
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "notes.txt",
                "round-000060.safetensors",
                "round-000070.safetensors",
                "round-1000000.safetensors"
            ]
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

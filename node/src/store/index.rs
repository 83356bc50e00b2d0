//! Where each committed height's record starts in `ledger.log`, so that one round's record is
//! read with one seek instead of reading the whole ledger (`GET /round/N`).
//!
//! The index is built once, from the records [`super::Store::open`] reads and checks at
//! start-up, and grows by one entry per commit ([`super::Store::append_commit`] pushes the
//! offset [`AppendLog::append`](super::log::AppendLog::append) wrote at). Heights increase
//! but may skip (a state sync leaves gaps), so a lookup is a binary search. A record read back
//! through the index is checked again (length, checksum, height): the file may have been damaged
//! since, and that is an error naming the file and offset, never a wrong answer.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::log::read_at;
use crate::wire::LedgerEntry;

/// The offset of each committed height's record in `ledger.log`, in height order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerIndex {
    /// `(height, offset)`, heights strictly increasing.
    entries: Vec<(u64, u64)>,
}

impl LedgerIndex {
    /// Records that `height`'s record starts at `offset`; heights must increase.
    pub fn push(&mut self, height: u64, offset: u64) -> Result<()> {
        if let Some(&(last, last_offset)) = self.entries.last()
            && (height <= last || offset <= last_offset)
        {
            bail!(
                "ledger index: height {height} at offset {offset} does not follow height \
                 {last} at offset {last_offset}"
            );
        }
        self.entries.push((height, offset));
        Ok(())
    }

    /// The offset of `height`'s record, if this node committed it.
    pub fn offset_of(&self, height: u64) -> Option<u64> {
        self.entries
            .binary_search_by_key(&height, |&(h, _)| h)
            .ok()
            .map(|i| self.entries[i].1)
    }

    /// Heights indexed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The highest height indexed.
    #[cfg(test)]
    pub fn last_height(&self) -> Option<u64> {
        self.entries.last().map(|&(h, _)| h)
    }
}

/// Reads the ledger entry of `height` whose record starts at `offset` of `path` (from a
/// [`LedgerIndex`]) and checks that it is that height's.
pub fn read_entry_at(path: &Path, offset: u64, height: u64) -> Result<LedgerEntry> {
    let record = read_at(path, offset)?;
    let entry = LedgerEntry::decode(&record)
        .with_context(|| format!("{}: entry at offset {offset}", path.display()))?;
    if entry.height != height {
        bail!(
            "{}: the index points height {height} at offset {offset}, which holds height {}",
            path.display(),
            entry.height
        );
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("cohort-index-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    fn entry(height: u64) -> LedgerEntry {
        LedgerEntry {
            height,
            value: vec![height as u8; 40 + height as usize],
            certificate: vec![7; 100],
        }
    }

    fn lookup(dir: &Path, index: &LedgerIndex, height: u64) -> Option<LedgerEntry> {
        let offset = index.offset_of(height)?;
        Some(read_entry_at(&dir.join("ledger.log"), offset, height).expect("read"))
    }

    #[test]
    fn built_at_open_and_appended_on_commit_with_gaps() {
        let dir = tmp("gaps");
        let (mut store, _) = Store::open(&dir).expect("open");
        assert_eq!(store.ledger_index().borrow().len(), 0);
        // A state sync skipped 4..=9.
        for h in [1, 2, 3, 10, 11] {
            store.append_commit(&entry(h)).expect("append");
        }
        let live = store.ledger_index().borrow().clone();
        assert_eq!(live.len(), 5);
        assert_eq!(lookup(&dir, &live, 10), Some(entry(10)));
        drop(store);
        let (mut store, _) = Store::open(&dir).expect("reopen");
        let built = store.ledger_index().borrow().clone();
        assert_eq!(
            built, live,
            "the index built at open equals the one grown by commits"
        );
        for h in [1, 2, 3, 10, 11] {
            assert_eq!(lookup(&dir, &built, h), Some(entry(h)), "height {h}");
        }
        for h in [0, 4, 9, 12, u64::MAX] {
            assert_eq!(built.offset_of(h), None, "height {h}");
        }
        store.append_commit(&entry(12)).expect("append");
        let live = store.ledger_index().borrow().clone();
        assert_eq!(live.last_height(), Some(12));
        assert_eq!(lookup(&dir, &live, 12), Some(entry(12)));
    }

    #[test]
    fn a_torn_tail_is_not_indexed_and_the_next_commit_takes_its_place() {
        let dir = tmp("torn");
        let (mut store, _) = Store::open(&dir).expect("open");
        for h in 1..=3 {
            store.append_commit(&entry(h)).expect("append");
        }
        drop(store);
        let path = dir.join("ledger.log");
        let full = std::fs::read(&path).expect("read");
        // The process died inside a fourth record.
        let mut torn = full.clone();
        torn.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&path, &torn).expect("write");
        let (mut store, _) = Store::open(&dir).expect("open cuts the torn tail");
        assert_eq!(store.ledger_index().borrow().len(), 3);
        assert_eq!(store.ledger_index().borrow().offset_of(4), None);
        store.append_commit(&entry(4)).expect("append");
        let live = store.ledger_index().borrow().clone();
        assert_eq!(live.offset_of(4), Some(full.len() as u64));
        assert_eq!(lookup(&dir, &live, 4), Some(entry(4)));
    }

    #[test]
    fn damage_after_indexing_is_a_clear_error_not_a_wrong_record() {
        let dir = tmp("damage");
        let (mut store, _) = Store::open(&dir).expect("open");
        for h in 1..=3 {
            store.append_commit(&entry(h)).expect("append");
        }
        let index = store.ledger_index().borrow().clone();
        drop(store);
        let path = dir.join("ledger.log");
        let full = std::fs::read(&path).expect("read");
        let at = |h| index.offset_of(h).expect("indexed");
        // A flipped payload byte in record 2.
        let mut bad = full.clone();
        bad[at(2) as usize + 20] ^= 0x40;
        std::fs::write(&path, &bad).expect("write");
        let err = format!("{:#}", read_entry_at(&path, at(2), 2).expect_err("corrupt"));
        assert!(err.contains("checksum mismatch"), "{err}");
        assert_eq!(read_entry_at(&path, at(1), 1).expect("intact"), entry(1));
        // An absurd length.
        let mut bad = full.clone();
        bad[at(3) as usize + 3] = 0xff;
        std::fs::write(&path, &bad).expect("write");
        let err = format!("{:#}", read_entry_at(&path, at(3), 3).expect_err("length"));
        assert!(err.contains("exceeds"), "{err}");
        // The file cut inside record 3's payload, and inside its header.
        for cut in [at(3) as usize + 20, at(3) as usize + 5] {
            std::fs::write(&path, &full[..cut]).expect("write");
            let err = format!("{:#}", read_entry_at(&path, at(3), 3).expect_err("cut"));
            assert!(err.contains("cut short"), "{err}");
        }
        // An offset that points at another height's record.
        std::fs::write(&path, &full).expect("write");
        let err = format!("{:#}", read_entry_at(&path, at(2), 3).expect_err("wrong"));
        assert!(err.contains("holds height 2"), "{err}");
    }

    #[test]
    fn push_rejects_heights_or_offsets_that_go_back() {
        let mut i = LedgerIndex::default();
        i.push(1, 0).expect("first");
        i.push(5, 100).expect("a gap");
        assert!(i.push(5, 200).is_err());
        assert!(i.push(4, 300).is_err());
        assert!(i.push(6, 100).is_err());
        assert_eq!(i.len(), 2);
        assert_eq!(i.offset_of(5), Some(100));
    }
}

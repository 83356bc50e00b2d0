//! An append-only file of checksummed records, fsynced on every append.
//!
//! Record layout: `len: u32 LE | sha256(payload)[..8] | payload`. On open every record is read
//! and checked. A torn final record (the process died mid-append: the file ends inside it) is cut
//! off, since it was never acknowledged; any other damage (a bad checksum, an absurd length) is a
//! clear error naming the file and offset, never silently dropped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// Largest record accepted (a commit certificate with a few hundred signatures fits easily).
pub const MAX_RECORD: usize = 64 << 20;
const HEADER: usize = 12;

fn checksum(payload: &[u8]) -> [u8; 8] {
    let d = Sha256::digest(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// A record's payload and the offset its record starts at in the file.
pub type Located = (u64, Vec<u8>);

/// An open append-only log.
pub struct AppendLog {
    path: PathBuf,
    file: File,
}

impl AppendLog {
    /// Opens (creating if absent) the log at `path` and returns it with every record in order.
    pub fn open(path: &Path) -> Result<(Self, Vec<Vec<u8>>)> {
        let (log, records) = Self::open_with_offsets(path)?;
        Ok((log, records.into_iter().map(|(_, r)| r).collect()))
    }

    /// [`AppendLog::open`], with each record's offset in the file (for an index).
    pub fn open_with_offsets(path: &Path) -> Result<(Self, Vec<Located>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        let (records, good_len) = parse(&bytes, path)?;
        if good_len < bytes.len() {
            tracing::warn!(
                file = %path.display(),
                torn_bytes = bytes.len() - good_len,
                "cutting off a torn final record left by a crash"
            );
            file.set_len(good_len as u64)
                .with_context(|| format!("truncating {}", path.display()))?;
            file.sync_all()?;
            file.seek(SeekFrom::End(0))?;
        }
        Ok((
            AppendLog {
                path: path.to_path_buf(),
                file,
            },
            records,
        ))
    }

    /// Reads every record of the log at `path` without opening it for writing (for `cohort verify`).
    pub fn read_all(path: &Path) -> Result<Vec<Vec<u8>>> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (records, good_len) = parse(&bytes, path)?;
        if good_len < bytes.len() {
            bail!(
                "{}: torn final record at offset {good_len} ({} bytes)",
                path.display(),
                bytes.len() - good_len
            );
        }
        Ok(records.into_iter().map(|(_, r)| r).collect())
    }

    /// Appends one record and waits until it is on disk; returns the record's offset.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64> {
        if payload.len() > MAX_RECORD {
            bail!("record of {} bytes exceeds {MAX_RECORD}", payload.len());
        }
        // Opened for appending: the record starts at the end of the file.
        let offset = self
            .file
            .seek(SeekFrom::End(0))
            .with_context(|| format!("seeking to the end of {}", self.path.display()))?;
        let mut buf = Vec::with_capacity(HEADER + payload.len());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&checksum(payload));
        buf.extend_from_slice(payload);
        self.file
            .write_all(&buf)
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.file
            .sync_data()
            .with_context(|| format!("fsync {}", self.path.display()))?;
        Ok(offset)
    }
}

/// Reads and checks the one record that starts at `offset` of the log at `path` (an offset an
/// index recorded): its header, its length (at most [`MAX_RECORD`]) and its checksum.
pub fn read_at(path: &Path, offset: u64) -> Result<Vec<u8>> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file.seek(SeekFrom::Start(offset))
        .with_context(|| format!("seeking to offset {offset} of {}", path.display()))?;
    let mut header = [0u8; HEADER];
    file.read_exact(&mut header).with_context(|| {
        format!(
            "{}: record header at offset {offset} is cut short",
            path.display()
        )
    })?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_RECORD {
        bail!(
            "{}: corrupt record at offset {offset}: length {len} exceeds {MAX_RECORD}",
            path.display()
        );
    }
    let mut payload = vec![0u8; len];
    file.read_exact(&mut payload).with_context(|| {
        format!(
            "{}: record at offset {offset} is cut short ({len} bytes expected)",
            path.display()
        )
    })?;
    if checksum(&payload) != header[4..12] {
        bail!(
            "{}: corrupt record at offset {offset}: checksum mismatch",
            path.display()
        );
    }
    Ok(payload)
}

/// Parses records; returns them with their offsets and the length of the well-formed prefix. A record cut short by
/// the end of the file ends the prefix; a complete record with a bad checksum is an error.
fn parse(bytes: &[u8], path: &Path) -> Result<(Vec<Located>, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(header) = bytes.get(pos..pos + HEADER) else {
            break; // torn header
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > MAX_RECORD {
            bail!(
                "{}: corrupt record {} at offset {pos}: length {len} exceeds {MAX_RECORD}",
                path.display(),
                out.len()
            );
        }
        let Some(payload) = bytes.get(pos + HEADER..pos + HEADER + len) else {
            break; // torn payload
        };
        if checksum(payload) != header[4..12] {
            bail!(
                "{}: corrupt record {} at offset {pos}: checksum mismatch",
                path.display(),
                out.len()
            );
        }
        out.push((pos as u64, payload.to_vec()));
        pos += HEADER + len;
    }
    Ok((out, pos))
}

/// Writes `bytes` to `path` atomically: a temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cohort-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("log")
    }

    #[test]
    fn append_and_reopen() {
        let p = tmp("reopen");
        let (mut log, recs) = AppendLog::open(&p).unwrap();
        assert!(recs.is_empty());
        log.append(b"one").unwrap();
        log.append(b"").unwrap();
        log.append(&[7u8; 1000]).unwrap();
        drop(log);
        let (mut log, recs) = AppendLog::open(&p).unwrap();
        assert_eq!(recs, vec![b"one".to_vec(), vec![], vec![7u8; 1000]]);
        log.append(b"four").unwrap();
        assert_eq!(AppendLog::read_all(&p).unwrap().len(), 4);
    }

    #[test]
    fn torn_tail_is_cut_and_flipped_byte_is_an_error() {
        let p = tmp("torn");
        let (mut log, _) = AppendLog::open(&p).unwrap();
        log.append(b"first").unwrap();
        log.append(b"second").unwrap();
        drop(log);
        let full = std::fs::read(&p).unwrap();
        // Every cut inside the second record recovers the first.
        for cut in (HEADER + 5 + 1)..full.len() {
            std::fs::write(&p, &full[..cut]).unwrap();
            assert!(
                AppendLog::read_all(&p).is_err(),
                "read_all reports a torn tail"
            );
            let (_, recs) = AppendLog::open(&p).unwrap();
            assert_eq!(recs, vec![b"first".to_vec()], "cut {cut}");
            assert_eq!(std::fs::metadata(&p).unwrap().len() as usize, HEADER + 5);
        }
        // One flipped byte in a complete record is corruption, reported with its offset.
        let mut bad = full.clone();
        bad[HEADER + 2] ^= 0x01;
        std::fs::write(&p, &bad).unwrap();
        let err = AppendLog::open(&p).err().unwrap().to_string();
        assert!(err.contains("corrupt record 0 at offset 0"), "{err}");
        let err = AppendLog::read_all(&p).err().unwrap().to_string();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn atomic_write_replaces() {
        let p = tmp("atomic");
        write_atomic(&p, b"a").unwrap();
        write_atomic(&p, b"bb").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"bb");
    }
}

//! The operator's allow-list of joining keys (the `approve` admission policy): a text file in
//! the data directory, one hex public key per line (`#` starts a comment). `cohort approve KEY`
//! appends to it; the running node re-reads it when it changes.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::keys::{hex, load_public};

/// Its name in the data directory.
pub const FILE: &str = "approved.txt";

/// Parses the file's text: one key per line, blank lines and `#` comments skipped.
pub fn parse(text: &str, path: &Path) -> Result<Vec<[u8; 32]>> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i, l.split('#').next().unwrap_or("").trim()))
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            load_public(l)
                .map(|v| v.0)
                .with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

/// Appends `keys` (hex keys or `.pub` files) to the allow-list at `path`; returns them as hex.
pub fn append(path: &Path, keys: &[String]) -> Result<Vec<String>> {
    use std::io::Write;
    let keys: Vec<String> = keys
        .iter()
        .map(|k| load_public(k).map(|v| hex(&v.0)))
        .collect::<Result<_>>()?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    for k in &keys {
        writeln!(f, "{k}")?;
    }
    f.sync_all()?;
    Ok(keys)
}

/// Watches the file: [`AllowList::poll`] returns the keys when it changed.
pub struct AllowList {
    path: PathBuf,
    seen: Option<SystemTime>,
}

impl AllowList {
    /// Watches `path` (which need not exist yet).
    pub fn new(path: PathBuf) -> AllowList {
        AllowList { path, seen: None }
    }

    /// The keys, when the file's modification time changed since the last call; a file that
    /// does not parse is reported once and leaves the previous list in force.
    pub fn poll(&mut self) -> Option<Vec<[u8; 32]>> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()?;
        if self.seen == Some(mtime) {
            return None;
        }
        self.seen = Some(mtime);
        let text = std::fs::read_to_string(&self.path).ok()?;
        match parse(&text, &self.path) {
            Ok(keys) => Some(keys),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "allow-list not applied");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_parses_appends_and_reports_bad_lines() {
        let dir = std::env::temp_dir().join(format!("cohort-allow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE);
        let _ = std::fs::remove_file(&path);
        let mut w = AllowList::new(path.clone());
        assert!(w.poll().is_none(), "no file yet");
        let k = hex(&[7; 32]);
        append(&path, std::slice::from_ref(&k)).unwrap();
        assert_eq!(w.poll(), Some(vec![[7; 32]]));
        assert_eq!(w.poll(), None, "unchanged");
        let err = parse(&format!("# ops\n{k}\nnot-a-key\n"), &path).unwrap_err();
        assert!(format!("{err:#}").contains("line 3"), "{err:#}");
        assert!(append(&path, &["zz".into()]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

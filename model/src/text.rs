//! Text data for next-character prediction: a character vocabulary that a genesis can fix (so every
//! node maps characters to the same ids), plain text files, and the Shakespeare plays split by
//! speaking role (LEAF's natural non-IID split).
//!
//! The plays come as Project Gutenberg texts (`../shared/data/shakespeare`'s tar.gz, or a
//! directory of `*.txt` files). In the modern editions (`*_gut.txt`) each speech starts with the
//! speaker's name alone on a line, after a blank line (`Romeo.`, `KING HENRY.`, or without the dot
//! in upper case, `THESEUS`); the speech runs to the next blank line. [`parse_play`] collects each
//! role's speeches; the First Folio editions (`*_gut_f.txt`, the same plays in old spelling, with
//! names inline) and the poems are left out of the role split, so no play is counted twice.
//!
//! Every role's text is split contiguously into a training head and a validation tail
//! ([`Doc::split`]), before roles are dealt to nodes ([`crate::text_partition`]): the validation
//! set is the same whatever the partition.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The characters a model knows, in id order. Serialised as the string of its characters, so a
/// genesis or a model file can carry it; ids are positions in that string.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Vocab {
    chars: Vec<char>,
    /// Id of every character, for encoding.
    ids: BTreeMap<char, u32>,
}

/// The most characters a vocabulary may hold (ids are `u32`, and the output layer is vocab wide).
pub const MAX_VOCAB: usize = 65_536;

impl Vocab {
    /// A vocabulary of `chars` in this order; each character at most once.
    pub fn new(chars: Vec<char>) -> Result<Self> {
        if chars.is_empty() {
            return Err(Error::Dataset(
                "a vocabulary needs at least one character".into(),
            ));
        }
        if chars.len() > MAX_VOCAB {
            return Err(Error::Dataset(format!(
                "a vocabulary of {} characters is over the limit of {MAX_VOCAB}",
                chars.len()
            )));
        }
        let mut ids = BTreeMap::new();
        for (i, &c) in chars.iter().enumerate() {
            if ids.insert(c, i as u32).is_some() {
                return Err(Error::Dataset(format!(
                    "character {c:?} appears twice in the vocabulary"
                )));
            }
        }
        Ok(Vocab { chars, ids })
    }

    /// The sorted set of characters occurring in `texts`.
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut set = std::collections::BTreeSet::new();
        for t in texts {
            set.extend(t.chars());
        }
        Vocab::new(set.into_iter().collect())
    }

    /// Number of characters (the model's input and output width).
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Never true for a constructed vocabulary; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// Ids of `text`'s characters. `doc` names the text in the error: a character outside the
    /// vocabulary is reported with its 1-based line and column (in characters).
    pub fn encode(&self, doc: &str, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len());
        let (mut line, mut column) = (1usize, 0usize);
        for ch in text.chars() {
            column += 1;
            match self.ids.get(&ch) {
                Some(&id) => out.push(id),
                None => {
                    return Err(Error::OutOfVocabulary {
                        doc: doc.to_string(),
                        ch,
                        line,
                        column,
                    });
                }
            }
            if ch == '\n' {
                line += 1;
                column = 0;
            }
        }
        Ok(out)
    }

    /// The text of `ids`; an id past the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        ids.iter()
            .map(|&i| {
                self.chars
                    .get(i as usize)
                    .copied()
                    .ok_or(Error::IndexOutOfRange {
                        index: i as usize,
                        len: self.chars.len(),
                    })
            })
            .collect()
    }
}

impl TryFrom<String> for Vocab {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Vocab::new(s.chars().collect())
    }
}

impl From<Vocab> for String {
    fn from(v: Vocab) -> String {
        v.chars.into_iter().collect()
    }
}

/// One party's unit of text: a speaking role of one play, or a whole plain text file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    /// `play/SPEAKER` for a role, the file name for a plain text.
    pub name: String,
    /// The text (a role's speeches, each ending with a newline).
    pub text: String,
}

impl Doc {
    /// The contiguous training head and validation tail: the last `val_fraction` of the
    /// characters (rounded down, at a character boundary) are validation.
    pub fn split(&self, val_fraction: f64) -> (&str, &str) {
        let n = self.text.chars().count();
        let val = ((n as f64) * val_fraction.clamp(0.0, 1.0)).floor() as usize;
        let cut = self
            .text
            .char_indices()
            .nth(n - val)
            .map_or(self.text.len(), |(i, _)| i);
        self.text.split_at(cut)
    }
}

/// Whether `line` (trimmed) names a speaker: short, capitalised, ending with a dot or all upper
/// case, and not an act or scene heading or a roman numeral.
fn speaker_name(line: &str) -> Option<&str> {
    let s = line.trim();
    let first = s.chars().next()?;
    if !first.is_uppercase() || s.chars().count() > 40 || s.split_whitespace().count() > 4 {
        return None;
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    let dotted = name.len() < s.len();
    let upper = !name.chars().any(char::is_lowercase);
    if !(dotted || upper) || name.is_empty() {
        return None;
    }
    if name.contains([',', ':', ';', '[', ']', '?', '!']) {
        return None;
    }
    // Act and scene headings ("ACT I.", "Scene II. A room.", the Folio's "Actus Primus").
    let lower = name.to_lowercase();
    if ["act ", "actus", "scene", "scoena"]
        .iter()
        .any(|h| lower.starts_with(h))
        || lower == "act"
    {
        return None;
    }
    if name
        .chars()
        .all(|c| matches!(c, 'I' | 'V' | 'X' | 'L' | 'C' | ' ' | '.'))
    {
        return None;
    }
    Some(name)
}

/// The roles of one play in the modern layout: speaker line, then the speech up to a blank line.
/// Stage directions on their own line (`[Exit.]`) are dropped. Roles come back sorted by speaker
/// name, named `play/SPEAKER`, each with all its speeches in order.
pub fn parse_play(play: &str, text: &str) -> Vec<Doc> {
    let lines: Vec<&str> = text.lines().collect();
    let mut roles: BTreeMap<&str, String> = BTreeMap::new();
    let mut prev_blank = true;
    let mut i = 0;
    while i < lines.len() {
        let next_is_speech = lines
            .get(i + 1)
            .is_some_and(|l| !l.trim().is_empty() && !l.trim_start().starts_with('['));
        let speaker = if prev_blank && next_is_speech {
            speaker_name(lines[i])
        } else {
            None
        };
        let Some(speaker) = speaker else {
            prev_blank = lines[i].trim().is_empty();
            i += 1;
            continue;
        };
        let speech = roles.entry(speaker).or_default();
        i += 1;
        while let Some(l) = lines.get(i).filter(|l| !l.trim().is_empty()) {
            if !l.trim_start().starts_with('[') {
                speech.push_str(l.trim_end());
                speech.push('\n');
            }
            i += 1;
        }
        prev_blank = false;
    }
    roles
        .into_iter()
        .filter(|(_, t)| !t.is_empty())
        .map(|(speaker, text)| Doc {
            name: format!("{play}/{speaker}"),
            text,
        })
        .collect()
}

/// The poems of the collection: no speakers (a title line followed by text would otherwise pass
/// for one).
const POEMS: [&str; 5] = [
    "lovers_complaint",
    "passionate_pilgrim",
    "phoenix_and_the_turtle",
    "rape_of_lucrece",
    "sonnets",
];

/// The name of a modern-edition play file (`romeo_and_juliet_gut.txt` -> `romeo_and_juliet`),
/// `None` for the Folio editions, the poems and anything else.
fn modern_play_name(file: &str) -> Option<&str> {
    let base = file.rsplit('/').next().unwrap_or(file);
    base.strip_suffix("_gut.txt")
        .filter(|name| !POEMS.contains(name))
}

/// Every role of every modern-edition play in a Shakespeare data directory, sorted by name:
/// `shakespeare-texts.tar.gz` when it is there, else the `*_gut.txt` files in the directory.
/// Files without speeches (the poems) give no roles.
pub fn load_shakespeare_roles(dir: &Path) -> Result<Vec<Doc>> {
    let files = read_text_files(dir)?;
    let mut roles = Vec::new();
    for (name, text) in &files {
        if let Some(play) = modern_play_name(name) {
            roles.extend(parse_play(play, text));
        }
    }
    if roles.is_empty() {
        return Err(Error::Data {
            path: dir.to_path_buf(),
            what: "no speaking roles found (expected modern-edition *_gut.txt plays)".into(),
        });
    }
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(roles)
}

/// The tar.gz of the Shakespeare texts, by its name in the shared data directory.
pub const SHAKESPEARE_TARBALL: &str = "shakespeare-texts.tar.gz";

/// `(file name, text)` of every `.txt` file in `dir`'s tarball, or in `dir` itself, sorted by name.
pub fn read_text_files(dir: &Path) -> Result<Vec<(String, String)>> {
    let tarball = dir.join(SHAKESPEARE_TARBALL);
    let mut files = if tarball.is_file() {
        let gz = read_file(&tarball)?;
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .take(MAX_TAR_BYTES + 1)
            .read_to_end(&mut tar)
            .map_err(|e| data_err(&tarball, format!("gzip: {e}")))?;
        if tar.len() as u64 > MAX_TAR_BYTES {
            return Err(data_err(&tarball, "over 1 GiB uncompressed".into()));
        }
        let mut out = Vec::new();
        for (name, bytes) in tar_entries(&tar).map_err(|w| data_err(&tarball, w))? {
            if name.ends_with(".txt") {
                let text = String::from_utf8(bytes)
                    .map_err(|_| data_err(&tarball, format!("{name} is not UTF-8")))?;
                out.push((name.trim_start_matches("./").to_string(), text));
            }
        }
        out
    } else {
        let rd = std::fs::read_dir(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in rd {
            let path = entry
                .map_err(|source| Error::Io {
                    path: dir.to_path_buf(),
                    source,
                })?
                .path();
            if path.extension().is_some_and(|e| e == "txt") && path.is_file() {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push((name, read_text(&path)?));
            }
        }
        out
    };
    if files.is_empty() {
        return Err(data_err(
            dir,
            format!("neither {SHAKESPEARE_TARBALL} nor any .txt file here"),
        ));
    }
    files.sort();
    Ok(files)
}

/// A plain UTF-8 text file as one document named after the file.
pub fn load_plain_text(path: &Path) -> Result<Doc> {
    Ok(Doc {
        name: path.display().to_string(),
        text: read_text(path)?,
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_text(path: &Path) -> Result<String> {
    String::from_utf8(read_file(path)?).map_err(|e| {
        data_err(
            path,
            format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

fn data_err(path: &Path, what: String) -> Error {
    Error::Data {
        path: PathBuf::from(path),
        what,
    }
}

/// The largest uncompressed tarball read (a bound against a gzip bomb).
const MAX_TAR_BYTES: u64 = 1 << 30;

/// The regular files of a tar archive as `(name, bytes)`, through the `tar` crate (ustar, GNU
/// long names, pax); directories and links are skipped. Malformed or truncated archives are an
/// error, never a panic.
fn tar_entries(tar: &[u8]) -> std::result::Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(|e| format!("tar: {e}"))? {
        let mut entry = entry.map_err(|e| format!("tar: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| format!("tar entry name: {e}"))?
            .to_string_lossy()
            .into_owned();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| format!("tar entry {name}: {e}"))?;
        if (data.len() as u64) < entry.header().size().unwrap_or(0) {
            return Err(format!("tar entry {name}: truncated"));
        }
        out.push((name, data));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNIPPET: &str = "ROMEO AND JULIET\n\nACT I.\n\nScene I. A public place.\n\n\
        [Enter Sampson and Gregory.]\n\nSampson.\nGregory, o' my word, we'll not carry coals.\n\n\
        Gregory.\nNo, for then we should be colliers.\n\nSampson.\nI mean, an we be in choler \
        we'll draw.\n[Draws.]\n  And so I will.\n\n[Exit.]\n\nTHESEUS\nWhat say you, Hermia?\n\n\
        XIV.\nA sonnet line that is no speech.\n";

    #[test]
    fn parser_collects_each_roles_speeches() {
        let roles = parse_play("rj", SNIPPET);
        let names: Vec<&str> = roles.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["rj/Gregory", "rj/Sampson", "rj/THESEUS"]);
        assert_eq!(roles[0].text, "No, for then we should be colliers.\n");
        assert_eq!(
            roles[1].text,
            "Gregory, o' my word, we'll not carry coals.\n\
             I mean, an we be in choler we'll draw.\n  And so I will.\n"
        );
        assert_eq!(roles[2].text, "What say you, Hermia?\n");
        assert_eq!(modern_play_name("./hamlet_gut.txt"), Some("hamlet"));
        assert_eq!(modern_play_name("hamlet_gut_f.txt"), None);
        assert_eq!(modern_play_name("sonnets_gut.txt"), None);
    }

    #[test]
    fn vocabulary_round_trips_and_serialises_as_a_string() {
        let v = Vocab::from_texts(["ba\nc", "ab!"]).unwrap();
        assert_eq!(v.chars(), ['\n', '!', 'a', 'b', 'c']);
        let ids = v.encode("t", "cab\n!").unwrap();
        assert_eq!(ids, [4, 2, 3, 0, 1]);
        assert_eq!(v.decode(&ids).unwrap(), "cab\n!");
        assert!(v.decode(&[5]).is_err());
        let s: String = v.clone().into();
        assert_eq!(s, "\n!abc");
        assert_eq!(Vocab::try_from(s).unwrap(), v);
        assert!(Vocab::try_from("aba".to_string()).is_err());
        // As a genesis would hold it: a TOML string, escapes and all, and back.
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Genesis {
            vocab: Vocab,
        }
        let g = Genesis {
            vocab: Vocab::from_texts(["a\"b\\\n'é"]).unwrap(),
        };
        let text = toml::to_string(&g).unwrap();
        assert_eq!(toml::from_str::<Genesis>(&text).unwrap(), g);
        assert!(toml::from_str::<Genesis>("vocab = \"aa\"").is_err());
        assert!(Vocab::try_from(String::new()).is_err());
    }

    #[test]
    fn out_of_vocabulary_names_the_character_and_position() {
        let v = Vocab::from_texts(["abc\n"]).unwrap();
        let e = v.encode("play/ROMEO", "abc\nab\ncaZb").unwrap_err();
        match &e {
            Error::OutOfVocabulary {
                doc,
                ch,
                line,
                column,
            } => {
                assert_eq!(
                    (doc.as_str(), *ch, *line, *column),
                    ("play/ROMEO", 'Z', 3, 3)
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = e.to_string();
        assert!(msg.contains("'Z'") && msg.contains("line 3") && msg.contains("column 3"));
    }

    #[test]
    fn split_is_contiguous_at_a_character_boundary() {
        let d = Doc {
            name: "x".into(),
            text: "abcdéfghij".into(),
        };
        assert_eq!(d.split(0.3), ("abcdéfg", "hij"));
        assert_eq!(d.split(0.0), ("abcdéfghij", ""));
        assert_eq!(d.split(1.0), ("", "abcdéfghij"));
    }

    /// A tar archive with one file.
    fn one_file_tar(name: &str, body: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut h, name, body).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn tar_reader_reads_files_and_rejects_truncation() {
        let t = one_file_tar("./a_gut.txt", b"hello");
        assert_eq!(
            tar_entries(&t).unwrap(),
            [("a_gut.txt".to_string(), b"hello".to_vec())]
        );
        assert!(tar_entries(&t[..515]).is_err(), "cut inside the file");
        let mut bad = t.clone();
        bad[124] = b'9';
        assert!(tar_entries(&bad).is_err(), "a size that is not octal");
    }

    #[test]
    fn shakespeare_roles_from_the_shared_data() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/shakespeare");
        let roles = load_shakespeare_roles(&dir).unwrap();
        assert!(roles.len() > 1000, "{} roles", roles.len());
        let chars: usize = roles.iter().map(|d| d.text.len()).sum();
        assert!(chars > 3_000_000, "{chars} chars");
        let romeo = roles
            .iter()
            .find(|d| d.name == "romeo_and_juliet/Romeo")
            .unwrap();
        assert!(
            romeo
                .text
                .contains("But soft! what light through yonder window breaks?")
        );
        assert!(!roles.iter().any(|d| d.name.starts_with("sonnets")));
        // 37 plays (every modern edition but the five poems), each with its speaking roles.
        let plays: std::collections::BTreeSet<&str> = roles
            .iter()
            .filter_map(|d| d.name.split('/').next())
            .collect();
        assert_eq!(plays.len(), 37, "{plays:?}");
    }
}

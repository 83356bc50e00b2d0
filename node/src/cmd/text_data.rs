//! The character transformer's text as `simulate`, `run` and the genesis use it: the Shakespeare
//! plays by speaking role, the corpus's vocabulary, each node's training text as a token stream,
//! and one validation stream for every node and partition (each role's tail, in document
//! order: the same text `cohort lm-train` validates on by default).

use std::path::Path;

use anyhow::{Context, Result};
use model::data::Dataset;
use model::text::{Doc, Vocab};
use model::text_partition::{TextPartition, partition_text};

/// The share of each role's text (its tail) held out for validation, as `lm-train`'s default.
pub const VAL_FRACTION: f64 = 0.1;

/// The plays by role from `dir` (`shakespeare-texts.tar.gz` or the `*_gut.txt` files).
pub fn load_shakespeare(dir: Option<&Path>) -> Result<Vec<Doc>> {
    let dir = dir.context("the shakespeare data set needs --dataset-dir DIR")?;
    model::text::load_shakespeare_roles(dir)
        .with_context(|| format!("reading the plays in {}", dir.display()))
}

/// The sorted characters of the whole corpus: what a genesis fixes.
pub fn corpus_vocab(docs: &[Doc]) -> Result<Vocab> {
    Ok(Vocab::from_texts(docs.iter().map(|d| d.text.as_str()))?)
}

/// Node `i`'s training text of `nodes`, split `how`, as token streams in `vocab` (an error names
/// the first character outside it).
pub fn shards(
    docs: &[Doc],
    nodes: usize,
    how: TextPartition,
    seed: u64,
    vocab: &Vocab,
) -> Result<Vec<Dataset>> {
    partition_text(docs, nodes, how, VAL_FRACTION, seed)
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ids = vocab.encode(&format!("node {i}'s training text"), &p.train)?;
            Ok(Dataset::tokens(&ids)?)
        })
        .collect()
}

/// Every role's validation tail in document order, as one token stream.
pub fn validation(docs: &[Doc], vocab: &Vocab) -> Result<Dataset> {
    let text: String = docs.iter().map(|d| d.split(VAL_FRACTION).1).collect();
    Ok(Dataset::tokens(
        &vocab.encode("the validation text", &text)?,
    )?)
}

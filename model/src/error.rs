//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the training math. Errors caused by bytes from a peer
/// (`Codec`, `Aggregate` with non-finite input) are distinct from local failures (`Data`, `Candle`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file is missing, truncated or has a wrong header.
    #[error("{path}: {what}")]
    Data { path: PathBuf, what: String },
    /// A data schema (the genesis `[data]` section) is out of range or inconsistent.
    #[error("data schema: {0}")]
    Schema(String),
    /// One value of a node's own data file does not fit the schema: the file, the 1-based data
    /// row (the header is not counted), the file's 1-based line where that row starts, and the column.
    #[error("{path}: row {row} (line {line}), column '{column}': {what}")]
    Record {
        path: PathBuf,
        row: u64,
        line: u64,
        column: String,
        what: String,
    },
    /// A model declaration (the genesis `[model]` section) is unknown, out of range or does not
    /// fit the data's shape.
    #[error("model: {0}")]
    Model(String),
    /// An in-memory dataset is inconsistent (features and labels disagree, a label out of range,
    /// a class count the training path cannot take).
    #[error("dataset: {0}")]
    Dataset(String),
    /// A text holds a character outside the model's vocabulary: the document, the character and
    /// its 1-based line and column (counted in characters).
    #[error("{doc}: character {ch:?} at line {line}, column {column} is not in the vocabulary")]
    OutOfVocabulary {
        doc: String,
        ch: char,
        line: usize,
        column: usize,
    },
    /// A sample index past the end of a dataset.
    #[error("sample index {index} out of range for a dataset of {len}")]
    IndexOutOfRange { index: usize, len: usize },
    /// An encoded delta is malformed (from a peer: reject it).
    #[error("malformed encoded delta: {0}")]
    Codec(String),
    /// Decoded delta has the wrong number of parameters.
    #[error("wrong parameter count: got {got}, expected {expected}")]
    WrongLength { got: usize, expected: usize },
    /// Aggregation input is unusable (empty set, non-finite values, inconsistent lengths).
    #[error("aggregation: {0}")]
    Aggregate(String),
    /// A configuration string (rule, partition, codec, attack) did not parse.
    #[error("invalid {kind} '{input}': {why}")]
    Parse {
        kind: &'static str,
        input: String,
        why: String,
    },
    /// DP-SGD is configured but the caller gave no secret noise source.
    #[error("DP-SGD needs a secret noise source (32 secret bytes) and none was given")]
    DpSgdWithoutSecret,
    /// A membership-inference measurement got unusable input (no scores, a NaN score, too few
    /// records for the member and non-member sets, an unreachable epsilon).
    #[error("membership inference: {0}")]
    Mia(String),
    /// Secure aggregation refused a setting or a member's message.
    #[error(transparent)]
    SecAgg(#[from] crate::secagg::SecAggError),
    /// A checkpoint file is missing a tensor or has the wrong shape.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// An error from candle (tensor shapes, safetensors I/O).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn parse_err(kind: &'static str, input: &str, why: impl Into<String>) -> Error {
    Error::Parse {
        kind,
        input: input.to_string(),
        why: why.into(),
    }
}

//! A party's data on the command line: `--dataset` (alias `--own-data`) names a built-in data set
//! (`digits`, `mnist`, `fashion-mnist`) or the party's own files (`csv:PATH`, `images:DIR`,
//! `idx:DIR`), read against the cohort's data schema and checked against its model before any
//! training starts. Evaluation data is `--eval SOURCE`, or else a held-out [`VALID_FRACTION`] of
//! the node's own data.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use model::compact::CompactDataset;
use model::data::{Dataset, DatasetKind};
use model::net::ModelSpec;
use model::schema::DataSchema;
use model::source::DataSource;
use serde::Deserialize;

/// The share of a node's own data held out for evaluation when no `--eval` is given.
pub const VALID_FRACTION: f64 = 0.1;

/// `--dataset`: a built-in data set or a party's own files.
#[derive(Debug, Clone, PartialEq)]
pub enum DataArg {
    /// `digits`, `mnist` or `fashion-mnist`.
    Builtin(DatasetKind),
    /// `csv:PATH`, `images:DIR` or `idx:DIR`.
    Own(DataSource),
    /// `shakespeare`: the plays by speaking role in `--dataset-dir`, text for the transformer.
    Shakespeare,
}

impl std::str::FromStr for DataArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "shakespeare" {
            Ok(Self::Shakespeare)
        } else if s.contains(':') {
            s.parse::<DataSource>()
                .map(Self::Own)
                .map_err(|e| e.to_string())
        } else {
            s.parse::<DatasetKind>().map(Self::Builtin).map_err(|_| {
                format!(
                    "unknown data set '{s}': expected digits, mnist, fashion-mnist, shakespeare, \
                     csv:PATH, images:DIR or idx:DIR"
                )
            })
        }
    }
}

impl std::fmt::Display for DataArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Builtin(k) => write!(f, "{k}"),
            Self::Own(s) => write!(f, "{s}"),
            Self::Shakespeare => f.write_str("shakespeare"),
        }
    }
}

/// The `[data]` and `[model]` sections of a TOML file (a genesis file works: other sections and
/// keys are ignored).
#[derive(Debug, Deserialize)]
struct SchemaFile {
    data: Option<DataSchema>,
    model: Option<ModelDecl>,
}

/// `[model]`'s declaration keys.
#[derive(Debug, Deserialize)]
struct ModelDecl {
    kind: Option<String>,
    #[serde(default)]
    layers: Vec<String>,
}

/// A schema file's `[data]` and its `[model]` kind and layers.
pub fn read_schema_file(path: &Path) -> Result<(DataSchema, Option<String>, Vec<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let f: SchemaFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let schema = f
        .data
        .with_context(|| format!("{}: no [data] section", path.display()))?;
    schema
        .validate()
        .with_context(|| format!("checking [data] of {}", path.display()))?;
    let (kind, layers) = f.model.map(|m| (m.kind, m.layers)).unwrap_or_default();
    Ok((schema, kind, layers))
}

/// Checks that `spec` takes the schema's input and predicts its classes.
pub fn check_fit(schema: &DataSchema, spec: &ModelSpec) -> Result<()> {
    if spec.input_features() != schema.input_size() || spec.classes() != schema.num_classes() {
        bail!(
            "model {spec} takes {} inputs and {} classes, but the data schema gives {} inputs \
             and {} classes",
            spec.input_features(),
            spec.classes(),
            schema.input_size(),
            schema.num_classes()
        );
    }
    Ok(())
}

/// Loads one source against the schema; the error names the source and then the file, row and
/// column.
pub fn load_source(src: &DataSource, schema: &DataSchema) -> Result<CompactDataset> {
    src.load(schema)
        .with_context(|| format!("loading {src} against the data schema"))
}

/// A node's own training data and its evaluation data (`eval`, or a held-out
/// [`VALID_FRACTION`] of `src` split with `seed`), checked against `schema` and `spec`, as the
/// `f32` sets the training path takes.
pub fn load_own(
    src: &DataSource,
    eval: Option<&DataSource>,
    schema: &DataSchema,
    spec: &ModelSpec,
    seed: u64,
) -> Result<(Dataset, Dataset)> {
    check_fit(schema, spec)?;
    let all = load_source(src, schema)?;
    let (train, test) = match eval {
        Some(e) => (all, load_source(e, schema)?),
        None => all.split(VALID_FRACTION, seed).with_context(|| {
            format!(
                "holding out {}% of {src} for evaluation (or give --eval)",
                VALID_FRACTION * 100.0
            )
        })?,
    };
    Ok((dense(train)?, dense(test)?))
}

/// The compact set as the training path's `f32` set.
pub fn dense(d: CompactDataset) -> Result<Dataset> {
    Ok(d.to_dataset()?)
}

/// The schema and model of a command that trains without a genesis (`simulate`, `centralized`):
/// `--schema` (its `[data]`, and its `[model]` unless `--model`/`--layers` are given), else the
/// built-in data set's schema; the model defaults to digits-mlp on the digits, mlp otherwise.
pub fn resolve_model(
    schema_file: Option<&PathBuf>,
    builtin: Option<DatasetKind>,
    model: Option<&str>,
    layers: &[String],
) -> Result<(DataSchema, ModelSpec)> {
    let (schema, file_kind, file_layers) = match (schema_file, builtin) {
        (Some(p), _) => read_schema_file(p)?,
        (None, Some(b)) => (b.schema(), None, Vec::new()),
        (None, None) => bail!(
            "your own data (csv:, images:, idx:) needs --schema FILE with its [data] section \
             (a genesis file works)"
        ),
    };
    let default_kind = match builtin {
        Some(DatasetKind::Digits) => "digits-mlp",
        _ => "mlp",
    };
    let (kind, layers) = match (model, layers.is_empty()) {
        (Some(m), _) => (m.to_string(), layers.to_vec()),
        (None, false) => (
            file_kind.unwrap_or_else(|| default_kind.into()),
            layers.to_vec(),
        ),
        (None, true) => (
            file_kind.unwrap_or_else(|| default_kind.into()),
            file_layers,
        ),
    };
    let spec = crate::custom::declare(&kind, &layers, schema.input_shape(), schema.num_classes())
        .with_context(|| format!("declaring model {kind} {layers:?}"))?;
    if let Some(b) = builtin {
        let bs = b.schema();
        if bs.input_shape() != schema.input_shape() || bs.num_classes() != schema.num_classes() {
            bail!(
                "data set {b} ({} with {} classes) does not fit the schema ({} with {} classes)",
                bs.input_shape(),
                bs.num_classes(),
                schema.input_shape(),
                schema.num_classes()
            );
        }
    }
    Ok((schema, spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_args_parse_names_and_sources() {
        assert_eq!(
            "mnist".parse::<DataArg>(),
            Ok(DataArg::Builtin(DatasetKind::Mnist))
        );
        assert_eq!(
            "csv:a.csv".parse::<DataArg>(),
            Ok(DataArg::Own(DataSource::Csv("a.csv".into())))
        );
        assert_eq!(
            "images:pics".parse::<DataArg>().map(|d| d.to_string()),
            Ok("images:pics".to_string())
        );
        let e = "cifar".parse::<DataArg>().unwrap_err();
        assert!(e.contains("unknown data set 'cifar'"), "{e}");
        let e = "tsv:x".parse::<DataArg>().unwrap_err();
        assert!(e.contains("unknown format 'tsv'"), "{e}");
    }
}

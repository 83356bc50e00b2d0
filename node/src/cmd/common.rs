//! Flags and helpers shared by the training commands.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use model::data::Dataset;
use model::net::ModelSpec;
use model::source::DataSource;

use super::data::{DataArg, check_fit, dense, load_source, resolve_model};

/// Dataset and model selection.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// Data: digits (embedded), mnist or fashion-mnist (IDX files in --data-dir), or a party's
    /// own files read against --schema: csv:PATH, images:DIR or idx:DIR. Repeatable with own
    /// files: `simulate` gives node I the I-th, `centralized` trains on their union.
    #[arg(long, visible_alias = "own-data", default_value = "digits")]
    pub dataset: Vec<DataArg>,
    /// Directory with the IDX files (train-images-idx3-ubyte[.gz], ...), or with the
    /// Shakespeare tarball for --dataset shakespeare.
    #[arg(long, visible_alias = "dataset-dir")]
    pub data_dir: Option<PathBuf>,
    /// Evaluation data for own files (csv:PATH, images:DIR, idx:DIR); default: 10% of each
    /// --dataset held out (seeded by --seed).
    #[arg(long)]
    pub eval: Option<DataSource>,
    /// TOML file with the data schema `[data]` and optionally `[model]` (kind, layers); a
    /// genesis file works. Needed for own files.
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// Model: mlp, cnn, logistic, digits-mlp, custom:NAME for a model the binary registered, or
    /// (simulate) transformer[:layers=L,heads=H,dim=C,context=T] with --dataset shakespeare
    /// (default: --schema's [model], else digits-mlp on digits and mlp otherwise).
    #[arg(long)]
    pub model: Option<String>,
    /// Hidden layers, comma-separated: dense:N (ReLU), dense:N:tanh, convKxK:N, maxpoolS
    /// (default: the kind's preset).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<String>,
}

/// What a training command trains on.
pub struct Loaded {
    /// One training set per --dataset (one in all for a built-in data set).
    pub parts: Vec<Dataset>,
    /// Evaluation data.
    pub test: Dataset,
    /// The model, checked against the data.
    pub model: ModelSpec,
}

impl Loaded {
    /// Every part in one set (the union of the parties' data).
    pub fn union(&self) -> Result<Dataset> {
        Ok(Dataset::concat(&self.parts, self.test.features)?)
    }
}

impl DataArgs {
    /// A name for the data, for the first line a command prints.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self.dataset.iter().map(DataArg::to_string).collect();
        names.join(" + ")
    }

    /// Loads the data and declares the model, checking they fit together; every problem with
    /// the files is one error naming the file, row and column.
    pub fn load(&self, seed: u64) -> Result<Loaded> {
        let mut builtin = None;
        let mut own = Vec::new();
        for d in &self.dataset {
            match d {
                DataArg::Builtin(k) => builtin = Some(*k),
                DataArg::Own(s) => own.push(s),
                DataArg::Shakespeare => bail!(
                    "shakespeare is text: train it with --model transformer (simulate, \
                     lm-train) or a transformer genesis"
                ),
            }
        }
        if builtin.is_some() && (self.dataset.len() > 1) {
            bail!("give either one built-in data set or your own files, not several");
        }
        let (schema, model) = resolve_model(
            self.schema.as_ref(),
            builtin,
            self.model.as_deref(),
            &self.layers,
        )?;
        check_fit(&schema, &model)?;
        if let Some(kind) = builtin {
            if self.eval.is_some() {
                bail!("--eval is for your own files; {kind} has its own test set");
            }
            let split = model::data::load(kind, self.data_dir.as_deref())
                .with_context(|| format!("loading dataset {kind}"))?;
            if split.train.features != model.input_features() {
                bail!(
                    "model {model} takes {} features but dataset {kind} has {}",
                    model.input_features(),
                    split.train.features
                );
            }
            return Ok(Loaded {
                parts: vec![split.train],
                test: split.test,
                model,
            });
        }
        let mut parts = Vec::new();
        let mut held_out = Vec::new();
        for src in own {
            let all = load_source(src, &schema)?;
            if self.eval.is_some() {
                parts.push(dense(all)?);
            } else {
                let (train, valid) = all.split(super::data::VALID_FRACTION, seed)?;
                parts.push(dense(train)?);
                held_out.push(dense(valid)?);
            }
        }
        let test = match &self.eval {
            Some(e) => dense(load_source(e, &schema)?)?,
            None => Dataset::concat(&held_out, schema.input_size())?,
        };
        Ok(Loaded { parts, test, model })
    }
}

/// Formats a byte count for humans.
pub fn human_bytes(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

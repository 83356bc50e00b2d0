//! Flags and helpers shared by the training commands.

use std::path::PathBuf;

use anyhow::{Context, Result};
use model::data::{DatasetKind, Split};
use model::net::ModelKind;

/// Dataset and model selection.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// Dataset: digits (embedded), mnist or fashion-mnist (IDX files in --data-dir).
    #[arg(long, default_value = "digits")]
    pub dataset: DatasetKind,
    /// Directory with the IDX files (train-images-idx3-ubyte[.gz], ...).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Model: mlp (784-200-200-10), cnn, digits-mlp. Defaults to digits-mlp on digits, mlp otherwise.
    #[arg(long)]
    pub model: Option<ModelKind>,
}

impl DataArgs {
    /// Loads the split and resolves the model, checking they fit together.
    pub fn load(&self) -> Result<(Split, ModelKind)> {
        let model = self.model.unwrap_or(match self.dataset {
            DatasetKind::Digits => ModelKind::DigitsMlp,
            _ => ModelKind::Mlp,
        });
        let split = model::data::load(self.dataset, self.data_dir.as_deref())
            .with_context(|| format!("loading dataset {}", self.dataset))?;
        if split.train.features != model.input_features() {
            anyhow::bail!(
                "model {model} takes {} features but dataset {} has {}",
                model.input_features(),
                self.dataset,
                split.train.features
            );
        }
        Ok((split, model))
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

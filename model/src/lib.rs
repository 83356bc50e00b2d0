//! Cohort's training math, as a pure library: no tokio, no sockets, no clock, no global RNG (seeds
//! come in as inputs through [`rng::Rng`]).
//!
//! Modules:
//! - [`spec`]: model declarations (the genesis `[model]`: presets 2NN, CNN, digits MLP; declared
//!   MLPs, CNNs, softmax regression) sized by the data schema, and their canonical parameter layout;
//! - [`net`]: a declared model in candle-nn;
//! - [`custom`]: a model of one's own ([`custom::CustomModel`]: built from a `VarBuilder`, forward,
//!   loss, right predictions), trained like a declared one;
//! - [`data`]: MNIST/Fashion-MNIST IDX loading with every header checked, the embedded 8x8 digits;
//! - [`schema`]: a cohort's data schema (classes, tabular columns or image size), the genesis `[data]`;
//! - [`source`]: a node's own data (`csv:PATH`, `images:DIR`, `idx:DIR`) loaded against the schema
//!   by [`tabular`] (CSV), [`images`] (PNG/JPEG class folders) and [`compact`] (IDX), held as a
//!   [`compact::CompactDataset`] (u8 pixels or f32 tabular values, u16 labels);
//! - [`shard`]: a node's shard of a built-in data set, cut while the IDX file streams;
//! - [`partition`]: IID, Dirichlet(alpha) and pathological-shard splits over nodes;
//! - [`train`]: local SGD/Adam training with optional FedProx, and evaluation;
//! - [`params`]: flat parameter vectors, their SHA-256 hash, safetensors files;
//! - [`codec`]: dense, int8, top-k and top-k+int8 delta encodings with error feedback;
//! - [`dp`]: L2 clipping, Gaussian noise and the RDP accountant;
//! - [`dpsgd`]: record-level DP-SGD's settings, secret noise source and Poisson sampling;
//! - [`secagg`]: secure aggregation (fixed point, pairwise X25519 + ChaCha20 masks, self masks,
//!   dropouts) for honest-but-curious members;
//! - [`aggregate`]: mean, median, trimmed mean, Multi-Krum, CenteredClip and the server step;
//! - [`attack`]: Byzantine behaviours for experiments;
//! - [`mia`]: membership inference (the loss-threshold attack, ROC AUC, TPR at low FPR) and the
//!   experiment that measures it with and without DP;
//! - [`sim`]: N nodes in one process on the same per-round math as the networked node;
//! - [`text`], [`text_partition`], [`transformer`], [`lm`]: next-character language modelling:
//!   text files and the Shakespeare plays by speaking role, a fixed character vocabulary, role and
//!   IID splits, a decoder-only transformer, its training, evaluation, sampling and model files;
//!   [`spec::ModelSpec::transformer`] makes it one more model kind of the network's round (flat
//!   parameters, deltas, aggregation) on a token stream ([`data::Dataset::tokens`]).
//! - [`lm_local`]: a node's transformer training from round to round (AdamW moments kept, a
//!   cosine schedule on the global step).
#![deny(clippy::unwrap_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

pub mod aggregate;
pub mod attack;
pub mod codec;
pub mod compact;
pub(crate) mod conv;
pub mod custom;
pub mod data;
pub mod dp;
pub mod dpsgd;
pub mod error;
pub mod fast;
pub mod fast_cnn;
pub(crate) mod fast_lm;
pub mod fused;
pub mod gelu;
pub mod images;
pub(crate) mod kernels;
pub mod lm;
pub mod lm_local;
pub mod lowpass;
pub mod mia;
pub mod mia_fed;
pub mod net;
pub mod params;
pub mod partition;
pub mod rng;
pub mod schema;
pub mod secagg;
pub mod shard;
pub mod sim;
pub mod source;
pub mod spec;
pub mod tabular;
pub mod text;
pub mod text_partition;
pub mod train;
pub mod transformer;

#[cfg(test)]
mod testutil;

pub use error::{Error, Result};

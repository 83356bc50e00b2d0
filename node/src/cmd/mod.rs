//! One module per subcommand.

pub mod admin;
pub mod centralized;
pub mod common;
pub mod data;
pub mod genesis;
pub mod keygen;
pub mod ledger;
pub mod lm;
pub mod netsim;
pub mod run;
pub mod sample;
pub mod simulate;
pub mod testnet;
pub mod testnet_init;
pub mod text_data;

//! One module per subcommand.

pub mod centralized;
pub mod common;
pub mod simulate;

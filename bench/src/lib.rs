//! Renders Cohort's benchmark results for people: tables as CSV and GitHub Markdown, generated
//! Markdown spliced into hand-written documents, and charts as PNG.
//!
//! - [`table`]: [`Table`] (CSV in and out, Markdown out) and [`replace_block`].
//! - [`plot`]: [`line_chart`] and [`stacked_bars`], drawn with plotters and an embedded font, so
//!   they need no system font libraries.
//!
//! The `cohort-bench` binary runs the benchmarks and uses this library to report them.

mod canvas;
pub mod plot;
pub mod table;

pub use plot::{LineChart, Series, StackedBars, line_chart, stacked_bars};
pub use table::{Table, replace_block};

#[cfg(test)]
mod test_util {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed when dropped.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(name: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let unique = format!(
                "cohort-bench-{name}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(unique);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

//! Runs the measured programs: one child process at a time, its output streamed to a log file
//! and summarised on the terminal, the exact command line recorded for `BENCHMARKS.md`.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Where the programs are and where their output goes.
pub struct Runner {
    /// The `cohort` binary.
    pub cohort: PathBuf,
    /// `consensus/examples/bench` built with `--features sim`, if given.
    pub consensus_bench: Option<PathBuf>,
    /// `model/examples/train_speed`, if given.
    pub train_speed: Option<PathBuf>,
    /// `model/examples/mia`, if given.
    pub mia: Option<PathBuf>,
    /// MNIST IDX directory.
    pub data_dir: PathBuf,
    /// `bench/results`.
    pub results: PathBuf,
    /// Commands run so far in the current suite, for the record.
    commands: Vec<String>,
    /// Suite name, for progress lines.
    suite: String,
    step: usize,
    tty: bool,
}

impl Runner {
    /// A runner writing under `results`.
    pub fn new(
        cohort: PathBuf,
        consensus_bench: Option<PathBuf>,
        train_speed: Option<PathBuf>,
        mia: Option<PathBuf>,
        data_dir: PathBuf,
        results: PathBuf,
    ) -> Runner {
        Runner {
            cohort,
            consensus_bench,
            train_speed,
            mia,
            data_dir,
            results,
            commands: Vec::new(),
            suite: String::new(),
            step: 0,
            tty: std::io::stdout().is_terminal(),
        }
    }

    /// Starts a suite: clears the command record.
    pub fn begin(&mut self, suite: &str) {
        self.suite = suite.to_string();
        self.commands.clear();
        self.step = 0;
        println!("== {suite}");
    }

    /// Writes the suite's command record next to its results.
    pub fn finish(&mut self, size: &str) -> Result<()> {
        let path = self.results.join(format!("{}-commands.txt", self.suite));
        let mut text = format!("# size: {size}\n");
        for c in &self.commands {
            text.push_str(c);
            text.push('\n');
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// A scratch file for one run's CSV output.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.results.join("raw").join(self.suite.clone()).join(name)
    }

    /// Runs `cohort ARGS`; returns its stdout.
    pub fn cohort(&mut self, label: &str, args: &[String]) -> Result<String> {
        let bin = self.cohort.clone();
        self.run(label, &bin, args)
    }

    /// Runs `program ARGS` with progress; returns its stdout. A non-zero exit is an error that
    /// names the log file.
    pub fn run(&mut self, label: &str, program: &Path, args: &[String]) -> Result<String> {
        self.step += 1;
        let shown = format!(
            "{} {}",
            program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            args.iter()
                .map(|a| if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.clone()
                })
                .collect::<Vec<_>>()
                .join(" ")
        );
        self.commands.push(shown.clone());
        let log_dir = self.results.join("raw").join(&self.suite);
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let log_path = log_dir.join(format!("{:02}-{}.log", self.step, sanitize(label)));
        let mut log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        writeln!(log, "$ {shown}")?;
        let start = Instant::now();
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut out = String::new();
        let prefix = format!("[{} {}] {label}", self.suite, self.step);
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading child output")?;
            writeln!(log, "{line}")?;
            if self.tty {
                let mut short: String = line.chars().take(100).collect();
                short.retain(|c| c != '\r');
                print!("\r\x1b[2K{prefix}: {short}");
                let _ = std::io::stdout().flush();
            }
            out.push_str(&line);
            out.push('\n');
        }
        let status = child.wait().context("waiting for child")?;
        let secs = start.elapsed().as_secs_f64();
        writeln!(log, "# exit {status}, {secs:.1} s")?;
        if self.tty {
            print!("\r\x1b[2K");
        }
        println!("{prefix}: {secs:.1} s");
        if !status.success() {
            bail!(
                "{} failed ({status}); its output is in {}",
                shown,
                log_path.display()
            );
        }
        Ok(out)
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// `["--flag", "value", ...]` from string slices.
pub fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_labels() {
        assert_eq!(
            sanitize("nnm+median / sign-flip:10"),
            "nnm-median---sign-flip-10"
        );
    }

    #[test]
    fn runs_a_program_and_records_it() {
        let dir = std::env::temp_dir().join(format!("cohort-bench-runner-{}", std::process::id()));
        let mut r = Runner::new(
            PathBuf::from("/bin/echo"),
            None,
            None,
            None,
            PathBuf::new(),
            dir.clone(),
        );
        std::fs::create_dir_all(&dir).unwrap();
        r.begin("t");
        let out = r.cohort("hello", &args(&["a", "b c"])).unwrap();
        assert_eq!(out, "a b c\n");
        assert!(r.run("false", Path::new("/bin/false"), &[]).is_err());
        r.finish("quick").unwrap();
        let rec = std::fs::read_to_string(dir.join("t-commands.txt")).unwrap();
        assert_eq!(rec, "# size: quick\necho a 'b c'\nfalse \n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

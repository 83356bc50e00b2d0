//! Result tables: CSV in and out, GitHub Markdown out, and splicing generated Markdown into a
//! hand-written document between marker comments.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, bail};

/// A rectangular table of strings: one header row, then data rows of the same width.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    /// Column names, in order; `column` looks them up.
    pub header: Vec<String>,
    /// Data rows. Each should have `header.len()` cells; the writers pad short rows with empty
    /// cells and drop extra cells rather than fail, so a bug upstream still yields a report.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column names.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| (*h).to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row. It should be as wide as the header (checked in debug builds only).
    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(
            row.len(),
            self.header.len(),
            "row width differs from the header {:?}",
            self.header
        );
        self.rows.push(row);
    }

    /// The index of the column named exactly `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// Reads a CSV file whose first record is the header, with the `csv` crate's RFC 4180
    /// reader.
    ///
    /// Fields may be quoted with `"` (a quote inside is written `""`), and quoted fields may hold
    /// commas and line breaks. Both `\n` and `\r\n` end a record; empty lines are skipped; a
    /// leading byte-order mark is dropped. Every record must be as wide as the header and UTF-8.
    /// Errors name the file and the line (the `csv` crate does not count skipped empty lines).
    /// Like most CSV readers (and unlike a strict RFC 4180
    /// parser) it takes a stray quote in an unquoted field as text.
    pub fn read_csv(path: &Path) -> anyhow::Result<Table> {
        let bytes =
            fs::read(path).with_context(|| format!("reading CSV file {}", path.display()))?;
        parse_csv(&bytes).with_context(|| format!("parsing CSV file {}", path.display()))
    }

    /// Writes the table as CSV (header first, `\n` after each record) with the `csv` crate,
    /// creating parent directories. Fields holding a comma, a quote or a line break are quoted.
    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        let width = self.header.len();
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&self.header).context("encoding CSV")?;
        for row in &self.rows {
            w.write_record(fitted(row, width)).context("encoding CSV")?;
        }
        let out = w
            .into_inner()
            .map_err(|e| anyhow::anyhow!("encoding CSV: {}", e.error()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .with_context(|| format!("creating directory {}", dir.display()))?;
        }
        fs::write(path, out).with_context(|| format!("writing CSV file {}", path.display()))
    }

    /// Renders a GitHub-flavoured Markdown table, one line per row, each ending in `\n`.
    ///
    /// Columns are padded to a common width so the source reads as a table too. A column whose
    /// non-empty cells all parse as numbers (a trailing `%` allowed) is right-aligned (`---:`).
    /// `|` in a cell is escaped and line breaks become `<br>`. A table without columns renders
    /// as the empty string.
    pub fn to_markdown(&self) -> String {
        let width = self.header.len();
        if width == 0 {
            return String::new();
        }
        let header: Vec<String> = self.header.iter().map(|h| md_cell(h)).collect();
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| fitted(row, width).map(md_cell).collect())
            .collect();
        let numeric: Vec<bool> = (0..width)
            .map(|c| {
                let mut cells = self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.trim());
                let mut any = false;
                let all = cells.all(|s| {
                    any |= !s.is_empty();
                    s.is_empty() || is_number(s)
                });
                all && any
            })
            .collect();
        let widths: Vec<usize> = (0..width)
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].chars().count())
                    .chain([header[c].chars().count(), 3])
                    .max()
                    .unwrap_or(3)
            })
            .collect();

        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            out.push('|');
            for (c, cell) in cells.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                if numeric[c] {
                    let _ = write!(out, " {}{} |", " ".repeat(pad), cell);
                } else {
                    let _ = write!(out, " {}{} |", cell, " ".repeat(pad));
                }
            }
            out.push('\n');
        };
        line(&mut out, &header);
        out.push('|');
        for c in 0..width {
            if numeric[c] {
                let _ = write!(out, " {}: |", "-".repeat(widths[c] - 1));
            } else {
                let _ = write!(out, " {} |", "-".repeat(widths[c]));
            }
        }
        out.push('\n');
        for row in &rows {
            line(&mut out, row);
        }
        out
    }
}

/// Replaces the text between `<!-- BEGIN name -->` and `<!-- END name -->` in `doc` with
/// `content` on lines of its own; the markers stay. Without the markers, appends a new section
/// `\n<!-- BEGIN name -->\n{content}\n<!-- END name -->\n` at the end.
///
/// Trailing line breaks of `content` are dropped, so applying the same call twice gives the same
/// document. A `BEGIN` marker without its `END` gets the content and an `END` marker right after
/// it, so nothing written after the marker is lost.
pub fn replace_block(doc: &str, name: &str, content: &str) -> String {
    let begin = format!("<!-- BEGIN {name} -->");
    let end = format!("<!-- END {name} -->");
    let content = content.trim_end_matches(['\n', '\r']);
    let Some(b) = doc.find(&begin) else {
        return format!("{doc}\n{begin}\n{content}\n{end}\n");
    };
    let inner_start = b + begin.len();
    match doc[inner_start..].find(&end) {
        Some(e) => {
            let inner_end = inner_start + e;
            format!("{}\n{content}\n{}", &doc[..inner_start], &doc[inner_end..])
        }
        None => format!(
            "{}\n{content}\n{end}{}",
            &doc[..inner_start],
            &doc[inner_start..]
        ),
    }
}

/// `row` cut or padded with empty cells to exactly `width` cells.
fn fitted(row: &[String], width: usize) -> impl Iterator<Item = &str> {
    row.iter()
        .map(String::as_str)
        .chain(std::iter::repeat(""))
        .take(width)
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
        .replace("\r\n", "<br>")
        .replace('\n', "<br>")
}

fn is_number(s: &str) -> bool {
    let s = s.strip_suffix('%').unwrap_or(s).trim_end();
    !s.is_empty() && s.parse::<f64>().is_ok()
}

/// Parses CSV bytes; see [`Table::read_csv`] for the dialect.
fn parse_csv(bytes: &[u8]) -> anyhow::Result<Table> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let header = reader.headers().map_err(located)?;
    if header.is_empty() {
        bail!("no header line (the file is empty)");
    }
    let mut table = Table {
        header: header.iter().map(String::from).collect(),
        rows: Vec::new(),
    };
    for record in reader.records() {
        let record = record.map_err(located)?;
        table.rows.push(record.iter().map(String::from).collect());
    }
    Ok(table)
}

/// A `csv` error as `line N: what`.
fn located(e: csv::Error) -> anyhow::Error {
    let line = e.position().map(csv::Position::line);
    let what = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields, but the header has {expected_len}"),
        csv::ErrorKind::Utf8 { err, .. } => format!("field {} is not UTF-8", err.field() + 1),
        _ => e.to_string(),
    };
    match line {
        Some(line) => anyhow::anyhow!("line {line}: {what}"),
        None => anyhow::anyhow!("{what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;

    fn strings(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| (*c).to_string()).collect()
    }

    #[test]
    fn csv_round_trip_keeps_quoted_commas_quotes_and_newlines() {
        let dir = TempDir::new("csv-round-trip");
        let path = dir.path().join("nested/deeper/table.csv");
        let mut table = Table::new(&["name", "note", "value"]);
        table.push(strings(&["plain", "a, b and c", "1.5"]));
        table.push(strings(&["quo\"te", "two\nlines", ""]));
        table.push(strings(&["", " spaced ", "-3"]));
        table.write_csv(&path).unwrap();

        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("name,note,value\nplain,\"a, b and c\",1.5\n"));
        assert!(text.contains("\"quo\"\"te\",\"two\nlines\",\n"));
        assert_eq!(Table::read_csv(&path).unwrap(), table);
    }

    #[test]
    fn csv_reads_crlf_blank_lines_and_a_missing_final_newline() {
        let table = parse_csv(b"\xef\xbb\xbfa,b\r\n\r\n1,\"x,y\"\r\n2,z").unwrap();
        assert_eq!(table.header, strings(&["a", "b"]));
        assert_eq!(
            table.rows,
            vec![strings(&["1", "x,y"]), strings(&["2", "z"])]
        );
        assert_eq!(table.column("b"), Some(1));
        assert_eq!(table.column("c"), None);
    }

    #[test]
    fn csv_errors_name_the_file_and_line() {
        let dir = TempDir::new("csv-errors");
        let cases = [
            (
                "ragged.csv",
                "a,b\n1,2\n3\n",
                "line 3: 1 fields, but the header has 2",
            ),
            (
                "wide.csv",
                "a,b\n1,\"2,3\"\n4,5,6\n",
                "line 3: 3 fields, but the header has 2",
            ),
            (
                "latin1.csv",
                "a\nok\n\u{e9}\n",
                "line 3: field 1 is not UTF-8",
            ),
            ("empty.csv", "", "no header line"),
            ("blank.csv", "\n\r\n", "no header line"),
        ];
        for (file, text, want) in cases {
            // Latin-1, not UTF-8: the byte 0xe9 alone.
            let text: Vec<u8> = text.chars().map(|c| c as u32 as u8).collect();
            let path = dir.path().join(file);
            fs::write(&path, text).unwrap();
            let err = format!("{:#}", Table::read_csv(&path).unwrap_err());
            assert!(err.contains(file), "{err}");
            assert!(err.contains(want), "{err}");
        }
        // A stray quote inside an unquoted field is text (as in Python's csv and Excel).
        assert_eq!(
            parse_csv(b"a\nx\"y\n").unwrap().rows,
            vec![strings(&["x\"y"])]
        );
        let missing = dir.path().join("missing.csv");
        let err = format!("{:#}", Table::read_csv(&missing).unwrap_err());
        assert!(err.contains("missing.csv"), "{err}");
    }

    #[test]
    fn ragged_rows_are_padded_or_cut_when_written() {
        let mut table = Table::new(&["a", "b"]);
        table.rows.push(strings(&["1"]));
        table.rows.push(strings(&["2", "3", "extra"]));
        let dir = TempDir::new("csv-ragged");
        let path = dir.path().join("t.csv");
        table.write_csv(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a,b\n1,\n2,3\n");
        assert_eq!(
            table.to_markdown(),
            "|   a |   b |\n| --: | --: |\n|   1 |     |\n|   2 |   3 |\n"
        );
    }

    #[test]
    fn markdown_of_a_two_by_two_table() {
        let mut table = Table::new(&["scheme", "MiB/round"]);
        table.push(strings(&["top-k 1%", "0.25"]));
        table.push(strings(&["dense|f32", "12.5"]));
        assert_eq!(
            table.to_markdown(),
            "| scheme     | MiB/round |\n\
             | ---------- | --------: |\n\
             | top-k 1%   |      0.25 |\n\
             | dense\\|f32 |      12.5 |\n"
        );
    }

    #[test]
    fn markdown_alignment_and_empty_tables() {
        let mut table = Table::new(&["n", "acc", "blank", "mixed"]);
        table.push(strings(&["4", "96.4%", "", "1"]));
        table.push(strings(&["16", "", "", "n/a"]));
        let md = table.to_markdown();
        assert_eq!(md.lines().nth(1), Some("| --: | ----: | ----- | ----- |"));
        assert_eq!(Table::new(&[]).to_markdown(), "");
        assert_eq!(Table::new(&["x"]).to_markdown(), "| x   |\n| --- |\n");
    }

    #[test]
    fn replace_block_replaces_between_markers_and_keeps_them() {
        let doc = "# Results\n\n<!-- BEGIN gossip -->\nold\ntable\n<!-- END gossip -->\n\nafter\n";
        let got = replace_block(doc, "gossip", "| new |\n");
        assert_eq!(
            got,
            "# Results\n\n<!-- BEGIN gossip -->\n| new |\n<!-- END gossip -->\n\nafter\n"
        );
        // Another block's markers are not confused with this one.
        let two = replace_block(&got, "gossip-bytes", "x");
        assert_eq!(replace_block(&two, "gossip", "y").matches("y\n").count(), 1);
        assert!(replace_block(&two, "gossip", "y").contains("BEGIN gossip-bytes -->\nx\n"));
    }

    #[test]
    fn replace_block_appends_when_missing() {
        assert_eq!(
            replace_block("# Doc\n", "t", "body"),
            "# Doc\n\n<!-- BEGIN t -->\nbody\n<!-- END t -->\n"
        );
        assert_eq!(
            replace_block("", "t", "body"),
            "\n<!-- BEGIN t -->\nbody\n<!-- END t -->\n"
        );
        // A BEGIN without END keeps what follows it.
        assert_eq!(
            replace_block("<!-- BEGIN t -->\nkeep me\n", "t", "body"),
            "<!-- BEGIN t -->\nbody\n<!-- END t -->\nkeep me\n"
        );
    }

    #[test]
    fn replace_block_is_idempotent() {
        for doc in [
            "intro\n",
            "a\n<!-- BEGIN t -->\nold\n<!-- END t -->\nb\n",
            "<!-- BEGIN t --><!-- END t -->",
            "<!-- BEGIN t -->\ndangling",
        ] {
            for content in ["body", "line 1\nline 2\n", ""] {
                let once = replace_block(doc, "t", content);
                assert_eq!(
                    replace_block(&once, "t", content),
                    once,
                    "{doc:?} {content:?}"
                );
            }
        }
    }
}

//! A node's own tabular data: a CSV file with a header, read against a tabular [`DataSchema`].
//!
//! Columns are found by name (their order in the file does not matter; other columns are ignored),
//! values are trimmed, numbers normalised with the schema's mean and std, categories one-hot
//! encoded, labels mapped to class numbers. The first value that does not fit stops the load with
//! one [`Error::Record`] naming the file, the data row, its line and the column.

use std::path::Path;

use crate::compact::{CompactDataset, Features};
use crate::data::data_err;
use crate::error::{Error, Result};
use crate::schema::{DataSchema, FeatureKind, InputSpec};

/// Most data rows read from one file.
pub const MAX_ROWS: usize = 10_000_000;
/// Most columns a file's header may have.
pub const MAX_COLUMNS: usize = 10_000;
/// Most input floats held for one file (1 GiB of `f32`).
pub const MAX_VALUES: usize = 1 << 28;

/// How one schema feature is read: its column and its encoding.
struct Column<'a> {
    index: usize,
    name: &'a str,
    kind: &'a FeatureKind,
}

/// Loads `path` as the schema's tabular data.
pub fn load_csv(path: &Path, schema: &DataSchema) -> Result<CompactDataset> {
    schema.validate()?;
    let InputSpec::Tabular { features, label } = &schema.input else {
        return Err(Error::Schema(format!(
            "{} is a CSV file but the schema's input is not tabular",
            path.display()
        )));
    };
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(std::io::BufReader::new(file));
    let header = reader.headers().map_err(|e| csv_err(path, &e))?.clone();
    if header.is_empty() || header.iter().all(str::is_empty) {
        return Err(data_err(
            path,
            "empty file: a header row naming the columns is required",
        ));
    }
    if header.len() > MAX_COLUMNS {
        return Err(data_err(
            path,
            format!(
                "{} columns in the header; at most {MAX_COLUMNS}",
                header.len()
            ),
        ));
    }
    let find = |name: &str| -> Result<usize> {
        let mut hits = header.iter().enumerate().filter(|(_, h)| *h == name);
        match (hits.next(), hits.next()) {
            (Some((i, _)), None) => Ok(i),
            (Some(_), Some(_)) => Err(data_err(
                path,
                format!("header (line 1): column '{name}' appears more than once"),
            )),
            (None, _) => Err(data_err(
                path,
                format!(
                    "header (line 1): no column '{name}' (a header row is required; its columns \
                     are: {})",
                    header_list(&header)
                ),
            )),
        }
    };
    let columns = features
        .iter()
        .map(|f| {
            Ok(Column {
                index: find(&f.name)?,
                name: &f.name,
                kind: &f.kind,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let label_index = find(label)?;

    let width = schema.input_size();
    let max_rows = MAX_ROWS.min(MAX_VALUES / width.max(1));
    let mut xs: Vec<f32> = Vec::new();
    let mut ys: Vec<u16> = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut row: u64 = 0;
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_err(path, &e)),
        }
        row += 1;
        if ys.len() >= max_rows {
            return Err(data_err(
                path,
                format!("more than {max_rows} data rows of {width} inputs; split the file"),
            ));
        }
        let line = record.position().map_or(0, |p| p.line());
        let at = |column: &str, what: String| Error::Record {
            path: path.to_path_buf(),
            row,
            line,
            column: column.to_string(),
            what,
        };
        for c in &columns {
            let text = record.get(c.index).unwrap_or_default();
            match c.kind {
                FeatureKind::Numeric { mean, std } => {
                    if text.is_empty() {
                        return Err(at(c.name, "empty value, expected a number".into()));
                    }
                    let v: f32 = text
                        .parse()
                        .map_err(|_| at(c.name, format!("'{text}' is not a number")))?;
                    if !v.is_finite() {
                        return Err(at(c.name, format!("'{text}' is not a finite number")));
                    }
                    let v = match (mean, std) {
                        (Some(m), Some(s)) => (v - m) / s,
                        _ => v,
                    };
                    if !v.is_finite() {
                        return Err(at(c.name, format!("'{text}' overflows when normalised")));
                    }
                    xs.push(v);
                }
                FeatureKind::Categorical { values } => {
                    let Some(hot) = values.iter().position(|v| v == text) else {
                        return Err(at(
                            c.name,
                            format!(
                                "unknown category '{text}' (expected one of: {})",
                                values.join(", ")
                            ),
                        ));
                    };
                    xs.extend((0..values.len()).map(|j| if j == hot { 1.0 } else { 0.0 }));
                }
            }
        }
        let text = record.get(label_index).unwrap_or_default();
        let class = schema.class_index(text).ok_or_else(|| {
            at(
                label,
                format!(
                    "unknown label '{text}' (expected one of the schema's classes: {})",
                    short_list(&schema.classes)
                ),
            )
        })?;
        ys.push(class);
    }
    if ys.is_empty() {
        return Err(data_err(path, "no data rows after the header"));
    }
    CompactDataset::new(Features::Dense(xs), ys, width, schema.num_classes())
}

/// A csv error (bad UTF-8, a row with a different number of fields) as one error naming the
/// file, the row and its line.
fn csv_err(path: &Path, e: &csv::Error) -> Error {
    let at = e
        .position()
        .map(|p| {
            // The header is record 0, so a data row's number is its record index.
            if p.record() == 0 {
                format!("header (line {}): ", p.line())
            } else {
                format!("row {} (line {}): ", p.record(), p.line())
            }
        })
        .unwrap_or_default();
    let what = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields, but the header has {expected_len}"),
        csv::ErrorKind::Utf8 { err, .. } => format!("not UTF-8 text (field {})", err.field() + 1),
        _ => e.to_string(),
    };
    data_err(path, format!("{at}{what}"))
}

fn header_list(header: &csv::StringRecord) -> String {
    let names: Vec<String> = header.iter().map(String::from).collect();
    short_list(&names)
}

/// The first few names of a list, for error messages.
fn short_list(names: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", ... ({} in all)", names.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::tests::tabular;
    use crate::testutil::TestDir;

    fn load(text: &str) -> (TestDir, Result<CompactDataset>) {
        let dir = TestDir::new("csv");
        let p = dir.write("data.csv", text);
        let r = load_csv(&p, &tabular());
        (dir, r)
    }

    fn err(text: &str) -> String {
        load(text).1.unwrap_err().to_string()
    }

    #[test]
    fn normalises_one_hot_encodes_and_maps_labels() {
        // Columns in another order than the schema, an extra column, padding spaces, quoting.
        let (_d, r) = load(
            "id,bought,height,colour,age\n\
             1,yes,1.5,blue,50\n\
             2, no ,-2,\"red\",25.5\n\
             3,no,0,green,40\n",
        );
        let d = r.unwrap();
        assert_eq!((d.len(), d.input_size(), d.num_classes()), (3, 5, 2));
        assert_eq!(d.labels(), &[1, 0, 0]);
        // age (x - 40) / 10, colour one-hot (red, green, blue), height as is.
        let want = [
            1.0, 0.0, 0.0, 1.0, 1.5, //
            -1.45, 1.0, 0.0, 0.0, -2.0, //
            0.0, 0.0, 1.0, 0.0, 0.0,
        ];
        let Features::Dense(x) = d.features() else {
            panic!("tabular data is dense")
        };
        assert_eq!(x.len(), want.len());
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{x:?}");
        }
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        d.batch_into(&[2], &mut xs, &mut ys).unwrap();
        assert_eq!((xs, ys), (vec![0.0, 0.0, 1.0, 0.0, 0.0], vec![0]));
    }

    #[test]
    fn spreadsheet_exports_load() {
        // A UTF-8 byte-order mark and CRLF line ends, as spreadsheet programs write them.
        let (_d, r) = load("\u{feff}age,colour,height,bought\r\n50,red,1,yes\r\n40,blue,2,no\r\n");
        let d = r.unwrap();
        assert_eq!(d.labels(), &[1, 0]);
    }

    #[test]
    fn a_bad_value_names_file_row_line_and_column() {
        let head = "age,colour,height,bought\n";
        let e = err(&format!("{head}50,red,1,yes\n41,red,x1,no\n"));
        assert!(
            e.contains("data.csv: row 2 (line 3), column 'height': 'x1' is not a number"),
            "{e}"
        );
        let e = err(&format!("{head}50,red,1,yes\n41,purple,1,no\n"));
        assert!(
            e.contains("row 2 (line 3), column 'colour': unknown category 'purple'"),
            "{e}"
        );
        assert!(e.contains("red, green, blue"), "{e}");
        let e = err(&format!("{head}50,red,1,maybe\n"));
        assert!(
            e.contains("row 1 (line 2), column 'bought': unknown label 'maybe'"),
            "{e}"
        );
        let e = err(&format!("{head}50,red,,yes\n"));
        assert!(
            e.contains("row 1 (line 2), column 'height': empty value"),
            "{e}"
        );
        let e = err(&format!("{head}NaN,red,1,yes\n"));
        assert!(
            e.contains("column 'age': 'NaN' is not a finite number"),
            "{e}"
        );
        let e = err(&format!("{head}inf,red,1,yes\n"));
        assert!(
            e.contains("column 'age'") && e.contains("not a finite"),
            "{e}"
        );
        // A quoted field spanning lines: the next row's line number follows the file, not the row.
        let e = err(&format!("{head}50,\"red\",1,\"y\nes\"\n"));
        assert!(e.contains("row 1 (line 2), column 'bought'"), "{e}");
        let e = err(&format!(
            "{head}50,red,1,\"y\nes\"\n50,red,1,yes\n50,red,q,no\n"
        ));
        assert!(e.contains("row 1 (line 2)"), "{e}");
        let e = err(&format!("{head}50,red,1,yes\n50,red,1,yes\n50,red,q,no\n"));
        assert!(e.contains("row 3 (line 4), column 'height'"), "{e}");
    }

    #[test]
    fn header_and_shape_errors_name_the_file() {
        let e = err("age,colour,bought\n50,red,yes\n");
        assert!(
            e.contains("data.csv: header (line 1): no column 'height'"),
            "{e}"
        );
        assert!(e.contains("'age', 'colour', 'bought'"), "{e}");
        // Without a header the first row is taken as one, and the error says a header is required.
        let e = err("50,red,1,yes\n");
        assert!(
            e.contains("no column 'age'") && e.contains("header row is required"),
            "{e}"
        );
        let e = err("age,colour,height,bought,age\n50,red,1,yes,3\n");
        assert!(e.contains("column 'age' appears more than once"), "{e}");
        let e = err("");
        assert!(e.contains("empty file"), "{e}");
        let e = err("age,colour,height,bought\n");
        assert!(e.contains("no data rows"), "{e}");
        let e = err("age,colour,height,bought\n50,red,1,yes\n50,red,1\n");
        assert!(
            e.contains("data.csv: row 2 (line 3): 3 fields, but the header has 4"),
            "{e}"
        );
        let (dir, _) = load("");
        let e = load_csv(&dir.path().join("absent.csv"), &tabular())
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent.csv"), "{e}");
        let p = dir.write("bin.csv", b"age,colour,height,bought\n50,r\xffd,1,yes\n");
        let e = load_csv(&p, &tabular()).unwrap_err().to_string();
        assert!(e.contains("bin.csv: row 1 (line 2): not UTF-8"), "{e}");
    }

    #[test]
    fn needs_a_valid_tabular_schema() {
        let dir = TestDir::new("csv-schema");
        let p = dir.write("d.csv", "a,b\n1,2\n");
        let images = crate::schema::tests::images(2, 2, 1, &["a", "b"]);
        let e = load_csv(&p, &images).unwrap_err().to_string();
        assert!(e.contains("not tabular"), "{e}");
        let mut bad = tabular();
        bad.classes.truncate(1);
        assert!(matches!(load_csv(&p, &bad), Err(Error::Schema(_))));
    }
}

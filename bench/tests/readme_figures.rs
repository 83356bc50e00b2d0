//! README quotes figures; BENCHMARKS.md holds them. Every decimal number and every percentage in
//! README's prose and tables (code blocks and `code spans` aside: commands, addresses, sample
//! output) must appear in BENCHMARKS.md, so a figure cannot be edited (or left stale) in one
//! place only.

use std::path::Path;

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The figures of `text`: runs of digits, `.` and `,` that hold a decimal point followed by a
/// digit (`97.76`, `1,663.5`), and whole numbers written with `%` (`81%`), without the sign.
fn figures(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit()
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.' || chars[j] == ',') {
            j += 1;
        }
        let token: String = chars[i..j].iter().collect();
        let token = token.trim_end_matches(['.', ',']).to_string();
        let decimal = token
            .split_once('.')
            .is_some_and(|(_, frac)| frac.starts_with(|c: char| c.is_ascii_digit()));
        let percent = chars.get(i + token.chars().count()) == Some(&'%');
        if decimal || percent {
            out.push(token);
        }
        i = j.max(i + 1);
    }
    out
}

/// `doc` without fenced code blocks and inline code spans.
fn prose(doc: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Inline code: drop what lies between pairs of backticks.
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                out.push_str(part);
                out.push(' ');
            }
        }
        out.push('\n');
    }
    out
}

#[test]
fn readme_quotes_only_figures_that_benchmarks_md_holds() {
    let readme = read("README.md");
    let bench = read("BENCHMARKS.md");
    let found = figures(&prose(&readme));
    assert!(found.len() >= 10, "too few figures found: {found:?}");
    let missing: Vec<&String> = found
        .iter()
        .filter(|f| !bench.contains(f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "README quotes figures that BENCHMARKS.md does not hold: {missing:?}"
    );
}

#[test]
fn code_is_not_prose() {
    let doc = "a 1.5% b `--x 2.5` c\n```\n3.5%\n```\nd 4.5";
    assert_eq!(figures(&prose(doc)), ["1.5", "4.5"]);
}

#[test]
fn figures_are_decimals_and_percentages_only() {
    assert_eq!(
        figures("8 nodes at 97.76% and 81% (0.57 pp), 1,663,370 params, v1.2, x2.5."),
        ["97.76", "81", "0.57"]
    );
}

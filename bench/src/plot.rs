//! PNG charts for benchmark results: line charts (optionally with a log x axis) and stacked bars.
//!
//! Text is drawn with DejaVu Sans embedded in the binary (see `assets/README.md`), so rendering
//! needs no font installed on the machine. A chart is drawn into memory and written only once it
//! is complete: a failed chart never leaves a half-written file behind.

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use crate::canvas::Canvas;

use anyhow::{Context, bail};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

/// Size of every chart, in pixels.
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 600;
/// The family name the embedded font is registered under; plotters' defaults use it too.
const FONT: &str = "sans-serif";
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

const TITLE_SIZE: f64 = 26.0;
const AXIS_DESC_SIZE: f64 = 18.0;
const TICK_SIZE: f64 = 14.0;
const LEGEND_SIZE: f64 = 15.0;
/// Legend rows are this far apart, in pixels.
const LEGEND_ROW: i32 = 24;
/// Legend labels wider than this (pixels) are shortened with an ellipsis.
const LEGEND_TEXT_MAX: u32 = 230;

/// Tableau 10 plus black and magenta: twelve colours that stay apart on white. Series beyond
/// twelve reuse them, and their marker shape changes.
const PALETTE: [RGBColor; 12] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x00, 0x00, 0x00),
    RGBColor(0xff, 0x00, 0xff),
];

/// One line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// Legend text; an empty label leaves the series out of the legend.
    pub label: String,
    /// `(x, y)` points, joined in the order given. Points with a NaN or infinite coordinate (and,
    /// on a log x axis, with x <= 0) are skipped.
    pub points: Vec<(f64, f64)>,
}

/// What [`line_chart`] draws.
#[derive(Debug, Clone, Copy)]
pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
    /// A log10 x axis (for sizes in bytes); points with x <= 0 are skipped.
    pub log_x: bool,
    /// The y axis range; lines are clipped to it. `None` fits the data with a small margin.
    pub y_range: Option<(f64, f64)>,
    /// Draws a marker at each point. A series with a single point always gets one.
    pub markers: bool,
}

/// What [`stacked_bars`] draws.
#[derive(Debug, Clone, Copy)]
pub struct StackedBars<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    /// The bars, left to right, and their labels on the x axis (e.g. "n=4", "n=8").
    pub categories: &'a [String],
    /// `(phase name, one value per category)`, stacked bottom-up in this order. Values must not
    /// be negative; NaN and infinite values count as 0.
    pub stacks: &'a [(String, Vec<f64>)],
}

/// Draws `chart` as a 1000x600 PNG at `path` (parent directories are created): one coloured line
/// per series, a grid, and a legend to the right of the plot so it never covers data.
///
/// Series with nothing drawable give an empty plot saying "no data". Errors: a `y_range` that is
/// empty or not finite, values too large to give a finite axis range, and I/O.
pub fn line_chart(path: &Path, chart: &LineChart) -> anyhow::Result<()> {
    let lines: Vec<Line> = chart
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| Line {
            label: s.label.clone(),
            style: i,
            points: s
                .points
                .iter()
                .copied()
                .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!chart.log_x || x > 0.0))
                .collect(),
        })
        .collect();
    let (xs, ys) = (
        lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)),
        lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)),
    );
    let x_range = match (bounds(xs), chart.log_x) {
        (Some((lo, hi)), true) => padded_log(lo, hi),
        (Some((lo, hi)), false) => padded_linear(lo, hi, 0.02),
        (None, true) => (1.0, 10.0),
        (None, false) => (0.0, 1.0),
    };
    let y_range = match (chart.y_range, bounds(ys)) {
        (Some((lo, hi)), _) => {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                bail!(
                    "y_range {lo}..{hi} of chart {:?} is empty or not finite",
                    chart.title
                );
            }
            (lo, hi)
        }
        (None, Some((lo, hi))) => padded_linear(lo, hi, 0.05),
        (None, None) => (0.0, 1.0),
    };
    for (axis, (lo, hi)) in [("x", x_range), ("y", y_range)] {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            bail!(
                "chart {:?}: the {axis} values are too large to plot",
                chart.title
            );
        }
    }
    let legend: Vec<LegendEntry> = lines
        .iter()
        .filter(|l| !l.label.is_empty())
        .map(|l| LegendEntry {
            label: l.label.clone(),
            color: color(l.style),
            swatch: Swatch::Line {
                shape: shape(l.style),
            },
        })
        .collect();
    let empty = lines.iter().all(|l| l.points.is_empty());

    render(path, chart.title, &legend, |area| {
        if chart.log_x {
            let spec = (x_range.0..x_range.1).log_scale();
            plot_lines(area, chart, spec, y_range, &lines, Some(&compact), empty)
        } else {
            plot_lines(
                area,
                chart,
                x_range.0..x_range.1,
                y_range,
                &lines,
                None,
                empty,
            )
        }
    })
}

/// Draws `chart` as a 1000x600 PNG at `path` (parent directories are created): one bar per
/// category, one coloured segment per stack, the total above each bar, a value axis from 0, and
/// a legend to the right listing the stacks top-down as they appear in the bars.
///
/// No categories gives an empty plot saying "no data". Errors: a stack with a different number of
/// values than there are categories, a negative value, and I/O.
pub fn stacked_bars(path: &Path, chart: &StackedBars) -> anyhow::Result<()> {
    let n = chart.categories.len();
    for (name, values) in chart.stacks {
        if values.len() != n {
            bail!(
                "chart {:?}: stack {name:?} has {} values for {n} categories",
                chart.title,
                values.len()
            );
        }
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| **v < 0.0) {
            bail!(
                "chart {:?}: stack {name:?} is negative ({v}) at category {:?}",
                chart.title,
                chart.categories[i]
            );
        }
    }
    let value = |v: f64| if v.is_finite() { v } else { 0.0 };
    let totals: Vec<f64> = (0..n)
        .map(|c| chart.stacks.iter().map(|(_, vs)| value(vs[c])).sum())
        .collect();
    let top = totals.iter().copied().fold(0.0, f64::max);
    let y_max = if top > 0.0 { top * 1.1 } else { 1.0 };
    if !y_max.is_finite() {
        bail!("chart {:?}: the values are too large to plot", chart.title);
    }
    let legend: Vec<LegendEntry> = chart
        .stacks
        .iter()
        .enumerate()
        .rev()
        .map(|(i, (name, _))| LegendEntry {
            label: name.clone(),
            color: color(i),
            swatch: Swatch::Box,
        })
        .collect();

    render(path, chart.title, &legend, |area| {
        // Bar c spans c-0.5..c+0.5 on a plain linear axis; the category names are drawn under
        // the bars by hand (plotters' segmented axis mis-draws a single category).
        let mut ctx = ChartBuilder::on(area)
            .margin(10)
            .margin_right(20)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.5..(n.max(1) as f64 - 0.5), 0.0..y_max)?;
        ctx.configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(chart.y_label)
            .label_style((FONT, TICK_SIZE))
            .axis_desc_style((FONT, AXIS_DESC_SIZE))
            .draw()?;
        if n == 0 {
            return no_data(&ctx.plotting_area().strip_coord_spec());
        }
        let label_style =
            TextStyle::from((FONT, TICK_SIZE).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        ctx.draw_series(chart.categories.iter().enumerate().map(|(c, name)| {
            EmptyElement::at((c as f64, 0.0))
                + PathElement::new(vec![(0, 0), (0, 5)], BLACK)
                + Text::new(name.clone(), (0, 9), label_style.clone())
        }))?;
        // A sixth of each slot stays empty on either side; bars are at most 160 px wide.
        let slot = ctx.plotting_area().dim_in_pixel().0 / n as u32;
        let gap = (slot / 6).max(slot.saturating_sub(160) / 2).max(1);
        let mut base = vec![0.0; n];
        for (i, (_, values)) in chart.stacks.iter().enumerate() {
            let style = color(i).filled();
            ctx.draw_series((0..n).filter(|&c| value(values[c]) > 0.0).map(|c| {
                let (x, y0, y1) = (c as f64, base[c], base[c] + value(values[c]));
                let mut bar = Rectangle::new([(x - 0.5, y0), (x + 0.5, y1)], style);
                bar.set_margin(0, 0, gap, gap);
                bar
            }))?;
            for c in 0..n {
                base[c] += value(values[c]);
            }
        }
        let total_style = TextStyle::from((FONT, TICK_SIZE).into_font())
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        ctx.draw_series(totals.iter().enumerate().map(|(c, &t)| {
            EmptyElement::at((c as f64, t)) + Text::new(compact(&t), (0, -4), total_style.clone())
        }))?;
        Ok(())
    })
}

/// A series after dropping undrawable points.
struct Line {
    label: String,
    /// Index into the colour and marker cycles.
    style: usize,
    points: Vec<(f64, f64)>,
}

struct LegendEntry {
    label: String,
    color: RGBColor,
    swatch: Swatch,
}

enum Swatch {
    Line { shape: Shape },
    Box,
}

#[derive(Clone, Copy)]
enum Shape {
    Circle,
    Triangle,
    Square,
}

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn shape(i: usize) -> Shape {
    match (i / PALETTE.len()) % 3 {
        0 => Shape::Circle,
        1 => Shape::Triangle,
        _ => Shape::Square,
    }
}

/// Registers the embedded font with plotters, once per process.
fn ensure_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok()) {
        Ok(())
    } else {
        bail!("the embedded DejaVu Sans font could not be loaded")
    }
}

/// Draws a titled chart with a legend panel on the right into memory, then writes it to `path`
/// as PNG. `plot` draws into the area left of the legend.
fn render(
    path: &Path,
    title: &str,
    legend: &[LegendEntry],
    plot: impl FnOnce(&DrawingArea<Canvas<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    ensure_font()?;
    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = Canvas::new(&mut pixels, (WIDTH, HEIGHT), DEJAVU_SANS)?.into_drawing_area();
        let draw = || -> anyhow::Result<()> {
            root.fill(&WHITE)?;
            let body = root.titled(title, (FONT, TITLE_SIZE))?;
            let legend_font = TextStyle::from((FONT, LEGEND_SIZE).into_font());
            let mut labels = Vec::with_capacity(legend.len());
            let mut widest = 0;
            for entry in legend {
                let label = fit_text(&root, &entry.label, &legend_font, LEGEND_TEXT_MAX)?;
                widest = widest.max(root.estimate_text_size(&label, &legend_font)?.0);
                labels.push(label);
            }
            let plot_area = if legend.is_empty() {
                body
            } else {
                let (plot_area, legend_area) = body.split_horizontally(WIDTH - widest - 60);
                draw_legend(&legend_area, legend, &labels, &legend_font)?;
                plot_area
            };
            plot(&plot_area)?;
            root.present()?;
            Ok(())
        };
        draw().with_context(|| format!("drawing chart {:?}", title))?;
    }
    let png = encode_png(&pixels).context("encoding PNG")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    }
    fs::write(path, png).with_context(|| format!("writing chart {}", path.display()))
}

/// The axes, grid and lines of a line chart, on any x coordinate (linear or log).
fn plot_lines<XS>(
    area: &DrawingArea<Canvas<'_>, Shift>,
    chart: &LineChart,
    x_spec: XS,
    y_range: (f64, f64),
    lines: &[Line],
    x_format: Option<&dyn Fn(&f64) -> String>,
    empty: bool,
) -> anyhow::Result<()>
where
    XS: AsRangedCoord<Value = f64>,
    XS::CoordDescType: ValueFormatter<f64>,
{
    let mut ctx = ChartBuilder::on(area)
        .margin(10)
        .margin_right(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x_spec, y_range.0..y_range.1)?;
    let mut mesh = ctx.configure_mesh();
    mesh.x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .label_style((FONT, TICK_SIZE))
        .axis_desc_style((FONT, AXIS_DESC_SIZE));
    if let Some(format) = x_format {
        mesh.x_label_formatter(format);
    }
    mesh.draw()?;
    if empty {
        return no_data(&ctx.plotting_area().strip_coord_spec());
    }
    for line in lines {
        let color = color(line.style);
        let pieces = clip_y(&line.points, y_range, chart.log_x);
        for piece in &pieces {
            if piece.len() > 1 {
                ctx.draw_series(LineSeries::new(
                    piece.iter().copied(),
                    color.stroke_width(2),
                ))?;
            }
        }
        let inside = |p: &&(f64, f64)| p.1 >= y_range.0 && p.1 <= y_range.1;
        if chart.markers || line.points.len() == 1 {
            let points = line.points.iter().filter(inside);
            let style = color.filled();
            match shape(line.style) {
                Shape::Circle => {
                    ctx.draw_series(points.map(|&p| Circle::new(p, 4, style)))?;
                }
                Shape::Triangle => {
                    ctx.draw_series(points.map(|&p| TriangleMarker::new(p, 5, style)))?;
                }
                Shape::Square => {
                    ctx.draw_series(points.map(|&p| {
                        EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], style)
                    }))?;
                }
            }
        }
    }
    Ok(())
}

fn no_data(area: &DrawingArea<Canvas<'_>, Shift>) -> anyhow::Result<()> {
    let (w, h) = area.dim_in_pixel();
    let style = TextStyle::from((FONT, AXIS_DESC_SIZE).into_font())
        .color(&RGBColor(0x7f, 0x7f, 0x7f))
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new("no data", (w as i32 / 2, h as i32 / 2), style))?;
    Ok(())
}

fn draw_legend(
    area: &DrawingArea<Canvas<'_>, Shift>,
    entries: &[LegendEntry],
    labels: &[String],
    font: &TextStyle,
) -> anyhow::Result<()> {
    let text = font.pos(Pos::new(HPos::Left, VPos::Center));
    let rows = entries.len() as i32;
    let (x0, y0) = (8, 20);
    let (w, _) = area.dim_in_pixel();
    area.draw(&Rectangle::new(
        [
            (x0 - 6, y0 - 14),
            (w as i32 - 4, y0 + (rows - 1) * LEGEND_ROW + 14),
        ],
        RGBColor(0xbb, 0xbb, 0xbb).stroke_width(1),
    ))?;
    for (row, (entry, label)) in entries.iter().zip(labels).enumerate() {
        let y = y0 + row as i32 * LEGEND_ROW;
        match entry.swatch {
            Swatch::Line { shape } => {
                area.draw(&PathElement::new(
                    vec![(x0, y), (x0 + 28, y)],
                    entry.color.stroke_width(2),
                ))?;
                let style = entry.color.filled();
                let center = (x0 + 14, y);
                match shape {
                    Shape::Circle => area.draw(&Circle::new(center, 4, style))?,
                    Shape::Triangle => area.draw(&TriangleMarker::new(center, 5, style))?,
                    Shape::Square => area.draw(&Rectangle::new(
                        [(center.0 - 4, y - 4), (center.0 + 4, y + 4)],
                        style,
                    ))?,
                }
            }
            Swatch::Box => area.draw(&Rectangle::new(
                [(x0 + 4, y - 8), (x0 + 24, y + 8)],
                entry.color.filled(),
            ))?,
        }
        area.draw(&Text::new(label.clone(), (x0 + 36, y), text.clone()))?;
    }
    Ok(())
}

/// `text`, shortened with an ellipsis until it is at most `max` pixels wide.
fn fit_text(
    area: &DrawingArea<Canvas<'_>, Shift>,
    text: &str,
    font: &TextStyle,
    max: u32,
) -> anyhow::Result<String> {
    let text = text.replace(['\n', '\r'], " ");
    if area.estimate_text_size(&text, font)?.0 <= max {
        return Ok(text);
    }
    let mut chars: Vec<char> = text.chars().collect();
    while chars.pop().is_some() {
        let short: String = chars.iter().chain(['…'].iter()).collect();
        if area.estimate_text_size(&short, font)?.0 <= max {
            return Ok(short);
        }
    }
    Ok("…".to_string())
}

/// Cuts a polyline into the pieces that lie within `y_range`, interpolating where it crosses the
/// range's edges (in log10 x on a log axis, so the cut lies on the straight drawn segment).
fn clip_y(points: &[(f64, f64)], (lo, hi): (f64, f64), log_x: bool) -> Vec<Vec<(f64, f64)>> {
    let to_axis = |x: f64| if log_x { x.log10() } else { x };
    let from_axis = |u: f64| if log_x { 10f64.powf(u) } else { u };
    let mut pieces: Vec<Vec<(f64, f64)>> = Vec::new();
    if let [only] = points {
        if only.1 >= lo && only.1 <= hi {
            pieces.push(vec![*only]);
        }
        return pieces;
    }
    let mut open = false;
    for pair in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        let (u0, u1) = (to_axis(x0), to_axis(x1));
        let dy = y1 - y0;
        let (t0, t1) = if dy == 0.0 {
            if y0 < lo || y0 > hi {
                open = false;
                continue;
            }
            (0.0, 1.0)
        } else {
            let (ta, tb) = ((lo - y0) / dy, (hi - y0) / dy);
            (ta.min(tb).max(0.0), ta.max(tb).min(1.0))
        };
        if t0 > t1 {
            open = false;
            continue;
        }
        let at = |t: f64| {
            if t == 0.0 {
                (x0, y0)
            } else if t == 1.0 {
                (x1, y1)
            } else {
                (from_axis(u0 + t * (u1 - u0)), (y0 + t * dy).clamp(lo, hi))
            }
        };
        match pieces.last_mut() {
            Some(piece) if open && t0 == 0.0 => piece.push(at(t1)),
            _ => pieces.push(vec![at(t0), at(t1)]),
        }
        open = t1 == 1.0;
    }
    pieces
}

/// The smallest and largest value, if any.
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// `lo..hi` widened by `frac` of its span on each side; a single value gets a range around it.
fn padded_linear(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let margin = if hi > lo {
        (hi - lo) * frac
    } else if lo == 0.0 {
        1.0
    } else {
        lo.abs() * 0.1
    };
    (lo - margin, hi + margin)
}

/// `lo..hi` (both > 0) widened by 3% of its span in log10 on each side; a single value gets
/// half a decade each way.
fn padded_log(lo: f64, hi: f64) -> (f64, f64) {
    let (l, h) = (lo.log10(), hi.log10());
    let margin = if h > l { (h - l) * 0.03 } else { 0.5 };
    (10f64.powf(l - margin), 10f64.powf(h + margin))
}

/// A short label: `1k`, `2.5M`, `0.125`, `3e-5`.
fn compact(v: &f64) -> String {
    let v = *v;
    let a = v.abs();
    let trimmed = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if a == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    for (scale, suffix) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if a >= scale {
            return format!("{}{suffix}", trimmed(format!("{:.2}", v / scale)));
        }
    }
    if a >= 1e-3 {
        let digits = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
        trimmed(format!("{v:.digits$}"))
    } else {
        format!("{v:.1e}")
    }
}

/// Encodes an RGB8 buffer of `WIDTH` x `HEIGHT` as PNG.
fn encode_png(pixels: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Charts are mostly flat colour: the best zlib level with per-row filters makes them
    // several times smaller than the defaults, for a few milliseconds more.
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;

    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

    fn assert_png(path: &Path) {
        let bytes = fs::read(path).unwrap();
        assert!(
            bytes.len() > 1000,
            "{} is only {} bytes",
            path.display(),
            bytes.len()
        );
        assert!(
            bytes.starts_with(PNG_SIGNATURE),
            "{} is not a PNG",
            path.display()
        );
    }

    fn series(label: &str, points: &[(f64, f64)]) -> Series {
        Series {
            label: label.to_string(),
            points: points.to_vec(),
        }
    }

    fn chart<'a>(series: &'a [Series], log_x: bool) -> LineChart<'a> {
        LineChart {
            title: "test chart",
            x_label: "x",
            y_label: "y",
            series,
            log_x,
            y_range: None,
            markers: false,
        }
    }

    #[test]
    fn line_chart_writes_a_png_with_a_legend_for_twelve_series() {
        let dir = TempDir::new("line-many");
        let all: Vec<Series> = (0..13)
            .map(|i| {
                let points = (0..20)
                    .map(|x| (x as f64, (x as f64 * 0.3 + i as f64).sin() + i as f64 * 0.5))
                    .collect::<Vec<_>>();
                series(&format!("series {i}"), &points)
            })
            .collect();
        let path = dir.path().join("a/b/lines.png");
        line_chart(&path, &chart(&all, false)).unwrap();
        assert_png(&path);
    }

    #[test]
    fn line_chart_with_log_x_and_markers() {
        let dir = TempDir::new("line-log");
        let sizes = [1e3, 1e4, 1e5, 1e6, 1e7];
        let all = [
            series("dense f32", &sizes.map(|b| (b, b / 1e6 * 8.0 + 0.5))),
            series("top-k 1%", &sizes.map(|b| (b, b / 1e8 * 8.0 + 0.4))),
            // Skipped on a log axis: zero and negative x.
            series(
                "with bad points",
                &[(0.0, 1.0), (-5.0, 2.0), (1e5, 3.0), (1e6, 4.0)],
            ),
        ];
        let path = dir.path().join("log.png");
        let mut c = chart(&all, true);
        c.markers = true;
        c.x_label = "message size (bytes)";
        c.y_label = "latency (ms)";
        line_chart(&path, &c).unwrap();
        assert_png(&path);
    }

    #[test]
    fn line_chart_edge_cases_give_a_png() {
        let dir = TempDir::new("line-edges");
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        let cases: Vec<(&str, Vec<Series>, bool)> = vec![
            ("no-series", vec![], false),
            ("empty-series", vec![series("empty", &[])], false),
            ("empty-series-log", vec![series("empty", &[])], true),
            ("single-point", vec![series("one", &[(3.0, 7.0)])], false),
            ("single-point-log", vec![series("one", &[(3.0, 7.0)])], true),
            (
                "flat",
                vec![series("flat", &[(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)])],
                false,
            ),
            (
                "flat-zero",
                vec![series("zero", &[(0.0, 0.0), (1.0, 0.0)])],
                false,
            ),
            (
                "same-x",
                vec![series("same x", &[(5.0, 1.0), (5.0, 2.0)])],
                true,
            ),
            (
                "non-finite",
                vec![series(
                    "nan",
                    &[
                        (nan, 1.0),
                        (1.0, nan),
                        (inf, 2.0),
                        (2.0, -inf),
                        (3.0, 3.0),
                        (4.0, 1.0),
                    ],
                )],
                false,
            ),
            (
                "all-non-finite",
                vec![series("nan", &[(nan, nan), (inf, 1.0)])],
                false,
            ),
            (
                "log-all-nonpositive",
                vec![series("neg", &[(0.0, 1.0), (-1.0, 2.0)])],
                true,
            ),
            (
                "unlabelled",
                vec![series("", &[(0.0, 1.0), (1.0, 2.0)])],
                false,
            ),
            (
                "long-label",
                vec![series(
                    &"a very long series label ".repeat(8),
                    &[(0.0, 1.0), (1.0, 2.0)],
                )],
                false,
            ),
        ];
        for (name, all, log_x) in cases {
            let path = dir.path().join(format!("{name}.png"));
            line_chart(&path, &chart(&all, log_x)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_png(&path);
        }
    }

    #[test]
    fn line_chart_clips_to_a_fixed_y_range_and_rejects_a_bad_one() {
        let dir = TempDir::new("line-range");
        let all = [series(
            "wild",
            &[(0.0, -5.0), (1.0, 0.5), (2.0, 5.0), (3.0, 0.2), (4.0, 0.9)],
        )];
        let mut c = chart(&all, false);
        c.y_range = Some((0.0, 1.0));
        let path = dir.path().join("range.png");
        line_chart(&path, &c).unwrap();
        assert_png(&path);

        for bad in [
            (1.0, 1.0),
            (2.0, 1.0),
            (f64::NAN, 1.0),
            (0.0, f64::INFINITY),
        ] {
            c.y_range = Some(bad);
            let bad_path = dir.path().join("bad.png");
            let err = format!("{:#}", line_chart(&bad_path, &c).unwrap_err());
            assert!(err.contains("y_range"), "{err}");
            assert!(!bad_path.exists());
        }
        let huge = [series("huge", &[(0.0, -1e308), (1.0, 1e308)])];
        let err = line_chart(&dir.path().join("huge.png"), &chart(&huge, false)).unwrap_err();
        assert!(format!("{err:#}").contains("too large"), "{err:#}");
    }

    #[test]
    fn stacked_bars_write_a_png() {
        let dir = TempDir::new("bars");
        let categories: Vec<String> = ["n=4", "n=8", "n=16"].map(String::from).to_vec();
        let stacks = vec![
            ("train".to_string(), vec![1.2, 1.3, 1.25]),
            ("gossip".to_string(), vec![0.2, 0.45, 0.9]),
            ("consensus".to_string(), vec![0.05, 0.1, 0.3]),
            ("aggregate".to_string(), vec![0.1, 0.2, f64::NAN]),
        ];
        let path = dir.path().join("x/bars.png");
        let c = StackedBars {
            title: "round time by phase",
            y_label: "seconds per round",
            categories: &categories,
            stacks: &stacks,
        };
        stacked_bars(&path, &c).unwrap();
        assert_png(&path);
    }

    #[test]
    fn stacked_bars_edge_cases() {
        let dir = TempDir::new("bars-edges");
        let one = vec!["only".to_string()];
        let zeros = vec![("idle".to_string(), vec![0.0])];
        let no_stacks: Vec<(String, Vec<f64>)> = vec![];
        type Stacks = [(String, Vec<f64>)];
        let cases: [(&str, &[String], &Stacks); 3] = [
            ("no-categories", &[], &no_stacks),
            ("all-zero", &one, &zeros),
            ("no-stacks", &one, &no_stacks),
        ];
        for (name, categories, stacks) in cases {
            let path = dir.path().join(format!("{name}.png"));
            let c = StackedBars {
                title: name,
                y_label: "s",
                categories,
                stacks,
            };
            stacked_bars(&path, &c).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_png(&path);
        }

        let wrong_len = vec![("a".to_string(), vec![1.0, 2.0])];
        let negative = vec![("a".to_string(), vec![-1.0])];
        for (stacks, want) in [
            (&wrong_len, "2 values for 1 categories"),
            (&negative, "negative"),
        ] {
            let c = StackedBars {
                title: "bad",
                y_label: "s",
                categories: &one,
                stacks,
            };
            let err = format!(
                "{:#}",
                stacked_bars(&dir.path().join("bad.png"), &c).unwrap_err()
            );
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn clip_y_cuts_lines_at_the_range_edges() {
        let pts = [
            (0.0, -1.0),
            (1.0, 1.0),
            (2.0, 0.5),
            (3.0, 3.0),
            (4.0, 5.0),
            (5.0, 0.0),
        ];
        let pieces = clip_y(&pts, (0.0, 2.0), false);
        assert_eq!(
            pieces,
            vec![
                vec![(0.5, 0.0), (1.0, 1.0), (2.0, 0.5), (2.6, 2.0)],
                vec![(4.6, 2.0), (5.0, 0.0)],
            ]
        );
        assert_eq!(
            clip_y(&[(1.0, 9.0)], (0.0, 2.0), false),
            Vec::<Vec<_>>::new()
        );
        assert_eq!(
            clip_y(&[(1.0, 1.0)], (0.0, 2.0), true),
            vec![vec![(1.0, 1.0)]]
        );
    }

    #[test]
    fn compact_labels() {
        let cases = [
            (0.0, "0"),
            (1.0, "1"),
            (1000.0, "1k"),
            (1500.0, "1.5k"),
            (1e6, "1M"),
            (2.5e9, "2.5G"),
            (0.125, "0.125"),
            (12.5, "12.5"),
            (-3000.0, "-3k"),
            (3e-5, "3.0e-5"),
        ];
        for (v, want) in cases {
            assert_eq!(compact(&v), want);
        }
    }
}

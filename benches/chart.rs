//! The SVG chart of the suite's targets: one horizontal bar per target row, its length the
//! measured figure over the target (for `≥` targets) or the target over the figure (for `≤`
//! targets), so 1.0 is exactly the target and a bar past the line meets it.
//!
//! Input: the `ratios.json` that `benches/report.py` writes (`benches/run` runs both). Built
//! with plotters' SVG backend and its built-in text metrics: no font files are needed.
//!
//! `cargo bench --bench chart -- [RATIOS_JSON [OUT_SVG]]` (defaults:
//! `benches/results/ratios.json`, `benches/results/ratios.svg`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde::Deserialize;

/// The chart's input.
#[derive(Debug, Deserialize)]
struct Ratios {
    title: String,
    bars: Vec<Bar>,
}

/// One target row.
#[derive(Debug, Deserialize)]
struct Bar {
    label: String,
    /// The figure as the report prints it, e.g. `12.3x` or `0.63 s`.
    value: String,
    /// The target as the report prints it, e.g. `≥ 5x`.
    target: String,
    /// Figure over target (or target over figure for `≤` targets): 1 = the target.
    attainment: f64,
    met: bool,
}

/// Bars longer than this are cut (their text still gives the figure).
const X_MAX: f64 = 3.0;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; the rest are our paths.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    let input = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| here.join("ratios.json"));
    let output = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| here.join("ratios.svg"));
    let text = std::fs::read_to_string(&input).with_context(|| {
        format!(
            "reading {} (written by benches/run or benches/report.py)",
            input.display()
        )
    })?;
    let ratios: Ratios = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a ratios file", input.display()))?;
    if ratios.bars.is_empty() {
        bail!("{}: no measured targets to chart", input.display());
    }
    draw(&ratios, &output).map_err(|e| anyhow::anyhow!("drawing {}: {e}", output.display()))?;
    println!("wrote {}", output.display());
    Ok(())
}

fn draw(r: &Ratios, output: &PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let n = r.bars.len();
    let height = 90 + 34 * n as u32;
    let root = SVGBackend::new(output, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&r.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(430)
        .build_cartesian_2d(0f64..X_MAX, (0..n).into_segmented())?;
    // The first target at the top: row i is drawn at segment n - 1 - i.
    let row = |i: usize| n - 1 - i;
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) if *i < n => {
            r.bars[row(*i)].label.replace('`', "")
        }
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&label)
        .x_desc("figure / target (≥ targets) or target / figure (≤ targets); 1 = the target")
        .label_style(("sans-serif", 12))
        .draw()?;
    let green = RGBColor(46, 139, 87);
    let red = RGBColor(200, 60, 50);
    chart.draw_series(r.bars.iter().enumerate().map(|(i, b)| {
        let colour = if b.met { green } else { red };
        let x = b.attainment.clamp(0.0, X_MAX);
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(row(i))),
                (x, SegmentValue::Exact(row(i) + 1)),
            ],
            colour.mix(0.8).filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    chart.draw_series(r.bars.iter().enumerate().map(|(i, b)| {
        let x = b.attainment.clamp(0.0, X_MAX);
        let at = if x > X_MAX * 0.6 { 0.05 } else { x + 0.04 };
        Text::new(
            format!(
                "{} (target {}){}",
                b.value,
                b.target,
                if b.met { "" } else { ", missed" }
            ),
            (at, SegmentValue::CenterOf(row(i))),
            ("sans-serif", 12),
        )
    }))?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
        BLACK.stroke_width(2),
    )))?;
    root.present()?;
    Ok(())
}

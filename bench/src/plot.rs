//! `overhead.svg`: workload overhead by mode and sampling frequency.

use std::path::Path;

use plotters::prelude::*;

use crate::model::{Activity, Mode};
use crate::report::{BenchReport, CellStatus};

/// One plotted line: a mode and workload across the x categories.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub label: String,
    pub mode: Mode,
    /// (x index, median, min, max) in percent.
    pub points: Vec<(usize, f64, f64, f64)>,
}

/// The x categories (PMU activity: none, then the sampling frequencies ascending) and the
/// lines (one per available mode and workload) of the chart.
pub fn series(r: &BenchReport) -> (Vec<Activity>, Vec<Line>) {
    let mut xs: Vec<Activity> = r
        .config
        .activities
        .iter()
        .copied()
        .filter(|a| *a == Activity::None || a.sample_hz().is_some())
        .collect();
    xs.sort_by_key(|a| a.sample_hz().unwrap_or(0));
    let mut lines = Vec::new();
    for &m in r.config.modes.iter().filter(|m| **m != Mode::Off) {
        for &w in &r.config.workloads {
            let mut points = Vec::new();
            for (i, &a) in xs.iter().enumerate() {
                let Some(c) = r.cell(w, m, a) else { continue };
                if c.status != CellStatus::Ok {
                    continue;
                }
                if let Some(p) = c.summary.as_ref().and_then(|s| s.overhead_pct) {
                    points.push((i, p.median, p.min, p.max));
                }
            }
            if !points.is_empty() {
                lines.push(Line {
                    label: format!("{m} {w}"),
                    mode: m,
                    points,
                });
            }
        }
    }
    (xs, lines)
}

fn x_label(a: &Activity) -> String {
    match a.sample_hz() {
        Some(hz) if hz >= 1000 && hz % 1000 == 0 => format!("sample {} kHz", hz / 1000),
        Some(hz) => format!("sample {hz} Hz"),
        None => "no PMU use".into(),
    }
}

/// Draws the chart into `path`.
#[allow(clippy::cast_possible_truncation)] // axis positions: small non-negative integral floats
pub fn draw(r: &BenchReport, path: &Path) -> Result<(), String> {
    let (xs, lines) = series(r);
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for l in &lines {
        for &(_, _, a, b) in &l.points {
            lo = lo.min(a);
            hi = hi.max(b);
        }
    }
    let pad = (hi - lo) * 0.08;
    let n = xs.len().max(1);
    let unavailable: Vec<String> = r
        .host
        .modes
        .iter()
        .filter(|m| !m.available && r.config.modes.contains(&m.mode))
        .map(|m| m.mode.to_string())
        .collect();
    let caption = if unavailable.is_empty() {
        "Workload time overhead vs off (median, bars min..max)".to_string()
    } else {
        format!(
            "Workload time overhead vs off (median, min..max); unavailable here: {}",
            unavailable.join(", ")
        )
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (lo - pad)..(hi + pad))
        .map_err(e)?;
    let labels: Vec<String> = xs.iter().map(x_label).collect();
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("overhead %")
        .x_desc("guest PMU activity")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    for (li, l) in lines.iter().enumerate() {
        let color = Palette99::pick(li).to_rgba();
        let off = (li as f64 - (lines.len() as f64 - 1.0) / 2.0) * 0.03;
        let pts: Vec<(f64, f64)> = l
            .points
            .iter()
            .map(|&(i, m, _, _)| (i as f64 + off, m))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(l.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(e)?;
        chart
            .draw_series(l.points.iter().map(|&(i, _, a, b)| {
                let x = i as f64 + off;
                PathElement::new(vec![(x, a), (x, b)], color.stroke_width(1))
            }))
            .map_err(e)?;
    }
    if !lines.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

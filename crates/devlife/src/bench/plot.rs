//! The benchmarks' plots, as SVG (plotters' SVG backend: no fonts or
//! native libraries needed).

use super::client::Op;
use super::fs::{CLIENTS, Key, Measured};
use super::servers::Contender;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn colour(i: usize) -> RGBColor {
    const C: [RGBColor; 5] = [
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// `fs-latency.svg`: p50 (solid) and p99 (dashed) latency against client
/// threads in one process, one panel per operation, latency on a
/// logarithmic axis.
pub fn fs_latency(dir: &Path, results: &BTreeMap<Key, Measured>) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(err)?;
    let path = dir.join("fs-latency.svg");
    let root = SVGBackend::new(&path, (1000, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((2, 2));
    // Threads in one process only: the x axis is the thread count.
    let xs: Vec<(usize, usize)> =
        CLIENTS.iter().enumerate().filter(|(_, (_, p))| *p == 1).map(|(i, (t, _))| (i, *t)).collect();
    for ((oi, op), area) in Op::ALL.into_iter().enumerate().zip(panels.iter()) {
        // Logarithmic: /dev/zero's 0.3 µs and a peer's multi-millisecond
        // p99 on one panel.
        let ymax = results
            .iter()
            .filter(|(k, _)| k.op == oi)
            .map(|(_, r)| r.hist.percentile(99.0) as f64 / 1000.0)
            .fold(1.0, f64::max)
            * 1.5;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{}: latency (µs) against client threads", op.name()), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.5f64..4.5f64, (0.1f64..ymax).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("client threads")
            .y_desc("µs")
            .x_labels(4)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(err)?;
        for (wi, who) in Contender::ALL.into_iter().enumerate() {
            let pts = |p: f64| -> Vec<(f64, f64)> {
                xs.iter()
                    .filter_map(|(ci, t)| {
                        let r = results.get(&Key { who: wi, op: oi, clients: *ci })?;
                        Some((*t as f64, r.hist.percentile(p) as f64 / 1000.0))
                    })
                    .collect()
            };
            let (p50, p99) = (pts(50.0), pts(99.0));
            if p50.is_empty() {
                continue;
            }
            let c = colour(wi);
            chart
                .draw_series(LineSeries::new(p50.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(format!("{} p50", who.name()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
            chart.draw_series(p50.iter().map(|p| Circle::new(*p, 3, c.filled()))).map_err(err)?;
            chart
                .draw_series(DashedLineSeries::new(p99, 4, 3, c.stroke_width(1)))
                .map_err(err)?
                .label(format!("{} p99", who.name()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(1)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 10))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(path.clone())
}

/// One series of an unplug plot: a label and (open files, milliseconds).
pub type Series = (String, Vec<(f64, f64)>);

/// `unplug.svg`: unplug times against open files (both axes logarithmic).
pub fn unplug(dir: &Path, series: &[Series]) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(err)?;
    let path = dir.join("unplug.svg");
    let root = SVGBackend::new(&path, (800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let xmax = all.clone().map(|p| p.0).fold(10.0, f64::max) * 2.0;
    let ymin = all.clone().map(|p| p.1).filter(|y| *y > 0.0).fold(1.0, f64::min) / 2.0;
    let ymax = all.map(|p| p.1).fold(1.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("unplug: time (ms) against open files", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d((0.5f64..xmax).log_scale(), (ymin..ymax).log_scale())
        .map_err(err)?;
    chart.configure_mesh().x_desc("open files").y_desc("ms").draw().map_err(err)?;
    for (i, (label, pts)) in series.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(path.clone())
}

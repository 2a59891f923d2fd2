//! Small SVG charts for BENCHMARKS.md (line and bar), written by hand: a
//! few dozen elements need no plotting library, and plain SVG text needs no
//! font at build time. Also the per-run JSON next to them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// One named line.
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) points: Vec<(f64, f64)>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Linear y ticks: five from 0 to `y_max`, as (fraction of the height, value).
fn linear_ticks(y_max: f64) -> Vec<(f64, f64)> {
    (0..=4).map(|i| (i as f64 / 4.0, y_max * i as f64 / 4.0)).collect()
}

fn frame(title: &str, x_label: &str, y_label: &str, y_ticks: &[(f64, f64)]) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>\n",
        WIDTH / 2.0,
        escape(title),
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 10.0,
        escape(x_label),
        TOP + (HEIGHT - TOP - BOTTOM) / 2.0,
        TOP + (HEIGHT - TOP - BOTTOM) / 2.0,
        escape(y_label),
    );
    for (fraction, value) in y_ticks {
        let y = HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * fraction;
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            short(*value)
        );
    }
    svg
}

fn short(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.0}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// How a line chart is drawn.
pub(crate) struct Axes<'a> {
    pub(crate) title: &'a str,
    pub(crate) x_label: &'a str,
    pub(crate) y_label: &'a str,
    /// A logarithmic x axis, ticked at the data's own x values (for
    /// connection counts like 10, 100, 1000).
    pub(crate) log_x: bool,
    /// A logarithmic y axis, ticked at powers of ten (for latencies that
    /// span orders of magnitude).
    pub(crate) log_y: bool,
    /// Shaded x ranges with their legend name (reload windows).
    pub(crate) bands: &'a [(f64, f64)],
    pub(crate) band_name: &'a str,
}

impl<'a> Axes<'a> {
    /// Linear axes, no bands.
    pub(crate) fn new(title: &'a str, x_label: &'a str, y_label: &'a str) -> Self {
        Axes { title, x_label, y_label, log_x: false, log_y: false, bands: &[], band_name: "" }
    }
}

/// Lines of `series` over a shared x axis.
pub(crate) fn lines(axes: &Axes<'_>, series: &[Series]) -> String {
    let xs = || series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let scale = |v: f64| if axes.log_x { v.max(1.0).log10() } else { v };
    let x_min = if axes.log_x { xs().map(scale).fold(f64::INFINITY, f64::min) } else { 0.0 };
    let x_min = if x_min.is_finite() { x_min } else { 0.0 };
    let x_max = xs().map(scale).fold(x_min + 1e-9, f64::max);
    let ys = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    // Log axis: whole decades around the data; linear: 0 to 110% of the top.
    let (y_low, y_high, y_ticks) = if axes.log_y {
        let low = ys().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
        let low = if low.is_finite() { low.log10().floor() } else { 0.0 };
        let high = ys().fold(1.0, f64::max).log10().ceil().max(low + 1.0);
        let decades = (high - low) as i32;
        let ticks =
            (0..=decades).map(|d| (f64::from(d) / f64::from(decades), 10f64.powf(low + f64::from(d)))).collect();
        (low, high, ticks)
    } else {
        let top = ys().fold(1.0, f64::max) * 1.1;
        (0.0, top, linear_ticks(top))
    };
    let y_scale = |v: f64| if axes.log_y { v.max(10f64.powf(y_low)).log10() } else { v };
    let mut svg = frame(axes.title, axes.x_label, axes.y_label, &y_ticks);
    let plot_width = WIDTH - LEFT - RIGHT;
    // A log axis keeps a margin so the end points are not on the frame.
    let (pad, span) = if axes.log_x { (0.06, 0.88) } else { (0.0, 1.0) };
    let x = |v: f64| LEFT + plot_width * (pad + span * (scale(v) - x_min) / (x_max - x_min));
    let y = |v: f64| HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (y_scale(v) - y_low) / (y_high - y_low);
    for (start, end) in axes.bands {
        let _ = writeln!(
            svg,
            "<rect x=\"{:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{}\" fill=\"#f5c26b\" fill-opacity=\"0.45\"/>",
            x(*start),
            (x(*end) - x(*start)).max(1.5),
            HEIGHT - TOP - BOTTOM
        );
    }
    let ticks: Vec<f64> = if axes.log_x {
        let mut values: Vec<f64> = xs().collect();
        values.sort_by(f64::total_cmp);
        values.dedup();
        values
    } else {
        (0..=4).map(|i| x_max * i as f64 / 4.0).collect()
    };
    for value in ticks {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x(value),
            HEIGHT - BOTTOM + 16.0,
            short(value)
        );
    }
    // The legend goes in the top corner the lines leave emptier.
    let plot_x = |v: f64| (x(v) - LEFT) / plot_width;
    let highest = |side: &dyn Fn(f64) -> bool| {
        series.iter().flat_map(|s| s.points.iter()).filter(|p| side(plot_x(p.0))).map(|p| p.1).fold(0.0, f64::max)
    };
    let legend_x = if highest(&|f| f < 0.35) <= highest(&|f| f > 0.65) { LEFT + 10.0 } else { WIDTH - RIGHT - 150.0 };
    let mut legend = 0;
    let mut legend_entry = |svg: &mut String, color: &str, name: &str| {
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            legend_x,
            TOP + 6.0 + 16.0 * legend as f64,
            legend_x + 16.0,
            TOP + 15.0 + 16.0 * legend as f64,
            escape(name)
        );
        legend += 1;
    };
    for (index, line) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let points: Vec<String> = line.points.iter().map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py))).collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        // Dots only where there are few points; a timeline is a line.
        if line.points.len() <= 20 {
            for (px, py) in &line.points {
                let _ = writeln!(svg, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>", x(*px), y(*py));
            }
        }
        legend_entry(&mut svg, color, &line.name);
    }
    if !axes.bands.is_empty() {
        legend_entry(&mut svg, "#f5c26b", axes.band_name);
    }
    svg.push_str("</svg>\n");
    svg
}

/// One bar per (label, value).
pub(crate) fn bars(title: &str, y_label: &str, bars: &[(String, f64)]) -> String {
    let y_max = bars.iter().map(|b| b.1).fold(1.0, f64::max) * 1.1;
    let mut svg = frame(title, "", y_label, &linear_ticks(y_max));
    let slot = (WIDTH - LEFT - RIGHT) / bars.len().max(1) as f64;
    for (index, (label, value)) in bars.iter().enumerate() {
        let height = (HEIGHT - TOP - BOTTOM) * value / y_max;
        let x = LEFT + slot * index as f64 + slot * 0.2;
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"{}\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            HEIGHT - BOTTOM - height,
            slot * 0.6,
            COLORS[index % COLORS.len()],
            x + slot * 0.3,
            HEIGHT - BOTTOM + 16.0,
            escape(label),
            x + slot * 0.3,
            HEIGHT - BOTTOM - height - 6.0,
            short(*value)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes a chart next to the report (`<report dir>/docs/bench/<name>.svg`)
/// and returns the markdown that embeds it.
pub(crate) fn save(report: &Path, name: &str, title: &str, svg: &str) -> String {
    let dir = report.parent().map(Path::to_path_buf).unwrap_or_default().join("docs/bench");
    let path = dir.join(format!("{name}.svg"));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, svg)) {
        Ok(()) => format!("![{title}](docs/bench/{name}.svg)\n\n"),
        Err(error) => {
            eprintln!("cannot write chart {}: {error}", path.display());
            String::new()
        }
    }
}

/// Writes a run's figures as JSON under `target/bench/<scenario>.json`,
/// with the machine and the date.
pub(crate) fn json(scenario: &str, value: &serde_json::Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let path = dir.join(format!("{scenario}.json"));
    let document = serde_json::json!({
        "scenario": scenario,
        "machine": crate::report::machine(),
        "date": crate::report::today(),
        "results": value,
    });
    let text = serde_json::to_string_pretty(&document).unwrap_or_default();
    if let Err(error) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        eprintln!("cannot write {}: {error}", path.display());
    }
}

//! The growth curves as one SVG chart (four small panels), drawn from the
//! report by hand: a few lines and circles need no plotting library.

use std::fmt::Write as _;

use crate::report::Report;

/// Width of one panel, in SVG units.
const PANEL_W: f64 = 440.0;
/// Height of one panel.
const PANEL_H: f64 = 270.0;
/// Space around the plot area inside a panel: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (62.0, 16.0, 34.0, 46.0);

/// One line of a panel.
struct Series<'a> {
    /// Legend text.
    name: &'a str,
    /// Stroke colour.
    color: &'a str,
    /// (x, y) points, x > 0 (the x axis is logarithmic).
    points: Vec<(f64, f64)>,
}

/// A dashed horizontal line with its label (a target).
struct Guide<'a> {
    /// Where.
    y: f64,
    /// What.
    label: &'a str,
}

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// "1k", "10k", "1M".
fn short(x: f64) -> String {
    if x >= 1e6 {
        format!("{}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{}k", x / 1e3)
    } else {
        format!("{x}")
    }
}

/// A "nice" upper bound for an axis.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

#[allow(clippy::too_many_arguments)]
fn panel(
    out: &mut String,
    (px, py): (f64, f64),
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    guides: &[Guide],
) {
    let (ml, mr, mt, mb) = MARGIN;
    let (x0, y0) = (px + ml, py + mt);
    let (w, h) = (PANEL_W - ml - mr, PANEL_H - mt - mb);
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(|x| *x > 0.0)
        .collect();
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        px + 8.0,
        py + 20.0,
        esc(title)
    );
    if xs.is_empty() {
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" fill="#888">not measured</text>"##,
            x0 + 10.0,
            y0 + h / 2.0
        );
        return;
    }
    let (lo, hi) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    let (llo, lhi) = (lo.log10(), hi.log10().max(lo.log10() + 1e-9));
    let ymax = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(guides.iter().map(|g| g.y))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            * 1.08,
    );
    let sx = |x: f64| x0 + (x.log10() - llo) / (lhi - llo) * w;
    let sy = |y: f64| y0 + h - (y / ymax) * h;
    // Frame, y grid and labels.
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>"##
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let y = sy(v);
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>"##,
            x0 + w,
            x0 - 4.0,
            y + 3.0,
            crate::report::fmt_num(v)
        );
    }
    let mut ticks = xs.clone();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for x in ticks {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
            sx(x),
            y0 + h + 14.0,
            short(x)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
        x0 + w / 2.0,
        y0 + h + 32.0,
        esc(x_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
        px + 14.0,
        y0 + h / 2.0,
        px + 14.0,
        y0 + h / 2.0,
        esc(y_label)
    );
    for g in guides {
        let y = sy(g.y);
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#c33" stroke-dasharray="5,4"/><text x="{}" y="{}" font-size="10" fill="#c33" text-anchor="end">{}</text>"##,
            x0 + w,
            x0 + w - 4.0,
            y - 4.0,
            esc(g.label)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.0 > 0.0 && p.1.is_finite())
            .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            pts.join(" "),
            s.color
        );
        for p in s.points.iter().filter(|p| p.0 > 0.0 && p.1.is_finite()) {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                sx(p.0),
                sy(p.1),
                s.color
            );
        }
        let ly = y0 + 12.0 + 14.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"/><text x="{}" y="{}" font-size="10">{}</text>"#,
            x0 + 8.0,
            x0 + 24.0,
            s.color,
            x0 + 28.0,
            ly + 3.0,
            esc(s.name)
        );
    }
}

/// The four growth curves of `report` as an SVG document.
pub fn svg(report: &Report) -> String {
    let c = &report.curves;
    let mut out = String::new();
    let (w, h) = (2.0 * PANEL_W, 2.0 * PANEL_H + 24.0);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let env = &report.environment;
    let _ = writeln!(
        out,
        r##"<text x="8" y="{}" font-size="10" fill="#666">baton-bench{} on {} cores; load average {:.1} → {:.1}</text>"##,
        h - 8.0,
        if env.quick {
            " --quick (smoke run, not figures)"
        } else {
            ""
        },
        env.cores,
        env.load_avg_start,
        env.load_avg_end
    );
    let agents = |f: fn(&crate::report::AgentsPoint) -> f64| {
        c.agents
            .iter()
            .filter(|p| f(p) > 0.0)
            .map(|p| (p.agents as f64, f(p)))
            .collect::<Vec<_>>()
    };
    panel(
        &mut out,
        (0.0, 0.0),
        "Dispatch latency vs connected agents",
        "connected agents",
        "ms (200 commands/s)",
        &[
            Series {
                name: "p50",
                color: "#1f77b4",
                points: agents(|p| p.dispatch_p50_ms),
            },
            Series {
                name: "p99",
                color: "#ff7f0e",
                points: agents(|p| p.dispatch_p99_ms),
            },
        ],
        &[Guide {
            y: 5.0,
            label: "p99 target 5 ms",
        }],
    );
    panel(
        &mut out,
        (PANEL_W, 0.0),
        "Bot memory vs connected (idle) agents",
        "connected agents",
        "KiB per connection",
        &[Series {
            name: "(RSS − idle RSS) / agents",
            color: "#2ca02c",
            points: agents(|p| p.per_conn_kib),
        }],
        &[Guide {
            y: 8.0,
            label: "target 8 KiB",
        }],
    );
    panel(
        &mut out,
        (0.0, PANEL_H),
        "Dispatch latency vs task table rows",
        "rows in the tasks table",
        "ms (200 commands/s)",
        &[
            Series {
                name: "p50",
                color: "#1f77b4",
                points: c
                    .task_rows
                    .iter()
                    .map(|p| (p.rows as f64, p.dispatch_p50_ms))
                    .collect(),
            },
            Series {
                name: "p99",
                color: "#ff7f0e",
                points: c
                    .task_rows
                    .iter()
                    .map(|p| (p.rows as f64, p.dispatch_p99_ms))
                    .collect(),
            },
        ],
        &[Guide {
            y: 5.0,
            label: "p99 target 5 ms",
        }],
    );
    panel(
        &mut out,
        (PANEL_W, PANEL_H),
        "Lifecycles/s vs progress events per task",
        "progress events per task",
        "complete lifecycles per second",
        &[Series {
            name: "lifecycles/s",
            color: "#9467bd",
            points: c
                .events_per_task
                .iter()
                .map(|p| (p.events as f64, p.lifecycles_per_s))
                .collect(),
        }],
        &[Guide {
            y: 2000.0,
            label: "target 2,000/s at 10 events",
        }],
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{EventsPoint, RowsPoint};

    #[test]
    fn draws_every_panel_from_a_report() {
        let mut r = Report::default();
        r.curves.task_rows = vec![
            RowsPoint {
                rows: 1000,
                dispatch_p50_ms: 0.5,
                dispatch_p99_ms: 2.0,
                startup_ms: 10.0,
                ..RowsPoint::default()
            },
            RowsPoint {
                rows: 1_000_000,
                dispatch_p50_ms: 0.6,
                dispatch_p99_ms: 2.5,
                startup_ms: 30.0,
                ..RowsPoint::default()
            },
        ];
        r.curves.events_per_task = vec![EventsPoint {
            events: 10,
            lifecycles_per_s: 1500.0,
            ..EventsPoint::default()
        }];
        let s = svg(&r);
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 3);
        assert!(s.contains("not measured"), "the empty agents panels say so");
        assert!(s.contains(">1M<"));
    }

    #[test]
    fn axis_bounds_are_round() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(1800.0), 2000.0);
    }
}

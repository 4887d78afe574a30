//! The pacing chart: per rate, calls per second (left) and cumulative calls (right) over time,
//! pg_dialer and BullMQ against the limit. Text uses DejaVu Sans compiled in (ab_glyph), so no
//! fontconfig is needed.

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;

#[derive(Clone, Debug)]
pub struct Series {
    pub system: String,
    pub cpm: u32,
    pub per_second: Vec<u32>,
}

const PG: RGBColor = RGBColor(31, 119, 180);
const BULL: RGBColor = RGBColor(214, 39, 40);
const BULL_PG: RGBColor = RGBColor(44, 160, 44);
const LIMIT: RGBColor = RGBColor(40, 40, 40);

/// Blue pg_dialer, red BullMQ (on Redis), green BullMQ on Postgres.
fn color_of(system: &str) -> RGBColor {
    match system {
        "pg_dialer" => PG,
        s if s.contains("Postgres") => BULL_PG,
        _ => BULL,
    }
}

fn fonts() {
    // Registering twice is harmless (the second replaces the first).
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
}

fn e<E: std::fmt::Display>(x: E) -> anyhow::Error {
    anyhow!("{x}")
}

pub fn draw(path: &Path, series: &[Series]) -> Result<()> {
    fonts();
    let mut rates: Vec<u32> = series.iter().map(|s| s.cpm).collect();
    rates.sort_unstable();
    rates.dedup();
    if rates.is_empty() {
        return Err(anyhow!("no pacing series"));
    }
    let (w, h) = (1500u32, 380 * rates.len() as u32 + 60);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (title, body) = root.split_vertically(50);
    title
        .draw(&Text::new(
            "Pacing: calls per second and cumulative calls against the limit (blue pg_dialer, red BullMQ on Redis, green BullMQ on Postgres, black limit)",
            (20, 15),
            ("sans-serif", 22).into_font().style(FontStyle::Bold),
        ))
        .map_err(e)?;
    let rows = body.split_evenly((rates.len(), 2));
    for (i, cpm) in rates.iter().enumerate() {
        // pg_dialer drawn last, on top.
        let mut these: Vec<&Series> = series.iter().filter(|s| s.cpm == *cpm).collect();
        these.sort_by_key(|s| s.system == "pg_dialer");
        let secs = these.iter().map(|s| s.per_second.len()).max().unwrap_or(1).max(1);
        let limit_s = *cpm as f64 / 60.0;

        // Left: calls per second.
        let ymax = these.iter().flat_map(|s| s.per_second.iter().copied()).max().unwrap_or(0) as f64;
        // Log scale: a burst of hundreds and an even 1/s both stay readable; 0 sits at the floor.
        let floor = 0.5;
        let ymax = ymax.max(limit_s * 2.0).max(2.0) * 1.3;
        let mut c = ChartBuilder::on(&rows[i * 2])
            .caption(format!("{cpm} calls/min: calls per second (log scale)"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..secs as f64, (floor..ymax).log_scale())
            .map_err(e)?;
        c.configure_mesh()
            .x_desc("seconds since the batch's first call")
            .y_desc("calls in that second")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| if *v < 1.0 { "0".to_string() } else { format!("{v:.0}") })
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        for s in &these {
            let color = color_of(&s.system);
            let pts: Vec<(f64, f64)> = s
                .per_second
                .iter()
                .enumerate()
                .flat_map(|(k, v)| {
                    let y = (*v as f64).max(floor);
                    [(k as f64, y), (k as f64 + 1.0, y)]
                })
                .collect();
            c.draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(e)?
                .label(s.system.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        }
        c.draw_series(LineSeries::new(vec![(0.0, limit_s), (secs as f64, limit_s)], LIMIT.stroke_width(1)))
            .map_err(e)?
            .label(format!("limit {limit_s:.0}/s"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], LIMIT.stroke_width(2)));
        c.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;

        // Right: cumulative calls against cpm × t / 60.
        let cum = |s: &Series| -> Vec<(f64, f64)> {
            let mut acc = 0f64;
            let mut v = vec![(0.0, 0.0)];
            for (k, n) in s.per_second.iter().enumerate() {
                acc += *n as f64;
                v.push((k as f64 + 1.0, acc));
            }
            v
        };
        let cmax = these.iter().map(|s| s.per_second.iter().map(|v| *v as f64).sum::<f64>()).fold(limit_s * secs as f64, f64::max) * 1.08;
        let mut c = ChartBuilder::on(&rows[i * 2 + 1])
            .caption(format!("{cpm} calls/min: cumulative calls"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..secs as f64, 0f64..cmax.max(1.0))
            .map_err(e)?;
        c.configure_mesh()
            .x_desc("seconds since the batch's first call")
            .y_desc("calls so far")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        c.draw_series(LineSeries::new(vec![(0.0, 0.0), (secs as f64, limit_s * secs as f64)], LIMIT.stroke_width(1))).map_err(e)?;
        for s in &these {
            c.draw_series(LineSeries::new(cum(s), color_of(&s.system).stroke_width(2))).map_err(e)?;
        }
    }
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let mut s = Vec::new();
        for cpm in [60u32, 300, 1200] {
            let even: Vec<u32> = (0..70).map(|_| cpm / 60).collect();
            let bursty: Vec<u32> = (0..70).map(|k| if k % 60 == 0 { cpm } else { 0 }).collect();
            s.push(Series { system: "pg_dialer".into(), cpm, per_second: even });
            s.push(Series { system: "BullMQ on Redis".into(), cpm, per_second: bursty.clone() });
            s.push(Series { system: "BullMQ on Postgres".into(), cpm, per_second: bursty });
        }
        let p = std::env::temp_dir().join(format!("pg_dialer_bench-chart-{}.png", std::process::id()));
        draw(&p, &s).expect("draw");
        assert!(std::fs::metadata(&p).map(|m| m.len() > 1000).unwrap_or(false));
        let _ = std::fs::copy(&p, "/tmp/pgd-bench-chart-test.png");
        let _ = std::fs::remove_file(&p);
    }
}

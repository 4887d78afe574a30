//! The results table (stdout and markdown).

use std::fmt::Write as _;

/// One row: a figure for pg_dialer and (where the scenario has one) for BullMQ.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub pg: Option<f64>,
    pub bull: Option<f64>,
    pub decimals: usize,
    /// pg_dialer's target, as text ("≥ 10,000"), empty if none.
    pub target: String,
    /// Whether pg_dialer meets it (shown, never asserted).
    pub met: Option<bool>,
    /// Set when the scenario failed: shown instead of the figures.
    pub error: Option<String>,
}

impl Row {
    pub fn new(scenario: &str, metric: &str, pg: Option<f64>, bull: Option<f64>, decimals: usize) -> Row {
        Row { scenario: scenario.into(), metric: metric.into(), pg, bull, decimals, target: String::new(), met: None, error: None }
    }

    pub fn target(mut self, text: &str, met: Option<bool>) -> Row {
        self.target = text.into();
        self.met = met;
        self
    }

    pub fn failed(scenario: &str, error: &str) -> Row {
        let mut r = Row::new(scenario, "(scenario failed)", None, None, 0);
        r.error = Some(error.to_string());
        r
    }

    fn cells(&self) -> [String; 6] {
        let fmt = |v: Option<f64>| match v {
            Some(x) if x.is_finite() => group(x, self.decimals),
            Some(_) => "n/a".into(),
            None => "—".into(),
        };
        let ratio = match (self.pg, self.bull) {
            (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => format!("{:.2}×", a / b),
            _ => "—".into(),
        };
        let target = match (&self.target[..], self.met) {
            ("", _) => String::new(),
            (t, Some(true)) => format!("{t} (met)"),
            (t, Some(false)) => format!("{t} (MISSED)"),
            (t, None) => t.to_string(),
        };
        if let Some(e) = &self.error {
            let short: String = e.lines().next().unwrap_or("").chars().take(90).collect();
            return [self.scenario.clone(), self.metric.clone(), format!("error: {short}"), String::new(), String::new(), String::new()];
        }
        [self.scenario.clone(), self.metric.clone(), fmt(self.pg), fmt(self.bull), ratio, target]
    }
}

/// 12345.678 -> "12,345.7" (with `decimals` places).
pub fn group(x: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, x.abs());
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i.to_string(), Some(f.to_string())),
        None => (s.clone(), None),
    };
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(&f);
    }
    if x < 0.0 && out.chars().any(|c| c != '0' && c != '.' && c != ',') {
        out.insert(0, '-');
    }
    out
}

const HEADER: [&str; 6] = ["scenario", "metric", "pg_dialer", "BullMQ", "pg/Bull", "target (pg_dialer)"];

pub fn text_table(rows: &[Row]) -> String {
    let cells: Vec<[String; 6]> = rows.iter().map(Row::cells).collect();
    let mut width = HEADER.map(|h| h.chars().count());
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            width[i] = width[i].max(s.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, c: &[String]| {
        for (i, s) in c.iter().enumerate() {
            let pad = width[i] - s.chars().count();
            if i >= 2 && i <= 4 {
                let _ = write!(out, "{}{}  ", " ".repeat(pad), s);
            } else {
                let _ = write!(out, "{}{}  ", s, " ".repeat(pad));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(&mut out, &HEADER.map(String::from));
    line(&mut out, &width.map(|w| "-".repeat(w)));
    let mut last = String::new();
    for (row, c) in rows.iter().zip(&cells) {
        let mut c = c.clone();
        if row.scenario == last {
            c[0] = String::new();
        }
        last = row.scenario.clone();
        line(&mut out, &c);
    }
    out
}

pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", HEADER.join(" | "));
    let _ = writeln!(out, "|---|---|--:|--:|--:|---|");
    for r in rows {
        let c = r.cells().map(|s| s.replace('|', "\\|"));
        let _ = writeln!(out, "| {} |", c.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(group(12345.678, 1), "12,345.7");
        assert_eq!(group(999.0, 0), "999");
        assert_eq!(group(1000.0, 0), "1,000");
        assert_eq!(group(0.05, 2), "0.05");
        assert_eq!(group(-1234.0, 0), "-1,234");
    }
}

//! The results table (stdout and markdown).

use std::fmt::Write as _;

/// One row: a figure for pg_dialer and (where the scenario has them) for BullMQ on Redis and
/// BullMQ on Postgres.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub pg: Option<f64>,
    /// BullMQ on Redis, BullMQ on Postgres.
    pub bull: [Option<f64>; 2],
    /// Why BullMQ on Postgres has no figure in this row ("n/a: …" in its cell).
    pub bull_pg_na: Option<String>,
    pub decimals: usize,
    /// pg_dialer's target, as text ("≥ 10,000"), empty if none.
    pub target: String,
    /// Whether pg_dialer meets it (shown, never asserted).
    pub met: Option<bool>,
    /// Against which BullMQ backends it was missed, when a target relative to them was.
    pub missed_vs: Vec<&'static str>,
    /// Set when the scenario failed: shown instead of the figures.
    pub error: Option<String>,
}

/// The BullMQ columns: the backends, in the order of `Row::bull`.
pub const BACKENDS: [&str; 2] = ["Redis", "Postgres"];

impl Row {
    /// A row with pg_dialer's figure and BullMQ on Redis's (BullMQ on Postgres: `bull_pg`).
    pub fn new(scenario: &str, metric: &str, pg: Option<f64>, bull: Option<f64>, decimals: usize) -> Row {
        Row {
            scenario: scenario.into(),
            metric: metric.into(),
            pg,
            bull: [bull, None],
            bull_pg_na: None,
            decimals,
            target: String::new(),
            met: None,
            missed_vs: Vec::new(),
            error: None,
        }
    }

    /// BullMQ on Postgres's figure.
    pub fn bull_pg(mut self, v: Option<f64>) -> Row {
        self.bull[1] = v;
        self
    }

    /// BullMQ on Postgres has no figure here, and why.
    pub fn bull_pg_na(mut self, why: &str) -> Row {
        self.bull_pg_na = Some(why.to_string());
        self
    }

    pub fn target(mut self, text: &str, met: Option<bool>) -> Row {
        self.target = text.into();
        self.met = met;
        self
    }

    /// A target relative to BullMQ: `ok(pg_dialer, bullmq)` must hold against each BullMQ figure
    /// of the row (met only if it holds against both). Without any BullMQ figure, `alone`.
    pub fn target_vs_bull(mut self, text: &str, ok: impl Fn(f64, f64) -> bool, alone: (&str, Option<bool>)) -> Row {
        let theirs: Vec<(&'static str, f64)> = BACKENDS.iter().zip(self.bull).filter_map(|(b, v)| Some((*b, v?))).collect();
        if theirs.is_empty() {
            return self.target(alone.0, alone.1);
        }
        let Some(ours) = self.pg else { return self.target(text, None) };
        self.missed_vs = theirs.iter().filter(|(_, t)| !ok(ours, *t)).map(|(b, _)| *b).collect();
        let met = self.missed_vs.is_empty();
        self.target(text, Some(met))
    }

    pub fn failed(scenario: &str, error: &str) -> Row {
        let mut r = Row::new(scenario, "(scenario failed)", None, None, 0);
        r.error = Some(error.to_string());
        r
    }

    fn cells(&self) -> [String; 8] {
        let fmt = |v: Option<f64>| match v {
            Some(x) if x.is_finite() => group(x, self.decimals),
            Some(_) => "n/a".into(),
            None => "—".into(),
        };
        let ratio = |b: Option<f64>| match (self.pg, b) {
            (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => format!("{:.2}×", a / b),
            _ => "—".into(),
        };
        let target = match (&self.target[..], self.met) {
            ("", _) => String::new(),
            (t, Some(true)) => format!("{t} (met)"),
            (t, Some(false)) if self.missed_vs.len() == 1 => format!("{t} (MISSED vs {})", self.missed_vs[0]),
            (t, Some(false)) => format!("{t} (MISSED)"),
            (t, None) => t.to_string(),
        };
        if let Some(e) = &self.error {
            let short: String = e.lines().next().unwrap_or("").chars().take(90).collect();
            let mut c: [String; 8] = Default::default();
            [c[0], c[1], c[2]] = [self.scenario.clone(), self.metric.clone(), format!("error: {short}")];
            return c;
        }
        let bull_pg = match (&self.bull_pg_na, self.bull[1]) {
            (Some(why), None) => format!("n/a: {why}"),
            (_, v) => fmt(v),
        };
        [
            self.scenario.clone(),
            self.metric.clone(),
            fmt(self.pg),
            fmt(self.bull[0]),
            bull_pg,
            ratio(self.bull[0]),
            ratio(self.bull[1]),
            target,
        ]
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

const HEADER: [&str; 8] =
    ["scenario", "metric", "pg_dialer", "BullMQ/Redis", "BullMQ/Postgres", "pg/Redis", "pg/Postgres", "target (pg_dialer)"];

pub fn text_table(rows: &[Row]) -> String {
    let cells: Vec<[String; 8]> = rows.iter().map(Row::cells).collect();
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
            if (2..=6).contains(&i) {
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
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|---|");
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

    #[test]
    fn targets_relative_to_bullmq_hold_against_both_backends() {
        let at_most = |a: f64, b: f64| a <= b;
        let r = Row::new("s", "m", Some(2.0), Some(3.0), 1).bull_pg(Some(1.0)).target_vs_bull("≤ BullMQ", at_most, ("≤ 9", None));
        assert_eq!(r.met, Some(false));
        let c = r.cells();
        assert_eq!((c[5].as_str(), c[6].as_str(), c[7].as_str()), ("0.67×", "2.00×", "≤ BullMQ (MISSED vs Postgres)"));
        let r = Row::new("s", "m", Some(2.0), None, 1).target_vs_bull("≤ BullMQ", at_most, ("≤ 9", Some(true)));
        assert_eq!(r.cells()[7], "≤ 9 (met)");
        let r = Row::new("s", "m", Some(2.0), Some(3.0), 1).bull_pg_na("why").target_vs_bull("≤ BullMQ", at_most, ("", None));
        assert_eq!(r.cells()[4], "n/a: why");
        assert_eq!(r.cells()[7], "≤ BullMQ (met)");
    }
}

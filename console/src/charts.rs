//! Inline SVG: calls per minute against the limit, and outcomes as one stacked bar.

use crate::html::esc;

pub fn per_minute(buckets: &[i64], limit: i64) -> String {
    let (w, h, pad) = (720.0f64, 150.0f64, 28.0f64);
    let top = buckets.iter().copied().max().unwrap_or(0).max(limit).max(1) as f64 * 1.15;
    let bw = (w - pad) / buckets.len().max(1) as f64;
    let y = |v: f64| h - 18.0 - (h - 30.0) * v / top;
    let mut s =
        format!("<svg id=\"chart-svg\" viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\" aria-label=\"calls per minute, last hour\">");
    for (i, v) in buckets.iter().enumerate() {
        let x = pad + i as f64 * bw;
        let top_y = y(*v as f64);
        let fill = if limit > 0 && *v > limit { "#d64545" } else { "#5b8def" };
        s.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{top_y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\"><title>{} min ago: {v} calls</title></rect>",
            (bw - 2.0).max(1.0),
            (h - 18.0 - top_y).max(0.0),
            buckets.len() - 1 - i
        ));
    }
    if limit > 0 {
        let ly = y(limit as f64);
        s.push_str(&format!(
            "<line x1=\"{pad}\" x2=\"{w}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"#d64545\" stroke-dasharray=\"5 4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#a12626\" text-anchor=\"end\">limit {limit}/min</text>",
            w - 4.0,
            ly - 4.0
        ));
    }
    s.push_str(&format!(
        "<text x=\"0\" y=\"{:.1}\" font-size=\"11\" fill=\"#5f6b7a\">{}</text><text x=\"{pad}\" y=\"{h}\" font-size=\"11\" fill=\"#5f6b7a\">60 min ago</text>\
         <text x=\"{w}\" y=\"{h}\" font-size=\"11\" fill=\"#5f6b7a\" text-anchor=\"end\">now</text></svg>",
        y(top / 1.15) + 4.0,
        (top / 1.15).round()
    ));
    s
}

const COLOURS: [&str; 8] = ["#2f9e62", "#5b8def", "#e5a50a", "#d64545", "#8e5bd6", "#17a2b8", "#9aa5b1", "#c2410c"];

pub fn outcomes(items: &[(String, i64)]) -> String {
    let total: i64 = items.iter().map(|(_, n)| *n).sum();
    if total == 0 {
        return "<p class=\"muted\">No calls yet.</p>".into();
    }
    let mut bar = String::from("<svg viewBox=\"0 0 720 22\" width=\"100%\" role=\"img\" aria-label=\"outcomes\">");
    let mut legend = String::from("<div class=\"small legend\">");
    let mut x = 0.0f64;
    for (i, (name, n)) in items.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let wd = 720.0 * *n as f64 / total as f64;
        bar.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"0\" width=\"{wd:.1}\" height=\"22\" fill=\"{c}\"><title>{}: {n}</title></rect>",
            esc(name)
        ));
        legend.push_str(&format!(
            "<span class=\"legend-item\"><svg class=\"swatch\" width=\"10\" height=\"10\" aria-hidden=\"true\"><rect width=\"10\" height=\"10\" rx=\"2\" fill=\"{c}\"/></svg> {} <b class=\"num\">{n}</b></span>",
            esc(name)
        ));
        x += wd;
    }
    bar.push_str("</svg>");
    legend.push_str("</div>");
    bar + &legend
}

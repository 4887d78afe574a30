//! The page frame: escaping, navigation, styles and the little script that applies live updates.
//!
//! The styles and the script are files of their own (/static/…), and no page carries a `style`
//! attribute or inline script: the Content-Security-Policy (see `security`) allows only this
//! console's own files, so injected markup can neither run script nor restyle a page.

use axum::response::Html;

pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn opt(s: &Option<String>) -> String {
    s.as_deref().map(esc).unwrap_or_else(|| "<span class=\"muted\">—</span>".into())
}

pub const STYLE: &str = r#"
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;background:#f4f6f8}
header{background:#1f2a44;color:#fff;display:flex;align-items:center;gap:18px;padding:0 20px;height:52px}
header .brand{font-weight:700;font-size:16px;margin-right:10px}header a{color:#c9d3e6;text-decoration:none;padding:15px 4px;border-bottom:3px solid transparent}
header a.on,header a:hover{color:#fff;border-bottom-color:#5b8def}header .who{margin-left:auto;color:#c9d3e6;display:flex;gap:10px;align-items:center}
main{max-width:1240px;margin:22px auto;padding:0 20px}h1{font-size:22px;margin:0 0 14px}h2{font-size:16px;margin:0 0 10px}
.card{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:16px 18px;margin-bottom:16px}
table{width:100%;border-collapse:collapse}th,td{text-align:left;padding:7px 8px;border-bottom:1px solid #edf0f3;vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#5f6b7a;font-weight:600}tr:hover td{background:#fafbfc}
.bar{position:relative;height:12px;background:#e8ecf1;border-radius:6px;overflow:hidden;min-width:160px;display:flex}
.bar .ok{background:#2f9e62}.bar .bad{background:#d64545}.bar .pace{background:#5b8def}.bar .warn{background:#e5a50a}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;background:#e8ecf1;color:#3e4c5e}
.st-processing,.st-active,.st-in_progress,.st-ok{background:#dff3e7;color:#1d6b41}.st-paused,.st-delayed,.st-waiting,.st-queued{background:#fff3d6;color:#8a5a00}
.st-failed,.st-cancelled,.st-bad,.st-in_doubt,.st-ERROR{background:#fde2e2;color:#a12626}.st-completed,.st-COMPLETED{background:#e3ecfd;color:#254c9c}
.muted{color:#8a96a3}.small{font-size:12px}.num{font-variant-numeric:tabular-nums}.row{display:flex;gap:16px;flex-wrap:wrap}.row>.card{flex:1;min-width:280px}
button,.btn{font:inherit;font-size:13px;padding:4px 11px;border-radius:5px;border:1px solid #c3ccd7;background:#fff;color:#1f2933;cursor:pointer;text-decoration:none;display:inline-block}
button:hover{background:#f0f3f7}button.danger{color:#a12626;border-color:#e9b4b4}button.primary{background:#2f5fd0;border-color:#2f5fd0;color:#fff}
form.inline{display:inline}.tabs a{margin-right:6px}.tabs a.on{background:#1f2a44;color:#fff;border-color:#1f2a44}
.error{border-color:#e9b4b4;background:#fff7f7}.pgerr{font-family:ui-monospace,monospace;white-space:pre-wrap}
.login{max-width:360px;margin:90px auto}.login input{width:100%;padding:8px;margin:4px 0 12px;border:1px solid #c3ccd7;border-radius:5px;font:inherit}
.stat{font-size:26px;font-weight:700}.reasons{margin:4px 0 0;padding-left:16px;font-size:12px;color:#a12626}
code{font-family:ui-monospace,monospace;font-size:12px;background:#f0f3f7;padding:1px 4px;border-radius:3px}
.w220{min-width:220px}.w150{min-width:150px}.w130{min-width:130px}.flex2{flex:2}
a.qcard{text-decoration:none;color:inherit;min-width:120px}a.qcard.on{border-color:#2f5fd0;box-shadow:0 0 0 1px #2f5fd0}
.legend{margin-top:6px}.legend-item{margin-right:14px}.swatch{vertical-align:baseline}
"#;

/// Applies the server's live updates: text by data-live key, widths by data-live-w, inner HTML by
/// data-live-h. Widths come as data-w attributes (a style attribute would need 'unsafe-inline').
pub const SCRIPT: &str = r#"
(function(){function widths(root){root.querySelectorAll('[data-w]').forEach(function(e){e.style.width=e.dataset.w})}
widths(document);document.querySelectorAll('a[data-back]').forEach(function(a){a.addEventListener('click',function(ev){if(history.length>1){ev.preventDefault();history.back()}})});
var src=document.body.dataset.events;if(!src||!window.EventSource)return;
var es=new EventSource(src);es.onmessage=function(m){var d;try{d=JSON.parse(m.data)}catch(e){return}
for(var k in d.text||{}){document.querySelectorAll('[data-live="'+k+'"]').forEach(function(e){e.textContent=d.text[k]})}
for(var k in d.width||{}){document.querySelectorAll('[data-live-w="'+k+'"]').forEach(function(e){e.style.width=d.width[k]})}
for(var k in d.html||{}){document.querySelectorAll('[data-live-h="'+k+'"]').forEach(function(e){e.innerHTML=d.html[k];widths(e)})}
var t=document.getElementById('updated');if(t)t.textContent='live · '+new Date().toLocaleTimeString()}})();
"#;

/// The files' URLs carry the console's version, so a new release is not styled from a stale cache.
pub const CSS_HREF: &str = concat!("/static/console.css?v=", env!("CARGO_PKG_VERSION"));
pub const JS_SRC: &str = concat!("/static/console.js?v=", env!("CARGO_PKG_VERSION"));

pub fn bare(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} · pg_dialer</title><link rel=\"stylesheet\" href=\"{CSS_HREF}\"></head><body><main>{body}</main>\
         <script src=\"{JS_SRC}\"></script></body></html>",
        esc(title)
    ))
}

pub fn badge(status: &str) -> String {
    format!("<span class=\"badge st-{0}\">{0}</span>", esc(status))
}

//! The frame of a signed-in page: navigation, who is signed in, and the session's CSRF token
//! in every form (the lower-level markup is `html`'s).

use crate::auth::Session;
use crate::html::{esc, CSS_HREF, JS_SRC};
use axum::response::Html;

/// A signed-in page; `events` is the SSE URL the page follows, if it has live parts.
pub fn page(title: &str, s: &Session, active: &str, events: Option<&str>, body: &str) -> Html<String> {
    let nav = [("/", "Campaigns"), ("/queue", "Queue"), ("/calls", "Calls"), ("/telecallers", "Telecallers"), ("/health", "Health")]
        .iter()
        .map(|(href, label)| format!("<a href=\"{href}\"{}>{label}</a>", if *href == active { " class=\"on\"" } else { "" }))
        .collect::<String>();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t} · pg_dialer</title><link rel=\"stylesheet\" href=\"{CSS_HREF}\"></head><body data-events=\"{ev}\">\
         <header><span class=\"brand\">☎ pg_dialer</span>{nav}<span class=\"who\"><span id=\"updated\" class=\"small\"></span>\
         <span>signed in as <b id=\"role\">{role}</b>{op}</span>\
         <form class=\"inline\" method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button>Sign out</button></form></span></header>\
         <main><h1>{t}</h1>{body}</main><script src=\"{JS_SRC}\"></script></body></html>",
        t = esc(title),
        ev = esc(events.unwrap_or("")),
        role = esc(&s.role),
        op = if s.operator { " <span class=\"badge\">operator</span>" } else { "" },
        csrf = esc(&s.csrf),
    ))
}

/// A POST button through /actions, carrying the session's CSRF token and where to come back to.
pub fn action(s: &Session, path: &str, label: &str, back: &str, class: &str) -> String {
    format!(
        "<form class=\"inline\" method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"back\" value=\"{}\"><button class=\"{class}\" data-action=\"{label}\">{label}</button></form>",
        esc(path),
        esc(&s.csrf),
        esc(back)
    )
}

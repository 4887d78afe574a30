//! The documentation's relative links hold: every `[text](path#anchor)` of README.md,
//! CHANGELOG.md, UPGRADING.md, docs/*.md and bench/results/README.md names a file that exists, and
//! an `#anchor` names a heading of that page (GitHub's slugs). No cluster, no network: links with a
//! scheme (`https://…`, `mailto:`) are not followed.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("the repository")
}

/// The pages whose links are checked, relative to the repository.
fn pages() -> Vec<String> {
    let mut pages: Vec<String> =
        ["README.md", "CHANGELOG.md", "UPGRADING.md", "bench/results/README.md"].iter().map(|s| s.to_string()).collect();
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| format!("docs/{}", e.expect("docs/ entry").file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The lines of a markdown text outside fenced code blocks (fences themselves dropped).
fn prose_lines(markdown: &str) -> Vec<&str> {
    let mut fence: Option<(char, usize)> = None;
    let mut out = Vec::new();
    for line in markdown.lines() {
        let t = line.trim_start();
        let marker = t.chars().next().filter(|c| *c == '`' || *c == '~');
        let run = marker.map_or(0, |c| t.chars().take_while(|x| *x == c).count());
        match (fence, marker) {
            (None, Some(c)) if run >= 3 => fence = Some((c, run)),
            (Some((c, n)), Some(m)) if m == c && run >= n && t.trim_end().chars().all(|x| x == c) => fence = None,
            (None, _) => out.push(line),
            _ => {}
        }
    }
    out
}

/// The text with inline code spans removed (a run of n backticks up to the next run of exactly n).
fn without_code_spans(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let n = chars[i..].iter().take_while(|c| **c == '`').count();
        let mut j = i + n;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let m = chars[j..].iter().take_while(|c| **c == '`').count();
                if m == n {
                    close = Some(j + m);
                    break;
                }
                j += m;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => i = end,
            None => {
                // An unmatched run is literal text.
                out.extend(&chars[i..i + n]);
                i += n;
            }
        }
    }
    out
}

/// The targets of the inline links and images of a markdown text: what is between `](` and `)`,
/// without a title.
fn link_targets(markdown: &str) -> Vec<String> {
    let text = without_code_spans(&prose_lines(markdown).join("\n"));
    let mut targets = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let mut depth = 0usize;
        let mut end = None;
        for (k, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = Some(k);
                    break;
                }
                ')' => depth -= 1,
                '\n' => break,
                _ => {}
            }
        }
        if let Some(end) = end {
            let inner = after[..end].trim();
            let target = inner.trim_start_matches('<').split(['>', ' ']).next().unwrap_or("");
            targets.push(target.to_string());
            rest = &after[end..];
        } else {
            rest = after;
        }
    }
    targets
}

/// GitHub's anchor for a heading's text: lowercase; letters, digits, '-' and '_' kept, spaces
/// become '-', everything else is dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's ATX headings, outside code blocks, with GitHub's `-1`, `-2` suffixes
/// for repeated ones. A heading's inline links count by their text.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for line in prose_lines(markdown) {
        let t = line.trim_start();
        let level = t.chars().take_while(|c| *c == '#').count();
        if level == 0 || level > 6 || line.len() - t.len() > 3 {
            continue;
        }
        let text = &t[level..];
        if !(text.is_empty() || text.starts_with(' ') || text.starts_with('\t')) {
            continue;
        }
        let text = text.trim().trim_end_matches('#').trim_end();
        // [text](url) → text
        let mut plain = String::new();
        let mut r = text;
        while let Some(open) = r.find('[') {
            match (r[open..].find("]("), r[open..].find(')')) {
                (Some(close), Some(paren)) if paren > close => {
                    plain.push_str(&r[..open]);
                    plain.push_str(&r[open + 1..open + close]);
                    r = &r[open + paren + 1..];
                }
                _ => {
                    plain.push_str(&r[..=open]);
                    r = &r[open + 1..];
                }
            }
        }
        plain.push_str(r);
        let base = slug(&plain);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug("Keys, tenants and where requests go"), "keys-tenants-and-where-requests-go");
    assert_eq!(slug("Benchmarks (`make bench`)"), "benchmarks-make-bench");
    assert_eq!(slug("Leads, outcomes and the human fallback in SQL"), "leads-outcomes-and-the-human-fallback-in-sql");
    assert_eq!(slug("Any other AI caller (`webhook`)"), "any-other-ai-caller-webhook");
    assert_eq!(slug("Caller-ID pools"), "caller-id-pools");
    assert_eq!(slug("Settings (GUCs)"), "settings-gucs");
    assert_eq!(slug("`dialer.wake() → void`"), "dialerwake--void");
    assert_eq!(slug("Table `dialer.lead_writes`"), "table-dialerlead_writes");
    let a = anchors("# T\n## Tables\n```sh\n# not a heading\n```\n## Tables\n#hashtag\n### [Link](x.md) here ##\n");
    assert_eq!(a, ["t", "tables", "tables-1", "link-here"].iter().map(|s| s.to_string()).collect());
    let l = link_targets("a [x](docs/a.md#b) `[no](c.md)` ![i](p.png \"t\")\n```\n[no](d.md)\n```\n[y](https://e.x/) [z](#local)");
    assert_eq!(l, vec!["docs/a.md#b", "p.png", "https://e.x/", "#local"]);
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = repo();
    let mut cache: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let path = root.join(&page);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
        for target in link_targets(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let dest = if file.is_empty() { path.clone() } else { path.parent().unwrap().join(file) };
            let Ok(dest) = dest.canonicalize() else {
                broken.push(format!("{page}: {target}: no such file"));
                continue;
            };
            if !dest.starts_with(&root) {
                broken.push(format!("{page}: {target}: outside the repository"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if dest.extension().and_then(|e| e.to_str()) != Some("md") {
                continue; // e.g. a line of a source file: GitHub's own anchors
            }
            let anchors = cache.entry(dest.clone()).or_insert_with(|| anchors(&std::fs::read_to_string(&dest).unwrap()));
            if !anchors.contains(anchor) {
                broken.push(format!("{page}: {target}: no heading with that anchor"));
            }
        }
    }
    assert!(checked >= 50, "the pages have their links ({checked} checked)");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

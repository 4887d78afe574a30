//! The SQL examples of the README and of the pages beside it run, in order, against a real
//! cluster: they stay true.
//!
//! Which blocks run: a fenced block whose info string is exactly `sql` (```` ```sql ````). A block
//! that shows SQL but cannot run on its own (an error it provokes, a placeholder) is fenced
//! ```` ```sql no-run ```` (still highlighted as SQL) or with no language at all.
//!
//! The order: README.md first (it creates agency 1, mapping 1 and batch 1, which the pages'
//! examples continue), then the pages of [`PAGES`] in that order, then every other `docs/*.md`
//! page with SQL blocks (by name), then UPGRADING.md.

use pg_dialer_integration::Scenario;
use std::path::{Path, PathBuf};

/// The docs pages whose examples run first after the README's, in this order.
const PAGES: &[&str] = &["docs/queue.md", "docs/leads.md", "docs/providers.md", "docs/compliance.md", "docs/operations.md"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The runnable ```sql blocks of a markdown text, in order.
fn sql_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    let mut other_fence = false;
    for line in markdown.lines() {
        let t = line.trim_start();
        match (&mut current, other_fence) {
            (None, false) if t == "```sql" => current = Some(String::new()),
            (None, false) if t.starts_with("```") => other_fence = true,
            (None, true) if t == "```" => other_fence = false,
            (Some(_), _) if t == "```" => blocks.push(current.take().unwrap_or_default()),
            (Some(buf), _) => {
                buf.push_str(line);
                buf.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// The pages whose SQL runs, in order, each with its blocks.
fn pages() -> Vec<(String, Vec<String>)> {
    let read = |rel: &str| std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let mut order: Vec<String> = vec!["README.md".into()];
    order.extend(PAGES.iter().map(|p| p.to_string()));
    let mut rest: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| format!("docs/{}", e.expect("docs/ entry").file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md") && !order.contains(p))
        .collect();
    rest.sort();
    order.extend(rest);
    order.push("UPGRADING.md".into());
    order
        .into_iter()
        .map(|p| {
            let blocks = sql_blocks(&read(&p));
            (p, blocks)
        })
        .filter(|(p, blocks)| !blocks.is_empty() || PAGES.contains(&p.as_str()) || p == "README.md")
        .collect()
}

#[test]
fn the_block_finder_runs_only_plain_sql_fences() {
    let md = "text\n```sql\nSELECT 1;\n```\n```sql no-run\nSELECT oops;\n```\n```\nSELECT 2;\n```\n  ```sql\n  SELECT 3;\n  ```\n```sh\n```sql\n```\n";
    assert_eq!(sql_blocks(md), vec!["SELECT 1;\n".to_string(), "  SELECT 3;\n".to_string()]);
}

#[test]
fn every_sql_example_in_the_readme_and_the_docs_runs() {
    let pages = pages();
    let count = |name: &str| pages.iter().find(|(p, _)| p == name).map_or(0, |(_, b)| b.len());
    assert!(count("README.md") >= 2, "README has its SQL examples (a campaign, a queued call)");
    for page in PAGES {
        assert!(count(page) >= 1, "{page} has its SQL examples");
    }
    // A fresh cluster with the worker off: the examples create agency 1 themselves.
    // pg_cron is preloaded: the pg_cron recipes run too.
    let mut s = Scenario::new(
        "readme",
        Scenario::sim_config(100, 200),
        &[
            "dialer.enabled = off",
            "shared_preload_libraries = 'pg_dialer,pg_cron'",
            "cron.database_name = 'postgres'",
            // As the docs tell: the example AI caller's host is listed.
            "dialer.allowed_hosts = '127.0.0.1,api.voiceai.example'",
        ],
    );
    s.db.batch_execute("DROP EXTENSION pg_dialer CASCADE; CREATE EXTENSION pg_dialer;").unwrap();
    let mut ran = Vec::new();
    for (page, blocks) in &pages {
        for (i, block) in blocks.iter().enumerate() {
            s.db.batch_execute(block).unwrap_or_else(|e| {
                panic!(
                    "{page}, SQL block {} failed: {:?}\n{block}",
                    i + 1,
                    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
                )
            });
        }
        ran.push(format!("{page} ({})", blocks.len()));
    }
    eprintln!("ran the SQL blocks of: {}", ran.join(", "));
    let jobs: i64 = s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts", &[]).unwrap().get(0);
    assert!(jobs >= 7, "the examples scheduled their calls");
}

//! CPU time and memory of processes, from /proc.

use std::collections::BTreeMap;

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Fields of /proc/<pid>/stat after the command name: (ppid, utime, stime, cutime, cstime) in ticks.
fn parse_stat(text: &str) -> Option<(i32, u64, u64, u64, u64)> {
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] = state (field 3), f[1] = ppid (4), utime = field 14 -> f[11], stime f[12], cutime f[13], cstime f[14]
    Some((f.get(1)?.parse().ok()?, f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?, f.get(13)?.parse().ok()?, f.get(14)?.parse().ok()?))
}

/// utime + stime of a live process (all its threads), seconds; None if it is gone.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, u, s, _, _) = parse_stat(&text)?;
    Some((u + s) as f64 / clk_tck())
}

/// Process title (Postgres sets it: "postgres: pg_dialer", "postgres: autovacuum worker", ...).
pub fn title(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let s: String = String::from_utf8_lossy(&raw).replace('\0', " ");
    s.trim().to_string()
}

/// CPU of a Postgres cluster: the postmaster (including reaped children, cutime/cstime) plus
/// every live child. Keyed by a short role name so that the split can be shown.
#[derive(Debug, Clone, Default)]
pub struct PgCpu {
    pub by_role: BTreeMap<String, f64>,
}

impl PgCpu {
    pub fn total(&self) -> f64 {
        self.by_role.values().sum()
    }

    /// after - before, per role (roles that appear in only one side count as 0 on the other).
    /// A process that exits is reaped by the postmaster, whose line then counts its whole
    /// lifetime: its role loses what it had used before the window and the postmaster's line
    /// gains it. The total is right either way; a role left negative (all its processes gone) is
    /// dropped and its deficit taken off the postmaster's line, so no line is negative. (A role
    /// that also gained processes keeps the two effects netted in its own and the postmaster's
    /// lines.)
    pub fn delta(&self, before: &PgCpu) -> PgCpu {
        let mut out = BTreeMap::new();
        for (k, v) in &self.by_role {
            out.insert(k.clone(), v - before.by_role.get(k).copied().unwrap_or(0.0));
        }
        for (k, v) in &before.by_role {
            out.entry(k.clone()).or_insert(-v);
        }
        let exited: f64 = out.iter().filter(|(k, v)| k.as_str() != POSTMASTER && **v < 0.0).map(|(_, v)| *v).sum();
        if exited < 0.0 {
            out.retain(|k, v| k.as_str() == POSTMASTER || *v >= 0.0);
            *out.entry(POSTMASTER.to_string()).or_default() += exited;
        }
        PgCpu { by_role: out }
    }
}

const POSTMASTER: &str = "postmaster (+ exited children)";

fn role_of(title: &str) -> String {
    // "postgres: pg_dialer " / "postgres: postgres postgres 127.0.0.1(5123) idle" / "postgres: walwriter"
    let t = title.strip_prefix("postgres: ").unwrap_or(title);
    if t.starts_with("pg_dialer") {
        "pg_dialer worker".into()
    } else if t.starts_with("postgres postgres") || t.contains("127.0.0.1(") || t.contains("[local]") {
        "client backends".into()
    } else if t.starts_with("autovacuum") {
        "autovacuum".into()
    } else if t.is_empty() {
        "other".into()
    } else {
        t.split_whitespace().next().unwrap_or("other").to_string()
    }
}

pub fn pg_cpu(postmaster: i32) -> PgCpu {
    let tck = clk_tck();
    let mut by_role: BTreeMap<String, f64> = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{postmaster}/stat")) {
        if let Some((_, u, s, cu, cs)) = parse_stat(&text) {
            *by_role.entry(POSTMASTER.into()).or_default() += (u + s + cu + cs) as f64 / tck;
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let Some((ppid, u, s, _, _)) = parse_stat(&text) else { continue };
            if ppid != postmaster {
                continue;
            }
            *by_role.entry(role_of(&title(pid))).or_default() += (u + s) as f64 / tck;
        }
    }
    PgCpu { by_role }
}

/// CPU of the threads of one process, grouped by thread name with digits dropped
/// ("pg_dialer-http-12" -> "pg_dialer-http-"), seconds.
pub fn threads_cpu(pid: i32) -> BTreeMap<String, f64> {
    let tck = clk_tck();
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for e in dir.flatten() {
        let p = e.path();
        let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let name: String = name.trim().chars().filter(|c| !c.is_ascii_digit()).collect();
        let Ok(text) = std::fs::read_to_string(p.join("stat")) else { continue };
        let Some((_, u, s, _, _)) = parse_stat(&text) else { continue };
        *out.entry(name).or_insert(0.0) += (u + s) as f64 / tck;
    }
    out
}

/// A field of /proc/<pid>/status in kB (VmHWM, VmRSS, RssAnon, RssShmem...).
pub fn status_kb(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            return rest.trim().trim_end_matches("kB").trim().parse().ok();
        }
    }
    None
}

/// A field of /proc/<pid>/status in MB.
pub fn status_mb(pid: i32, field: &str) -> Option<f64> {
    status_kb(pid, field).map(|kb| kb as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let s = "123 (postgres: pg dialer) S 100 1 1 0 -1 4194560 10 0 0 0 250 50 7 3 20 0 1 0";
        assert_eq!(parse_stat(s), Some((100, 250, 50, 7, 3)));
    }

    #[test]
    fn roles() {
        assert_eq!(role_of("postgres: pg_dialer"), "pg_dialer worker");
        assert_eq!(role_of("postgres: postgres postgres 127.0.0.1(4242) idle"), "client backends");
        assert_eq!(role_of("postgres: walwriter"), "walwriter");
        assert_eq!(role_of("postgres: autovacuum worker postgres"), "autovacuum");
    }

    fn cpu(roles: &[(&str, f64)]) -> PgCpu {
        PgCpu { by_role: roles.iter().map(|(k, v)| (k.to_string(), *v)).collect() }
    }

    #[test]
    fn backends_that_exit_in_the_window_count_only_their_time_in_it_under_the_postmaster() {
        // Client backends had used 5 s before the window and 2 s in it, then exited and were
        // reaped: the postmaster's line grew by all 7 s.
        let before = cpu(&[(POSTMASTER, 1.0), ("client backends", 5.0), ("walwriter", 0.5)]);
        let after = cpu(&[(POSTMASTER, 8.5), ("walwriter", 0.75)]);
        let d = after.delta(&before);
        assert_eq!(d.by_role.get(POSTMASTER).copied(), Some(2.5));
        assert_eq!(d.by_role.get("client backends"), None);
        assert_eq!(d.by_role.get("walwriter").copied(), Some(0.25));
        assert_eq!(d.total(), 2.75);
    }
}

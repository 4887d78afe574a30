//! The console against a hostile tenant with a SQL login (issue 21, item 6): password guessing
//! is slowed then locked out, sign-ins cannot exhaust connections, a role changed in Postgres is
//! signed out within the re-check interval, and every answer carries the security headers.

mod common;

use common::*;
use pg_dialer_integration::{wait_for, Scenario};
use std::time::{Duration, Instant};

/// Small limits, so a test proves throttling in seconds: waits from the 4th failure (200 ms, then
/// 400 ms), a lock-out after 8; addresses from the X-Test-Client header.
const THROTTLE: &[&str] = &[
    "--auth-delay-after",
    "3",
    "--auth-delay-ms",
    "200",
    "--auth-max-delay-ms",
    "400",
    "--auth-lockout-after",
    "8",
    "--auth-lockout-secs",
    "600",
    "--client-address-header",
    "X-Test-Client",
];

fn tenants(name: &str) -> (Scenario, i64) {
    let s = Scenario::with_passwords(name, Scenario::sim_config(200, 400), &[]);
    let agency = s.agency_id;
    (s, agency)
}

#[test]
fn password_guessing_is_slowed_then_locked_out_on_sign_in_and_metrics() {
    let (mut s, acme) = tenants("console-brute");
    for (role, pw) in [("tenant_a", "pw-a"), ("tenant_b", "pw-b"), ("tenant_c", "pw-c"), ("tenant_d", "pw-d")] {
        tenant_role(&mut s, role, pw, acme);
    }
    let console = Console::start_with(&s, THROTTLE);

    // One address guessing tenant_a's password: the first 3 failures answer at once, the next
    // ones wait (200 ms, then 400 ms), and after 8 the 9th, and even the right password, get 429.
    let web = Http::from(&console.url, "198.51.100.7");
    for i in 1..=8 {
        let t = Instant::now();
        let a = web.sign_in("tenant_a", &format!("guess-{i}"));
        assert_eq!(a.status, 401, "attempt {i}: {a:?}");
        let floor = match i {
            1..=3 => Duration::ZERO,
            4 => Duration::from_millis(200),
            _ => Duration::from_millis(400),
        };
        assert!(t.elapsed() >= floor, "attempt {i} answered in {:?}: not slowed to {floor:?}", t.elapsed());
    }
    let a = web.sign_in("tenant_a", "pw-a");
    assert_eq!(a.status, 429, "the right password after 8 failures is refused: {a:?}");
    let retry: u64 = a.header("retry-after").and_then(|v| v.parse().ok()).expect("a Retry-After header");
    assert!((1..=600).contains(&retry), "{retry}");
    assert!(a.body.contains("Too many failed sign-ins"), "{}", a.body);
    // The role is locked from any address, on /metrics too (the counters are shared).
    let elsewhere = Http::from(&console.url, "203.0.113.50");
    assert_eq!(elsewhere.sign_in("tenant_a", "pw-a").status, 429, "the role is locked everywhere");
    let m = elsewhere.metrics("tenant_a", "pw-a");
    assert_eq!((m.status, m.header("retry-after").is_some()), (429, true), "{m:?}");
    // The address is locked whatever role it tries; another role from another address goes on.
    assert_eq!(web.sign_in("tenant_b", "pw-b").status, 429, "the address is locked for every role");
    assert_eq!(elsewhere.sign_in("tenant_b", "pw-b").status, 303, "tenant_b from elsewhere signs in");

    // Guesses spread over many addresses still lock the role (/metrics' Basic auth this time).
    for i in 1..=8 {
        let m = Http::from(&console.url, &format!("192.0.2.{i}")).metrics("tenant_c", &format!("guess-{i}"));
        assert_eq!(m.status, 401, "guess {i}: {m:?}");
    }
    let m = Http::from(&console.url, "192.0.2.100").metrics("tenant_c", "pw-c");
    assert_eq!(m.status, 429, "right password, locked role: {m:?}");
    assert_eq!(Http::from(&console.url, "192.0.2.101").sign_in("tenant_c", "pw-c").status, 429, "the sign-in form too");

    // A success resets the counters: 3 failures, a success, then 7 more failures (10 in all)
    // lock nothing, and the right password still works.
    let d = Http::from(&console.url, "198.51.100.99");
    for i in 0..3 {
        assert_eq!(d.metrics("tenant_d", &format!("wrong-d-{i}")).status, 401);
    }
    assert_eq!(d.metrics("tenant_d", "pw-d").status, 200);
    for i in 0..7 {
        assert_eq!(d.metrics("tenant_d", &format!("again-d-{i}")).status, 401);
    }
    assert_eq!(d.metrics("tenant_d", "pw-d").status, 200, "7 failures after a success: not locked");

    // The lock-outs are logged, and no password (right or wrong) is.
    let log = console.log();
    assert!(log.contains("sign-in locked out") && log.contains("role \"tenant_a\""), "{log}");
    assert!(log.contains("/metrics locked out") && log.contains("role \"tenant_c\""), "{log}");
    for pw in ["pw-a", "pw-b", "pw-c", "pw-d", "guess-1", "guess-8", "wrong-d-0", "again-d-6"] {
        assert!(!log.contains(pw), "the log carries a password ({pw}):\n{log}");
    }
}

/// Connections of `role` now: the pool's, and all (the pool's plus a sign-in check under way).
fn connections(s: &mut Scenario, role: &str) -> (i64, i64) {
    let row =
        s.db.query_one(
            "SELECT count(*) FILTER (WHERE application_name = 'pg_dialer_console'), count(*)
               FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn sixty_five_sign_ins_share_one_capped_pool_and_idle_connections_close() {
    let (mut s, acme) = tenants("console-pool");
    tenant_role(&mut s, "tenant_a", "pw-a", acme);
    tenant_role(&mut s, "tenant_b", "pw-b", acme);
    // A small cluster, so 65 connections would not fit: the console must not need them.
    let max: i64 = s.db.query_one("SELECT current_setting('max_connections')::int8", &[]).unwrap().get(0);
    let console = Console::start_with(&s, &["--pool-size", "3", "--pool-idle-secs", "2"]);

    let sessions: Vec<Http> = (0..65)
        .map(|i| {
            let h = Http::new(&console.url);
            let a = h.sign_in("tenant_a", "pw-a");
            assert_eq!(a.status, 303, "sign-in {i}: {a:?}");
            h
        })
        .collect();
    // Every session opens a page at once; the pool's connections are counted meanwhile.
    let done = std::sync::atomic::AtomicUsize::new(0);
    let peak = std::thread::scope(|scope| {
        for h in &sessions {
            let done = &done;
            scope.spawn(move || {
                for _ in 0..3 {
                    let a = h.get("/");
                    assert_eq!(a.status, 200, "{}", a.body);
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let mut peak = 0;
        while done.load(std::sync::atomic::Ordering::SeqCst) < sessions.len() {
            peak = peak.max(connections(&mut s, "tenant_a").0);
            std::thread::sleep(Duration::from_millis(20)); // sampling, not synchronisation
        }
        peak
    });
    assert!(peak >= 1, "the pages were served from the pool");
    assert!(peak <= 3, "65 sessions of one role held {peak} pooled connections (cap 3, max_connections {max})");
    let (_, all) = wait_for("sign-in checks to close", T, || {
        let c = connections(&mut s, "tenant_a");
        (c.1 <= 3).then_some(c)
    });
    assert!(all <= 3);
    // Another role still signs in and works.
    let b = Http::new(&console.url);
    assert_eq!(b.sign_in("tenant_b", "pw-b").status, 303);
    assert!(b.signed_in());
    // Unused, the connections close after the idle time-out; the sessions stay signed in.
    wait_for("idle connections to close", T, || (connections(&mut s, "tenant_a") == (0, 0)).then_some(()));
    assert!(sessions[0].signed_in() && sessions[64].signed_in(), "sessions outlive their idle connections");
}

#[test]
fn a_role_changed_in_postgres_is_signed_out_within_the_recheck_interval() {
    let (mut s, acme) = tenants("console-recheck");
    for (role, pw) in [("tenant_a", "pw-a"), ("tenant_b", "pw-b"), ("tenant_c", "pw-c"), ("tenant_d", "pw-d")] {
        tenant_role(&mut s, role, pw, acme);
    }
    admin_role(&mut s, "ops_admin", "pw-admin");
    let console = Console::start_with(&s, &["--recheck-secs", "1"]);
    let signed_in = |role: &str, pw: &str| {
        let h = Http::new(&console.url);
        assert_eq!(h.sign_in(role, pw).status, 303, "{role} signs in");
        assert!(h.signed_in());
        h
    };
    let (a, a2, b, c, d, admin) = (
        signed_in("tenant_a", "pw-a"),
        signed_in("tenant_a", "pw-a"),
        signed_in("tenant_b", "pw-b"),
        signed_in("tenant_c", "pw-c"),
        signed_in("tenant_d", "pw-d"),
        signed_in("ops_admin", "pw-admin"),
    );
    let scraper = Http::new(&console.url);
    assert_eq!(scraper.metrics("tenant_a", "pw-a").status, 200);
    // A few re-checks pass with nothing changed: nobody is signed out.
    // (Not synchronisation: time for several re-checks to pass, which must change nothing.)
    std::thread::sleep(Duration::from_secs(3));
    for h in [&a, &a2, &b, &c, &d, &admin] {
        assert!(h.signed_in(), "an unchanged role stays signed in");
    }
    // Well under the default interval (60 s): it is the 1 s re-check that signs them out.
    let within = Duration::from_secs(15);

    s.db.batch_execute("ALTER ROLE tenant_a PASSWORD 'pw-a-new'").unwrap();
    wait_for("tenant_a's sessions to end after its password changed", within, || (!a.signed_in() && !a2.signed_in()).then_some(()));
    wait_for("/metrics to refuse the old password", within, || (scraper.metrics("tenant_a", "pw-a").status == 401).then_some(()));
    assert_eq!(scraper.metrics("tenant_a", "pw-a-new").status, 200, "the new password works");
    assert_eq!(scraper.metrics("tenant_a", "pw-a").status, 401, "and the old one, once refused, stays refused");
    assert_eq!(Http::new(&console.url).sign_in("tenant_a", "pw-a").status, 401);
    assert_eq!(Http::new(&console.url).sign_in("tenant_a", "pw-a-new").status, 303);

    s.db.batch_execute("ALTER ROLE tenant_b NOLOGIN").unwrap();
    wait_for("tenant_b's session to end after NOLOGIN", within, || (!b.signed_in()).then_some(()));
    assert_eq!(Http::new(&console.url).sign_in("tenant_b", "pw-b").status, 401);

    s.db.batch_execute("REVOKE dialer_user FROM tenant_c").unwrap();
    wait_for("tenant_c's session to end after dialer_user was revoked", within, || (!c.signed_in()).then_some(()));

    s.db.execute("DELETE FROM dialer.agency_members WHERE role_name = 'tenant_d'", &[]).unwrap();
    wait_for("tenant_d's session to end after losing its agency", within, || (!d.signed_in()).then_some(()));

    assert!(admin.signed_in(), "the admin, unchanged, is still signed in");
    let log = console.log();
    assert!(log.contains("role \"tenant_b\" signed out everywhere"), "{log}");
    assert!(!log.contains("pw-a") && !log.contains("pw-admin"), "no password in the log:\n{log}");
}

#[test]
fn every_answer_carries_the_security_headers_and_cookies_are_secure_with_the_flag() {
    let (mut s, acme) = tenants("console-headers");
    tenant_role(&mut s, "tenant_a", "pw-a", acme);
    let batch = s.batch("Headers", 10, 2, 3);
    let console = Console::start_with(&s, &["--secure-cookie"]);
    let web = Http::new(&console.url);
    let check = |what: &str, a: &Answer| {
        let csp = a.header("content-security-policy").unwrap_or_else(|| panic!("{what}: no CSP: {a:?}"));
        for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "form-action 'self'"] {
            assert!(csp.contains(directive), "{what}: CSP without {directive}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{what}: {csp}");
        assert_eq!(a.header("x-frame-options"), Some("DENY"), "{what}");
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"), "{what}");
        assert_eq!(a.header("referrer-policy"), Some("same-origin"), "{what}");
    };
    // Signed out: the sign-in page, a redirect, a 404, the static files, /metrics refused.
    let login = web.get("/login");
    check("/login", &login);
    let cookie = login.set_cookie("pg_dialer_login").expect("the sign-in form's cookie");
    assert!(cookie.contains("Secure") && cookie.contains("HttpOnly"), "{cookie}");
    check("/ signed out", &Http::new(&console.url).get("/"));
    check("404", &web.get("/no-such-page"));
    let css = web.get("/static/console.css");
    check("css", &css);
    assert!(css.header("content-type").unwrap_or("").starts_with("text/css"));
    check("js", &web.get("/static/console.js"));
    check("/metrics 401", &web.metrics("tenant_a", "wrong"));
    check("/metrics", &web.metrics("tenant_a", "pw-a"));
    // Signing in: the session cookie is Secure, HttpOnly and SameSite=Strict.
    let signed = web.sign_in("tenant_a", "pw-a");
    assert_eq!(signed.status, 303);
    check("POST /login", &signed);
    let session = signed.set_cookie("pg_dialer_session").expect("a session cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(session.contains(attr), "{session}");
    }
    for path in ["/", &format!("/campaigns/{batch}"), "/queue", "/calls", "/telecallers", "/health"] {
        let a = web.get(path);
        assert_eq!(a.status, 200, "{path}");
        assert!(
            !a.body.contains("style=\"") && !a.body.contains("<script>") && !a.body.contains("<style>"),
            "{path}: inline style or script"
        );
        check(path, &a);
    }
    check("/events", &web.head_of("/events"));
    check("forged POST", &web.post("/logout", &[("csrf", "forged")]));
    check("an action's error", &web.post(&format!("/actions/nothing/{batch}/nothing"), &[("csrf", "forged")]));
    drop(console);

    // Without the flag (plain HTTP on loopback, as in development): no Secure attribute.
    let console = Console::start(&s);
    let web = Http::new(&console.url);
    let signed = web.sign_in("tenant_a", "pw-a");
    assert!(!signed.set_cookie("pg_dialer_session").expect("a session cookie").contains("Secure"));
}

#[test]
fn pages_run_under_the_csp_without_violations() {
    let (mut s, acme) = tenants("console-csp");
    tenant_role(&mut s, "tenant_a", "pw-a", acme);
    let batch = s.batch("Under the CSP", 10, 2, 3);
    let console = Console::start(&s);
    let web = Browser::start(&console.url);
    web.sign_in("tenant_a", "pw-a");
    web.goto(&format!("/campaigns/{batch}"));
    // Violations: those of the page load (a buffered ReportingObserver) and any later one.
    web.js(
        "window.__csp = [];
         document.addEventListener('securitypolicyviolation', function(e){ window.__csp.push(e.violatedDirective + ' ' + e.blockedURI) });
         if (window.ReportingObserver) { new ReportingObserver(function(rs){ rs.forEach(function(r){ window.__csp.push(JSON.stringify(r.body)) }) },
             {types: ['csp-violation'], buffered: true}).observe(); }",
    );
    // The script runs (live updates arrive), the style sheet applies, widths come from data-w.
    wait_for("a live update", T, || web.text("#updated").filter(|t| t.starts_with("live")));
    assert_eq!(web.js("return getComputedStyle(document.querySelector('header')).backgroundColor"), serde_json::json!("rgb(31, 42, 68)"));
    assert_eq!(
        web.js("var e = document.querySelector('[data-w]'); return !!e && e.style.width !== '' && parseFloat(e.style.width) === parseFloat(e.dataset.w)"),
        serde_json::json!(true),
        "bar widths set by the script"
    );
    let first = web.text("#updated");
    wait_for("another live update", T, || (web.text("#updated") != first).then_some(()));
    assert_eq!(web.js("return window.__csp"), serde_json::json!([]), "no CSP violation on the campaign page");
    web.goto("/queue");
    web.js(
        "window.__csp = []; document.addEventListener('securitypolicyviolation', function(e){ window.__csp.push(e.violatedDirective) });",
    );
    wait_for("a live update on the queue page", T, || web.text("#updated").filter(|t| t.starts_with("live")));
    assert_eq!(web.js("return window.__csp"), serde_json::json!([]), "no CSP violation");
    // The policy is in force: an injected style attribute is reported (and blocked).
    web.js("document.body.insertAdjacentHTML('beforeend', '<div id=\"injected\" style=\"color: rgb(255, 0, 0)\">x</div>')");
    wait_for("the injected style to be reported", T, || {
        let v = web.js("return window.__csp.length");
        (v.as_u64().unwrap_or(0) > 0).then_some(())
    });
    assert_ne!(web.js("return getComputedStyle(document.getElementById('injected')).color"), serde_json::json!("rgb(255, 0, 0)"));
}

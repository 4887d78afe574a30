//! The console in a real browser (headless Chromium) against a running worker and the simulator:
//! each role sees only what row-level security lets it see, progress moves live, a pause from
//! the page stops the dialing, and wrong passwords and forged CSRF tokens are refused.

mod common;

use common::*;
use pg_dialer_integration::{call_posts, numbers, wait_for, Scenario};
use std::time::{Duration, Instant};

#[test]
fn two_tenants_and_an_admin_each_see_only_what_they_may_and_forgeries_are_refused() {
    let mut s = Scenario::with_passwords("console-tenants", Scenario::sim_config(200, 400), &[]);
    let acme = s.agency_id;
    let acme_mapping = s.mapping_id;
    let (beta, beta_mapping) = second_agency(&mut s, "Beta Insurance");
    // Scheduled for tomorrow: nothing dials, the pages are what is tested.
    let later = "SELECT dialer.create_batch($1, $2, $3, 10, 5, now() + interval '1 day')";
    let a_batch: i64 = s.db.query_one(later, &[&acme, &acme_mapping, &"Acme spring renewals"]).unwrap().get(0);
    let b_batch: i64 = s.db.query_one(later, &[&beta, &beta_mapping, &"Beta winter leads"]).unwrap().get(0);
    s.add_numbers(a_batch, &numbers("+1555201", 3));
    s.add_numbers(b_batch, &numbers("+1555202", 2));
    s.db.execute("SELECT dialer.add_telecaller($1, 'Priya (Acme)')", &[&acme]).unwrap();
    s.db.execute("SELECT dialer.add_telecaller($1, 'Bruno (Beta)', NULL, false)", &[&beta]).unwrap();
    tenant_role(&mut s, "tenant_a", "pw-a", acme);
    tenant_role(&mut s, "tenant_b", "pw-b", beta);
    admin_role(&mut s, "ops_admin", "pw-admin");
    let console = Console::start(&s);
    let web = Browser::start(&console.url);

    // A wrong password is refused, and no page opens without a session.
    web.sign_in("tenant_a", "not-the-password");
    assert_eq!(web.path(), "/login");
    assert!(web.text("#login-error").unwrap_or_default().contains("wrong role or password"));
    web.goto("/");
    assert_eq!(web.path(), "/login", "no session, no page");
    // A sign-in posted from elsewhere (no form token): refused, even with the right password.
    let forged_login = ureq::post(&format!("{}/login", console.url)).send_form(&[("role", "tenant_a"), ("password", "pw-a")]);
    assert!(matches!(forged_login, Err(ureq::Error::Status(403, _))), "{forged_login:?}");

    let visible = |web: &Browser, path: &str| {
        web.goto(path);
        web.source()
    };
    web.sign_in("tenant_a", "pw-a");
    let cookies = web.cookies();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let (_, value, http_only, same_site) = &cookies[0];
    assert_eq!((*http_only, same_site.as_str()), (Some(true), "Some(Strict)"), "{cookies:?}");
    assert!(!value.contains("tenant_a"), "the cookie is encrypted: no role in it");
    let page = visible(&web, "/");
    assert!(page.contains("Acme spring renewals") && !page.contains("Beta winter leads"), "A sees its campaign only");
    let page = visible(&web, "/telecallers");
    assert!(page.contains("Priya (Acme)") && !page.contains("Bruno"), "A sees its telecallers only");
    assert!(visible(&web, "/health").contains("not visible to your role"), "ticks are the operators'");
    web.goto(&format!("/campaigns/{b_batch}"));
    assert!(web.source().contains("not visible to your role"), "B's campaign page is closed to A");

    // A forged token: refused with 403, nothing changed.
    web.goto("/");
    web.js("document.querySelectorAll('input[name=csrf]').forEach(function(e){e.value='forged'})");
    web.click(&format!("#batch-{a_batch} button[data-action=Pause]"));
    wait_for("the refusal", T, || web.text("#forbidden"));
    assert_eq!(s.batch_status(a_batch), "scheduled", "a forged POST changed nothing");
    // A's own token on B's batch: the SQL API refuses it, and the page says what Postgres said.
    web.goto("/");
    web.js(&format!("var f=document.querySelector('#batch-{a_batch} form');f.action='/actions/batch/{b_batch}/pause';f.submit()"));
    let err = wait_for("the API's error", T, || web.text(".pgerr"));
    assert!(err.contains("SQLSTATE"), "{err}");
    assert_eq!(s.batch_status(b_batch), "scheduled", "A cannot pause B's campaign");
    // The queue: a delayed job cancelled from the page, through dialer.cancel_job.
    let job: i64 = s.db.query_one("SELECT dialer.schedule_call('+15552039999', $1, delay => interval '1 hour')", &[&acme]).unwrap().get(0);
    web.goto("/queue?state=delayed");
    assert_eq!(web.text("#count-delayed").as_deref(), Some("1"));
    // A second job appears in the counter without a reload (server-sent events).
    s.db.execute("SELECT dialer.schedule_call('+15552039998', $1, delay => interval '2 hours')", &[&acme]).unwrap();
    wait_for("the live counter", T, || (web.text("#count-delayed").as_deref() == Some("2")).then_some(()));
    web.click("#jobs button[data-action=Cancel]");
    wait_for("the first job cancelled", T, || (s.job_state(job) == "cancelled").then_some(()));
    // An attempt in doubt (made so by hand here), settled from the calls page as "called".
    let doubtful: i64 = s
        .db
        .query_one("UPDATE dialer.campaign_contacts SET status = 'in_doubt' WHERE id = (SELECT min(id) FROM dialer.campaign_contacts WHERE batch_id = $1) RETURNING id", &[&a_batch])
        .unwrap()
        .get(0);
    web.goto("/calls");
    assert!(web.text("#in-doubt").unwrap_or_default().contains("+15552010000"), "A sees its attempt in doubt");
    web.click("#in-doubt button[data-action='Mark as called']");
    wait_for("the attempt settled", T, || {
        let st: String = s.db.query_one("SELECT status FROM dialer.campaign_contacts WHERE id = $1", &[&doubtful]).ok()?.get(0);
        (st == "completed").then_some(())
    });
    // A's own token on its own batch works.
    web.goto("/");
    web.click(&format!("#batch-{a_batch} button[data-action=Pause]"));
    wait_for("A's batch paused", T, || (s.batch_status(a_batch) == "paused").then_some(()));
    web.sign_out();
    web.goto("/");
    assert_eq!(web.path(), "/login", "signed out: the session is gone");

    web.sign_in("tenant_b", "pw-b");
    let page = visible(&web, "/");
    assert!(page.contains("Beta winter leads") && !page.contains("Acme spring renewals"), "B sees its campaign only");
    web.goto("/telecallers");
    web.click("button[data-action='Mark available']");
    wait_for("Bruno available", T, || {
        let ok: bool = s.db.query_one("SELECT available FROM dialer.telecallers WHERE agency_id = $1", &[&beta]).ok()?.get(0);
        ok.then_some(())
    });
    web.sign_out();

    web.sign_in("ops_admin", "pw-admin");
    let page = visible(&web, "/");
    assert!(page.contains("Beta winter leads") && page.contains("Acme spring renewals"), "the admin sees both");
    let page = visible(&web, "/health");
    assert!(page.contains("id=\"runs\"") && !page.contains("not visible to your role"), "the admin sees the ticks");
    assert!(!web.source().contains(pg_dialer_integration::API_KEY), "no provider key on any page");

    // /metrics: Basic auth with a Postgres role, dialer.metrics() as that role.
    let (code, _) = metrics(&console.url, "ops_admin", "wrong");
    assert_eq!(code, 401);
    let (code, body) = metrics(&console.url, "ops_admin", "pw-admin");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("# TYPE pg_dialer_contacts gauge"), "{body}");
    for agency in [acme, beta] {
        assert!(body.contains(&format!("agency_id=\"{agency}\"")), "the admin's scrape has every agency\n{body}");
    }
    let (code, body) = metrics(&console.url, "tenant_a", "pw-a");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&format!("agency_id=\"{acme}\"")), "{body}");
    assert!(!body.contains(&format!("agency_id=\"{beta}\"")), "A's scrape carries none of B's samples\n{body}");
    assert!(!body.contains(pg_dialer_integration::API_KEY));
}

#[test]
fn progress_moves_live_and_a_pause_from_the_page_stops_the_dialing() {
    let mut s = Scenario::with_passwords("console-live", Scenario::sim_config(1500, 3000), &["dialer.poll_interval = '200ms'"]);
    let batch = s.batch("Spring renewals", 240, 8, 3);
    s.add_numbers(batch, &numbers("+1555301", 300));
    let other = s.batch("Other campaign", 60, 2, 3);
    s.add_numbers(other, &numbers("+1555309", 200));
    let agency = s.agency_id;
    s.db.execute("SELECT dialer.add_telecaller($1, 'Priya', NULL, true)", &[&agency]).unwrap();
    s.db.execute("SELECT dialer.schedule_call('+15553029999', $1, delay => interval '1 hour')", &[&agency]).unwrap();
    admin_role(&mut s, "ops_admin", "pw-admin");
    let console = Console::start(&s);
    let web = Browser::start(&console.url);
    web.sign_in("ops_admin", "pw-admin");
    web.goto(&format!("/campaigns/{batch}"));
    let completed = |web: &Browser| -> i64 {
        web.text(&format!("[data-live=\"b{batch}.completed\"]")).and_then(|t| t.trim().parse().ok()).unwrap_or(-1)
    };
    // Marks this page load: if it is still there when the counter moves, the page was not reloaded.
    web.js("window.__same_page = true");
    // Any Content-Security-Policy violation while the page updates itself (charts, bars, counters).
    web.js("window.__csp = []; document.addEventListener('securitypolicyviolation', function(e){ window.__csp.push(e.violatedDirective + ' ' + e.blockedURI) })");
    s.wake();
    let first = wait_for("the first completed calls on the page", Duration::from_secs(60), || {
        let n = completed(&web);
        (n > 0).then_some(n)
    });
    wait_for("the counter to move again", Duration::from_secs(60), || (completed(&web) > first).then_some(()));
    assert_eq!(web.js("return window.__same_page === true"), serde_json::json!(true), "updated in place, no reload");
    assert_eq!(web.js("return window.__csp"), serde_json::json!([]), "no CSP violation while the page updated");
    web.screenshot("campaign");
    // The chart counts those calls against the limit.
    let chart = web.source();
    assert!(chart.contains("limit 240/min"), "the limit line is drawn");
    assert!(chart.split("min ago: ").skip(1).any(|rest| rest.starts_with(|c: char| ('1'..='9').contains(&c))), "a bar with calls");
    // Calls in progress are listed while they last.
    wait_for("a call of the campaign in progress on /calls", T, || {
        web.goto("/calls");
        web.text("#live-calls").filter(|t| t.contains("+1555301"))
    });
    for (path, name) in
        [("/", "campaigns"), ("/queue?state=delayed", "queue"), ("/calls", "calls"), ("/health", "health"), ("/telecallers", "telecallers")]
    {
        web.goto(path);
        web.screenshot(name);
    }

    web.goto(&format!("/campaigns/{batch}"));
    web.click(&format!("#batch-{batch} button[data-action=Pause]"));
    wait_for("the badge to say paused", T, || {
        (web.text(&format!("[data-live=\"b{batch}.status\"]")).as_deref() == Some("paused")).then_some(())
    });
    assert_eq!(s.batch_status(batch), "paused");
    // Attempts claimed before the pause are posted; after that, while the other campaign goes on
    // being dialed (the worker is at work), not one more call of the paused one is placed.
    let db = &mut s.db;
    wait_for("claims made before the pause to be posted", T, || {
        let n: i64 = db.query_one("SELECT count(*) FROM dialer.calls WHERE batch_id = $1 AND status = 'dialing'", &[&batch]).ok()?.get(0);
        (n == 0).then_some(())
    });
    let posts =
        |s: &Scenario, prefix: &str| call_posts(&s.sim).iter().filter(|p| p.to.as_deref().is_some_and(|t| t.starts_with(prefix))).count();
    let after_pause = posts(&s, "+1555301");
    let other = posts(&s, "+1555309");
    wait_for("the other campaign to be dialed on", Duration::from_secs(60), || (posts(&s, "+1555309") >= other + 3).then_some(()));
    assert_eq!(posts(&s, "+1555301"), after_pause, "no call of the paused campaign placed");
    let queued: i64 =
        s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts WHERE batch_id = $1 AND status = 'queued'", &[&batch])
            .unwrap()
            .get(0);
    assert!(queued > 0, "contacts were left to dial");
    // The contacts page filtered to queued ones says why they are not dialed, in dialer.why_not_dialed's words.
    web.goto(&format!("/campaigns/{batch}?status=queued"));
    let contacts = web.text("#contacts").unwrap_or_default();
    assert!(contacts.contains(&format!("batch {batch} is paused (dialer.resume_batch)")), "{contacts}");
    assert!(!contacts.contains("completed"), "the filter shows queued contacts only");
    web.screenshot("contacts");

    // Resume from the page: dialing goes on.
    web.click(&format!("#batch-{batch} button[data-action=Resume]"));
    wait_for("dialing to resume", Duration::from_secs(60), || (posts(&s, "+1555301") > after_pause).then_some(()));
}

fn proc_figures(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (hwm, (ticks(11) + ticks(12)) as f64 / hz)
}

/// Figures for the report (printed, not asserted): the console's memory and CPU while a page
/// follows a 1,000-contact campaign to the end, and how long a /metrics scrape takes.
#[test]
fn following_a_1000_contact_campaign() {
    let mut s = Scenario::with_passwords("console-1000", Scenario::sim_config(200, 600), &["dialer.poll_interval = '200ms'"]);
    let batch = s.batch("A thousand", 6000, 50, 3);
    s.add_numbers(batch, &numbers("+1555400", 1000));
    admin_role(&mut s, "ops_admin", "pw-admin");
    let console = Console::start(&s);
    let web = Browser::start(&console.url);
    web.sign_in("ops_admin", "pw-admin");
    web.goto(&format!("/campaigns/{batch}"));
    let (_, cpu0) = proc_figures(console.pid());
    let started = Instant::now();
    s.wake();
    wait_for("the page to show 1000 completed", Duration::from_secs(180), || {
        (web.text(&format!("[data-live=\"b{batch}.completed\"]")).as_deref() == Some("1000")).then_some(())
    });
    let followed = started.elapsed();
    let (hwm_kb, cpu1) = proc_figures(console.pid());
    let mut scrapes = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let (code, body) = metrics(&console.url, "ops_admin", "pw-admin");
        assert_eq!(code, 200, "{body}");
        scrapes.push(t.elapsed());
    }
    scrapes.sort();
    eprintln!(
        "console following 1000 contacts: {:.1} s, peak RSS {:.1} MiB, CPU {:.2} s; /metrics scrape median {:?}, max {:?}",
        followed.as_secs_f64(),
        hwm_kb as f64 / 1024.0,
        cpu1 - cpu0,
        scrapes[scrapes.len() / 2],
        scrapes[scrapes.len() - 1]
    );
}

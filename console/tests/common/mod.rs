//! The console under test, headless Chromium through chromedriver, and a tenant set-up.
#![allow(dead_code)]

use fantoccini::{Client, ClientBuilder, Locator};
use pg_dialer_integration::{free_port, wait_for, Scenario};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const T: Duration = Duration::from_secs(30);

/// pg_dialer_console on a free loopback port, pointed at the scenario's cluster.
pub struct Console {
    pub child: Child,
    pub url: String,
    /// Where its stderr goes, when started with `start_with`.
    log: Option<std::path::PathBuf>,
}

impl Console {
    pub fn start(s: &Scenario) -> Console {
        Console::spawn(s, &[], None)
    }

    /// With extra flags; its stderr (the console's log) is kept for `log()`.
    pub fn start_with(s: &Scenario, flags: &[&str]) -> Console {
        let log = std::env::temp_dir().join(format!("pg_dialer_console-{}-{}.log", std::process::id(), free_port()));
        Console::spawn(s, flags, Some(log))
    }

    fn spawn(s: &Scenario, flags: &[&str], log: Option<std::path::PathBuf>) -> Console {
        let port = free_port();
        let stderr = match &log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create the console's log file")),
            None => Stdio::inherit(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_pg_dialer_console"))
            .args(["--database-url", &format!("postgresql://127.0.0.1:{}/postgres", s.cluster.port)])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start pg_dialer_console");
        wait_for("the console to listen", T, || TcpStream::connect(("127.0.0.1", port)).ok());
        Console { child, url: format!("http://127.0.0.1:{port}"), log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the console has logged so far (`start_with` only).
    pub fn log(&self) -> String {
        self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(p) = &self.log {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A chromedriver of our own, and one headless Chromium session through it. The calls block (the
/// harness's Postgres client is blocking too), each on the session's own runtime.
pub struct Browser {
    pub rt: tokio::runtime::Runtime,
    pub c: Option<Client>,
    driver: Child,
    profile: std::path::PathBuf,
    pub base: String,
}

impl Browser {
    pub fn start(base: &str) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (apt-get install chromium chromium-driver)");
        wait_for("chromedriver to listen", T, || TcpStream::connect(("127.0.0.1", port)).ok());
        let profile = std::env::temp_dir().join(format!("pg_dialer_chromium-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1400,1000", format!("--user-data-dir={}", profile.display())]}),
        );
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let c = rt
            .block_on(ClientBuilder::native().capabilities(caps).connect(&format!("http://127.0.0.1:{port}")))
            .expect("a Chromium session");
        Browser { rt, c: Some(c), driver, profile, base: base.to_string() }
    }

    fn c(&self) -> &Client {
        self.c.as_ref().expect("session open")
    }

    pub fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(self.c().goto(&url)).expect("navigate");
    }

    pub fn path(&self) -> String {
        self.rt.block_on(self.c().current_url()).map(|u| u.path().to_string()).unwrap_or_default()
    }

    pub fn source(&self) -> String {
        self.rt.block_on(self.c().source()).unwrap_or_default()
    }

    pub fn text(&self, css: &str) -> Option<String> {
        self.rt.block_on(async { self.c().find(Locator::Css(css)).await.ok()?.text().await.ok() })
    }

    pub fn fill(&self, css: &str, value: &str) {
        self.rt
            .block_on(async {
                let e = self.c().find(Locator::Css(css)).await?;
                e.clear().await?;
                e.send_keys(value).await
            })
            .expect("fill a field");
    }

    pub fn click(&self, css: &str) {
        self.rt.block_on(async { self.c().find(Locator::Css(css)).await?.click().await }).expect("click");
    }

    pub fn js(&self, script: &str) -> serde_json::Value {
        self.rt.block_on(self.c().execute(script, vec![])).expect("run a script")
    }

    /// (name, value, HttpOnly, SameSite) of the browser's cookies for the console.
    pub fn cookies(&self) -> Vec<(String, String, Option<bool>, String)> {
        self.rt
            .block_on(self.c().get_all_cookies())
            .unwrap_or_default()
            .iter()
            .map(|c| (c.name().to_string(), c.value().to_string(), c.http_only(), format!("{:?}", c.same_site())))
            .collect()
    }

    pub fn sign_in(&self, role: &str, password: &str) {
        self.goto("/login");
        self.fill("#role", role);
        self.fill("#password", password);
        self.click("#sign-in");
        wait_for("the sign-in answer", T, || {
            let src = self.source();
            (src.contains("id=\"login-error\"") || src.contains("id=\"role\">")).then_some(())
        });
    }

    pub fn sign_out(&self) {
        self.click("header form button");
        wait_for("the sign-in page", T, || (self.path() == "/login").then_some(()));
    }

    /// Saves a PNG into docs/screenshots/ when PG_DIALER_SCREENSHOTS=1.
    pub fn screenshot(&self, name: &str) {
        if std::env::var("PG_DIALER_SCREENSHOTS").as_deref() != Ok("1") {
            return;
        }
        let png = self.rt.block_on(self.c().screenshot()).expect("a screenshot");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&dir).expect("docs/screenshots");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.c.take() {
            let _ = self.rt.block_on(c.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A login role that is a dialer_user member of `agency`.
pub fn tenant_role(s: &mut Scenario, role: &str, password: &str, agency: i64) {
    s.db.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'; GRANT dialer_user TO {role};")).unwrap();
    s.db.execute("INSERT INTO dialer.agency_members VALUES ($1, $2)", &[&agency, &role]).unwrap();
}

pub fn admin_role(s: &mut Scenario, role: &str, password: &str) {
    s.db.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'; GRANT dialer_admin TO {role};")).unwrap();
}

/// A second agency with its own key and agent, against the same simulator.
pub fn second_agency(s: &mut Scenario, name: &str) -> (i64, i64) {
    let a: i64 = s.db.query_one("SELECT dialer.create_agency($1)", &[&name]).unwrap().get(0);
    let base = s.sim.base_url();
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'ultravox', $2, $3)", &[&a, &pg_dialer_integration::API_KEY, &base]).unwrap();
    let m: i64 = s
        .db
        .query_one("SELECT dialer.create_agent_mapping($1, 'ultravox', $2, 'Bea', '+14155550111')", &[&a, &pg_dialer_integration::AGENT_ID])
        .unwrap()
        .get(0);
    (a, m)
}

pub fn metrics(url: &str, user: &str, password: &str) -> (u16, String) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    match ureq::get(&format!("{url}/metrics")).set("Authorization", &format!("Basic {auth}")).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET /metrics: {e}"),
    }
}

/// An answer as plain HTTP saw it (no redirect followed).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// The Set-Cookie line for `cookie`, if the answer sets it.
    pub fn set_cookie(&self, cookie: &str) -> Option<&str> {
        self.all("set-cookie").into_iter().find(|c| c.starts_with(&format!("{cookie}=")))
    }
}

/// A client of the console without a browser: its own cookies, no redirects followed, an
/// optional X-Test-Client header (the address when the console runs with
/// --client-address-header X-Test-Client).
pub struct Http {
    agent: ureq::Agent,
    pub base: String,
    cookies: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    pub client: Option<String>,
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http {
            agent: ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(60)).build(),
            base: base.to_string(),
            cookies: Default::default(),
            client: None,
        }
    }

    pub fn from(base: &str, client: &str) -> Http {
        Http { client: Some(client.to_string()), ..Http::new(base) }
    }

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        let mut r = self.agent.request(method, &format!("{}{path}", self.base));
        let jar = self.cookies.lock().unwrap_or_else(|p| p.into_inner());
        if !jar.is_empty() {
            r = r.set("Cookie", &jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "));
        }
        if let Some(c) = &self.client {
            r = r.set("X-Test-Client", c);
        }
        r
    }

    fn answer(&self, res: Result<ureq::Response, ureq::Error>, read_body: bool) -> Answer {
        let r = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("HTTP request to the console: {e}"),
        };
        let mut headers = Vec::new();
        for name in r.headers_names() {
            for v in r.all(&name) {
                headers.push((name.clone(), v.to_string()));
            }
        }
        let status = r.status();
        let body = if read_body { r.into_string().unwrap_or_default() } else { String::new() };
        let a = Answer { status, headers, body };
        let mut jar = self.cookies.lock().unwrap_or_else(|p| p.into_inner());
        for c in a.all("set-cookie") {
            let pair = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                if v.is_empty() || c.contains("Max-Age=0") || c.contains("1970") {
                    jar.remove(k);
                } else {
                    jar.insert(k.to_string(), v.to_string());
                }
            }
        }
        a
    }

    pub fn get(&self, path: &str) -> Answer {
        self.answer(self.req("GET", path).call(), true)
    }

    /// Headers only (for a stream that does not end, /events).
    pub fn head_of(&self, path: &str) -> Answer {
        self.answer(self.req("GET", path).call(), false)
    }

    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.answer(self.req("POST", path).send_form(form), true)
    }

    pub fn metrics(&self, user: &str, password: &str) -> Answer {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.answer(self.req("GET", "/metrics").set("Authorization", &format!("Basic {auth}")).call(), true)
    }

    /// The sign-in form, filled and posted: 303 to / when signed in.
    pub fn sign_in(&self, role: &str, password: &str) -> Answer {
        let form = self.get("/login");
        let csrf = form.body.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_string();
        self.post("/login", &[("csrf", &csrf), ("role", role), ("password", password)])
    }

    /// Whether this client's session still opens a page (200), rather than being sent to /login.
    pub fn signed_in(&self) -> bool {
        let a = self.get("/queue");
        a.status == 200 && a.body.contains("id=\"role\"")
    }
}

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
}

impl Console {
    pub fn start(s: &Scenario) -> Console {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_pg_dialer_console"))
            .args(["--database-url", &format!("postgresql://127.0.0.1:{}/postgres", s.cluster.port)])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .spawn()
            .expect("start pg_dialer_console");
        wait_for("the console to listen", T, || TcpStream::connect(("127.0.0.1", port)).ok());
        Console { child, url: format!("http://127.0.0.1:{port}") }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'ultravox', $2, $3)", &[&a, &pg_dialer_integration::API_KEY, &base])
        .unwrap();
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

//! The web console (pg_dialer_console, built beside this binary) started next to the campaign,
//! with a login role made for the demo.

use postgres::Client;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ROLE: &str = "demo_operator";

pub struct WebConsole {
    child: Child,
    pub url: String,
    pub password: String,
}

impl Drop for WebConsole {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn random_password() -> Result<String, String> {
    let mut b = [0u8; 9];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).map_err(|e| format!("no randomness: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// 8080 when it is free, else any free loopback port.
fn port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:8080")
        .or_else(|_| TcpListener::bind("127.0.0.1:0"))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

pub fn start(db: &mut Client, db_port: u16) -> Result<WebConsole, String> {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("pg_dialer_console")))
        .filter(|p| p.exists())
        .ok_or("pg_dialer_console is not built beside the demo (make demo builds it)")?;
    let password = random_password()?;
    // The password is a literal in CREATE ROLE (no parameters there); it is hex, so quoting is safe.
    db.batch_execute(&format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'; GRANT dialer_admin TO {ROLE};"))
        .map_err(|e| format!("could not create the console's role: {}", crate::pg_err(&e)))?;
    let port = port()?;
    let child = Command::new(exe)
        .args(["--database-url", &format!("postgresql://127.0.0.1:{db_port}/postgres")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not start pg_dialer_console: {e}"))?;
    let web = WebConsole { child, url: format!("http://127.0.0.1:{port}/"), password };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("pg_dialer_console did not start listening".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(web)
}

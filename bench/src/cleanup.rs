//! Everything the bench starts (clusters, simulators, Redis, Node) is registered here, so that
//! Ctrl-C or SIGTERM stops it and removes its files before the bench exits. Normal paths clean
//! up through `Drop` and unregister.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

pub enum Action {
    /// Kill this process group (SIGTERM, then SIGKILL).
    KillGroup(i32),
    /// `pg_ctl stop -m immediate` on this data directory (through the given program), then remove `dir`.
    StopCluster {
        pg_ctl: Vec<String>,
        data: PathBuf,
        dir: PathBuf,
    },
    RemoveDir(PathBuf),
}

static ACTIONS: Mutex<Vec<(u64, Action)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(1);
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn register(a: Action) -> u64 {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut v) = ACTIONS.lock() {
        v.push((id, a));
    }
    id
}

pub fn unregister(id: u64) {
    if let Ok(mut v) = ACTIONS.lock() {
        v.retain(|(i, _)| *i != id);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub fn run(a: &Action) {
    match a {
        Action::KillGroup(pgid) => kill_group(*pgid),
        Action::StopCluster { pg_ctl, data, dir } => {
            if let Some((prog, args)) = pg_ctl.split_first() {
                let _ = Command::new(prog).args(args).arg("-D").arg(data).args(["stop", "-m", "immediate", "-w", "-t", "20"]).output();
            }
            let _ = std::fs::remove_dir_all(dir);
        }
        Action::RemoveDir(d) => {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub fn kill_group(pgid: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: plain syscalls on a process group we created.
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    for _ in 0..40 {
        // SAFETY: signal 0 only checks existence.
        if unsafe { libc::kill(-pgid, 0) } != 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// On SIGINT/SIGTERM: run every registered action (newest first) and exit 130.
pub fn install_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            return;
        }
        eprintln!("\npg_dialer_bench: interrupted, stopping what it started...");
        let actions: Vec<(u64, Action)> = match ACTIONS.lock() {
            Ok(mut v) => v.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for (_, a) in actions.iter().rev() {
            run(a);
        }
        std::process::exit(130);
    });
}

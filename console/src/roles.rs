//! One connection pool per role, shared by all that role's sessions and its /metrics scrapes,
//! and the periodic re-check that ends them when the role changes in Postgres.
//!
//! A password is checked by Postgres itself (a fresh connection), never against something kept
//! here: at every sign-in, at every scrape that does not present the password verified within the
//! last re-check interval, and every interval for each pool. A pool holds the password it was
//! verified with (it needs it to open connections); when that password stops working, the role
//! may no longer log in, or loses its pg_dialer rights or an agency, the pool is closed and every
//! session on it ends.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The application_name of the pools' connections (the sign-in checks' is `CHECK_APP`).
pub const POOL_APP: &str = "pg_dialer_console";
pub const CHECK_APP: &str = "pg_dialer_console check";
/// A pool nobody has used (no session on it, no scrape) for this long is closed.
const UNUSED_POOL: Duration = Duration::from_secs(10 * 60);
/// One check (connect and query) gives up after this long: the role is then treated as failing it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Checks (sign-ins, scrapes with a new password, re-checks) on their own connection at once, at
/// most: many sign-ins sent together wait their turn rather than use up max_connections.
const CHECKS_AT_ONCE: usize = 8;

#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Connections per role at most.
    pub max_size: usize,
    /// A connection unused this long is closed.
    pub idle: Duration,
    /// How often each role is checked again (and how long a verified /metrics password is trusted).
    pub recheck: Duration,
}

/// What a role may do in pg_dialer, as Postgres says now.
#[derive(Clone, Debug, PartialEq)]
pub struct Access {
    pub operator: bool,
    pub agencies: Vec<i64>,
}

impl Access {
    /// Whether moving from `self` to `now` takes something away (then sessions must end: they
    /// were opened, and their pages drawn, with more).
    fn lost_in(&self, now: &Access) -> bool {
        self.operator != now.operator || self.agencies.iter().any(|a| !now.agencies.contains(a))
    }
}

#[derive(Debug)]
pub enum VerifyError {
    /// Postgres refused the role or password (SQLSTATE class 28: wrong password, NOLOGIN, expired).
    Refused(String),
    /// The role logs in but may not use pg_dialer (why, in Postgres' words where it gave them).
    NoAccess(String),
    /// Postgres could not be asked (down, too many connections, timed out).
    Unavailable(String),
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::Refused(code) => write!(f, "Postgres refused the role or password (SQLSTATE {code})"),
            VerifyError::NoAccess(why) => write!(f, "the role may not use pg_dialer: {why}"),
            VerifyError::Unavailable(why) => write!(f, "the database could not be asked: {why}"),
        }
    }
}

fn classify(e: &tokio_postgres::Error) -> VerifyError {
    match e.as_db_error() {
        Some(d) if d.code().code().starts_with("28") => VerifyError::Refused(d.code().code().to_string()),
        Some(d) if d.code().code().starts_with("42") => VerifyError::NoAccess(crate::db::describe(e)),
        _ => VerifyError::Unavailable(crate::db::describe(e)),
    }
}

/// The role may log in (not NOLOGIN, password not expired), is a member of dialer_user or
/// dialer_admin (or an operator: superuser, extension owner), and which agencies it has.
const ACCESS_SQL: &str = "SELECT r.rolcanlogin AND (r.rolvaliduntil IS NULL OR r.rolvaliduntil > now()),
        pg_has_role(current_user, 'dialer_user', 'MEMBER') OR pg_has_role(current_user, 'dialer_admin', 'MEMBER')
          OR dialer._caller_is_operator(),
        dialer._caller_is_operator(),
        coalesce(dialer.current_agency_ids(), '{}')
   FROM pg_roles r WHERE r.rolname = current_user";

/// Signs in as `role` with `password` on a connection of its own (not a pool's) and reads its access.
async fn verify(pg: &tokio_postgres::Config, role: &str, password: &str) -> Result<Access, VerifyError> {
    let mut cfg = pg.clone();
    cfg.user(role).password(password).application_name(CHECK_APP).connect_timeout(Duration::from_secs(5));
    let check = async {
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| classify(&e))?;
        let task = tokio::spawn(conn);
        let row = client.query_opt(ACCESS_SQL, &[]).await.map_err(|e| classify(&e));
        // Closed before answering, so the check's connection is gone when the caller counts.
        drop(client);
        let _ = task.await;
        let Some(row) = row? else {
            return Err(VerifyError::NoAccess("the role is not in pg_roles".into()));
        };
        let get = || -> Result<(bool, bool, bool, Vec<i64>), tokio_postgres::Error> {
            Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?))
        };
        let (can_login, member, operator, mut agencies) = get().map_err(|e| VerifyError::Unavailable(crate::db::describe(&e)))?;
        if !can_login {
            return Err(VerifyError::Refused("28000".into()));
        }
        if !member {
            return Err(VerifyError::NoAccess("not a member of dialer_user or dialer_admin".into()));
        }
        agencies.sort_unstable();
        Ok(Access { operator, agencies })
    };
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(r) => r,
        Err(_) => Err(VerifyError::Unavailable(format!("no answer within {} s", CHECK_TIMEOUT.as_secs()))),
    }
}

struct PoolState {
    verified_at: Instant,
    access: Access,
    last_used: Instant,
}

pub struct RolePool {
    pub role: String,
    pub pool: Pool,
    /// Kept to check the role again (the pool's own configuration holds it too).
    password: String,
    digest: [u8; 32],
    state: Mutex<PoolState>,
    alive: AtomicBool,
}

impl RolePool {
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    pub fn operator(&self) -> bool {
        self.state().access.operator
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn touch(&self) {
        self.state().last_used = Instant::now();
    }

    fn close(&self) {
        self.alive.store(false, Ordering::Relaxed);
        self.pool.close();
    }
}

pub struct Roles {
    pg: tokio_postgres::Config,
    pub settings: PoolSettings,
    /// Per-process salt of the password digests (never a plain hash of a password in memory).
    salt: [u8; 32],
    map: Mutex<HashMap<String, Arc<RolePool>>>,
    checks: tokio::sync::Semaphore,
}

impl Roles {
    pub fn new(pg: tokio_postgres::Config, settings: PoolSettings) -> Roles {
        let mut salt = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
        Roles { pg, settings, salt, map: Mutex::new(HashMap::new()), checks: tokio::sync::Semaphore::new(CHECKS_AT_ONCE) }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<RolePool>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn digest(&self, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// `verify`, at most CHECKS_AT_ONCE at a time.
    pub async fn verify(&self, role: &str, password: &str) -> Result<Access, VerifyError> {
        let wait = tokio::time::timeout(CHECK_TIMEOUT, self.checks.acquire()).await;
        let _permit = match wait {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(VerifyError::Unavailable("the console is shutting down".into())),
            Err(_) => return Err(VerifyError::Unavailable("too many sign-in checks under way; try again".into())),
        };
        verify(&self.pg, role, password).await
    }

    /// The role's pool if `password` is the one it was verified with, within the re-check interval
    /// (a /metrics scrape then needs no new connection). Anything else must be verified afresh.
    pub fn recently_verified(&self, role: &str, password: &str) -> Option<Arc<RolePool>> {
        let rp = self.map().get(role).cloned()?;
        let same: bool = rp.digest.ct_eq(&self.digest(password)).into();
        let fresh = rp.state().verified_at.elapsed() < self.settings.recheck;
        (rp.is_alive() && same && fresh).then(|| {
            rp.touch();
            rp
        })
    }

    /// The pool for a role whose `password` Postgres has just accepted, with `access`: the
    /// existing one if it was opened with the same password and nothing was taken away since,
    /// else a new one (and the old one's sessions end).
    pub fn install(&self, role: &str, password: &str, access: Access) -> Result<Arc<RolePool>, String> {
        let digest = self.digest(password);
        let mut map = self.map();
        if let Some(old) = map.get(role) {
            if old.is_alive() && bool::from(old.digest.ct_eq(&digest)) {
                let mut st = old.state();
                if !st.access.lost_in(&access) {
                    let now = Instant::now();
                    st.verified_at = now;
                    st.last_used = now;
                    st.access = access;
                    drop(st);
                    return Ok(old.clone());
                }
            }
        }
        let mut cfg = self.pg.clone();
        cfg.user(role).password(password).application_name(POOL_APP).connect_timeout(Duration::from_secs(5));
        let mgr = Manager::from_config(cfg, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(mgr)
            .max_size(self.settings.max_size)
            .runtime(Runtime::Tokio1)
            // Sessions beyond the cap wait for a connection, not for ever.
            .wait_timeout(Some(Duration::from_secs(15)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| format!("cannot set up a connection pool: {e}"))?;
        let now = Instant::now();
        let rp = Arc::new(RolePool {
            role: role.to_string(),
            pool,
            password: password.to_string(),
            digest,
            state: Mutex::new(PoolState { verified_at: now, access, last_used: now }),
            alive: AtomicBool::new(true),
        });
        if let Some(old) = map.insert(role.to_string(), rp.clone()) {
            if old.is_alive() {
                old.close();
                eprintln!("pg_dialer_console: role {role:?}'s earlier sessions ended: it signed in with another password or fewer rights");
            }
        }
        Ok(rp)
    }

    /// Closes the role's pool (if it is still `rp`): its sessions end at their next request.
    fn end(&self, rp: &Arc<RolePool>, why: &str) {
        let mut map = self.map();
        if map.get(&rp.role).is_some_and(|cur| Arc::ptr_eq(cur, rp)) {
            map.remove(&rp.role);
        }
        drop(map);
        if rp.is_alive() {
            rp.close();
            if !why.is_empty() {
                eprintln!("pg_dialer_console: role {:?} signed out everywhere: {why}", rp.role);
            }
        }
    }

    /// Checks every role with a pool again, as described at the top; ends those that fail.
    pub async fn recheck_all(&self) {
        let pools: Vec<Arc<RolePool>> = self.map().values().cloned().collect();
        let mut checks = Vec::new();
        for rp in pools {
            // Only the table holds it (no session, no scrape under way) and it has not been used
            // for a while: closed rather than checked.
            if Arc::strong_count(&rp) <= 2 && rp.state().last_used.elapsed() > UNUSED_POOL {
                self.end(&rp, "");
                continue;
            }
            checks.push(rp);
        }
        futures_util::stream::iter(checks)
            .for_each_concurrent(8, |rp| async move {
                // Not behind the sign-ins' semaphore: a flood of sign-ins must not delay (and so
                // fail, closed) the re-checks of other roles; these run 8 at a time of their own.
                match verify(&self.pg, &rp.role, &rp.password).await {
                    Ok(now) => {
                        let mut st = rp.state();
                        if st.access.lost_in(&now) {
                            drop(st);
                            self.end(&rp, "its pg_dialer rights or agencies changed");
                        } else {
                            st.verified_at = Instant::now();
                            st.access = now;
                        }
                    }
                    // Fails closed: a check that cannot be made ends the sessions too (they sign
                    // in again), so no session outlives a revocation by more than the interval.
                    Err(e) => self.end(&rp, &format!("re-check failed: {e}")),
                }
            })
            .await;
    }

    /// Closes connections unused for the idle time-out.
    pub fn reap_idle(&self) {
        let idle = self.settings.idle;
        let pools: Vec<Arc<RolePool>> = self.map().values().cloned().collect();
        for rp in pools {
            rp.pool.retain(|_, m| m.last_used() < idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losing_an_agency_or_operator_is_a_loss_gaining_one_is_not() {
        let a = Access { operator: false, agencies: vec![1, 2] };
        assert!(!a.lost_in(&Access { operator: false, agencies: vec![1, 2, 3] }));
        assert!(a.lost_in(&Access { operator: false, agencies: vec![2] }));
        assert!(a.lost_in(&Access { operator: true, agencies: vec![1, 2] }));
    }
}

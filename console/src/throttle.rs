//! Password guessing, slowed and then stopped: failed sign-ins (the form and /metrics' Basic auth
//! share the counters) are counted per client address and per role. From the `delay_after`th
//! failure each attempt waits, twice as long each time; after `lockout_after` failures the address
//! or role is refused (429) for `lockout`. A success clears both counters.
//!
//! An attempt is counted when it starts and given back when it succeeds (or the database could
//! not be asked), so a hundred guesses sent at once are counted as a hundred, not as none.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Limits {
    /// Failures before attempts start to wait.
    pub delay_after: u32,
    /// The first wait; each further failure doubles it, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Failures (within `window`) after which the address or role is refused outright.
    pub lockout_after: u32,
    pub lockout: Duration,
    /// Failures older than this are forgotten.
    pub window: Duration,
    /// Addresses (and, separately, roles) remembered at most: a flood of made-up role names or
    /// addresses cannot grow the table without end.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            delay_after: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            lockout_after: 20,
            lockout: Duration::from_secs(15 * 60),
            window: Duration::from_secs(15 * 60),
            max_entries: 10_000,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry { failures: 0, window_start: now, locked_until: None }
    }

    /// Forgets a lock-out that has run out, and failures older than the window.
    fn refresh(&mut self, now: Instant, window: Duration) {
        match self.locked_until {
            Some(t) if t <= now => *self = Entry::new(now),
            Some(_) => {}
            None if now.duration_since(self.window_start) >= window => *self = Entry::new(now),
            None => {}
        }
    }

    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until.filter(|t| *t > now).map(|t| t - now)
    }

    fn stale(&self, now: Instant, window: Duration) -> bool {
        match self.locked_until {
            Some(t) => t <= now,
            None => now.duration_since(self.window_start) >= window,
        }
    }
}

/// A table of counters with a bound on its size.
struct Table<K> {
    map: HashMap<K, Entry>,
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    fn entry(&mut self, key: &K, now: Instant, limits: &Limits) -> &mut Entry {
        if !self.map.contains_key(key) && self.map.len() >= limits.max_entries {
            self.map.retain(|_, e| !e.stale(now, limits.window));
            if self.map.len() >= limits.max_entries {
                // Still full: the entry with the least evidence goes (unlocked first, then fewest
                // failures), so an attacker filling the table frees its own entries, not a lock-out.
                let victim = self
                    .map
                    .iter()
                    .min_by_key(|(_, e)| (e.locked(now).is_some(), e.failures, std::cmp::Reverse(e.window_start)))
                    .map(|(k, _)| k.clone());
                if let Some(k) = victim {
                    self.map.remove(&k);
                }
            }
        }
        let e = self.map.entry(key.clone()).or_insert_with(|| Entry::new(now));
        e.refresh(now, limits.window);
        e
    }

    fn peek_locked(&mut self, key: &K, now: Instant, window: Duration) -> Option<Duration> {
        let e = self.map.get_mut(key)?;
        e.refresh(now, window);
        e.locked(now)
    }
}

/// Who is counted: the client's address (an IPv6 client by its /64, which one host usually owns
/// whole) and the role it tries.
#[derive(Clone, Debug)]
pub struct Who {
    pub addr: IpAddr,
    pub role: String,
}

impl Who {
    pub fn new(addr: IpAddr, role: &str) -> Who {
        let addr = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        };
        Who { addr, role: role.to_string() }
    }
}

/// Refused, and for how long (the longer of the address's and the role's lock-outs).
#[derive(Debug)]
pub struct Locked {
    pub retry_after: Duration,
}

impl Locked {
    /// Whole seconds, rounded up, for the Retry-After header.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }
}

struct State {
    addrs: Table<IpAddr>,
    roles: Table<String>,
}

pub struct Throttle {
    limits: Limits,
    state: Mutex<State>,
}

/// An attempt under way: counted as a failure unless `succeeded` or `not_counted` is called.
pub struct Attempt {
    throttle: Arc<Throttle>,
    who: Who,
    /// How long to wait before asking Postgres.
    pub delay: Duration,
}

impl Throttle {
    pub fn new(limits: Limits) -> Arc<Throttle> {
        Arc::new(Throttle {
            limits,
            state: Mutex::new(State { addrs: Table { map: HashMap::new() }, roles: Table { map: HashMap::new() } }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lock was held cannot leave the counters half-written in a harmful way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the address or the role is locked out now (without counting anything).
    pub fn locked(&self, who: &Who) -> Option<Locked> {
        let now = Instant::now();
        let mut st = self.state();
        let w = self.limits.window;
        let a = st.addrs.peek_locked(&who.addr, now, w);
        let r = st.roles.peek_locked(&who.role, now, w);
        a.into_iter().chain(r).max().map(|retry_after| Locked { retry_after })
    }

    /// Counts an attempt (refused if the address or role is locked out, or becomes so now).
    pub fn begin(self: &Arc<Self>, who: &Who, what: &str) -> Result<Attempt, Locked> {
        let now = Instant::now();
        let l = &self.limits;
        let mut st = self.state();
        let mut worst = 0u32;
        let mut locked: Option<Duration> = None;
        {
            let a = *st.addrs.entry(&who.addr, now, l);
            let r = *st.roles.entry(&who.role, now, l);
            for e in [a, r] {
                if let Some(d) = e.locked(now) {
                    locked = Some(locked.map_or(d, |x| x.max(d)));
                }
            }
        }
        if let Some(retry_after) = locked {
            return Err(Locked { retry_after });
        }
        // Lock out whichever has used up its failures; this attempt is refused with it.
        let mut newly = Vec::new();
        {
            let a = st.addrs.entry(&who.addr, now, l);
            if a.failures >= l.lockout_after {
                a.locked_until = Some(now + l.lockout);
                newly.push(format!("address {}", who.addr));
            }
        }
        {
            let r = st.roles.entry(&who.role, now, l);
            if r.failures >= l.lockout_after {
                r.locked_until = Some(now + l.lockout);
                newly.push(format!("role {:?}", who.role));
            }
        }
        if !newly.is_empty() {
            drop(st);
            eprintln!(
                "pg_dialer_console: {what} locked out for {} s after {} failed attempts: {} (attempt from {} for role {:?})",
                l.lockout.as_secs(),
                l.lockout_after,
                newly.join(" and "),
                who.addr,
                who.role
            );
            return Err(Locked { retry_after: l.lockout });
        }
        {
            let a = st.addrs.entry(&who.addr, now, l);
            a.failures = a.failures.saturating_add(1);
            worst = worst.max(a.failures);
        }
        {
            let r = st.roles.entry(&who.role, now, l);
            r.failures = r.failures.saturating_add(1);
            worst = worst.max(r.failures);
        }
        Ok(Attempt { throttle: self.clone(), who: who.clone(), delay: self.delay_for(worst) })
    }

    /// The wait before the `n`th attempt in a row: none up to `delay_after`, then doubling.
    fn delay_for(&self, n: u32) -> Duration {
        let l = &self.limits;
        if n <= l.delay_after {
            return Duration::ZERO;
        }
        let doublings = (n - l.delay_after - 1).min(30);
        l.base_delay.saturating_mul(1u32 << doublings).min(l.max_delay)
    }

    /// Counters held now (addresses, roles): for tests of the bound.
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let st = self.state();
        (st.addrs.map.len(), st.roles.map.len())
    }
}

impl Attempt {
    /// The password was right: both counters start again.
    pub fn succeeded(self) {
        let mut st = self.throttle.state();
        st.addrs.map.remove(&self.who.addr);
        st.roles.map.remove(&self.who.role);
    }

    /// Postgres could not be asked (down, too many connections): not a wrong guess.
    pub fn not_counted(self) {
        let mut st = self.throttle.state();
        if let Some(e) = st.addrs.map.get_mut(&self.who.addr) {
            e.failures = e.failures.saturating_sub(1);
        }
        if let Some(e) = st.roles.map.get_mut(&self.who.role) {
            e.failures = e.failures.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            delay_after: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            lockout_after: 5,
            lockout: Duration::from_secs(60),
            window: Duration::from_secs(60),
            max_entries: 4,
        }
    }

    fn who(a: &str, r: &str) -> Who {
        Who::new(a.parse().unwrap(), r)
    }

    #[test]
    fn delays_grow_then_the_role_is_locked_out_and_a_success_resets() {
        let t = Throttle::new(limits());
        let delays: Vec<u128> = (0..5).map(|i| t.begin(&who(&format!("10.0.0.{i}"), "r"), "test").unwrap().delay.as_millis()).collect();
        assert_eq!(delays, [0, 0, 10, 20, 40]);
        // The 6th attempt (from yet another address) is refused: the role is locked.
        let locked = t.begin(&who("10.0.0.9", "r"), "test").err().expect("locked");
        assert_eq!(locked.retry_after_secs(), 60);
        assert!(t.locked(&who("10.0.0.10", "r")).is_some());
        assert!(t.locked(&who("10.0.0.10", "other")).is_none());
        // Another role from a fresh address goes on; a success clears its counters.
        let a = t.begin(&who("10.0.1.1", "other"), "test").unwrap();
        a.succeeded();
        assert_eq!(t.begin(&who("10.0.1.1", "other"), "test").unwrap().delay, Duration::ZERO);
    }

    #[test]
    fn the_address_is_locked_out_whatever_roles_it_tries() {
        let t = Throttle::new(Limits { max_entries: 100, ..limits() });
        for i in 0..5 {
            let _ = t.begin(&who("192.0.2.1", &format!("r{i}")), "test").unwrap();
        }
        assert!(t.begin(&who("192.0.2.1", "fresh"), "test").is_err());
        assert!(t.begin(&who("192.0.2.2", "fresh"), "test").is_ok());
    }

    #[test]
    fn not_counted_gives_the_attempt_back_and_ipv6_counts_by_64() {
        let t = Throttle::new(Limits { max_entries: 100, ..limits() });
        for _ in 0..10 {
            t.begin(&who("10.0.0.1", "r"), "test").unwrap().not_counted();
        }
        assert!(t.locked(&who("10.0.0.1", "r")).is_none());
        for i in 0..5 {
            let _ = t.begin(&who(&format!("2001:db8::{i}"), &format!("r{i}")), "test").unwrap();
        }
        assert!(t.begin(&who("2001:db8::ffff", "x"), "test").is_err(), "one /64, one counter");
    }

    #[test]
    fn the_tables_stay_bounded() {
        let t = Throttle::new(limits());
        for i in 0..1000 {
            let _ = t.begin(&who(&format!("10.1.{}.{}", i / 250, i % 250), &format!("role{i}")), "test");
        }
        let (a, r) = t.sizes();
        assert!(a <= 4 && r <= 4, "{a} {r}");
    }
}

//! The worker's sleep: its latch, the postmaster's death and the HTTP pool's pipe, in one
//! WaitEventSet made once. WaitLatchOrSocket builds and frees an epoll set on every call (an
//! epoll_create, three epoll_ctl and a close), which at 30 calls a second was a tenth of the
//! worker's CPU.

use pgrx::pg_sys;
use std::os::fd::RawFd;
use std::time::Duration;

/// Made again with the HTTP pool (a new pool, a new pipe).
pub struct WaitSet {
    set: *mut pg_sys::WaitEventSet,
}

impl WaitSet {
    /// A set watching the latch, the postmaster and `fd` (readable).
    pub fn new(fd: RawFd) -> Self {
        unsafe {
            // Made for the life of the process, outside any transaction's resources.
            #[cfg(any(feature = "pg15", feature = "pg16"))]
            let set = pg_sys::CreateWaitEventSet(pg_sys::TopMemoryContext, 3);
            #[cfg(not(any(feature = "pg15", feature = "pg16")))]
            let set = pg_sys::CreateWaitEventSet(std::ptr::null_mut(), 3);
            let none = std::ptr::null_mut();
            pg_sys::AddWaitEventToSet(set, pg_sys::WL_LATCH_SET, pg_sys::PGINVALID_SOCKET, pg_sys::MyLatch, none);
            pg_sys::AddWaitEventToSet(set, pg_sys::WL_POSTMASTER_DEATH, pg_sys::PGINVALID_SOCKET, std::ptr::null_mut(), none);
            pg_sys::AddWaitEventToSet(set, pg_sys::WL_SOCKET_READABLE, fd, std::ptr::null_mut(), none);
            WaitSet { set }
        }
    }

    /// Sleeps until the latch is set, `fd` is readable, the postmaster dies or `timeout` passes;
    /// the latch is reset before returning. Returns whether the postmaster died. (Why the latch
    /// was set is in shared memory, wake.rs: the latch itself only ends the sleep.)
    pub fn wait(&mut self, timeout: Duration) -> bool {
        // Rounded up: a wait of 0.6 ms cut to 0 returned at once, and the loop spun on the
        // clock until its deadline (a held call's release, every 33 ms at 30 calls/s).
        let timeout_ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as std::ffi::c_long;
        let mut events: [pg_sys::WaitEvent; 3] = unsafe { std::mem::zeroed() };
        let n =
            unsafe { pg_sys::WaitEventSetWait(self.set, timeout_ms, events.as_mut_ptr(), events.len() as i32, pg_sys::PG_WAIT_EXTENSION) };
        let postmaster_died = events.iter().take(n.max(0) as usize).any(|e| e.events & pg_sys::WL_POSTMASTER_DEATH != 0);
        unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
        postmaster_died
    }
}

impl Drop for WaitSet {
    fn drop(&mut self) {
        unsafe { pg_sys::FreeWaitEventSet(self.set) };
    }
}

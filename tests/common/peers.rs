//! Stopping worker processes for real (SIGSTOP), and a guard that makes sure
//! none outlives its test (Unix only).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use super::alive;

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    let target = libc::pid_t::try_from(pid).context("pid out of range")?;
    ensure!(target > 0, "refusing to signal pid {pid}");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is positive,
    // so this never signals a process group.
    let rc = unsafe { libc::kill(target, sig) };
    ensure!(
        rc == 0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The process state letter (`R`, `S`, `T` stopped, `Z` zombie, ...), or
/// `None` when there is no such process.
pub fn state(pid: u32) -> Option<char> {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": comm may hold spaces and parentheses.
        return stat[stat.rfind(')')? + 1..].trim_start().chars().next();
    }
    let out = std::process::Command::new("ps")
        .args(["-o", "stat=", "-p", &pid.to_string()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().chars().next()
}

/// Waits (a bounded poll of the process state) until `pid` is stopped.
pub fn wait_stopped(pid: u32, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let now = state(pid);
        if now == Some('T') {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "pid {pid} not stopped {limit:?} after SIGSTOP (state {now:?})"
        );
        // Polling the process state is the check; the pause only paces it.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Worker processes a test stops, or that may end up stopped. Dropping the
/// guard (or [`kill_now`](Self::kill_now)) continues and kills each one
/// still alive, so nothing blocked on it stays blocked and no stopped
/// process outlives the test. Their owner (the pool's supervisor) reaps
/// them; one still unreaped 5 s after the kill is reaped here, as a last
/// resort, on drop.
#[derive(Debug, Default)]
pub struct Peers(Vec<u32>);

impl Peers {
    /// Kills `pid` when the guard goes (and registers it with the trial's
    /// watchdog, which kills it if the trial overruns).
    pub fn watch(&mut self, pid: u32) {
        super::reaper().watch(pid);
        if !self.0.contains(&pid) {
            self.0.push(pid);
        }
    }

    /// SIGSTOPs `pid` and waits until it is stopped.
    pub fn stop(&mut self, pid: u32) -> anyhow::Result<()> {
        self.watch(pid);
        signal(pid, libc::SIGSTOP)?;
        wait_stopped(pid, Duration::from_secs(5))
    }

    /// SIGCONT + SIGKILL to every watched process still alive; returns
    /// their pids.
    pub fn kill_now(&mut self) -> Vec<u32> {
        for &pid in &self.0 {
            if alive(pid) {
                let _ = signal(pid, libc::SIGCONT);
                let _ = signal(pid, libc::SIGKILL);
            }
        }
        self.0.clone()
    }

    /// Stops watching: the test saw them gone (a pid may be reused later).
    pub fn forget(&mut self) {
        self.0.clear();
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let pids = self.kill_now();
        if super::wait_gone(&pids, Duration::from_secs(5)).is_ok() {
            return;
        }
        // The owner did not reap them: do it here rather than leave zombies.
        for pid in pids.into_iter().filter(|&p| alive(p)) {
            let Ok(pid) = libc::pid_t::try_from(pid) else {
                continue;
            };
            let mut status = 0;
            // SAFETY: waitpid(2) writes only to `status`, a valid local.
            unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        }
    }
}

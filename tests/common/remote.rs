//! A remote worker for the tests: this test binary re-run with an
//! environment variable that makes its `main` call
//! `procpool::run_remote_worker` instead of running tests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Watched;

/// In a test binary re-run by [`Remote::start`]: when `env` holds
/// `"<addr> <key>"`, serves as a remote worker with `registry` and never
/// returns; otherwise returns at once. Call it first in `main`.
pub fn serve_if_asked(env: &str, registry: impl FnOnce() -> procpool::Registry) {
    if let Ok(spec) = std::env::var(env) {
        let (addr, key) = spec.split_once(' ').expect("addr and key");
        procpool::run_remote_worker(addr, key.as_bytes(), registry());
    }
}

/// A remote worker process, killed and reaped when dropped.
pub struct Remote(Child);

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Remote {
    /// Starts this test binary with `env` set to `"<addr> <key>"`; its
    /// stderr is kept for [`wait_exit`](Self::wait_exit).
    pub fn start(env: &str, addr: impl std::fmt::Display, key: &str) -> anyhow::Result<Remote> {
        Self::start_with(env, addr, key, &[])
    }

    /// [`start`](Self::start) with more environment variables.
    pub fn start_with(
        env: &str,
        addr: impl std::fmt::Display,
        key: &str,
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Remote> {
        let child = Command::new(std::env::current_exe()?)
            .env(env, format!("{addr} {key}"))
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?
            .watched();
        Ok(Remote(child))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits up to `limit` for the process to exit by itself: its exit
    /// code and stderr, or `None` if it still runs.
    pub fn exit_within(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<Option<(Option<i32>, String)>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait()? {
                let err = self
                    .0
                    .stderr
                    .take()
                    .map(std::io::read_to_string)
                    .transpose()?
                    .unwrap_or_default();
                return Ok(Some((status.code(), err)));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            // Polling the child's status is the event; the pause only paces it.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

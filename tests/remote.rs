//! Remote workers joining a pool over TCP with its key: they take tasks,
//! a wrong key is refused on both sides, and a remote worker that dies
//! fails only its own task and is not replaced.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::*;
use procpool::{Error, Pool};

const LIMIT: Duration = Duration::from_secs(60);
const KEY: &str = "a long random key shared out of band";
/// `"<addr> <key>"`: run as a remote worker joining that pool.
const REMOTE_ENV: &str = "PROCPOOL_TEST_REMOTE";

fn main() {
    if let Ok(spec) = std::env::var(REMOTE_ENV) {
        let (addr, key) = spec.split_once(' ').expect("addr and key");
        procpool::run_remote_worker(addr, key.as_bytes(), registry());
    }
    procpool::init(registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        remote_workers_join_and_take_tasks,
        wrong_key_is_refused,
        remote_death_fails_its_task_and_is_not_replaced,
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// A remote worker process, killed and reaped when dropped.
struct Remote(Child);

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Remote {
    fn start(addr: SocketAddr, key: &str) -> anyhow::Result<Remote> {
        let child = Command::new(std::env::current_exe()?)
            .env(REMOTE_ENV, format!("{addr} {key}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?
            .watched();
        Ok(Remote(child))
    }

    /// Waits for the process to exit by itself; its exit code and stderr.
    fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<(Option<i32>, String)> {
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
                return Ok((status.code(), err));
            }
            ensure!(
                Instant::now() < deadline,
                "remote worker still running after {limit:?}"
            );
            // Polling the child's status is the event; the pause only paces it.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn listening_pool(local: usize) -> anyhow::Result<(Pool, SocketAddr)> {
    let pool = Pool::builder()
        .workers(local)
        .chunk_size(1)
        .listen("127.0.0.1:0".parse()?, KEY)
        .build()?
        .watched();
    let addr = pool.listen_addr().context("the pool listens")?;
    Ok((pool, addr))
}

fn remote_workers_join_and_take_tasks() -> anyhow::Result<()> {
    let (pool, addr) = listening_pool(1)?;
    let mut remotes = [Remote::start(addr, KEY)?, Remote::start(addr, KEY)?];
    ensure!(
        pool.wait_for_workers(3, Duration::from_secs(30)),
        "remote workers did not join"
    );
    let pids: HashSet<u32> = pool.map(SLEEP_PID, vec![20u64; 60])?.into_iter().collect();
    for r in &remotes {
        ensure!(
            pids.contains(&r.0.id()),
            "remote worker {} took no task: {pids:?}",
            r.0.id()
        );
    }
    ensure!(pids.len() == 3, "{pids:?}");
    drop(pool);
    // The master is gone: remote workers see the end of their connection and exit cleanly.
    for r in &mut remotes {
        let (code, err) = r.wait_exit(Duration::from_secs(10))?;
        ensure!(code == Some(0), "remote worker exit code {code:?}: {err}");
    }
    Ok(())
}

fn wrong_key_is_refused() -> anyhow::Result<()> {
    let (pool, addr) = listening_pool(1)?;
    let mut intruder = Remote::start(addr, "a guess")?;
    let (code, err) = intruder.wait_exit(Duration::from_secs(20))?;
    ensure!(code == Some(70), "exit code {code:?}");
    ensure!(err.contains("authentication failed"), "stderr: {err}");
    ensure!(pool.stats().workers_alive == 1, "{:?}", pool.stats());
    ensure!(pool.map(SQUARE, 0..10u64)?.len() == 10);
    Ok(())
}

fn remote_death_fails_its_task_and_is_not_replaced() -> anyhow::Result<()> {
    let (pool, addr) = listening_pool(1)?;
    let remote = Remote::start(addr, KEY)?;
    ensure!(
        pool.wait_for_workers(2, Duration::from_secs(30)),
        "remote worker did not join"
    );
    // One long task per worker.
    let mut handles = [
        pool.submit(SLEEP_PID, 60_000)?,
        pool.submit(SLEEP_PID, 60_000)?,
    ];
    let remote_pid = remote.0.id();
    drop(remote); // killed
    // Wait on both: whichever ran on the remote worker fails.
    let deadline = Instant::now() + Duration::from_secs(20);
    let lost = loop {
        let failed =
            handles
                .iter_mut()
                .find_map(|h| match h.wait_timeout(Duration::from_millis(50)) {
                    Some(Err(e)) => Some(e.clone()),
                    _ => None,
                });
        if let Some(e) = failed {
            break e;
        }
        ensure!(
            Instant::now() < deadline,
            "no task failed when the remote worker died"
        );
    };
    ensure!(matches!(lost, Error::RemoteWorkerLost { .. }), "{lost:?}");
    ensure!(!alive(remote_pid));
    ensure!(
        pool.stats().workers_alive == 1,
        "not replaced: {:?}",
        pool.stats()
    );
    pool.terminate();
    Ok(())
}

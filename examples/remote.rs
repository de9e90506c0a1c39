//! Remote workers: a pool that listens on TCP, and workers that join it with
//! the pool's key. Here the master starts two "remote" workers itself, the
//! way ssh or a batch system would start them on other machines.
//!
//! ```text
//! cargo run --example remote                  # master + two joining workers
//! PROCPOOL_KEY=... cargo run --example remote -- worker HOST:PORT   # join by hand
//! ```
//!
//! The key goes through the environment, not the command line, which other
//! users of a machine can read.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use procpool::{Pool, Registry, Task};

/// Works for a few milliseconds; returns the pid of the worker that ran it.
const WHO: Task<u64, u32> = Task::new("who");

fn who(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn registry() -> Registry {
    Registry::new().task(WHO, who)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, addr] = &args[..] {
        if mode == "worker" {
            let key = std::env::var("PROCPOOL_KEY").context("set PROCPOOL_KEY")?;
            procpool::run_remote_worker(addr.as_str(), key.as_bytes(), registry());
        }
    }
    procpool::init(registry());

    // A fresh key per run (32 random bytes, hex); a real deployment may
    // also share a long random key out of band.
    let key = procpool::random_key()?;
    let pool = Pool::builder()
        .workers(1)
        .listen("127.0.0.1:0".parse()?, key.as_bytes())
        .build()?;
    let addr = pool.listen_addr().context("listening")?;
    println!("listening on {addr}; starting two workers that join it");
    let mut joiners = Vec::new();
    for _ in 0..2 {
        joiners.push(
            Command::new(std::env::current_exe()?)
                .args(["worker", &addr.to_string()])
                .env("PROCPOOL_KEY", &key)
                .stdin(Stdio::null())
                .spawn()?,
        );
    }
    anyhow::ensure!(
        pool.wait_for_workers(3, Duration::from_secs(30)),
        "workers did not join"
    );
    let mut per_pid = BTreeMap::new();
    for pid in pool.map(WHO, vec![10u64; 90])? {
        *per_pid.entry(pid).or_insert(0) += 1;
    }
    println!(
        "tasks per worker pid (master {}): {per_pid:?}",
        std::process::id()
    );
    drop(pool); // the joined workers see the end of their connection and exit
    for mut j in joiners {
        let status = j.wait()?;
        anyhow::ensure!(status.success(), "a joined worker ended with {status}");
    }
    println!("all workers done");
    Ok(())
}

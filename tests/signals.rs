//! Ctrl-C, SIGTERM and SIGKILL against the built `ctrlc` example, with real
//! signals.
//!
//! Unix only: these tests send POSIX signals to a process group, which has
//! no Windows equivalent a test can deliver (console control events need a
//! shared console, which Wine does not provide to test processes).
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// The example's grace period.
const GRACE: Duration = Duration::from_secs(3);

struct Running {
    child: Child,
    pgid: u32,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Whatever happened, leave nothing behind.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pgid)])
            .status();
        let _ = self.child.wait();
    }
}

/// Starts the example in its own process group and waits until it has
/// finished its first task (so it is really working).
fn start() -> anyhow::Result<Running> {
    let mut child = Command::new(common::example("ctrlc")?)
        .arg("40")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pgid = child.id();
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let running = Running {
        child,
        pgid,
        lines,
        stderr: Some(stderr),
    };
    let first = running
        .lines
        .recv_timeout(Duration::from_secs(20))
        .context("no task finished within 20 s")?;
    ensure!(
        first.starts_with("done 1/"),
        "unexpected first line {first:?}"
    );
    Ok(running)
}

fn signal(sig: &str, target: String) -> anyhow::Result<()> {
    ensure!(
        Command::new("kill")
            .args([sig, "--", &target])
            .status()?
            .success(),
        "kill {sig} {target}"
    );
    Ok(())
}

/// Waits for the example to exit; returns its exit code and when it exited.
fn wait_exit(r: &mut Running, limit: Duration) -> anyhow::Result<(i32, Instant)> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = r.child.try_wait()? {
            return Ok((status.code().context("killed by a signal")?, Instant::now()));
        }
        if Instant::now() >= deadline {
            bail!("still running after {limit:?}");
        }
        // Polling the child's status is the event here; the pause only paces it.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Processes still in the group (there must be none once the master exited).
fn group_members(pgid: u32) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ps")
        .args(["-eo", "pid=,pgid=,ppid=,stat=,args="])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let mut it = l.split_whitespace().map(|n| n.parse::<u32>().ok());
            it.next().is_some() && it.next().flatten() == Some(pgid)
        })
        .map(str::to_owned)
        .collect())
}

fn check_clean(mut r: Running) -> anyhow::Result<()> {
    let stderr = r
        .stderr
        .take()
        .and_then(|h| h.join().ok())
        .unwrap_or_default();
    ensure!(
        !stderr.contains("panicked"),
        "stderr holds a panic:\n{stderr}"
    );
    // The master reaps its workers before it exits: the group must be empty.
    let left = group_members(r.pgid)?;
    ensure!(
        left.is_empty(),
        "processes left in group {}:\n{}\n{stderr}",
        r.pgid,
        left.join("\n")
    );
    Ok(())
}

fn first_stop(sig: &str, whole_group: bool) -> anyhow::Result<()> {
    let mut r = start()?;
    let target = if whole_group {
        format!("-{}", r.pgid)
    } else {
        r.pgid.to_string()
    };
    let sent = Instant::now();
    signal(sig, target)?;
    let (code, at) = wait_exit(&mut r, GRACE + Duration::from_secs(2))?;
    ensure!(code == 130, "exit code {code}");
    ensure!(
        at - sent <= GRACE + Duration::from_secs(2),
        "took {:?}",
        at - sent
    );
    let _ = &r.lines;
    check_clean(r)
}

#[test]
fn sigint_to_the_group_stops_gracefully() -> anyhow::Result<()> {
    first_stop("-INT", true)
}

#[test]
fn sigterm_to_the_master_alone_stops_gracefully() -> anyhow::Result<()> {
    first_stop("-TERM", false)
}

#[test]
fn second_sigint_kills_at_once() -> anyhow::Result<()> {
    let mut r = start()?;
    let group = format!("-{}", r.pgid);
    signal("-INT", group.clone())?;
    // The second Ctrl-C of an impatient user, 100 ms later.
    std::thread::sleep(Duration::from_millis(100));
    signal("-INT", group)?;
    let second = Instant::now();
    let (code, at) = wait_exit(&mut r, Duration::from_secs(5))?;
    ensure!(code == 130, "exit code {code}");
    ensure!(
        at - second <= Duration::from_secs(1),
        "exited {:?} after the second SIGINT",
        at - second
    );
    check_clean(r)
}

#[test]
fn killing_the_master_takes_its_workers_along() -> anyhow::Result<()> {
    let mut r = start()?;
    let workers: Vec<u32> = group_members(r.pgid)?
        .iter()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .filter(|&pid| pid != r.pgid)
        .collect();
    ensure!(
        workers.len() == 2,
        "expected two workers, found {workers:?}"
    );
    signal("-KILL", r.pgid.to_string())?;
    let _ = r.child.wait()?;
    let killed = Instant::now();
    // Orphaned workers get the parent-death signal (Linux) or read EOF on
    // their connection (everywhere) and exit. Who reaps them then is their
    // new parent's business, so a zombie counts as gone here.
    let deadline = killed + Duration::from_secs(2);
    loop {
        let running: Vec<String> = group_members(r.pgid)?
            .into_iter()
            .filter(|l| {
                l.split_whitespace()
                    .nth(3)
                    .is_some_and(|stat| !stat.starts_with('Z'))
            })
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "workers still running 2 s after the master died:\n{}",
            running.join("\n")
        );
        // Polling `ps` is the check; the pause only paces it.
        std::thread::sleep(Duration::from_millis(20));
    }
}

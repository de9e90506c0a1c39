//! Remote workers joining a pool over TCP with its key: they take tasks,
//! a wrong key is refused on both sides, and a remote worker that dies
//! fails only its own task and is not replaced. The link is encrypted: a
//! relay between worker and master sees no plaintext, a byte it flips
//! ends the link, and a worker of another protocol version is refused.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::remote::Remote;
use common::*;
use procpool::{AsyncResult, Error, Payload, Pool};

const LIMIT: Duration = Duration::from_secs(60);
const KEY: &str = "a long random key shared out of band";
/// `"<addr> <key>"`: run as a remote worker joining that pool.
const REMOTE_ENV: &str = "PROCPOOL_TEST_REMOTE";

fn main() {
    common::remote::serve_if_asked(REMOTE_ENV, registry);
    procpool::init(registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        remote_workers_join_and_take_tasks,
        wrong_key_is_refused,
        short_keys_are_refused_on_both_sides,
        remote_only_pool_runs_on_workers_that_join,
        a_worker_started_before_its_master_joins_when_it_listens,
        a_worker_whose_master_never_listens_gives_up,
        the_advertised_address_is_the_host_name_or_what_was_asked,
        remote_death_fails_its_task_and_is_not_replaced,
        the_wire_carries_no_plaintext_and_remote_queues_work,
        a_flipped_byte_ends_the_link_and_loses_only_its_task,
        a_version_mismatch_is_refused_clearly_on_both_sides,
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// A remote worker joining the pool at `addr` with `key`.
fn start_remote(addr: impl std::fmt::Display, key: &str) -> anyhow::Result<Remote> {
    Remote::start(REMOTE_ENV, addr, key)
}

/// Waits for a remote worker to exit by itself: its exit code and stderr.
fn wait_exit(r: &mut Remote, limit: Duration) -> anyhow::Result<(Option<i32>, String)> {
    r.exit_within(limit)?
        .with_context(|| format!("remote worker still running after {limit:?}"))
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
    let mut remotes = [start_remote(addr, KEY)?, start_remote(addr, KEY)?];
    ensure!(
        pool.wait_for_workers(3, Duration::from_secs(30)),
        "remote workers did not join"
    );
    let pids: HashSet<u32> = pool.map(SLEEP_PID, vec![20u64; 60])?.into_iter().collect();
    for r in &remotes {
        ensure!(
            pids.contains(&r.pid()),
            "remote worker {} took no task: {pids:?}",
            r.pid()
        );
    }
    ensure!(pids.len() == 3, "{pids:?}");
    drop(pool);
    // The master is gone: remote workers see the end of their connection and exit cleanly.
    for r in &mut remotes {
        let (code, err) = wait_exit(r, Duration::from_secs(10))?;
        ensure!(code == Some(0), "remote worker exit code {code:?}: {err}");
    }
    Ok(())
}

fn wrong_key_is_refused() -> anyhow::Result<()> {
    let (pool, addr) = listening_pool(1)?;
    let mut intruder = start_remote(addr, "a wrong guess, long enough")?;
    let (code, err) = wait_exit(&mut intruder, Duration::from_secs(20))?;
    ensure!(code == Some(70), "exit code {code:?}");
    ensure!(err.contains("authentication failed"), "stderr: {err}");
    ensure!(pool.stats().workers_alive == 1, "{:?}", pool.stats());
    ensure!(pool.map(SQUARE, 0..10u64)?.len() == 10);
    Ok(())
}

fn short_keys_are_refused_on_both_sides() -> anyhow::Result<()> {
    let err = Pool::builder()
        .workers(1)
        .listen("127.0.0.1:0".parse()?, "hunter2")
        .build()
        .err()
        .context("a pool with a 7-byte key started")?;
    ensure!(
        matches!(err, Error::KeyTooShort(procpool::KeyTooShort { len: 7 })),
        "{err:?}"
    );
    ensure!(err.to_string().contains("too short"), "{err}");

    let (pool, addr) = listening_pool(1)?;
    let mut short = start_remote(addr, "fifteen bytes!!")?;
    let (code, err) = wait_exit(&mut short, Duration::from_secs(20))?;
    ensure!(code == Some(70), "exit code {code:?}");
    ensure!(err.contains("too short"), "stderr: {err}");
    ensure!(pool.stats().workers_alive == 1, "{:?}", pool.stats());
    Ok(())
}

/// `workers(0)` with `listen`: the pool starts with no worker, knows its
/// tasks from `init`'s registry, and runs everything on workers that join
/// (seen failing before: `workers(0)` was an invalid setting).
fn remote_only_pool_runs_on_workers_that_join() -> anyhow::Result<()> {
    let err = Pool::builder().workers(0).build().err();
    ensure!(
        matches!(
            err,
            Some(Error::InvalidSetting {
                setting: "workers",
                ..
            })
        ),
        "no workers and no listening: {err:?}"
    );
    let (pool, addr) = listening_pool(0)?;
    ensure!(
        pool.tasks().iter().any(|t| t == "sleep_pid"),
        "{:?}",
        pool.tasks()
    );
    ensure!(pool.stats().workers_alive == 0, "{:?}", pool.stats());
    // Work submitted before any worker joins waits for one.
    let mut early = pool.submit(SQUARE, 12)?;
    let remotes = [start_remote(addr, KEY)?, start_remote(addr, KEY)?];
    ensure!(
        pool.wait_for_workers(2, Duration::from_secs(30)),
        "remote workers did not join"
    );
    match early.wait_timeout(Duration::from_secs(30)) {
        Some(Ok(144)) => {}
        other => anyhow::bail!("the task submitted before any worker joined: {other:?}"),
    }
    let pids: HashSet<u32> = pool.map(SLEEP_PID, vec![20u64; 40])?.into_iter().collect();
    let expected: HashSet<u32> = remotes.iter().map(Remote::pid).collect();
    ensure!(
        pids == expected,
        "ran on {pids:?}, remote workers {expected:?}"
    );
    let squares = pool
        .imap(SQUARE, 0..200u64)?
        .collect::<Result<Vec<_>, _>>()?;
    ensure!(squares.len() == 200);
    Ok(())
}

/// A free port on loopback, nobody listening on it (for a moment).
fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A worker started before its master listens retries until it does (seen
/// failing before: it exited at once with "connection refused").
fn a_worker_started_before_its_master_joins_when_it_listens() -> anyhow::Result<()> {
    let addr = free_addr()?;
    let mut early = start_remote(addr, KEY)?;
    // It is trying (and failing) to connect now; it must not have given up.
    ensure!(
        early.exit_within(Duration::from_millis(300))?.is_none(),
        "the worker gave up before its master listened"
    );
    let pool = Pool::builder()
        .workers(0)
        .listen(addr, KEY)
        .build()?
        .watched();
    ensure!(
        pool.wait_for_workers(1, Duration::from_secs(30)),
        "the early worker did not join"
    );
    ensure!(pool.apply(SLEEP_PID, 0)? == early.pid());
    Ok(())
}

/// ... but not for ever: it gives up at its join deadline, saying why.
fn a_worker_whose_master_never_listens_gives_up() -> anyhow::Result<()> {
    let addr = free_addr()?;
    let mut r = Remote::start_with(
        REMOTE_ENV,
        addr,
        KEY,
        &[(procpool::JOIN_TIMEOUT_ENV, "500")],
    )?;
    let (code, err) = wait_exit(&mut r, Duration::from_secs(20))?;
    ensure!(code == Some(70), "exit code {code:?}");
    ensure!(err.contains("cannot join the master"), "stderr: {err}");
    Ok(())
}

/// On all interfaces the pool advertises this machine's name, and a worker
/// joins through it; an interface name stands for its address; a name that
/// does not resolve (a Slurm node name) is refused at `build`.
fn the_advertised_address_is_the_host_name_or_what_was_asked() -> anyhow::Result<()> {
    let pool = Pool::builder()
        .workers(0)
        .listen("0.0.0.0:0".parse()?, KEY)
        .build()?;
    let port = pool.listen_addr().context("listening")?.port();
    let advertised = pool.advertised_addr().context("advertised")?.to_owned();
    let host = procpool_ipc::remote::hostname()?;
    ensure!(advertised == format!("{host}:{port}"), "{advertised}");
    let remote = start_remote(&advertised, KEY)?;
    ensure!(
        pool.wait_for_workers(1, Duration::from_secs(30)),
        "no worker joined at {advertised}"
    );
    ensure!(pool.apply(SLEEP_PID, 0)? == remote.pid());
    drop(pool);

    let err = Pool::builder()
        .workers(0)
        .listen("0.0.0.0:0".parse()?, KEY)
        .advertise("n2.invalid")
        .build()
        .err();
    ensure!(matches!(err, Some(Error::Advertise { .. })), "{err:?}");

    if cfg!(target_os = "linux") {
        let pool = Pool::builder()
            .workers(0)
            .listen("127.0.0.1:0".parse()?, KEY)
            .advertise("lo")
            .build()?;
        let port = pool.listen_addr().context("listening")?.port();
        ensure!(pool.advertised_addr() == Some(format!("127.0.0.1:{port}").as_str()));
    }
    Ok(())
}

fn remote_death_fails_its_task_and_is_not_replaced() -> anyhow::Result<()> {
    let (pool, addr) = listening_pool(1)?;
    let remote = start_remote(addr, KEY)?;
    ensure!(
        pool.wait_for_workers(2, Duration::from_secs(30)),
        "remote worker did not join"
    );
    // One long task per worker.
    let mut handles = [
        pool.submit(SLEEP_PID, 60_000)?,
        pool.submit(SLEEP_PID, 60_000)?,
    ];
    let remote_pid = remote.pid();
    drop(remote); // killed
    // Wait on both: whichever ran on the remote worker fails.
    let deadline = Instant::now() + Duration::from_secs(20);
    one_task_lost(&mut handles, deadline, "the remote worker died")?;
    ensure!(!alive(remote_pid));
    ensure!(
        pool.stats().workers_alive == 1,
        "not replaced: {:?}",
        pool.stats()
    );
    pool.terminate();
    Ok(())
}

/// A TCP relay between one remote worker and the master: records every
/// byte both ways, and flips one byte of the master's next bytes once
/// armed.
struct Relay {
    addr: SocketAddr,
    wire: Arc<Mutex<Vec<u8>>>,
    flip: Arc<AtomicBool>,
}

impl Relay {
    fn start(master: SocketAddr) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let wire = Arc::new(Mutex::new(Vec::new()));
        let flip = Arc::new(AtomicBool::new(false));
        let (w, f) = (Arc::clone(&wire), Arc::clone(&flip));
        std::thread::spawn(move || {
            let Ok((worker, _)) = listener.accept() else {
                return;
            };
            let Ok(master) = TcpStream::connect(master) else {
                return;
            };
            let pipe = |from: &TcpStream, to: &TcpStream, flip: Option<Arc<AtomicBool>>| {
                let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                let wire = Arc::clone(&w);
                from.set_read_timeout(Some(LIMIT)).unwrap();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        wire.lock().unwrap().extend_from_slice(&buf[..n]);
                        if flip
                            .as_ref()
                            .is_some_and(|f| f.swap(false, Ordering::SeqCst))
                        {
                            buf[n - 1] ^= 0x20;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Both);
                    let _ = from.shutdown(Shutdown::Both);
                });
            };
            pipe(&worker, &master, None);
            pipe(&master, &worker, Some(f));
        });
        Ok(Relay { addr, wire, flip })
    }
}

fn the_wire_carries_no_plaintext_and_remote_queues_work() -> anyhow::Result<()> {
    let (pool, addr) = listening_pool(0)?;
    let relay = Relay::start(addr)?;
    let remote = start_remote(relay.addr, KEY)?;
    ensure!(
        pool.wait_for_workers(1, Duration::from_secs(30)),
        "remote worker did not join"
    );
    let secret = b"procpool-distinctive-payload-7f3a9c";
    let input = serde_bytes::ByteBuf::from(secret.repeat(100));
    ensure!(pool.apply(LEN, input)? == 3500);
    // A queue handed to the remote worker works there, through the hub.
    let q = procpool::Queue::<u32>::new();
    ensure!(pool.apply(ANNOUNCE_SLEEP, (q.clone(), 0))? == remote.pid());
    ensure!(q.get_timeout(Duration::from_secs(10))? == remote.pid());
    drop(pool);
    let wire = relay.wire.lock().unwrap().clone();
    ensure!(wire.len() > 3500, "the relay saw {} bytes", wire.len());
    ensure!(
        !wire.windows(secret.len()).any(|w| w == secret),
        "the payload travelled in clear"
    );
    Ok(())
}

fn a_flipped_byte_ends_the_link_and_loses_only_its_task() -> anyhow::Result<()> {
    let (pool, addr) = listening_pool(1)?;
    let relay = Relay::start(addr)?;
    let mut remote = start_remote(relay.addr, KEY)?;
    ensure!(
        pool.wait_for_workers(2, Duration::from_secs(30)),
        "remote worker did not join"
    );
    // One long task per worker; once the remote one has started, the
    // next bytes from the master (a heartbeat at the latest) are altered.
    let q = procpool::Queue::<u32>::new();
    let mut handles = [
        pool.submit(ANNOUNCE_SLEEP, (q.clone(), 60_000))?,
        pool.submit(ANNOUNCE_SLEEP, (q.clone(), 60_000))?,
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    while q.get_timeout(deadline.saturating_duration_since(Instant::now()))? != remote.pid() {}
    relay.flip.store(true, Ordering::SeqCst);
    one_task_lost(&mut handles, deadline, "the link was tampered with")?;
    // The worker saw the altered record and said so.
    let (code, err) = wait_exit(&mut remote, Duration::from_secs(10))?;
    ensure!(code == Some(70), "exit code {code:?}: {err}");
    ensure!(err.contains("failed authentication"), "stderr: {err}");
    ensure!(pool.stats().workers_alive == 1, "{:?}", pool.stats());
    pool.terminate();
    Ok(())
}

fn a_version_mismatch_is_refused_clearly_on_both_sides() -> anyhow::Result<()> {
    let preface = |version: u32| {
        let mut p = b"procpool".to_vec();
        p.extend_from_slice(&version.to_le_bytes());
        p
    };
    // A master of another version: the worker says which, and gives up.
    let fake = TcpListener::bind("127.0.0.1:0")?;
    let mut worker = start_remote(fake.local_addr()?, KEY)?;
    let (mut s, _) = fake.accept()?;
    s.set_read_timeout(Some(LIMIT))?;
    s.write_all(&preface(999))?;
    let (code, err) = wait_exit(&mut worker, Duration::from_secs(20))?;
    ensure!(code == Some(70), "exit code {code:?}: {err}");
    let ours = procpool_ipc::proto::PROTOCOL_VERSION;
    ensure!(
        err.contains(&format!(
            "the master speaks protocol 999, this worker {ours}"
        )),
        "stderr: {err}"
    );
    // A worker of another version: the master sends its preface, reads
    // ours and hangs up, and goes on with its own workers.
    let (pool, addr) = listening_pool(1)?;
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(LIMIT))?;
    s.write_all(&preface(ours + 1))?;
    let mut theirs = Vec::new();
    s.read_to_end(&mut theirs)?;
    ensure!(theirs == preface(ours), "the master sent {theirs:?}");
    ensure!(pool.map(SQUARE, 0..10u64)?.len() == 10);
    ensure!(pool.stats().workers_alive == 1, "{:?}", pool.stats());
    Ok(())
}

/// Waits (until `deadline`) for one of `handles` to fail, and checks that
/// it failed because its remote worker was lost (`what` happened).
fn one_task_lost<O: Payload>(
    handles: &mut [AsyncResult<O>],
    deadline: Instant,
    what: &str,
) -> anyhow::Result<()> {
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
        ensure!(Instant::now() < deadline, "no task failed when {what}");
    };
    ensure!(
        matches!(lost.inner(), Error::RemoteWorkerLost { .. }),
        "{lost:?}"
    );
    Ok(())
}

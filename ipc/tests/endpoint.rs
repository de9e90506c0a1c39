//! End-to-end tests of the platform endpoint through the public API: this
//! test binary re-executes itself as the worker (`--exact <child test>
//! --ignored`, with [`ROLE_ENV`] set), so the real backend (socketpair on
//! Unix, authenticated named pipe on Windows) carries real frames between two
//! processes. Every wait is bounded; nothing sleeps to synchronise.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use procpool_ipc::IpcError;
use procpool_ipc::endpoint::{self, ReadHalf, WriteHalf};
use procpool_ipc::frame::{DEFAULT_MAX_FRAME_LEN, FrameReader, FrameWriter, WriteFrame};

/// Set in a child started by these tests; the child tests do nothing without it.
const ROLE_ENV: &str = "PROCPOOL_IPC_TEST_CHILD";

/// Bound on any single step (spawn, one echo); generous for Wine on 2 cores.
const STEP: Duration = Duration::from_secs(30);

/// How soon a dead peer must read as the end of the stream.
const DEATH_NOTICED: Duration = Duration::from_secs(5);

/// What a reader thread reports: a frame, the end of the stream (`None`), or an error.
type Incoming = Result<Option<Vec<u8>>, IpcError>;

/// Kills and reaps the child when the test ends, however it ends.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test binary itself, running only the ignored test `child_test`.
fn child_command(child_test: &str) -> Command {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        child_test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE_ENV, "1")
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    cmd
}

/// Runs `f` on its own thread and returns its result, failing the test if it
/// takes longer than `limit`.
fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => panic!("{what} did not finish within {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Starts the ignored test `child_test` as a worker.
///
/// This runs on the test's own thread, not under [`bounded`]: on Linux the
/// worker's parent-death signal fires when the *thread* that spawned it
/// exits. `spawn` is bounded by itself (it does not wait on Unix; on Windows
/// it gives up after 30 s or when the child exits).
fn spawn_child(child_test: &str) -> (Reaper, ReadHalf, WriteHalf) {
    let (child, r, w) = endpoint::spawn(child_command(child_test))
        .unwrap_or_else(|e| panic!("spawning {child_test}: {e}"));
    (Reaper(child), r, w)
}

/// Reads frames on a thread of their own (so that this thread's reads are
/// pending while another thread writes) and forwards them.
fn read_frames(r: ReadHalf) -> Receiver<Incoming> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = FrameReader::new(r, DEFAULT_MAX_FRAME_LEN);
        loop {
            let mut buf = Vec::new();
            let item = match reader.read_frame(&mut buf) {
                Ok(true) => Ok(Some(buf)),
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            };
            let last = !matches!(item, Ok(Some(_)));
            if tx.send(item).is_err() || last {
                return;
            }
        }
    });
    rx
}

/// The next item from a reader thread, within `limit`.
fn next(rx: &Receiver<Incoming>, limit: Duration) -> Incoming {
    match rx.recv_timeout(limit) {
        Ok(item) => item,
        Err(RecvTimeoutError::Timeout) => panic!("nothing read within {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("reader thread panicked"),
    }
}

/// Asserts the stream has ended: EOF, or an error meaning the peer is gone.
fn assert_ended(rx: &Receiver<Incoming>, limit: Duration) {
    match next(rx, limit) {
        Ok(None) => {}
        Err(IpcError::Io(e)) if procpool_ipc::frame::is_peer_gone(&e) => {}
        other => panic!("expected the end of the stream, got {other:?}"),
    }
}

/// A body of `len` bytes that differs from frame to frame.
fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn frames_echo_concurrently_and_a_killed_worker_reads_as_eof() {
    let (mut child, r, w) = spawn_child("child_echo");
    let echoes = read_frames(r);
    // Large frames (far beyond any pipe buffer) make both processes write
    // while their own reader thread is blocked in a read of the same
    // connection: a backend that serialises the two directions deadlocks here.
    let sent: Vec<Vec<u8>> = [0, 1, 100, 70_000, 1 << 20, 3 << 20]
        .into_iter()
        .enumerate()
        .map(|(i, len)| body(i as u8, len))
        .collect();
    let to_send = sent.clone();
    let _writer = bounded("sending", STEP, move || {
        let mut writer = FrameWriter::new(w, DEFAULT_MAX_FRAME_LEN);
        for frame in &to_send {
            writer.write_frame(&[frame]).expect("write frame");
            writer.flush().expect("flush");
        }
        writer // the connection stays open until the kill below
    });
    for want in &sent {
        let got = next(&echoes, STEP).expect("echo").expect("echo, not EOF");
        assert!(got == *want, "echo of a {}-byte frame differs", want.len());
    }
    child.0.kill().expect("kill the worker");
    assert_ended(&echoes, DEATH_NOTICED);
}

#[test]
fn frames_written_just_before_a_worker_exits_arrive() {
    let (mut child, r, w) = spawn_child("child_echo");
    let echoes = read_frames(r);
    let mut writer = FrameWriter::new(w, DEFAULT_MAX_FRAME_LEN);
    writer.write_frame(&[b"bye"]).expect("write frame");
    writer.flush().expect("flush");
    assert_eq!(next(&echoes, STEP).expect("echo"), Some(b"bye".to_vec()));
    assert_ended(&echoes, STEP);
    let status = bounded("reaping", STEP, move || child.0.wait().map(|s| s.success()));
    assert!(status.expect("wait"), "worker exit status");
}

#[test]
fn a_worker_that_never_connects_does_not_hang_spawn() {
    // Under `bounded`, so a hang fails within 10 s; the spawning thread ends
    // at once, which on Linux kills the child (parent-death signal): that
    // only hastens the exit this test is about.
    let result = bounded("spawn", Duration::from_secs(10), || {
        endpoint::spawn(child_command("child_never_connects"))
    });
    match result {
        // Windows: the master waits for the connection, so it must notice the exit.
        Err(e) if cfg!(windows) => {
            assert!(
                endpoint::ExitedBeforeConnecting::in_error(&e).is_some(),
                "{e}"
            );
        }
        // Unix: spawn does not wait; the connection then reads as closed.
        Ok((child, r, _w)) if !cfg!(windows) => {
            let _reaper = Reaper(child);
            assert_ended(&read_frames(r), STEP);
        }
        Err(e) => panic!("spawn failed: {e}"),
        Ok(_) => panic!("spawn succeeded without a connection"),
    }
}

/// Where the platform kills a stuck worker with its master. Elsewhere (macOS,
/// the BSDs) a worker only notices its master's death by reading EOF, which a
/// stuck worker never does.
#[cfg(any(windows, target_os = "linux", target_os = "android"))]
#[test]
fn workers_die_with_their_master() {
    use std::io::{BufRead, BufReader};

    // The master (a child of ours) starts a worker that is stuck, ignoring
    // its connection, so only the platform (job object on Windows,
    // parent-death signal on Linux) can end it. Both inherit our stdout
    // pipe: it reads as closed once the master *and* the worker are gone.
    let mut cmd = child_command("child_master");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut master = Reaper(cmd.spawn().expect("start the master"));
    let stdout = master.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        let ready = loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => break false,
                // libtest's own output may share the line.
                Ok(_) if line.trim_end().ends_with(READY) => break true,
                Ok(_) => {}
            }
        };
        let _ = tx.send(ready);
        // Now wait for every write end (master's and worker's) to close.
        let _ = io_sink(lines);
        let _ = tx.send(true);
    });
    assert!(
        rx.recv_timeout(STEP).expect("master ready in time"),
        "master failed to start its worker"
    );
    master.0.kill().expect("kill the master");
    let _ = master.0.wait();
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "the worker outlived its master by 10 s"
    );
}

/// Reads `r` to its end, discarding the bytes.
fn io_sink(mut r: impl Read) -> std::io::Result<u64> {
    std::io::copy(&mut r, &mut std::io::sink())
}

/// What `child_master` prints once its worker is connected.
const READY: &str = "procpool-test-master-ready";

/// Master side of `workers_die_with_their_master`: starts `child_stuck`,
/// says so, and waits for a stdin that never ends (until it is killed).
#[test]
#[ignore = "master side of workers_die_with_their_master, started by it"]
fn child_master() {
    if std::env::var_os(ROLE_ENV).is_none() {
        return;
    }
    let mut cmd = child_command("child_stuck");
    cmd.stdout(Stdio::inherit());
    let (child, _r, _w) = endpoint::spawn(cmd).expect("spawn the worker");
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{READY}")
        .and_then(|()| out.flush())
        .expect("report ready");
    drop(out);
    let _ = io_sink(std::io::stdin().lock());
    drop(child);
}

/// Worker side of `workers_die_with_their_master`: connects, then blocks
/// without looking at its connection, like a worker stuck in a task. It
/// gives up after a minute, so that a failing test leaves no process behind
/// for long.
#[test]
#[ignore = "worker side of the endpoint tests, started by them"]
fn child_stuck() {
    if std::env::var_os(ROLE_ENV).is_none() {
        return;
    }
    let _conn = endpoint::connect_worker()
        .expect("started as a worker")
        .expect("worker endpoint");
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    while let Some(left) = give_up.checked_duration_since(std::time::Instant::now()) {
        thread::park_timeout(left);
    }
}

/// Worker side: echoes every frame until EOF, from a writer on this thread
/// while a reader thread waits for the next frame. After echoing `bye` it
/// exits the process at once, dropping nothing.
#[test]
#[ignore = "worker side of the endpoint tests, started by them"]
fn child_echo() {
    if std::env::var_os(ROLE_ENV).is_none() {
        return;
    }
    let (r, w) = endpoint::connect_worker()
        .expect("started as a worker")
        .expect("worker endpoint");
    let incoming = read_frames(r);
    let mut writer = FrameWriter::new(w, DEFAULT_MAX_FRAME_LEN);
    while let Ok(Ok(Some(frame))) = incoming.recv() {
        writer.write_frame(&[&frame]).expect("echo frame");
        writer.flush().expect("flush echo");
        if frame == b"bye" {
            std::process::exit(0);
        }
    }
}

/// Worker side: exits without taking its endpoint.
#[test]
#[ignore = "worker side of the endpoint tests, started by them"]
fn child_never_connects() {}

/// A program a worker starts inherits the endpoint variable (it is never
/// removed: editing a running process's environment is unsound once it has
/// threads) but is told it is no worker, so it can be a master itself.
#[test]
fn programs_a_worker_starts_are_not_workers() {
    let (_child, r, _w) = spawn_child("child_starts_program");
    let frames = read_frames(r);
    let report = next(&frames, STEP).expect("report frame").expect("a frame");
    assert_eq!(
        String::from_utf8_lossy(&report),
        "variable=true unclaimed=false connect=none"
    );
}

/// Worker side: starts `child_report_endpoint` (which inherits this
/// process's environment) and sends back what it printed.
#[test]
#[ignore = "worker side of the endpoint tests, started by them"]
fn child_starts_program() {
    if std::env::var_os(ROLE_ENV).is_none() {
        return;
    }
    let (_r, w) = endpoint::connect_worker()
        .expect("started as a worker")
        .expect("worker endpoint");
    let out = child_command("child_report_endpoint")
        .stdout(Stdio::piped())
        .output()
        .expect("run the program");
    let text = String::from_utf8_lossy(&out.stdout);
    // libtest may print the test's name on the same line first.
    let line = text
        .lines()
        .find_map(|l| l.find("variable=").map(|at| &l[at..]))
        .unwrap_or("no report");
    let mut writer = FrameWriter::new(w, DEFAULT_MAX_FRAME_LEN);
    writer.write_frame(&[line.as_bytes()]).expect("report");
    writer.flush().expect("flush report");
}

/// Started by a worker: says what it makes of the inherited variable.
#[test]
#[ignore = "started by child_starts_program"]
fn child_report_endpoint() {
    if std::env::var_os(ROLE_ENV).is_none() {
        return;
    }
    let variable = std::env::var_os(endpoint::ENDPOINT_ENV).is_some();
    let unclaimed = endpoint::is_unclaimed_worker();
    let connect = match endpoint::connect_worker() {
        None => "none",
        Some(Ok(_)) => "connected",
        Some(Err(_)) => "error",
    };
    writeln!(
        std::io::stdout(),
        "variable={variable} unclaimed={unclaimed} connect={connect}"
    )
    .expect("print the report");
}

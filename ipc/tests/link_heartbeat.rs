//! A link's writer thread must sleep, not spin, while another thread holds
//! the stream in the middle of a write and a heartbeat is due.
//!
//! It spun: with the sink taken, the heartbeat could not be written, and
//! the writer waited "until the heartbeat is due" (already past) in a
//! loop, retaking the outbox's lock thousands of times a second. The
//! thread holding the sink then could not get the lock back to return it
//! (the spinning thread always relocked first), so the link stopped for
//! good: a remote worker whose master was gone never read its end of
//! file and outlived its pool (the soak's `remote_child_leak`, seen in CI
//! with the writer thread running and the reader waiting on a futex).
//!
//! This binary holds one link, so its writer is the only thread named
//! `procpool-writer`; the trial measures that thread's CPU time while the
//! stream is held (Linux: `/proc/self/task`).
#![cfg(target_os = "linux")]

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use procpool_ipc::link::{Link, Sink};
use procpool_ipc::proto::Message;

/// A sink whose first non-blocking write waits until the test lets it go.
struct Gate {
    entered: Sender<()>,
    release: Option<Receiver<()>>,
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for Gate {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(release) = self.release.take() {
            let _ = self.entered.send(());
            let _ = release.recv_timeout(Duration::from_secs(30));
        }
        Ok(buf.len())
    }
}

/// CPU time, in clock ticks, of this process's threads named `name`.
fn cpu_ticks(name: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // After the name in parentheses: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 1)..]
            .split_whitespace()
            .collect();
        let n = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += n(11) + n(12);
    }
    total
}

#[test]
fn the_writer_sleeps_while_another_thread_holds_the_stream() {
    let (entered_tx, entered) = channel();
    let (release, release_rx) = channel();
    let link = Link::new(
        Gate {
            entered: entered_tx,
            release: Some(release_rx),
        },
        1 << 20,
    )
    .expect("link");
    // Another thread flushes a frame: it takes the stream and stays in
    // the middle of the write until released. (No heartbeat yet: the
    // writer thread would take the stream first now and then, and write
    // that frame itself with a blocking write the gate does not hold.)
    let (done_tx, done) = channel();
    {
        let link = std::sync::Arc::clone(&link);
        std::thread::spawn(move || {
            let _ = done_tx.send(link.send(&Message::Heartbeat));
        });
    }
    entered
        .recv_timeout(Duration::from_secs(10))
        .expect("the flush reached the stream");
    // Due at once, and every millisecond, while the stream is held.
    link.set_heartbeat(Some(Duration::from_millis(1)));
    let before = cpu_ticks("procpool-writer");
    // The window in which a heartbeat is due and the stream is held.
    std::thread::sleep(Duration::from_millis(600));
    let spent = cpu_ticks("procpool-writer") - before;
    release.send(()).expect("release");
    let flushed = done.recv_timeout(Duration::from_secs(10));
    assert!(
        spent < 15,
        "the writer thread used {spent} ticks of CPU in 600 ms while another thread held the stream: it spins"
    );
    assert!(
        matches!(flushed, Ok(Ok(()))),
        "the flushing thread never returned the stream (it could not retake the outbox's lock from the spinning writer): {flushed:?}"
    );
    // And the link still works: a drain completes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    assert!(link.drain(Some(deadline)).expect("drain"), "not drained");
}

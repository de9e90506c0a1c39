//! Queue and pipe handles that travel (issue 14): a handle moved into a
//! child keeps its queue, a handle passed on to a grandchild fails clearly
//! instead of losing items, and a pipe whose peer process ends reads as
//! ended.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a test program reports progress

mod common;

use std::time::Duration;

use anyhow::{bail, ensure};
use common::*;
use procpool::{Error, GetError, Pipe, PipeEnd, Pool, Process, Queue, Task};
use procpool_ipc::queue::hub_holds;

const LIMIT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(10);

/// Takes up to five items, waiting at most 10 s for each; returns them.
const TAKE_FIVE: Task<Queue<u32>, Vec<u32>> = Task::new("take_five");
/// Puts 1, then starts a process that puts 2 on the same queue; returns
/// how that process ended, as text.
const PUT_THEN_SPAWN: Task<Queue<u32>, String> = Task::new("put_then_spawn");
/// Puts 2.
const PUT_TWO: Task<Queue<u32>, ()> = Task::new("put_two");
/// Decodes a queue handle from bytes, then reports what `put`, `len`,
/// `is_empty` and `close` return on it, as text.
const OPS_ON_DECODED: Task<serde_bytes::ByteBuf, Vec<String>> = Task::new("ops_on_decoded");
/// Sends 7, then aborts (`true`) or returns, dropping its end unclosed.
const SEND_THEN_END: Task<(PipeEnd<u32, u32>, bool), ()> = Task::new("send_then_end");

fn registry() -> procpool::Registry {
    common::registry()
        .task(TAKE_FIVE, |q| {
            let mut got = Vec::new();
            while got.len() < 5 {
                match q.get_timeout(WAIT) {
                    Ok(x) => got.push(x),
                    Err(_) => break,
                }
            }
            got
        })
        .task(PUT_THEN_SPAWN, |q| {
            q.put(1).expect("put 1");
            match Process::spawn(PUT_TWO, q.clone()).and_then(Process::join) {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("{e:?}"),
            }
        })
        .task(PUT_TWO, |q| q.put(2).expect("put 2"))
        .task(OPS_ON_DECODED, |bytes| {
            let (q, _): (Queue<u32>, _) =
                procpool_ipc::codec::decode(&bytes).expect("decode the handle");
            vec![
                format!("put: {:?}", q.put(1).err()),
                format!("len: {:?}", q.len()),
                format!("is_empty: {:?}", q.is_empty()),
                format!("close: {:?}", q.close()),
            ]
        })
        .task(SEND_THEN_END, |(end, abort)| {
            end.send(7).expect("send");
            if abort {
                std::process::abort();
            }
        })
}

fn main() {
    procpool::init(registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        moving_the_only_handle_into_a_child_keeps_the_queue,
        handle_two_hops_away_fails_clearly_and_loses_nothing,
        pipe_peer_that_dies_reads_as_ended,
        pipe_peer_that_drops_its_end_reads_as_ended,
        operations_on_a_queue_that_is_gone_say_so,
        a_handle_whose_task_never_ran_does_not_keep_its_queue,
        a_handle_sent_to_a_process_killed_at_once_does_not_keep_its_queue,
        a_pipe_end_sent_to_a_process_killed_at_once_reads_as_ended,
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// Issue 14: `Process::spawn(T, q)` moving the creator's only handle
/// discarded the queue; the child saw nothing.
fn moving_the_only_handle_into_a_child_keeps_the_queue() -> anyhow::Result<()> {
    let q = Queue::new();
    for i in 0..5u32 {
        q.put(i)?;
    }
    let got = Process::spawn(TAKE_FIVE, q)?.watched().join()?;
    ensure!(got == [0, 1, 2, 3, 4], "the child took {got:?}");
    Ok(())
}

/// Issue 14 (CPython's `test_nested_startmethod` pattern): the
/// grandchild's put returned `Ok` and the item was dropped. Now the
/// grandchild cannot use the handle, says why, and the queue holds exactly
/// what was accepted.
fn handle_two_hops_away_fails_clearly_and_loses_nothing() -> anyhow::Result<()> {
    let q = Queue::new();
    let grandchild = Process::spawn(PUT_THEN_SPAWN, q.clone())?
        .watched()
        .join()?;
    ensure!(
        grandchild.contains("cannot reach"),
        "the grandchild's put must fail, naming the situation; it ended with {grandchild}"
    );
    ensure!(q.get_timeout(WAIT)? == 1, "the child's item");
    ensure!(q.is_empty()?, "{} more item(s) in the queue", q.len()?);
    Ok(())
}

/// Issue 14: a pipe whose peer died without `close` kept saying `Empty`.
fn pipe_peer_that_dies_reads_as_ended() -> anyhow::Result<()> {
    let (mine, theirs) = Pipe::duplex::<u32, u32>();
    let p = Process::spawn(SEND_THEN_END, (theirs, true))?.watched();
    ensure!(mine.recv_timeout(WAIT)? == 7);
    match mine.recv_timeout(WAIT) {
        Err(GetError::Closed) => {}
        other => bail!("expected the pipe's end (Closed), got {other:?}"),
    }
    ensure!(matches!(p.join(), Err(Error::WorkerDied { .. })));
    Ok(())
}

/// The same when the peer's task ends and drops its end without `close`.
fn pipe_peer_that_drops_its_end_reads_as_ended() -> anyhow::Result<()> {
    let (mine, theirs) = Pipe::duplex::<u32, u32>();
    let p = Process::spawn(SEND_THEN_END, (theirs, false))?.watched();
    ensure!(mine.recv_timeout(WAIT)? == 7);
    match mine.recv_timeout(WAIT) {
        Err(GetError::Closed) => {}
        other => bail!("expected the pipe's end (Closed), got {other:?}"),
    }
    p.join()?;
    Ok(())
}

/// Issue 14: `len` said 0 and `close` said nothing when the hub had no
/// such queue. A handle's bytes kept past the queue's life (received once,
/// then every handle dropped) arrive in a worker as a handle to nothing:
/// every operation says so.
fn operations_on_a_queue_that_is_gone_say_so() -> anyhow::Result<()> {
    let q = Queue::<u32>::new();
    let mut bytes = Vec::new();
    procpool_ipc::codec::encode_into(&q, &mut bytes)?;
    let (received, _): (Queue<u32>, _) = procpool_ipc::codec::decode(&bytes)?;
    drop((q, received)); // the pin was taken: nothing holds the queue now
    let log = Process::spawn(OPS_ON_DECODED, serde_bytes::ByteBuf::from(bytes))?
        .watched()
        .join()?;
    for (line, op) in log.iter().zip(["put", "len", "is_empty", "close"]) {
        ensure!(
            line.starts_with(op) && line.contains("NoSuchQueue"),
            "{op} on a queue that is gone must say NoSuchQueue: {log:?}"
        );
    }
    Ok(())
}

/// Waits (up to `WAIT`) until the hub no longer holds queue `id`.
fn freed(id: u64, what: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + WAIT;
    while hub_holds(id) {
        ensure!(
            std::time::Instant::now() < deadline,
            "queue {id} still held {WAIT:?} after {what}: a pin nobody will take keeps it"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A task's input held the only handle to a queue, and the task never
/// ran (its pool was terminated while the only worker was busy): once the
/// job ends, the queue goes with it. Before pins had carriers, the pin
/// its serialisation took kept the queue until the master exited (with
/// queue lanes: a descriptor and 1 MiB of shared memory each).
fn a_handle_whose_task_never_ran_does_not_keep_its_queue() -> anyhow::Result<()> {
    let started: Queue<u32> = Queue::new();
    let pool = Pool::builder().workers(1).prefetch(0).build()?.watched();
    let _busy = pool.submit(ANNOUNCE_SLEEP, (started.clone(), 60_000))?;
    started.get_timeout(WAIT)?;
    let q: Queue<u32> = Queue::new();
    let id = q.id();
    let never = pool.submit(TAKE_FIVE, q)?;
    ensure!(hub_holds(id), "freed while its only handle is on its way");
    pool.terminate();
    ensure!(
        matches!(never.wait(), Err(Error::Terminated)),
        "the task should fail as terminated"
    );
    freed(id, "its task was terminated before it ran")
}

/// The same for a `Process` killed as soon as it is spawned: whether or
/// not the child got to read its argument, the queue goes once the
/// process has ended and the last handle is gone.
fn a_handle_sent_to_a_process_killed_at_once_does_not_keep_its_queue() -> anyhow::Result<()> {
    for round in 0..5 {
        let q: Queue<u32> = Queue::new();
        let id = q.id();
        let child = Process::spawn(TAKE_FIVE, q)?.watched();
        child.kill();
        ensure!(
            child.join().is_err(),
            "round {round}: the killed child succeeded"
        );
        freed(id, &format!("round {round}: its process was killed"))?;
    }
    Ok(())
}

/// A pipe's sending end given to a process killed at once: the receiving
/// end reads as ended (after what the child sent, if it got that far)
/// instead of waiting forever for a writer that will never exist.
fn a_pipe_end_sent_to_a_process_killed_at_once_reads_as_ended() -> anyhow::Result<()> {
    for round in 0..5 {
        let (mine, theirs) = Pipe::duplex::<u32, u32>();
        let p = Process::spawn(SEND_THEN_END, (theirs, false))?.watched();
        p.kill();
        let _ = p.join();
        loop {
            match mine.recv_timeout(WAIT) {
                Ok(7) => {}
                Err(GetError::Closed) => break,
                other => bail!("round {round}: expected the pipe's end (Closed), got {other:?}"),
            }
        }
    }
    Ok(())
}

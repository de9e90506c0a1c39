//! `procpool::wait`: waiting on many queues, pipe ends and processes at
//! once (Python's `multiprocessing.connection.wait`), across real
//! processes. The names follow CPython's `TestWait` where they match.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a test program reports progress

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::*;
use procpool::{
    GetError, Pipe, PipeReceiver, PipeSender, Process, Queue, Registry, SimpleQueue, Task,
    Waitable, wait,
};

const LIMIT: Duration = Duration::from_secs(90);
/// Long enough for any process start under load; only hangs reach it.
const PATIENCE: Duration = Duration::from_secs(30);

/// Sends one message on the pipe, then returns (the process exits).
const SEND_THEN_EXIT: Task<PipeSender<String>, ()> = Task::new("send_then_exit");
/// Blocks until an item arrives on the queue.
const HOLD_UNTIL: Task<Queue<()>, ()> = Task::new("hold_until");
/// In a worker: waits on two pipe ends and a queue, first with a short
/// timeout (nothing is ready), says so on the last queue, then waits until
/// one is; what each wait returned, and the message then received,
/// proving nothing was taken.
const WAIT_IN_WORKER: Task<WorkerArgs, (Vec<usize>, Vec<usize>, String)> =
    Task::new("wait_in_worker");
type WorkerArgs = (
    PipeReceiver<String>,
    PipeReceiver<String>,
    Queue<u64>,
    SimpleQueue<()>,
);

fn registry() -> Registry {
    common::registry()
        .task(SEND_THEN_EXIT, |tx| tx.send("hi".into()).expect("send"))
        .task(HOLD_UNTIL, |gate| gate.get().expect("gate"))
        .task(WAIT_IN_WORKER, |(a, b, q, said)| {
            let idle = wait(&[&a, &b, &q], Some(Duration::from_millis(50))).expect("wait");
            said.put(()).expect("said");
            let ready = wait(&[&a, &b, &q], Some(PATIENCE)).expect("wait");
            let msg = b.try_recv().expect("the message is still there");
            (idle, ready, msg)
        })
}

fn main() {
    procpool::init(registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        test_wait_three_pipes_and_two_processes,
        test_wait_timeout_returns_none,
        test_wait_in_a_worker,
        test_wait_sees_the_end_of_a_pipe,
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// Three pipes and two processes: one process sends on the middle pipe
/// and exits, the other blocks; `wait` returns exactly the middle pipe
/// and the exited process, takes nothing, and leaves the rest waiting.
fn test_wait_three_pipes_and_two_processes() -> anyhow::Result<()> {
    let (rx0, _tx0) = Pipe::one_way::<String>();
    let (rx1, tx1) = Pipe::one_way::<String>();
    let (rx2, _tx2) = Pipe::one_way::<String>();
    let gate = Queue::new();
    let sender = Process::spawn(SEND_THEN_EXIT, tx1)?.watched();
    let holder = Process::spawn(HOLD_UNTIL, gate.clone())?.watched();
    // Each kind alone first: the order of the two events is not ours.
    ensure!(wait(&[&rx0, &rx1, &rx2], Some(PATIENCE))? == [1]);
    ensure!(wait(&[&sender, &holder], Some(PATIENCE))? == [0]);
    let all: [&dyn Waitable; 5] = [&rx0, &rx1, &rx2, &sender, &holder];
    let ready = wait(&all, Some(PATIENCE))?;
    ensure!(
        ready == [1, 3],
        "ready: {ready:?} (expected the middle pipe and the sender)"
    );
    ensure!(rx1.recv()? == "hi", "wait took the message");
    ensure!(holder.is_alive());
    gate.put(())?;
    ensure!(wait(&[&rx0, &holder], Some(PATIENCE))? == [1]);
    sender.join()?;
    holder.join()?;
    Ok(())
}

/// CPython's `test_wait_timeout`: nothing ready, the timeout returns an
/// empty list; a zero timeout polls.
fn test_wait_timeout_returns_none() -> anyhow::Result<()> {
    let (rx, _tx) = Pipe::one_way::<u64>();
    let q: Queue<u64> = Queue::new();
    let gate = Queue::new();
    let holder = Process::spawn(HOLD_UNTIL, gate.clone())?.watched();
    let ready = wait(&[&rx, &q, &holder], Some(Duration::from_millis(100)))?;
    ensure!(ready.is_empty(), "ready: {ready:?}");
    ensure!(wait(&[&rx, &q, &holder], Some(Duration::ZERO))?.is_empty());
    q.put(5)?;
    ensure!(wait(&[&rx, &q, &holder], Some(Duration::ZERO))? == [1]);
    ensure!(q.try_get()? == 5, "wait took the item");
    gate.put(())?;
    holder.join()?;
    Ok(())
}

/// `wait` in a worker, over handles whose hub is the master: a timeout
/// with nothing ready, then the pipe the master sends on, with the
/// message still there to receive.
fn test_wait_in_a_worker() -> anyhow::Result<()> {
    let (a_rx, _a_tx) = Pipe::one_way::<String>();
    let (b_rx, b_tx) = Pipe::one_way::<String>();
    let q = Queue::new();
    let said = SimpleQueue::new();
    let waiter = Process::spawn(WAIT_IN_WORKER, (a_rx, b_rx, q.clone(), said.clone()))?.watched();
    said.get()?;
    b_tx.send("to the worker".into())?;
    let (idle, ready, msg) = waiter.join()?;
    ensure!(idle.is_empty(), "the short wait said {idle:?}");
    ensure!(ready == [1] && msg == "to the worker", "{ready:?} {msg:?}");
    ensure!(matches!(q.try_get(), Err(GetError::Empty)));
    Ok(())
}

/// A pipe whose sending side is gone is ready (its `recv` says Closed
/// at once), as a connection at EOF is for CPython's `wait`.
fn test_wait_sees_the_end_of_a_pipe() -> anyhow::Result<()> {
    let (rx, tx) = Pipe::one_way::<u64>();
    let (other, _keep) = Pipe::one_way::<u64>();
    drop(tx);
    ensure!(wait(&[&other, &rx], Some(PATIENCE))? == [1]);
    ensure!(matches!(rx.try_recv(), Err(GetError::Closed)));
    Ok(())
}

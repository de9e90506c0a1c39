//! The procpool side of the `Queue`, `Pipe` and `JoinableQueue` cases: the
//! tasks the spawned processes run, and the master's part of each case.
//!
//! Every case here has the same shape on the Python side
//! (`benches/python/compare.py`): the same processes, the same items, the
//! same sentinels, the same clock start and stop.

use std::time::Instant;

use anyhow::{Context, ensure};
use procpool::{JoinableQueue, Pipe, PipeEnd, PipeSender, Process, Queue, Registry, Task};

use crate::{arg, median};

/// Items are byte buffers. serde encodes a `Vec<u8>` one element at a time;
/// `serde_bytes::ByteBuf` takes its bytes in one copy, as Python's pickle
/// does for `bytes` — the type a user moving raw bytes should reach for.
type Bytes = serde_bytes::ByteBuf;

/// Puts `n` items of `size` bytes; returns `n`.
const Q_PRODUCE: Task<(Queue<Bytes>, u64, usize), u64> = Task::new("bench_queue_produce");
/// Gets `n` items, checking each is `size` bytes; returns how many.
const Q_CONSUME: Task<(Queue<Bytes>, u64, usize), u64> = Task::new("bench_queue_consume");
/// Sends `n` messages of `size` bytes; returns `n`.
const PIPE_SEND: Task<(PipeSender<Bytes>, u64, usize), u64> = Task::new("bench_pipe_send");
/// Sends back every message until the pipe closes; returns how many.
const PIPE_ECHO: Task<PipeEnd<Bytes, Bytes>, u64> = Task::new("bench_pipe_echo");
/// Puts `Some(0..n)`, joins the queue, then puts one `None` per consumer;
/// returns `n`.
const JQ_PRODUCE: Task<(JoinableQueue<Option<u64>>, u64, u64), u64> = Task::new("bench_jq_produce");
/// Gets items and marks each done until `None` (also marked done); returns
/// how many items it got before `None`.
const JQ_CONSUME: Task<JoinableQueue<Option<u64>>, u64> = Task::new("bench_jq_consume");

/// Adds this module's tasks to `r`.
pub(crate) fn register(r: Registry) -> Registry {
    r.try_task(Q_PRODUCE, q_produce)
        .try_task(Q_CONSUME, q_consume)
        .try_task(PIPE_SEND, pipe_send)
        .try_task(PIPE_ECHO, pipe_echo)
        .try_task(JQ_PRODUCE, jq_produce)
        .try_task(JQ_CONSUME, jq_consume)
}

// ---- in the spawned processes ----

fn q_produce((q, n, size): (Queue<Bytes>, u64, usize)) -> anyhow::Result<u64> {
    let item = Bytes::from(vec![0xab_u8; size]);
    for _ in 0..n {
        q.put(item.clone()).context("put")?;
    }
    Ok(n)
}

fn q_consume((q, n, size): (Queue<Bytes>, u64, usize)) -> anyhow::Result<u64> {
    for i in 0..n {
        let item = q.get().context("get")?;
        ensure!(item.len() == size, "item {i} has {} bytes", item.len());
    }
    Ok(n)
}

fn pipe_send((tx, n, size): (PipeSender<Bytes>, u64, usize)) -> anyhow::Result<u64> {
    let msg = Bytes::from(vec![0xab_u8; size]);
    for _ in 0..n {
        tx.send(msg.clone()).context("send")?;
    }
    Ok(n)
}

fn pipe_echo(end: PipeEnd<Bytes, Bytes>) -> anyhow::Result<u64> {
    let mut echoed = 0;
    // Ends when the master closes its end.
    while let Ok(msg) = end.recv() {
        end.send(msg).context("send")?;
        echoed += 1;
    }
    Ok(echoed)
}

fn jq_produce((q, n, consumers): (JoinableQueue<Option<u64>>, u64, u64)) -> anyhow::Result<u64> {
    for i in 0..n {
        q.put(Some(i)).context("put")?;
    }
    q.join().context("join")?;
    for _ in 0..consumers {
        q.put(None).context("put sentinel")?;
    }
    Ok(n)
}

fn jq_consume(q: JoinableQueue<Option<u64>>) -> anyhow::Result<u64> {
    let mut got = 0;
    loop {
        let item = q.get().context("get")?;
        q.task_done().context("task_done")?;
        match item {
            Some(_) => got += 1,
            None => return Ok(got),
        }
    }
}

// ---- the master's side of each case (in the case's child process) ----

/// `"<addr> <key>"`: this binary runs as a remote worker joining that pool.
pub(crate) const REMOTE_ENV: &str = "PROCPOOL_BENCH_REMOTE";

/// Arguments `n size`: the remote queue case. The pool listens on
/// loopback TCP with a key and has no local worker; two remote workers
/// (this binary re-executed) join it, over encrypted links. One puts `n`
/// items of `size` bytes on a queue the master holds, the other gets
/// them, both through the master's hub. Time from both tasks submitted
/// to the consumer's result; items per second.
pub(crate) fn remote_queue(args: &[String]) -> anyhow::Result<f64> {
    let n = arg(args, 0)?;
    let size = usize::try_from(arg(args, 1)?)?;
    let key = "a long random key shared out of band";
    let pool = procpool::Pool::builder()
        .workers(0)
        .listen("127.0.0.1:0".parse()?, key)
        .build()?;
    let addr = pool.listen_addr().context("listening")?;
    let spawn = || {
        std::process::Command::new(std::env::current_exe()?)
            .env(REMOTE_ENV, format!("{addr} {key}"))
            .stdin(std::process::Stdio::null())
            .spawn()
    };
    let mut remotes = [spawn()?, spawn()?];
    let timed = (|| {
        ensure!(
            pool.wait_for_workers(2, std::time::Duration::from_secs(60)),
            "remote workers did not join"
        );
        let q = Queue::<Bytes>::new();
        let t = Instant::now();
        let consumer = pool.submit(Q_CONSUME, (q.clone(), n, size))?;
        let producer = pool.submit(Q_PRODUCE, (q.clone(), n, size))?;
        let got = consumer.wait()?;
        let secs = t.elapsed().as_secs_f64();
        let put = producer.wait()?;
        ensure!(got == n && put == n, "put {put}, got {got} of {n}");
        Ok(n as f64 / secs)
    })();
    // The remote workers exit when the pool closes their links.
    drop(pool);
    for r in &mut remotes {
        let _ = r.wait();
    }
    timed
}

/// Arguments `n size`: a producer process puts `n` items of `size` bytes,
/// a consumer process gets them. Time from both processes started to the
/// consumer's join; items per second.
pub(crate) fn queue(args: &[String]) -> anyhow::Result<f64> {
    let n = arg(args, 0)?;
    let size = usize::try_from(arg(args, 1)?)?;
    let q = Queue::<Bytes>::new();
    let consumer = Process::spawn(Q_CONSUME, (q.clone(), n, size))?;
    let producer = Process::spawn(Q_PRODUCE, (q.clone(), n, size))?;
    let t = Instant::now();
    let got = consumer.join()?;
    let secs = t.elapsed().as_secs_f64();
    let put = producer.join()?;
    ensure!(got == n && put == n, "put {put}, got {got} of {n}");
    Ok(n as f64 / secs)
}

/// Arguments `n size pairs`: `pairs` producer processes put `n / pairs`
/// items of `size` bytes each, `pairs` consumer processes get `n / pairs`
/// each. Time from all processes started to the last consumer's join;
/// items per second.
pub(crate) fn queue_pairs(args: &[String]) -> anyhow::Result<f64> {
    let n = arg(args, 0)?;
    let size = usize::try_from(arg(args, 1)?)?;
    let pairs = arg(args, 2)?;
    ensure!(
        pairs > 0 && n % pairs == 0,
        "{n} items do not split in {pairs}"
    );
    let each = n / pairs;
    let q = Queue::<Bytes>::new();
    let consumers = (0..pairs)
        .map(|_| Process::spawn(Q_CONSUME, (q.clone(), each, size)))
        .collect::<Result<Vec<_>, _>>()?;
    let producers = (0..pairs)
        .map(|_| Process::spawn(Q_PRODUCE, (q.clone(), each, size)))
        .collect::<Result<Vec<_>, _>>()?;
    let t = Instant::now();
    let mut got = 0;
    for c in consumers {
        got += c.join()?;
    }
    let secs = t.elapsed().as_secs_f64();
    let mut put = 0;
    for p in producers {
        put += p.join()?;
    }
    ensure!(got == n && put == n, "put {put}, got {got} of {n}");
    Ok(n as f64 / secs)
}

/// Arguments `n size`: a child process sends `n` messages of `size` bytes
/// through a one-way pipe to the master. Time from the child started to
/// the last message received; messages per second.
pub(crate) fn pipe_one_way(args: &[String]) -> anyhow::Result<f64> {
    let n = arg(args, 0)?;
    let size = usize::try_from(arg(args, 1)?)?;
    let (rx, tx) = Pipe::one_way::<Bytes>();
    let sender = Process::spawn(PIPE_SEND, (tx, n, size))?;
    let t = Instant::now();
    for i in 0..n {
        let msg = rx.recv().with_context(|| format!("recv {i}"))?;
        ensure!(msg.len() == size, "message {i} has {} bytes", msg.len());
    }
    let secs = t.elapsed().as_secs_f64();
    ensure!(sender.join()? == n);
    Ok(n as f64 / secs)
}

/// Arguments `rounds size`: the master sends `size` bytes to a child over
/// a duplex pipe and waits for them to come back, `rounds` times (after 100
/// unmeasured); the median round trip, µs.
pub(crate) fn pipe_round_trip(args: &[String]) -> anyhow::Result<f64> {
    let rounds = arg(args, 0)?;
    let size = usize::try_from(arg(args, 1)?)?;
    let (mine, theirs) = Pipe::duplex::<Bytes, Bytes>();
    let child = Process::spawn(PIPE_ECHO, theirs)?;
    let msg = Bytes::from(vec![0xab_u8; size]);
    let warmup = 100;
    let mut times = Vec::with_capacity(usize::try_from(rounds)?);
    for i in 0..warmup + rounds {
        let t = Instant::now();
        mine.send(msg.clone()).context("send")?;
        let back = mine.recv().with_context(|| format!("recv {i}"))?;
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        ensure!(back.len() == size, "echo {i} has {} bytes", back.len());
    }
    mine.close()?;
    let echoed = child.join()?;
    ensure!(echoed == warmup + rounds, "echoed {echoed}");
    Ok(median(&mut times))
}

/// Arguments `n consumers`: a producer process puts `n` small items and
/// joins the queue while `consumers` processes get them and call
/// `task_done`. Time from all processes started to the producer's join
/// (its `join()` returned, then it put the sentinels); items per second.
pub(crate) fn joinable(args: &[String]) -> anyhow::Result<f64> {
    let n = arg(args, 0)?;
    let consumers = arg(args, 1)?;
    let q = JoinableQueue::<Option<u64>>::new();
    let workers = (0..consumers)
        .map(|_| Process::spawn(JQ_CONSUME, q.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let producer = Process::spawn(JQ_PRODUCE, (q.clone(), n, consumers))?;
    let t = Instant::now();
    let put = producer.join()?;
    let secs = t.elapsed().as_secs_f64();
    let mut got = 0;
    for w in workers {
        got += w.join()?;
    }
    ensure!(
        put == n && got == n,
        "put {put}, consumers got {got} of {n}"
    );
    Ok(n as f64 / secs)
}

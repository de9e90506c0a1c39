//! Queue, JoinableQueue, SimpleQueue, Pipe and Process across real
//! processes: every operation and error, and the promises (no feeder
//! buffer, exactly-once delivery, nothing lost by a process that dies).
#![allow(clippy::print_stdout, clippy::print_stderr)] // a test program reports progress

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::*;
use procpool::{
    Error, GetError, JoinableQueue, Pipe, PipeEnd, Pool, Process, Queue, QueueError, Registry,
    SimpleQueue, Task, TaskError,
};

const LIMIT: Duration = Duration::from_secs(90);

/// Puts `start..start + n` and returns `n`.
const PRODUCE: Task<(Queue<u64>, u64, u64), u64> = Task::new("produce");
/// Puts `n` items of 512 bytes, each starting with its sequence number.
const FLOOD: Task<(Queue<Vec<u8>>, u64), u64> = Task::new("flood");
/// Puts 0, 1, 2, ... until killed.
const FLOOD_FOREVER: Task<Queue<u64>, ()> = Task::new("flood_forever");
/// Signals readiness on the first queue, then takes one item from the second.
const GET_ONE: Task<(SimpleQueue<()>, Queue<u64>), u64> = Task::new("get_one");
/// Takes one item from the queue, reports it on the second, then waits on
/// the third (for ever: nobody puts there) without taking anything more
/// from the first, where it is still subscribed.
const TAKE_ONE_THEN_HOLD: Task<HoldArgs, ()> = Task::new("take_one_then_hold");
/// The queue to take from, where to report what was taken, where to wait.
type HoldArgs = (Queue<u64>, SimpleQueue<u64>, Queue<()>);
/// Takes items with `try_get` until it says Empty; returns them.
const TRY_DRAIN: Task<Queue<u64>, Vec<u64>> = Task::new("try_drain");
/// Puts 7; whether the put said the queue was closed.
const PUT_SEES_CLOSED: Task<Queue<u64>, bool> = Task::new("put_sees_closed");
/// Producer for the exactly-once test: puts `Some(start..start + n)`.
const JQ_PRODUCE: Task<(JoinableQueue<Option<u64>>, u64, u64), u64> = Task::new("jq_produce");
/// Consumer for the exactly-once test: says it started on the second
/// queue, then returns (count, sum of items, sum of squares) until `None`.
type JqConsume = (JoinableQueue<Option<u64>>, Queue<()>);
const JQ_CONSUME: Task<JqConsume, (u64, u64, u64)> = Task::new("jq_consume");
/// Echoes numbers back until the pipe closes; returns how many.
const ECHO: Task<PipeEnd<u64, u64>, u64> = Task::new("echo");
/// Every remote operation and its error, as text.
const REMOTE_OPS: Task<(JoinableQueue<u32>, Queue<u32>), Vec<String>> = Task::new("remote_ops");
/// Reads strings until the queue closes.
const READ_ALL: Task<Queue<String>, Vec<String>> = Task::new("read_all");
/// Sums items taken with `get_guarded` until the queue is closed; panics on 13.
const GUARDED_SUM: Task<JoinableQueue<u64>, u64> = Task::new("guarded_sum");
/// Puts to a queue whose every handle in the hub process was dropped
/// meanwhile; checks there (errors do not cross processes) that the queue
/// lives on, holding both items: `Err` says what was wrong.
const PUT_TO_GONE: Task<GoneArgs, Result<(), String>> = Task::new("put_to_gone");
/// The queue to put to, a readiness signal, and a go signal.
type GoneArgs = (Queue<u64>, SimpleQueue<()>, Queue<()>);
/// Takes items and marks them done, until it takes 13: reports it on the
/// second queue and aborts, without `task_done`.
const ABORT_ON_ITEM_13: Task<(JoinableQueue<u64>, SimpleQueue<u64>), ()> =
    Task::new("abort_on_item_13");
/// Passes the token through the queue a few times (get, put back: a fast
/// getter, so its credit grows), reports the token's value on the second
/// queue, then blocks on the third without getting again.
const PASS_TOKEN_THEN_HOLD: Task<HoldArgs, ()> = Task::new("pass_token_then_hold");
/// Takes one item within this many milliseconds; `None` if none came.
const TAKE_WITHIN: Task<(Queue<u64>, u64), Option<u64>> = Task::new("take_within");
/// Signals readiness, then blocks in `get`; what the get said, as text.
const GET_REPORT: Task<(Queue<u64>, SimpleQueue<()>), String> = Task::new("get_report");
/// Signals readiness, then blocks in `put` (the queue is full); what the
/// put said, as text.
const PUT_REPORT: Task<(JoinableQueue<u64>, SimpleQueue<()>), String> = Task::new("put_report");
/// Shuts the queue down (immediately or not) from a worker, then reports
/// what its own put says.
const SHUT_DOWN_HERE: Task<(Queue<u64>, bool), String> = Task::new("shut_down_here");
/// Waits for the go signal, then takes items and marks them done until the
/// queue is closed and drained; returns how many.
const CONSUME_AFTER_GO: Task<(JoinableQueue<u64>, Queue<()>), u64> = Task::new("consume_after_go");

/// A worker that took one item and dropped its handle gives back what was
/// delivered to it and not taken: the master gets every other item, in
/// order, although the worker lives on.
fn released_handle_gives_back_items() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(1).build()?.watched();
    let q = Queue::new();
    for i in 0..10u64 {
        q.put(i)?;
    }
    let ready = SimpleQueue::new();
    // Taking 0 returns its credit, so the hub delivers 1 to the worker,
    // where nobody takes it once the task has returned.
    let first = pool.apply(GET_ONE, (ready.clone(), q.clone()))?;
    ensure!(first == 0, "the worker took {first}");
    ensure!(q.len()? == 9, "len {} after one of ten was taken", q.len()?);
    let mut rest = Vec::new();
    for _ in 0..9 {
        rest.push(
            q.get_timeout(Duration::from_secs(10))
                .context("an item the worker was handed did not come back")?,
        );
    }
    ensure!(rest == (1..10).collect::<Vec<_>>(), "got {rest:?}");
    Ok(())
}

/// `Closed` means every item was taken for good: not while a getter in
/// another process holds a delivered item it may never take. A holder
/// that is not getting gives the item back when a getter waits (the hub
/// recalls it); one that cannot answer (stopped, here) keeps it from the
/// getters until it dies, and only then is the queue drained.
fn closed_waits_for_items_held_elsewhere() -> anyhow::Result<()> {
    // Items are delivered ahead to other processes only on the hub path
    // (through the lane a process takes only what its getter takes).
    let q = Queue::hub_only();
    for i in 0..4u64 {
        q.put(i)?;
    }
    let (took, gate) = (SimpleQueue::new(), Queue::new());
    let holder =
        Process::spawn(TAKE_ONE_THEN_HOLD, (q.clone(), took.clone(), gate.clone()))?.watched();
    // Its acknowledgement of 0 came before its report: by now the hub has
    // delivered 1 to it in 0's place, and it will not take it.
    ensure!(took.get()? == 0, "the holder took another item first");
    q.close()?;
    ensure!(
        q.get()? == 2,
        "the master should get the items still queued"
    );
    ensure!(
        q.get()? == 3,
        "the master should get the items still queued"
    );
    let held = if cfg!(unix) {
        #[cfg(unix)]
        let mut peers = common::peers::Peers::default();
        #[cfg(unix)]
        peers.stop(holder.pid())?;
        match q.get_timeout(Duration::from_millis(300)) {
            Err(GetError::Empty) => {}
            other => bail!("while a stopped process holds item 1: {other:?} (expected Empty)"),
        }
        holder.kill();
        q.get_timeout(Duration::from_secs(10))
            .context("the killed holder's item did not come back")?
    } else {
        q.get_timeout(Duration::from_secs(10))
            .context("the idle holder's item was not recalled")?
    };
    ensure!(held == 1, "got {held} back");
    match q.get_timeout(Duration::from_secs(10)) {
        Err(GetError::Closed) => Ok(()),
        other => bail!("after every item: {other:?} (expected Closed)"),
    }
}

/// `try_get` never waits, yet takes an item if the queue has one: a
/// process looping on it over a queue of 5 gets all 5, although each is
/// delivered to it only once the previous one was taken.
fn try_get_in_a_child_takes_every_item() -> anyhow::Result<()> {
    let q = Queue::new();
    for i in 0..5u64 {
        q.put(i)?;
    }
    let got = Process::spawn(TRY_DRAIN, q.clone())?.watched().join()?;
    ensure!(got == (0..5).collect::<Vec<_>>(), "the child took {got:?}");
    Ok(())
}

/// A queue closed before a process used it refuses that process's put,
/// instead of taking an item nobody will get (a consumer that saw Closed
/// is gone).
fn put_after_close_from_another_process_is_refused() -> anyhow::Result<()> {
    let q: Queue<u64> = Queue::new();
    q.close()?;
    let refused = Process::spawn(PUT_SEES_CLOSED, q.clone())?
        .watched()
        .join()?;
    ensure!(refused, "the child's put after close was accepted");
    ensure!(q.is_empty()?, "len {} after close", q.len()?);
    Ok(())
}

fn registry() -> Registry {
    common::registry()
        .task(PRODUCE, |(q, start, n)| {
            for i in start..start + n {
                q.put(i).expect("put");
            }
            n
        })
        .task(FLOOD, |(q, n)| {
            for i in 0..n {
                let mut item = vec![0u8; 512];
                item[..8].copy_from_slice(&i.to_le_bytes());
                q.put(item).expect("put");
            }
            n
        })
        .task(FLOOD_FOREVER, |q| {
            for i in 0.. {
                q.put(i).expect("put");
            }
        })
        .task(TAKE_ONE_THEN_HOLD, |(q, took, hold)| {
            took.put(q.get().expect("get")).expect("took");
            hold.get().expect("hold");
        })
        .task(PUT_SEES_CLOSED, |q| {
            matches!(q.put(7), Err(procpool::PutError::Closed(7)))
        })
        .task(PASS_TOKEN_THEN_HOLD, |(token, took, hold)| {
            let mut t = 0;
            for _ in 0..8 {
                t = token.get().expect("get");
                token.put(t + 1).expect("put");
            }
            took.put(t + 1).expect("took");
            hold.get().expect("hold");
        })
        .task(TAKE_WITHIN, |(q, ms)| {
            q.get_timeout(Duration::from_millis(ms)).ok()
        })
        .task(GET_REPORT, |(q, ready)| {
            ready.put(()).expect("ready");
            format!("{:?}", q.get())
        })
        .task(PUT_REPORT, |(q, ready)| {
            ready.put(()).expect("ready");
            format!("{:?}", q.put(7))
        })
        .task(SHUT_DOWN_HERE, |(q, immediate)| {
            q.shutdown(immediate).expect("shutdown");
            format!("{:?}", q.put(1))
        })
        .task(TRY_DRAIN, |q| {
            let mut got = Vec::new();
            while let Ok(x) = q.try_get() {
                got.push(x);
            }
            got
        })
        .task(GET_ONE, |(ready, q)| {
            ready.put(()).expect("ready");
            q.get().expect("get")
        })
        .task(JQ_PRODUCE, |(q, start, n)| {
            for i in start..start + n {
                q.put(Some(i)).expect("put");
            }
            n
        })
        .task(JQ_CONSUME, |(q, started)| {
            started.put(()).expect("say it started");
            let (mut count, mut sum, mut squares) = (0u64, 0u64, 0u64);
            loop {
                let item = q.get().expect("get");
                q.task_done().expect("task_done");
                match item {
                    Some(x) => {
                        count += 1;
                        sum = sum.wrapping_add(x);
                        squares = squares.wrapping_add(x.wrapping_mul(x));
                    }
                    None => return (count, sum, squares),
                }
            }
        })
        .task(ECHO, |end| {
            let mut n = 0;
            while let Ok(x) = end.recv() {
                end.send(x).expect("send");
                n += 1;
            }
            n
        })
        .task(REMOTE_OPS, |(jq, bounded)| {
            let mut log = Vec::new();
            log.push(format!("try_get: {:?}", jq.try_get().err()));
            log.push(format!(
                "get_timeout: {:?}",
                jq.get_timeout(Duration::from_millis(50)).err()
            ));
            log.push(format!("task_done: {:?}", jq.task_done().err()));
            for i in 0..3 {
                jq.put(i).expect("put");
            }
            log.push(format!("len: {}", jq.len().expect("len")));
            log.push(format!(
                "get: {:?}",
                jq.get_timeout(Duration::from_secs(10)).ok()
            ));
            log.push(format!("task_done: {:?}", jq.task_done().err()));
            log.push(format!(
                "join_timeout: {:?}",
                jq.join_timeout(Duration::from_millis(50))
            ));
            // `bounded` has capacity 1 and holds one item already.
            log.push(format!("try_put: {:?}", bounded.try_put(7).err()));
            let t = Instant::now();
            let timed_out = bounded.put_timeout(7, Duration::from_millis(100)).err();
            log.push(format!(
                "put_timeout: {timed_out:?} after >= 100 ms: {}",
                t.elapsed() >= Duration::from_millis(100)
            ));
            log
        })
        .task(PUT_TO_GONE, |(q, ready, go)| {
            // Answered (a first put): from now on puts are one-way.
            q.put(0).expect("first put");
            ready.put(()).expect("ready");
            go.get().expect("go");
            // The hub process dropped its handles: this one holds the
            // queue, so the one-way put lands.
            let put = q.put(1);
            let len = q.len();
            let got = (q.try_get(), q.try_get());
            match (&put, &len, &got) {
                (Ok(()), Ok(2), (Ok(0), Ok(1))) => Ok(()),
                _ => Err(format!(
                    "expected the put accepted, len 2, items 0 and 1; got {put:?}, {len:?}, {got:?}"
                )),
            }
        })
        .task(READ_ALL, |q| {
            // Ends when the queue is closed and drained, like a channel.
            q.iter().map(|s| s.expect("get failed")).collect()
        })
        .task(ABORT_ON_ITEM_13, |(q, took)| {
            loop {
                let item = q.get().expect("get");
                if item == 13 {
                    took.put(item).expect("took");
                    std::process::abort();
                }
                q.task_done().expect("task_done");
            }
        })
        .task(CONSUME_AFTER_GO, |(q, go)| {
            go.get().expect("go");
            let mut n = 0;
            loop {
                match q.get() {
                    Ok(_) => q.task_done().expect("task_done"),
                    Err(GetError::Closed) => return n,
                    Err(e) => panic!("get failed: {e}"),
                }
                n += 1;
            }
        })
        .task(GUARDED_SUM, |q| {
            let mut sum = 0;
            loop {
                let item = match q.get_guarded() {
                    Ok(item) => item,
                    Err(GetError::Closed) => return sum,
                    Err(e) => panic!("get failed: {e}"),
                };
                // The guard calls task_done when dropped, unwinding included.
                assert!(*item != 13, "unlucky item");
                sum += *item;
            }
        })
}

fn main() {
    procpool::init(registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        remote_operations_and_their_errors,
        close_reaches_readers_in_other_processes,
        closed_waits_for_items_held_elsewhere,
        released_handle_gives_back_items,
        try_get_in_a_child_takes_every_item,
        put_after_close_from_another_process_is_refused,
        bounded_put_blocks_across_processes,
        exit_right_after_put_loses_nothing_and_never_deadlocks,
        killed_writer_loses_nothing_put_accepted,
        two_producers_two_consumers_exactly_once,
        dying_getter_loses_nothing,
        pipe_ping_pong_and_close,
        queue_handle_through_a_pool_task,
        process_join_kill_and_death,
        queue_lives_while_a_worker_holds_it,
        guards_confirm_items_in_other_processes_even_on_panic,
        join_reports_a_consumer_that_died_before_task_done,
        a_token_queue_never_strands_its_token,
        shutdown_immediate_wakes_workers_and_join,
        shutdown_from_a_worker_drains_then_ends,
    ];
    libtest_mimic::run(&args, tests).exit();
}

fn remote_operations_and_their_errors() -> anyhow::Result<()> {
    let jq = JoinableQueue::new();
    let bounded = Queue::bounded(1);
    bounded.put(1)?;
    let log = Process::spawn(REMOTE_OPS, (jq.clone(), bounded.clone()))?
        .watched()
        .join()?;
    let want = [
        "try_get: Some(Empty)",
        "get_timeout: Some(Empty)",
        "task_done: Some(TooManyTaskDone)",
        "len: 3",
        "get: Some(0)",
        "task_done: None",
        "join_timeout: Ok(false)",
        "try_put: Some(Full(..))",
        "put_timeout: Some(Full(..)) after >= 100 ms: true",
    ];
    ensure!(log == want, "remote log:\n{}", log.join("\n"));
    // The hub agrees: two items left, both unfinished.
    ensure!(
        jq.len()? == 2 && jq.unfinished() == Some(2),
        "len {} unfinished {:?}",
        jq.len()?,
        jq.unfinished()
    );
    ensure!(
        bounded.len()? == 1,
        "the timed-out put must not have landed"
    );
    Ok(())
}

fn close_reaches_readers_in_other_processes() -> anyhow::Result<()> {
    let q = Queue::new();
    let reader = Process::spawn(READ_ALL, q.clone())?.watched();
    for word in ["a", "b", "c"] {
        q.put(word.to_string())?;
    }
    q.close()?;
    ensure!(q.put("d".to_string()).is_err_and(|e| e.is_closed()));
    let got = reader.join()?;
    ensure!(got == ["a", "b", "c"], "{got:?}");
    Ok(())
}

fn bounded_put_blocks_across_processes() -> anyhow::Result<()> {
    let q = Queue::bounded(4);
    let writer = Process::spawn(PRODUCE, (q.clone(), 0, 100))?.watched();
    let mut got = Vec::new();
    while got.len() < 100 {
        // Never more than the capacity, in every process.
        ensure!(q.len()? <= 4, "bounded queue holds {}", q.len()?);
        got.push(q.get_timeout(Duration::from_secs(20))?);
    }
    ensure!(writer.join()? == 100);
    ensure!(got == (0..100).collect::<Vec<u64>>());
    Ok(())
}

/// Python's classic: a child puts far more than a pipe holds, the parent
/// joins the child before reading. Python deadlocks (the child's feeder
/// thread cannot flush); here `put` hands each item to the hub, so the
/// child exits and every item is there.
fn exit_right_after_put_loses_nothing_and_never_deadlocks() -> anyhow::Result<()> {
    // Fewer under Wine, where every pipe write goes through its server: 100,000
    // took 76 of the suite's 90 s there, alone on a busy machine.
    let n = if cfg!(windows) { 20_000 } else { 100_000u64 };
    let q = Queue::new();
    let writer = Process::spawn(FLOOD, (q.clone(), n))?.watched();
    ensure!(
        writer.join()? == n,
        "the writer exits without anyone reading"
    );
    for i in 0..n {
        let item = q.try_get().with_context(|| format!("item {i} lost"))?;
        ensure!(
            item.len() == 512 && item[..8] == i.to_le_bytes(),
            "item {i} out of order"
        );
    }
    ensure!(q.is_empty()?);
    Ok(())
}

fn killed_writer_loses_nothing_put_accepted() -> anyhow::Result<()> {
    let q = Queue::new();
    let writer = Process::spawn(FLOOD_FOREVER, q.clone())?.watched();
    // Kill it in full flow: after 20,000 items, taken here as they come.
    let mut expect = 0u64;
    while expect < 20_000 {
        let x = q
            .get_timeout(Duration::from_secs(30))
            .with_context(|| format!("item {expect}"))?;
        ensure!(x == expect, "got {x}, expected {expect}");
        expect += 1;
    }
    writer.kill();
    // Everything accepted is there, in order, without gaps.
    while let Ok(x) = q.try_get() {
        ensure!(x == expect, "got {x}, expected {expect}");
        expect += 1;
    }
    ensure!(matches!(writer.join(), Err(Error::Terminated)));
    Ok(())
}

fn two_producers_two_consumers_exactly_once() -> anyhow::Result<()> {
    // Under Wine named pipes live in the wineserver, a single process every
    // pipe read and write goes through; when each of the 3 operations per
    // item (put, get, task_done) was a round trip to the hub, 100,000 items
    // per producer took about 45 s there (under 2 s on Linux), too close to
    // LIMIT on a loaded 2-core CI machine. (They go through a lane now.)
    // Fewer items still interleave two producers and two consumers
    // thousands of times.
    let per = if cfg!(windows) { 20_000 } else { 100_000u64 };
    let q = JoinableQueue::new();
    // Both consumers run before anything is put: through a lane, one
    // consumer alone can take every item while the other starts (slow
    // under Wine).
    let started = Queue::new();
    let consumers = [
        Process::spawn(JQ_CONSUME, (q.clone(), started.clone()))?.watched(),
        Process::spawn(JQ_CONSUME, (q.clone(), started.clone()))?.watched(),
    ];
    for _ in 0..2 {
        started.get_timeout(Duration::from_secs(60))?;
    }
    let producers = [
        Process::spawn(JQ_PRODUCE, (q.clone(), 0, per))?.watched(),
        Process::spawn(JQ_PRODUCE, (q.clone(), per, per))?.watched(),
    ];
    for p in producers {
        ensure!(p.join()? == per);
    }
    for _ in 0..2 {
        q.put(None)?;
    }
    ensure!(
        q.join_timeout(Duration::from_secs(60))?,
        "join did not return"
    );
    ensure!(q.unfinished() == Some(0));
    let (mut count, mut sum, mut squares) = (0u64, 0u64, 0u64);
    for c in consumers {
        let (n, s, sq) = c.join()?;
        ensure!(n > 0, "a consumer got nothing");
        count += n;
        sum = sum.wrapping_add(s);
        squares = squares.wrapping_add(sq);
    }
    let total = 2 * per;
    let want_sum: u64 = (0..total).sum();
    let want_squares = (0..total).fold(0u64, |a, x| a.wrapping_add(x * x));
    ensure!(count == total, "{count} items arrived, {total} were put");
    ensure!(
        sum == want_sum && squares == want_squares,
        "an item arrived twice or never"
    );
    Ok(())
}

/// An item delivered to a getter in another process and not taken there
/// goes back to the queue when that process dies, once.
///
/// The getter takes one item (so it holds a subscription with credit and
/// has acknowledged what it took), then blocks on another queue. The next
/// item is pushed to it at once: the hub counts it in `len` but no longer
/// holds it, so a local `try_get` finds nothing. Killed, the getter never
/// takes it, and the master gets it back.
fn dying_getter_loses_nothing() -> anyhow::Result<()> {
    // Delivery ahead (below) is the hub path's; `queue_lane.rs` kills
    // getters of lane queues.
    let q = Queue::hub_only();
    let (took, hold) = (SimpleQueue::new(), Queue::new());
    let getter =
        Process::spawn(TAKE_ONE_THEN_HOLD, (q.clone(), took.clone(), hold.clone()))?.watched();
    q.put(1)?;
    ensure!(took.get()? == 1, "the getter took something else");
    q.put(42)?;
    ensure!(
        q.len()? == 1,
        "len {} with one item delivered to the getter",
        q.len()?
    );
    ensure!(
        matches!(q.try_get(), Err(GetError::Empty)),
        "the item was not delivered to the getter"
    );
    getter.kill();
    ensure!(matches!(getter.join(), Err(Error::Terminated)));
    let back = q
        .get_timeout(Duration::from_secs(30))
        .context("the item delivered to the killed getter did not come back")?;
    ensure!(back == 42, "got {back}");
    ensure!(
        matches!(q.try_get(), Err(GetError::Empty)) && q.is_empty()?,
        "the item came back more than once: len {}",
        q.len()?
    );
    Ok(())
}

fn pipe_ping_pong_and_close() -> anyhow::Result<()> {
    let (mine, theirs) = Pipe::duplex::<u64, u64>();
    let echo = Process::spawn(ECHO, theirs)?.watched();
    for i in 0..1000 {
        mine.send(i)?;
        ensure!(mine.poll(Duration::from_secs(10))?, "no echo within 10 s");
        ensure!(mine.recv_timeout(Duration::from_secs(10))? == i);
    }
    ensure!(matches!(mine.try_recv(), Err(GetError::Empty)));
    mine.close()?;
    ensure!(echo.join()? == 1000);
    let (rx, tx) = Pipe::one_way::<String>();
    tx.send("one way".into())?;
    ensure!(rx.recv()? == "one way");
    Ok(())
}

fn queue_handle_through_a_pool_task() -> anyhow::Result<()> {
    let q = Queue::new();
    let pool = Pool::new(2)?.watched();
    let counts = pool.map(PRODUCE, (0..4).map(|k| (q.clone(), k * 100, 100)))?;
    ensure!(counts == [100; 4]);
    let mut got: Vec<u64> = (0..400).map(|_| q.try_get()).collect::<Result<_, _>>()?;
    got.sort_unstable();
    ensure!(got == (0..400).collect::<Vec<_>>());
    ensure!(q.is_empty()?);
    Ok(())
}

fn process_join_kill_and_death() -> anyhow::Result<()> {
    let p = Process::spawn(SQUARE, 7)?.watched();
    ensure!(p.pid() > 0);
    ensure!(p.join()? == 49);

    let mut slow = Process::spawn(SLEEP_MS, 60_000)?.watched();
    ensure!(slow.is_alive());
    ensure!(slow.join_timeout(Duration::from_millis(50)).is_none());
    let pid = slow.pid();
    slow.kill();
    ensure!(
        !slow.is_alive() && !alive(pid),
        "killed process {pid} must be gone and reaped"
    );
    ensure!(matches!(slow.join(), Err(Error::Terminated)));

    let dead = Process::spawn(ABORT_ON_13, 13)?.watched();
    match dead.join() {
        Err(Error::WorkerDied { status, .. }) => ensure!(!status.success()),
        other => bail!("expected WorkerDied, got {other:?}"),
    }
    let err = Process::spawn(PANIC_ON_13, 13)?
        .watched()
        .join()
        .unwrap_err();
    ensure!(err.is_panic(), "{err:?}");
    Ok(())
}

/// Issue 14: a queue lives while any process holds a handle. (It used to
/// go with the hub process's last handle: the worker's next one-way put
/// said `Ok` and the item was dropped.)
fn queue_lives_while_a_worker_holds_it() -> anyhow::Result<()> {
    let q = Queue::new();
    let (ready, go) = (SimpleQueue::new(), Queue::new());
    let p = Process::spawn(PUT_TO_GONE, (q.clone(), ready.clone(), go.clone()))?.watched();
    ready.get()?;
    drop(q); // the hub process's last handle: the worker's keeps the queue
    go.put(())?;
    p.join()?.map_err(anyhow::Error::msg)
}

fn guards_confirm_items_in_other_processes_even_on_panic() -> anyhow::Result<()> {
    let jq = JoinableQueue::new();
    for i in 1..=20u64 {
        jq.put(i)?;
    }
    jq.close()?;
    // The first consumer panics on 13: items 1..=13 are done, 13 by the
    // guard's drop while unwinding.
    let first = Process::spawn(GUARDED_SUM, jq.clone())?.watched().join();
    ensure!(
        matches!(&first, Err(Error::Task(TaskError::Panicked { message, .. })) if message == "unlucky item"),
        "{first:?}"
    );
    // The second takes the rest until Closed.
    let second = Process::spawn(GUARDED_SUM, jq.clone())?.watched().join()?;
    ensure!(
        second == (14..=20).sum::<u64>(),
        "second consumer summed {second}"
    );
    ensure!(
        jq.join_timeout(Duration::from_secs(20))?,
        "join timed out with {:?} items unfinished",
        jq.unfinished()
    );
    Ok(())
}

/// Python's trap: a consumer process dies between `get` and `task_done`,
/// and `join` waits for ever. 50 items, two consumers; the first takes
/// and confirms 1 to 12, takes 13 and aborts. `join` must say so at once,
/// naming it, instead of running out its 10 s; the 37 items left go to the
/// other consumer, and a second `join` then succeeds: 12 + 37 confirmed,
/// 1 reported, none silently dropped.
fn join_reports_a_consumer_that_died_before_task_done() -> anyhow::Result<()> {
    let jq = JoinableQueue::new();
    for i in 1..=50u64 {
        jq.put(i)?;
    }
    jq.close()?;
    let (took, go) = (SimpleQueue::new(), Queue::new());
    let dying = Process::spawn(ABORT_ON_ITEM_13, (jq.clone(), took.clone()))?.watched();
    // Gated, so the first consumer alone takes 1 to 13, in order.
    let other = Process::spawn(CONSUME_AFTER_GO, (jq.clone(), go.clone()))?.watched();
    ensure!(took.get()? == 13, "the first consumer took another item");
    go.put(())?;
    let start = Instant::now();
    match jq.join_timeout(Duration::from_secs(10)) {
        Err(QueueError::ConsumerDied { pid, unfinished }) => {
            ensure!(
                pid == Some(dying.pid()) && unfinished == 1,
                "reported pid {pid:?} with {unfinished} unfinished; expected pid {} with 1",
                dying.pid()
            );
        }
        Ok(false) => bail!(
            "join ran out its {:?} waiting for the dead consumer's item",
            start.elapsed()
        ),
        other => bail!("join: {other:?} (expected ConsumerDied)"),
    }
    ensure!(
        matches!(dying.join(), Err(Error::WorkerDied { .. })),
        "the first consumer should have died"
    );
    let confirmed = other.join()?;
    ensure!(confirmed == 37, "the other consumer confirmed {confirmed}");
    ensure!(
        jq.join_timeout(Duration::from_secs(10))?,
        "the second join timed out with {:?} unfinished",
        jq.unfinished()
    );
    ensure!(jq.unfinished() == Some(0) && jq.is_empty()?);
    Ok(())
}

/// A one-item queue used as shared state (a token): process A takes and
/// puts the token back several times, then blocks on something else
/// without getting again. The hub had pushed the token to A (it had
/// credit), where nobody takes it; process B waiting in `get` must still
/// get it, as with Python's queue. (Before the hub recalled items from an
/// idle holder, B waited for ever.)
fn a_token_queue_never_strands_its_token() -> anyhow::Result<()> {
    let token = Queue::new();
    token.put(0u64)?;
    let (took, hold) = (SimpleQueue::new(), Queue::new());
    let a = Process::spawn(
        PASS_TOKEN_THEN_HOLD,
        (token.clone(), took.clone(), hold.clone()),
    )?
    .watched();
    let last = took.get()?;
    ensure!(last == 8, "A passed the token {last} times");
    let b = Process::spawn(TAKE_WITHIN, (token.clone(), 20_000))?.watched();
    let got = b.join()?;
    hold.put(())?;
    a.join()?;
    ensure!(
        got == Some(8),
        "B got {got:?}: the token stayed with A, which was not getting"
    );
    // The master, a getter in the hub process, gets it back the same way.
    token.put(0)?;
    let a = Process::spawn(
        PASS_TOKEN_THEN_HOLD,
        (token.clone(), took.clone(), hold.clone()),
    )?
    .watched();
    ensure!(took.get()? == 8);
    let got = token.get_timeout(Duration::from_secs(20));
    hold.put(())?;
    a.join()?;
    ensure!(matches!(got, Ok(8)), "the master got {got:?}");
    Ok(())
}

/// Python 3.13's `shutdown(immediate=True)` across processes
/// (CPython's `test_shutdown_immediate_all_methods_in_many_threads`, with
/// processes): a getter blocked in a worker and a putter blocked on a full
/// queue in another get `ShutDown`; a `join` blocked in the master
/// returns, the pending items dropped from the unfinished count.
fn shutdown_immediate_wakes_workers_and_join() -> anyhow::Result<()> {
    let empty = Queue::new();
    let full = JoinableQueue::bounded(2);
    full.put(1u64)?;
    full.put(2)?;
    let ready = SimpleQueue::new();
    let getter = Process::spawn(GET_REPORT, (empty.clone(), ready.clone()))?.watched();
    let putter = Process::spawn(PUT_REPORT, (full.clone(), ready.clone()))?.watched();
    ready.get()?;
    ready.get()?;
    let joiner = {
        let full = full.clone();
        std::thread::spawn(move || full.join_timeout(Duration::from_secs(60)))
    };
    empty.shutdown(true)?;
    full.shutdown(true)?;
    let got = getter.join()?;
    ensure!(got == "Err(ShutDown)", "the blocked getter said {got}");
    let put = putter.join()?;
    ensure!(put == "Err(ShutDown(..))", "the blocked putter said {put}");
    let joined = joiner
        .join()
        .map_err(|_| anyhow::anyhow!("join panicked"))?;
    ensure!(matches!(joined, Ok(true)), "join said {joined:?}");
    ensure!(full.unfinished() == Some(0) && full.is_empty()?);
    Ok(())
}

/// A worker shuts the queue down (not immediately): its own put and the
/// master's are refused with `ShutDown`, the master drains what is left,
/// then gets `ShutDown` (CPython's `test_shutdown_nonempty`).
fn shutdown_from_a_worker_drains_then_ends() -> anyhow::Result<()> {
    let q = Queue::bounded(4);
    q.put(1u64)?;
    q.put(2)?;
    let said = Process::spawn(SHUT_DOWN_HERE, (q.clone(), false))?
        .watched()
        .join()?;
    ensure!(said == "Err(ShutDown(..))", "the worker's put said {said}");
    ensure!(q.put(3).is_err_and(|e| e.is_shut_down()));
    ensure!(q.get()? == 1 && q.get()? == 2);
    match q.get_timeout(Duration::from_secs(10)) {
        Err(GetError::ShutDown) => Ok(()),
        other => bail!("after the last item: {other:?} (expected ShutDown)"),
    }
}

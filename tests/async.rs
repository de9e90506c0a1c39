//! The async forms of the pool's waits, on a current-thread tokio runtime:
//! awaited results, `imap` as a `Stream`, awaited queue operations. Every
//! test runs on one thread, so an await that blocked its thread would
//! deadlock the test (and fail it by its time limit) instead of passing.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

mod common;

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::*;
use futures_core::Stream;
use procpool::{Error, Pool, Queue, Task, TaskError};

const LIMIT: Duration = Duration::from_secs(60);

/// Waits in the worker for an item on the queue, returns it: a task the
/// test releases when it chooses.
const GATE: Task<Queue<u64>, u64> = Task::new("gate");
/// Puts its input on the queue: a record that it ran.
const RECORD: Task<(Queue<u64>, u64), ()> = Task::new("record");
/// In the worker, awaits an item from the first queue (`get_async`), then
/// puts it plus one on the second, a bounded one (`put_async`): the
/// remote forms, driven by the worker's reader thread.
const RELAY_ASYNC: Task<(Queue<u64>, Queue<u64>), ()> = Task::new("relay_async");

/// The smallest executor: parks the thread until woken.
fn block_on<F: Future>(f: F) -> F::Output {
    use std::task::{Context, Wake};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

fn main() {
    procpool::init(
        registry()
            .task(GATE, |q: Queue<u64>| q.get().expect("the gate opens"))
            .task(RECORD, |(q, x): (Queue<u64>, u64)| {
                q.put(x).expect("recorded");
            })
            .task(RELAY_ASYNC, |(from, to): (Queue<u64>, Queue<u64>)| {
                block_on(async {
                    let x = from.get_async().await.expect("an item");
                    to.put_async(x + 1).await.expect("relayed");
                });
            }),
    );
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        thousand_awaited_submits_do_not_block_the_runtime,
        dropped_future_cancels_its_task,
        worker_death_timeout_and_panic_arrive_through_await,
        shutdown_wakes_pending_futures,
        imap_stream_is_ordered_and_bounded,
        imap_unordered_stream_gives_each_result_once,
        queue_get_awaited_while_another_task_puts,
        bounded_put_and_join_awaited_on_one_thread,
        dropped_queue_futures_take_and_put_nothing,
        queue_futures_in_a_worker,
    ];
    libtest_mimic::run(&args, tests).exit();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?)
}

/// Polls `f` once with the current task's waker: whether it was ready.
async fn poll_once<F: Future + Unpin>(f: &mut F) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx).is_ready())).await
}

/// The next item of a stream.
async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

/// 1,000 concurrent submits, each awaited in its own task, plus one task
/// that only a ticker on the same thread can release: if any await blocked
/// the thread, the ticker would never run and the test would hang (and
/// fail by its limit). The worst tick delay is checked against a generous
/// bound as well.
fn thousand_awaited_submits_do_not_block_the_runtime() -> anyhow::Result<()> {
    let pool = Arc::new(Pool::builder().workers(2).build()?.watched());
    let gate = Queue::<u64>::new();
    let rt = runtime()?;
    let worst = rt.block_on(async {
        let done = Arc::new(AtomicU64::new(0));
        let mut set = tokio::task::JoinSet::new();
        let gated = pool.submit(GATE, gate.clone())?;
        set.spawn(async move { gated.await.map(|v| (u64::MAX, v)) });
        for i in 0..1000u64 {
            let pending = pool.submit(SQUARE, i)?;
            let done = Arc::clone(&done);
            set.spawn(async move {
                let r = pending.await.map(|v| (i, v));
                done.fetch_add(1, Ordering::Relaxed);
                r
            });
        }
        let ticker = {
            let done = Arc::clone(&done);
            let gate = gate.clone();
            tokio::spawn(async move {
                let period = Duration::from_millis(5);
                let mut worst = Duration::ZERO;
                let mut ticks = 0u64;
                // Until the other tasks are done and a few ticks have passed.
                while done.load(Ordering::Relaxed) < 1000 || ticks < 20 {
                    let asked = Instant::now();
                    tokio::time::sleep(period).await;
                    worst = worst.max(asked.elapsed().saturating_sub(period));
                    ticks += 1;
                    if ticks == 20 {
                        gate.put(7).expect("gate opened");
                    }
                }
                worst
            })
        };
        while let Some(joined) = set.join_next().await {
            let (i, v) = joined??;
            if i == u64::MAX {
                ensure!(v == 7, "the gate task returned {v}");
            } else {
                ensure!(v == i * i, "task {i} returned {v}");
            }
        }
        Ok::<_, anyhow::Error>(ticker.await?)
    })?;
    eprintln!("worst ticker delay: {worst:?}");
    // Generous: a loaded CI machine, or Wine. A blocked runtime never gets here.
    ensure!(worst < Duration::from_secs(10), "ticker delayed {worst:?}");
    let stats = pool.stats();
    ensure!(stats.completed == 1001 && stats.in_flight == 0, "{stats:?}");
    Ok(())
}

/// A future dropped before its task was sent to a worker cancels the task:
/// it never runs, and counts once, as cancelled. Both a future polled once
/// and one never polled.
fn dropped_future_cancels_its_task() -> anyhow::Result<()> {
    // One worker, no prefetch: the victims wait in the master behind the gate.
    let pool = Pool::builder().workers(1).prefetch(0).build()?.watched();
    let gate = Queue::<u64>::new();
    let ran = Queue::<u64>::new();
    let rt = runtime()?;
    rt.block_on(async {
        let mut gated = pool.submit(GATE, gate.clone())?.into_future();
        ensure!(!poll_once(&mut gated).await, "the gate is still shut");
        let mut polled = pool.submit(RECORD, (ran.clone(), 1))?.into_future();
        ensure!(!poll_once(&mut polled).await, "queued behind the gate");
        drop(polled);
        drop(pool.submit(RECORD, (ran.clone(), 2))?.into_future());
        // Kept, as a control: it runs.
        let kept = pool.submit(RECORD, (ran.clone(), 3))?;
        gate.put(1)?;
        ensure!(gated.await? == 1);
        kept.await?;
        Ok(())
    })?;
    ensure!(pool.join_timeout(LIMIT)?, "join");
    ensure!(ran.try_get().ok() == Some(3), "the kept task ran");
    ensure!(ran.try_get().is_err(), "a cancelled task ran");
    let stats = pool.stats();
    ensure!(
        stats.submitted == 4 && stats.completed == 2 && stats.cancelled == 2,
        "{stats:?}"
    );
    ensure!(stats.failed == 0 && stats.in_flight == 0, "{stats:?}");
    Ok(())
}

fn worker_death_timeout_and_panic_arrive_through_await() -> anyhow::Result<()> {
    let pool = Pool::builder()
        .workers(2)
        .task_timeout(Duration::from_millis(500))
        .build()?
        .watched();
    let rt = runtime()?;
    rt.block_on(async {
        let died = pool.submit(ABORT_ON_13, 13)?;
        let timed_out = pool.submit(SLEEP_MS, 600_000)?;
        let panicked = pool.submit(PANIC_ON_13, 13)?;
        let fine = pool.submit(SQUARE, 5)?;
        let (died, timed_out, panicked, fine) = tokio::join!(
            died.into_future(),
            timed_out.into_future(),
            panicked.into_future(),
            fine.into_future()
        );
        // Each names its input (index 0 of its submit): look through that.
        let (died, timed_out, panicked) = (
            died.map_err(Error::into_inner),
            timed_out.map_err(Error::into_inner),
            panicked.map_err(Error::into_inner),
        );
        ensure!(matches!(died, Err(Error::WorkerDied { .. })), "{died:?}");
        ensure!(
            matches!(timed_out, Err(Error::Timeout { .. })),
            "{timed_out:?}"
        );
        ensure!(
            matches!(panicked, Err(Error::Task(TaskError::Panicked { .. }))),
            "{panicked:?}"
        );
        ensure!(fine? == 25);
        ensure!(pool.submit(SQUARE, 6)?.await? == 36, "pool keeps working");
        Ok(())
    })
}

/// `shutdown` wakes a future whose task is still running: it returns
/// `Interrupted` at once, as a blocked `wait` does.
fn shutdown_wakes_pending_futures() -> anyhow::Result<()> {
    let pool = Arc::new(
        Pool::builder()
            .workers(1)
            .grace_period(Duration::from_secs(30))
            .build()?
            .watched(),
    );
    let gate = Queue::<u64>::new();
    let rt = runtime()?;
    rt.block_on(async {
        let gated = pool.submit(GATE, gate.clone())?;
        let behind = pool.submit(SQUARE, 3)?;
        let gated = tokio::spawn(gated.into_future());
        let behind = tokio::spawn(behind.into_future());
        tokio::task::yield_now().await;
        pool.shutdown();
        // A running task may finish within the grace period, and its
        // result arrives (had it not started yet: `Interrupted`); the one
        // behind it never starts. Both futures are woken.
        gate.put(7)?;
        let r = gated.await?;
        ensure!(
            matches!(
                r.as_ref().map_err(Error::inner),
                Ok(7) | Err(Error::Interrupted)
            ),
            "{r:?}"
        );
        let r = behind.await?;
        ensure!(
            matches!(r.as_ref().map_err(Error::inner), Err(Error::Interrupted)),
            "{r:?}"
        );
        Ok(())
    })
}

fn imap_stream_is_ordered_and_bounded() -> anyhow::Result<()> {
    let window = 100;
    let pool = Pool::builder().workers(2).window(window).build()?.watched();
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&pulled);
    let input = (0..5000u64).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let rt = runtime()?;
    rt.block_on(async {
        let mut stream = pool.imap(SQUARE, input)?;
        let mut yielded = 0u64;
        while let Some(r) = next(&mut stream).await {
            ensure!(r? == yielded * yielded, "item {yielded}");
            yielded += 1;
            let taken = pulled.load(Ordering::Relaxed);
            ensure!(
                taken - yielded <= window as u64,
                "pulled {taken} but yielded {yielded}"
            );
            if yielded % 1000 == 0 {
                // A slow consumer: the input must not run ahead meanwhile.
                tokio::task::yield_now().await;
            }
        }
        ensure!(yielded == 5000, "yielded {yielded}");
        Ok(())
    })
    .context("imap stream")
}

fn imap_unordered_stream_gives_each_result_once() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(2).chunk_size(3).build()?.watched();
    let rt = runtime()?;
    let mut got = rt.block_on(async {
        let mut stream = pool.imap_unordered(SQUARE, 0..3000u64)?;
        let mut got = Vec::new();
        while let Some(r) = next(&mut stream).await {
            got.push(r?);
        }
        Ok::<_, anyhow::Error>(got)
    })?;
    got.sort_unstable();
    ensure!(got == (0..3000u64).map(|x| x * x).collect::<Vec<_>>());
    Ok(())
}

/// A get awaited in one task while another task on the same thread puts:
/// a get that blocked its thread would never let the put run.
fn queue_get_awaited_while_another_task_puts() -> anyhow::Result<()> {
    let q = Queue::<u64>::new();
    let (left, right) = procpool::Pipe::duplex::<u64, u64>();
    let rt = runtime()?;
    rt.block_on(async {
        let getter = {
            let q = q.clone();
            tokio::spawn(async move { q.get_async().await })
        };
        let receiver = tokio::spawn(async move { right.recv_async().await });
        tokio::task::yield_now().await;
        q.put_async(5).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        left.send(6).map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(getter.await?? == 5);
        ensure!(receiver.await?? == 6);
        // A closed, drained queue ends an awaited get too.
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.get_async().await })
        };
        tokio::task::yield_now().await;
        q.close()?;
        let r = waiting.await?;
        ensure!(matches!(r, Err(procpool::GetError::Closed)), "{r:?}");
        Ok(())
    })
}

/// A bounded queue of one: the put awaits room that a getter task makes;
/// `join_async` waits for the `task_done`s.
fn bounded_put_and_join_awaited_on_one_thread() -> anyhow::Result<()> {
    let q = procpool::JoinableQueue::<u64>::bounded(1);
    let rt = runtime()?;
    rt.block_on(async {
        q.put_async(1).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut sum = 0;
                for _ in 0..3 {
                    sum += q.get_async().await?;
                    q.task_done()?;
                }
                Ok::<_, anyhow::Error>(sum)
            })
        };
        // Full: waits for the consumer, which runs on this same thread.
        q.put_async(2).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        q.put_async(3).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        q.join_async().await?;
        ensure!(consumer.await?? == 6);
        Ok(())
    })
}

fn dropped_queue_futures_take_and_put_nothing() -> anyhow::Result<()> {
    let q = Queue::<u64>::bounded(1);
    let rt = runtime()?;
    rt.block_on(async {
        let mut get = q.get_async();
        ensure!(!poll_once(&mut get).await, "empty");
        drop(get);
        q.put(1)?;
        let mut put = q.put_async(2);
        ensure!(!poll_once(&mut put).await, "full");
        drop(put);
        Ok(())
    })?;
    ensure!(q.try_get()? == 1, "the item stays for the next get");
    ensure!(q.try_get().is_err(), "the dropped put put nothing");
    Ok(())
}

/// The remote forms: a worker awaits a get and a bounded put (its reader
/// thread wakes them) while the master awaits the other ends.
fn queue_futures_in_a_worker() -> anyhow::Result<()> {
    let pool = Pool::new(1)?.watched();
    let (from, to) = (Queue::<u64>::new(), Queue::<u64>::bounded(1));
    to.put(0)?; // full: the worker's put must await room
    let rt = runtime()?;
    rt.block_on(async {
        let relay = pool.submit(RELAY_ASYNC, (from.clone(), to.clone()))?;
        from.put_async(41)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(to.get_async().await? == 0);
        ensure!(to.get_async().await? == 42);
        relay.await?;
        Ok(())
    })
}

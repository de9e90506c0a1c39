//! Large payloads through shared memory (issue 11), with real workers:
//! task inputs and results over the threshold, queue items, segments
//! reclaimed when a pool ends or a worker dies holding one.
//!
//! Runs its trials one at a time: some count this process's descriptors.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

mod common;

use std::time::Duration;

use anyhow::{Context, ensure};
use common::*;
use procpool::{Error, Event, Pool, Queue, Task};
use serde_bytes::ByteBuf;

const LIMIT: Duration = Duration::from_secs(60);

/// Returns its input.
const ECHO: Task<ByteBuf, ByteBuf> = Task::new("shm_echo");
/// SIGKILLs its worker (Unix; aborts elsewhere) when the buffer starts with 13.
const DIE_ON_13: Task<ByteBuf, u64> = Task::new("shm_die_on_13");
/// Puts a buffer of this many bytes, each `size % 251`, on the queue.
const PUT_BIG: Task<(Queue<ByteBuf>, u64), ()> = Task::new("shm_put_big");

/// Puts its pid on the queue (it has its input), waits for the event, and
/// returns the input's [`checksum`].
const CHECKSUM_AFTER: Task<(ByteBuf, Queue<u32>, Event), u64> = Task::new("shm_checksum_after");

/// Returns its input as a [`Halting`] result: the worker stops half-way
/// through encoding it.
const HALT_MIDWAY: Task<(ByteBuf, Queue<u32>, Event), Halting> = Task::new("shm_halt_midway");

/// A result that, once the first half of its bytes is encoded (past the
/// threshold: into the worker's shared segment), puts the worker's pid on
/// its queue and waits for its event before encoding the rest. Decoded,
/// it holds the bytes alone.
struct Halting {
    bytes: ByteBuf,
    gate: Option<(Queue<u32>, Event)>,
}

impl serde::Serialize for Halting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let (first, second) = self.bytes.split_at(self.bytes.len() / 2);
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(serde_bytes::Bytes::new(first))?;
        if let Some((started, go)) = &self.gate {
            started.put(std::process::id()).expect("started");
            go.wait_timeout(PATIENCE).expect("wait for go");
        }
        t.serialize_element(serde_bytes::Bytes::new(second))?;
        t.end()
    }
}

impl<'de> serde::Deserialize<'de> for Halting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (mut first, second) = <(ByteBuf, ByteBuf)>::deserialize(d)?;
        first.extend_from_slice(&second);
        Ok(Halting {
            bytes: first,
            gate: None,
        })
    }
}

/// Returns this many bytes, each `n % 251`, as a [`Flaky`] result that
/// fails to encode after its bytes when `n` is odd.
const FLAKY: Task<u64, Flaky> = Task::new("shm_flaky");

/// A result whose encoding fails (when `fail`) after its bytes are
/// written: past the threshold, once they are in the worker's segment.
struct Flaky {
    bytes: ByteBuf,
    fail: bool,
}

impl serde::Serialize for Flaky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeTuple};
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.bytes)?;
        if self.fail {
            return Err(S::Error::custom("flaky result"));
        }
        t.serialize_element(&false)?;
        t.end()
    }
}

impl<'de> serde::Deserialize<'de> for Flaky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (bytes, fail) = <(ByteBuf, bool)>::deserialize(d)?;
        Ok(Flaky { bytes, fail })
    }
}

/// Returns its input; with `(go, true)` first waits for `go`, with
/// `(go, false)` sets it.
const ECHO_GATED: Task<(ByteBuf, Option<(Event, bool)>), ByteBuf> = Task::new("shm_echo_gated");

/// Long enough for any process start under load; only hangs reach it.
const PATIENCE: Duration = Duration::from_secs(30);

/// The default threshold, from the transport.
const THRESHOLD: usize = procpool_ipc::shm::transport::DEFAULT_THRESHOLD;

fn main() {
    procpool::init(
        registry()
            .task(ECHO, |b| b)
            .task(DIE_ON_13, |b: ByteBuf| {
                if b.first() == Some(&13) {
                    #[cfg(unix)]
                    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
                    unsafe {
                        libc::kill(libc::getpid(), libc::SIGKILL);
                    }
                    std::process::abort();
                }
                b.len() as u64
            })
            .task(CHECKSUM_AFTER, |(b, started, go)| {
                started.put(std::process::id()).expect("started");
                go.wait_timeout(PATIENCE).expect("wait for go");
                checksum(&b)
            })
            .task(ECHO_GATED, |(b, gate)| {
                match gate {
                    Some((go, true)) => {
                        go.wait_timeout(PATIENCE).expect("wait for go");
                    }
                    Some((go, false)) => go.set().expect("set go"),
                    None => {}
                }
                b
            })
            .task(HALT_MIDWAY, |(bytes, started, go)| Halting {
                bytes,
                gate: Some((started, go)),
            })
            .task(FLAKY, |n| Flaky {
                bytes: ByteBuf::from(vec![(n % 251) as u8; usize::try_from(n).expect("a length")]),
                fail: n % 2 == 1,
            })
            .task(PUT_BIG, |(q, size)| {
                let len = usize::try_from(size).expect("a length");
                q.put(ByteBuf::from(vec![(size % 251) as u8; len]))
                    .expect("put");
            }),
    );
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads = Some(1);
    let tests = trials![
        LIMIT;
        inputs_and_results_around_the_threshold_round_trip_exactly,
        many_large_items_at_once_arrive_exactly,
        large_queue_items_arrive_exactly,
        segments_are_used_and_reclaimed_with_the_pool,
        a_worker_killed_holding_a_large_input_fails_its_item_and_leaks_nothing,
        large_chunks_of_a_worker_killed_from_outside_are_resent_and_leak_nothing,
        a_worker_killed_while_it_writes_a_large_result_has_its_chunk_resent,
        a_large_result_that_fails_to_encode_is_a_task_error,
        lent_results_held_by_the_master_stay_whole_and_a_dropped_imap_leaks_nothing,
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// A hash of every byte and its place.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `len` bytes that differ from those of any other `(len, seed)`.
fn pattern(len: usize, seed: u8) -> ByteBuf {
    ByteBuf::from(
        (0..len)
            .map(|i| (i % 253) as u8 ^ seed)
            .collect::<Vec<u8>>(),
    )
}

fn inputs_and_results_around_the_threshold_round_trip_exactly() -> anyhow::Result<()> {
    let pool = Pool::new(2)?.watched();
    let sizes = [
        0,
        1,
        THRESHOLD - 64,
        THRESHOLD - 1,
        THRESHOLD,
        THRESHOLD + 1,
        1 << 20,
        (16 << 20) + 3,
    ];
    for chunk in [1, 3] {
        let inputs: Vec<ByteBuf> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(n, i as u8))
            .collect();
        let out = pool.map_chunked(ECHO, inputs.clone(), chunk)?;
        ensure!(out == inputs, "echo with chunks of {chunk} differs");
        let lens = pool.map_chunked(LEN, inputs, chunk)?;
        ensure!(lens == sizes.map(|n| n as u64), "lengths: {lens:?}");
    }
    Ok(())
}

fn many_large_items_at_once_arrive_exactly() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(2).chunk_size(1).build()?.watched();
    let inputs: Vec<ByteBuf> = (0..64).map(|i| pattern(300_000 + i, i as u8)).collect();
    let out: Vec<ByteBuf> = pool
        .imap_unordered(ECHO, inputs.clone())?
        .collect::<Result<_, _>>()?;
    let mut out = out;
    out.sort_by_key(|b| b.len());
    ensure!(out == inputs, "echoed items differ");
    Ok(())
}

fn large_queue_items_arrive_exactly() -> anyhow::Result<()> {
    let pool = Pool::new(2)?.watched();
    let q: Queue<ByteBuf> = Queue::new();
    let sizes = [THRESHOLD as u64 - 1, THRESHOLD as u64 + 1, 5 << 20];
    for &size in &sizes {
        pool.apply(PUT_BIG, (q.clone(), size))?;
        let got = q
            .get_timeout(Duration::from_secs(20))
            .context("queue get")?;
        ensure!(got.len() as u64 == size, "{} bytes, not {size}", got.len());
        ensure!(got.iter().all(|&b| u64::from(b) == size % 251));
    }
    Ok(())
}

/// This process's descriptors once no segment is open any more (earlier
/// trials' pools finish closing theirs just after they are dropped).
fn baseline() -> anyhow::Result<(usize, usize)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = fds()?;
        if now.1 == 0 || std::time::Instant::now() > deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to 10 s for this process's descriptors to be `before` again
/// (a pool's reader and writer threads close theirs as they end, just
/// after `drop` returns); the last count seen.
fn settled(before: (usize, usize)) -> anyhow::Result<(usize, usize)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = fds()?;
        if now == before || std::time::Instant::now() > deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// This process's descriptors: `(all, shared memory segments)` (Linux;
/// elsewhere `(0, 0)`, which the checks then pass trivially).
fn fds() -> anyhow::Result<(usize, usize)> {
    // Under Wine a Windows build can read the Linux host's /proc, and
    // Wine's own descriptors come and go: not this process's handles.
    if !cfg!(target_os = "linux") {
        return Ok((0, 0));
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Ok((0, 0));
    };
    let (mut all, mut segments) = (0, 0);
    for entry in dir {
        let entry = entry?;
        all += 1;
        if let Ok(target) = std::fs::read_link(entry.path()) {
            if target.to_string_lossy().contains("procpool-shm") {
                segments += 1;
            }
        }
    }
    Ok((all, segments))
}

fn segments_are_used_and_reclaimed_with_the_pool() -> anyhow::Result<()> {
    let before = baseline()?;
    {
        let pool = Pool::new(2)?.watched();
        let inputs: Vec<ByteBuf> = (0..4).map(|i| pattern(1 << 20, i)).collect();
        ensure!(pool.map(ECHO, inputs.clone())? == inputs);
        if cfg!(target_os = "linux") {
            let (_, segments) = fds()?;
            ensure!(segments > 0, "no shared memory segment in use");
        }
    }
    let after = settled(before)?;
    ensure!(
        after == before,
        "descriptors before {before:?}, after {after:?}"
    );
    Ok(())
}

fn a_worker_killed_holding_a_large_input_fails_its_item_and_leaks_nothing() -> anyhow::Result<()> {
    let before = baseline()?;
    {
        let pool = Pool::builder().workers(2).chunk_size(1).build()?.watched();
        let inputs: Vec<ByteBuf> = [0u8, 13, 2, 3]
            .iter()
            .map(|&first| {
                let mut b = pattern(2 << 20, first);
                b[0] = first;
                b
            })
            .collect();
        let results: Vec<_> = pool.imap(DIE_ON_13, inputs)?.collect();
        ensure!(results.len() == 4);
        for (i, r) in results.iter().enumerate() {
            if i == 1 {
                ensure!(
                    matches!(
                        r.as_ref().map_err(Error::inner),
                        Err(Error::WorkerDied { .. })
                    ),
                    "item 1: {r:?}"
                );
            } else {
                ensure!(matches!(r, Ok(n) if *n == 2 << 20), "item {i}: {r:?}");
            }
        }
        // The replacement worker carries large payloads too.
        ensure!(pool.map(LEN, vec![pattern(3 << 20, 9)])? == [3 << 20]);
    }
    let after = settled(before)?;
    ensure!(
        after == before,
        "descriptors before {before:?}, after {after:?}"
    );
    Ok(())
}

/// A worker SIGKILLed (from outside, not by its task) while it runs a
/// large chunk and holds another in its queue: with a retry allowed, both
/// chunks go to another worker and come back right (every byte checked), and once the pool is
/// gone no segment descriptor is left in the master.
fn large_chunks_of_a_worker_killed_from_outside_are_resent_and_leak_nothing() -> anyhow::Result<()>
{
    if !cfg!(unix) {
        // Killing a worker from outside needs kill(2) here.
        return Ok(());
    }
    let before = baseline()?;
    {
        let pool = Pool::builder()
            .workers(2)
            .chunk_size(1)
            .prefetch(1)
            .retries(1)
            .build()?
            .watched();
        let started = Queue::new();
        let go = Event::new();
        let inputs: Vec<ByteBuf> = (0..4).map(|i| pattern((3 << 20) + i, i as u8)).collect();
        let want: Vec<u64> = inputs.iter().map(|b| checksum(b)).collect();
        let items: Vec<_> = inputs
            .into_iter()
            .map(|b| (b, started.clone(), go.clone()))
            .collect();
        // `map` encodes large inputs straight into shared segments, the
        // copy it keeps to resend them: the path under test.
        let (victim, got) = std::thread::scope(|s| -> anyhow::Result<_> {
            let run = s.spawn(|| pool.map(CHECKSUM_AFTER, items));
            // A worker has decoded its first large input and the chunk
            // behind it waits in its queue (prefetch 1). (If none starts,
            // the tasks give up waiting after PATIENCE and `map` returns.)
            let victim = started.get_timeout(PATIENCE).context("a task to start");
            if let Ok(victim) = &victim {
                sigkill(*victim)?;
            }
            go.set()?;
            let got = run.join().expect("the map thread")?;
            Ok((victim?, got))
        })?;
        ensure!(got == want, "checksums {got:x?}, want {want:x?}");
        let mut pids = Vec::new();
        while let Ok(pid) = started.get_timeout(Duration::ZERO) {
            pids.push(pid);
        }
        ensure!(
            pids.len() >= 4 && pids.iter().any(|&p| p != victim),
            "tasks started in {pids:?} after {victim} was killed"
        );
        // The replacement worker carries large payloads too.
        ensure!(pool.map(LEN, vec![pattern(3 << 20, 9)])? == [3 << 20]);
    }
    let after = settled(before)?;
    ensure!(
        after == before,
        "descriptors before {before:?}, after {after:?}"
    );
    Ok(())
}

/// A worker SIGKILLed while it encodes a large result straight into its
/// shared segment (half of it written): with a retry allowed, the chunk
/// goes to another worker and every result comes back whole (every byte
/// checked); the pool keeps carrying large results, and once it is gone
/// no segment descriptor is left in the master.
fn a_worker_killed_while_it_writes_a_large_result_has_its_chunk_resent() -> anyhow::Result<()> {
    if !cfg!(unix) {
        // Killing a worker from outside needs kill(2) here.
        return Ok(());
    }
    let before = baseline()?;
    {
        let pool = Pool::builder()
            .workers(2)
            .chunk_size(1)
            .prefetch(1)
            .retries(1)
            .build()?
            .watched();
        let started = Queue::new();
        let go = Event::new();
        let inputs: Vec<ByteBuf> = (0..3).map(|i| pattern((6 << 20) + i, i as u8)).collect();
        let want: Vec<u64> = inputs.iter().map(|b| checksum(b)).collect();
        let items: Vec<_> = inputs
            .into_iter()
            .map(|b| (b, started.clone(), go.clone()))
            .collect();
        let (victim, got) = std::thread::scope(|s| -> anyhow::Result<_> {
            let run = s.spawn(|| pool.map(HALT_MIDWAY, items));
            // A worker has 3 MiB of a result in its segment and waits.
            let victim = started.get_timeout(PATIENCE).context("a result to start");
            if let Ok(victim) = &victim {
                sigkill(*victim)?;
            }
            go.set()?;
            let got = run.join().expect("the map thread")?;
            Ok((victim?, got))
        })?;
        let got: Vec<u64> = got.iter().map(|h| checksum(&h.bytes)).collect();
        ensure!(got == want, "checksums {got:x?}, want {want:x?}");
        let mut pids = Vec::new();
        while let Ok(pid) = started.get_timeout(Duration::ZERO) {
            pids.push(pid);
        }
        // Three results, one of them started again elsewhere.
        ensure!(
            pids.len() >= 3 && pids.iter().all(|&p| p != victim),
            "results started in {pids:?} after {victim} was killed"
        );
        // The replacement worker carries large results too.
        let inputs: Vec<ByteBuf> = (0..4).map(|i| pattern(3 << 20, i)).collect();
        ensure!(pool.map(ECHO, inputs.clone())? == inputs);
    }
    let after = settled(before)?;
    ensure!(
        after == before,
        "descriptors before {before:?}, after {after:?}"
    );
    Ok(())
}

/// A result whose encoding fails once megabytes of it are in the
/// worker's segment is that item's `TaskError::EncodeOutput`; the results
/// around it, in the same chunk or not, arrive whole.
fn a_large_result_that_fails_to_encode_is_a_task_error() -> anyhow::Result<()> {
    let sizes: Vec<u64> = vec![3 << 20, (3 << 20) + 1, 5, (2 << 20) + 2, 7, 4 << 20];
    for chunk in [1, 3] {
        let pool = Pool::builder()
            .workers(2)
            .chunk_size(chunk)
            .build()?
            .watched();
        let got: Vec<_> = pool.imap(FLAKY, sizes.clone())?.collect();
        ensure!(got.len() == sizes.len());
        for (&n, r) in sizes.iter().zip(&got) {
            if n % 2 == 1 {
                ensure!(
                    matches!(
                        r.as_ref().map_err(Error::inner),
                        Err(Error::Task(procpool::TaskError::EncodeOutput { message }))
                            if message.contains("flaky result")
                    ),
                    "item {n}, chunks of {chunk}: {:?}",
                    r.as_ref().map(|f| f.bytes.len())
                );
            } else {
                let Ok(f) = r else {
                    anyhow::bail!("item {n}, chunks of {chunk}: {:?}", r.as_ref().err());
                };
                ensure!(
                    f.bytes.len() as u64 == n && f.bytes.iter().all(|&b| u64::from(b) == n % 251)
                );
            }
        }
    }
    Ok(())
}

#[cfg(unix)]
fn sigkill(pid: u32) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a
    // positive worker pid, so no process group is signalled.
    ensure!(unsafe { libc::kill(pid, libc::SIGKILL) } == 0, "kill {pid}");
    Ok(())
}

#[cfg(not(unix))]
fn sigkill(pid: u32) -> anyhow::Result<()> {
    anyhow::bail!("no SIGKILL for {pid} here")
}

/// Large results lent by a worker while the master holds many of them
/// (an ordered `imap` waiting for its first item, which a second worker
/// blocks on): every result arrives whole, so no segment was reused while
/// the master still read it, and the worker, its segments all lent, falls
/// back instead of waiting. An `imap` dropped half-way then leaves the
/// pool carrying large results, and once the pool is gone no segment
/// descriptor is left in the master.
fn lent_results_held_by_the_master_stay_whole_and_a_dropped_imap_leaks_nothing()
-> anyhow::Result<()> {
    let before = baseline()?;
    {
        // No prefetch: every item after the first goes to the other worker.
        let pool = Pool::builder()
            .workers(2)
            .chunk_size(1)
            .prefetch(0)
            .build()?
            .watched();
        let go = Event::new();
        let n = 24;
        let inputs: Vec<ByteBuf> = (0..n).map(|i| pattern((2 << 20) + i, i as u8)).collect();
        let items: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let gate = match i {
                    0 => Some((go.clone(), true)),
                    i if i == n - 1 => Some((go.clone(), false)),
                    _ => None,
                };
                (b.clone(), gate)
            })
            .collect();
        let got: Vec<ByteBuf> = pool.imap(ECHO_GATED, items)?.collect::<Result<_, _>>()?;
        ensure!(got.len() == inputs.len());
        for (i, (g, w)) in got.iter().zip(&inputs).enumerate() {
            ensure!(g == w, "result {i} differs ({} bytes)", g.len());
        }
        // Dropped after two results, the rest still coming.
        let inputs: Vec<ByteBuf> = (0..16).map(|i| pattern(3 << 20, i)).collect();
        let mut it = pool.imap(ECHO, inputs.clone())?;
        for want in &inputs[..2] {
            ensure!(it.next().context("a result")?? == *want);
        }
        drop(it);
        for _ in 0..3 {
            ensure!(pool.map(ECHO, inputs.clone())? == inputs);
        }
    }
    let after = settled(before)?;
    ensure!(
        after == before,
        "descriptors before {before:?}, after {after:?}"
    );
    Ok(())
}

//! procpool next to Python's `multiprocessing`, measured in one run.
//!
//! ```text
//! cargo bench --bench compare              # every case, 5 runs each
//! cargo bench --bench compare -- --quick   # reduced sizes, 3 runs, < 1 minute
//! cargo bench --bench compare -- --only map --reps 7
//! ```
//!
//! Each measurement runs in a fresh child process: for procpool this binary
//! re-executed with `PROCPOOL_BENCH_ROLE=case`, for Python
//! `python3 benches/python/compare.py <case> ...` (fork start method). The
//! child prints one number. Runs of procpool and Python alternate within
//! each repetition so that machine drift hits both alike; the table reports
//! medians. A child that outlives its time limit is killed with its whole
//! process group and the case is reported as failed.
//!
//! The `floor` lines are a plain `socketpair` between this process and a
//! re-executed copy of itself, with buffered length-prefixed 512-byte (and
//! 64 KiB) frames: the most any IPC on this machine can do. Beside them,
//! the shared-memory ring (`procpool_ipc::shm::Ring`) between re-executed
//! producer and consumer processes, 1 → 1 and 2 → 2.
//!
//! Adding a case: one `fn(&[String]) -> anyhow::Result<f64>` below (the
//! `Queue`, `Pipe` and `JoinableQueue` cases and their tasks live in
//! `channels/mod.rs`), one `cmd_<key>` function in
//! `benches/python/compare.py`, one entry in [`cases`].
// A benchmark talks to its user on stdout (the table) and stderr (progress).
#![allow(clippy::print_stdout, clippy::print_stderr)]
// Elsewhere than Unix only the worker side is compiled in.
#![cfg_attr(not(unix), allow(dead_code, unused_imports))]

mod channels;
#[cfg(unix)]
mod harness;

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Context, ensure};
use procpool::{Pool, Registry, SharedMap, Task};
use serde_bytes::ByteBuf;

const SQUARE: Task<u64, u64> = Task::new("square");
/// Adds 1 to the map's key 0, `n` times.
const DICT_COUNT: Task<(SharedMap<u8, u64>, u64), ()> = Task::new("dict_count");
/// Busy-loops this many iterations (see [`spin`]).
const SPIN: Task<u64, u64> = Task::new("spin");
/// The length of a byte buffer (large payloads in).
const BUF_LEN: Task<ByteBuf, u64> = Task::new("buf_len");
/// The buffer itself (large payloads in and out).
const BUF_ECHO: Task<ByteBuf, ByteBuf> = Task::new("buf_echo");

/// CPU work that the optimiser cannot remove: an LCG chain of `n` steps.
fn spin(n: u64) -> u64 {
    let mut x = n;
    for _ in 0..n {
        x = black_box(
            x.wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407),
        );
    }
    x
}

fn registry() -> Registry {
    channels::register(
        Registry::new()
            .task(SQUARE, |x| x * x)
            .task(SPIN, spin)
            .task(BUF_LEN, |b| b.len() as u64)
            .task(BUF_ECHO, |b| b)
            .task(DICT_COUNT, |(m, n)| {
                for _ in 0..n {
                    m.fetch_add(&0, 1).expect("fetch_add");
                }
            }),
    )
}

fn main() {
    // A remote worker of the remote queue case joins its pool and serves.
    if let Ok(spec) = std::env::var(channels::REMOTE_ENV) {
        let (addr, key) = spec.split_once(' ').unwrap_or((&spec, ""));
        procpool::run_remote_worker(addr, key.as_bytes(), registry());
    }
    // First: in a procpool worker this serves the tasks and exits.
    procpool::init(registry());
    #[cfg(unix)]
    std::process::exit(harness::main(&cases()));
    #[cfg(not(unix))]
    {
        eprintln!("the comparison with Python's multiprocessing (fork) runs on Unix only");
    }
}

/// Whether a larger or a smaller value is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// What a case needs to know about this run.
#[derive(Clone, Debug)]
struct Ctx {
    quick: bool,
    /// Iterations of [`spin`] that take 20 ms here.
    rust_spin_20ms: u64,
    /// Iterations of the Python busy loop that take 20 ms.
    python_spin_20ms: u64,
}

/// Which side a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Procpool,
    Python,
}

/// One row of the table.
struct Case {
    /// The child's sub-command on both sides (`cmd_<key>` in compare.py).
    key: &'static str,
    /// The row's name in the table.
    label: fn(&Ctx) -> String,
    unit: &'static str,
    better: Better,
    /// Arguments passed to either side's child.
    args: fn(&Ctx, Side) -> Vec<String>,
    /// The procpool side; runs in a child process, returns the value.
    run: fn(&[String]) -> anyhow::Result<f64>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            key: "queue_64B",
            label: |_| "queue_64B_1_producer_1_consumer".into(),
            unit: "ops/s",
            better: Better::Higher,
            args: |c, _| queue_args(c, 64),
            run: channels::queue,
        },
        Case {
            key: "queue_512B",
            label: |_| "queue_512B_1_producer_1_consumer".into(),
            unit: "ops/s",
            better: Better::Higher,
            args: |c, _| queue_args(c, 512),
            run: channels::queue,
        },
        Case {
            key: "queue_512B_2x2",
            label: |_| "queue_512B_2_producers_2_consumers".into(),
            unit: "ops/s",
            better: Better::Higher,
            args: |c, _| {
                let mut a = queue_args(c, 512);
                a.push("2".into());
                a
            },
            run: channels::queue_pairs,
        },
        Case {
            key: "remote_queue_512B",
            label: |_| "remote_queue_512B_tcp_1_producer_1_consumer".into(),
            unit: "ops/s",
            better: Better::Higher,
            args: |c, side| {
                // Python's manager queue is a round trip per operation.
                let n = if side == Side::Python {
                    20_000
                } else {
                    200_000
                };
                vec![(if c.quick { n / 10 } else { n }).to_string(), "512".into()]
            },
            run: channels::remote_queue,
        },
        Case {
            key: "queue_64KiB",
            label: |_| "queue_64KiB_1_producer_1_consumer".into(),
            unit: "ops/s",
            better: Better::Higher,
            args: |c, _| queue_args(c, 64 * 1024),
            run: channels::queue,
        },
        Case {
            key: "pipe_one_way",
            label: |_| "pipe_512B_one_way_child_to_master".into(),
            unit: "msgs/s",
            better: Better::Higher,
            args: |c, _| vec![pipe_msgs(c).to_string(), "512".into()],
            run: channels::pipe_one_way,
        },
        Case {
            key: "pipe_round_trip",
            label: |_| "pipe_512B_round_trip_median".into(),
            unit: "us",
            better: Better::Lower,
            args: |c, _| vec![pipe_rounds(c).to_string(), "512".into()],
            run: channels::pipe_round_trip,
        },
        Case {
            key: "joinable",
            label: |_| "joinable_queue_1_producer_2_consumers_to_join".into(),
            unit: "ops/s",
            better: Better::Higher,
            args: |c, _| vec![joinable_items(c).to_string(), "2".into()],
            run: channels::joinable,
        },
        Case {
            key: "dict_counter",
            label: |_| "shared_dict_counter_2_processes(py:Manager+Lock)".into(),
            unit: "ops/s",
            better: Better::Higher,
            args: |c, _| vec![if c.quick { "2000" } else { "20000" }.into()],
            run: dict_counter,
        },
        Case {
            key: "map_auto",
            label: |_| "map_1M_trivial_auto_chunk".into(),
            unit: "s",
            better: Better::Lower,
            args: |_, _| vec!["1000000".into()],
            run: map_auto,
        },
        Case {
            key: "map_chunk1",
            label: |c| format!("map_{}_trivial_chunk1_per_task", count(chunk1_items(c))),
            unit: "us",
            better: Better::Lower,
            args: |c, _| vec![chunk1_items(c).to_string()],
            run: map_chunk1,
        },
        Case {
            key: "map_big_len",
            label: |_| format!("map_{BIG_ITEMS}x16MiB_len"),
            unit: "GiB/s",
            better: Better::Higher,
            args: |_, _| vec![BIG_ITEMS.to_string(), BIG_SIZE.to_string()],
            run: map_big_len,
        },
        Case {
            key: "map_big_echo",
            label: |_| format!("map_{BIG_ITEMS}x16MiB_echo"),
            unit: "GiB/s",
            better: Better::Higher,
            args: |_, _| vec![BIG_ITEMS.to_string(), BIG_SIZE.to_string()],
            run: map_big_echo,
        },
        Case {
            key: "apply",
            label: |_| "apply_round_trip_median".into(),
            unit: "us",
            better: Better::Lower,
            args: |c, _| vec![if c.quick { "2000" } else { "10000" }.into()],
            run: apply,
        },
        Case {
            key: "startup",
            label: |_| "startup_2_workers_to_first_result".into(),
            unit: "ms",
            better: Better::Lower,
            args: |_, _| Vec::new(),
            run: startup,
        },
        Case {
            key: "imap_rss",
            label: |c| {
                format!(
                    "imap_unordered_{}_master_rss_growth(py_chunksize={IMAP_PY_CHUNKSIZE})",
                    count(imap_items(c))
                )
            },
            unit: "MiB",
            better: Better::Lower,
            args: |c, side| match side {
                Side::Procpool => vec![imap_items(c).to_string()],
                Side::Python => vec![imap_items(c).to_string(), IMAP_PY_CHUNKSIZE.to_string()],
            },
            run: imap_rss,
        },
        Case {
            key: "cpu_scaling",
            label: |c| format!("cpu_{}x20ms_speedup_2_vs_1_workers", cpu_tasks(c)),
            unit: "x",
            better: Better::Higher,
            args: |c, side| {
                let spin = match side {
                    Side::Procpool => c.rust_spin_20ms,
                    Side::Python => c.python_spin_20ms,
                };
                vec![cpu_tasks(c).to_string(), spin.to_string()]
            },
            run: cpu_scaling,
        },
    ]
}

/// The `Queue` cases' arguments on both sides: `items size`.
fn queue_args(c: &Ctx, size: u64) -> Vec<String> {
    vec![queue_items(c, size).to_string(), size.to_string()]
}

// Sizes: about a second per procpool run in full mode on the 2-core
// machine of issue 7 (when these cases were added), a tenth with --quick.

/// Items per `Queue` run.
fn queue_items(c: &Ctx, size: u64) -> u64 {
    let full: u64 = match size {
        64 => 400_000,
        512 => 200_000,
        _ => 8_000,
    };
    if c.quick { full / 10 } else { full }
}

fn pipe_msgs(c: &Ctx) -> u64 {
    if c.quick { 30_000 } else { 300_000 }
}

fn pipe_rounds(c: &Ctx) -> u64 {
    if c.quick { 3_000 } else { 30_000 }
}

fn joinable_items(c: &Ctx) -> u64 {
    if c.quick { 20_000 } else { 200_000 }
}

/// Python's `imap_unordered` with chunksize 1 would take minutes for 10M
/// items; 1000 is what a user would pick.
const IMAP_PY_CHUNKSIZE: u64 = 1000;

fn chunk1_items(c: &Ctx) -> u64 {
    if c.quick { 20_000 } else { 100_000 }
}

/// 40 in full mode (issue 7); 20 with --quick, still even for 2 workers.
fn cpu_tasks(c: &Ctx) -> u64 {
    if c.quick { 20 } else { 40 }
}

fn imap_items(c: &Ctx) -> u64 {
    if c.quick { 1_000_000 } else { 10_000_000 }
}

/// The large-payload cases (issue 11): this many inputs of [`BIG_SIZE`] bytes.
const BIG_ITEMS: u64 = 16;
const BIG_SIZE: u64 = 16 << 20;

/// `1000000` → `1M`, `20000` → `20k`.
fn count(n: u64) -> String {
    if n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn arg(args: &[String], i: usize) -> anyhow::Result<u64> {
    let s = args
        .get(i)
        .with_context(|| format!("missing argument {i}"))?;
    s.parse().with_context(|| format!("argument {i}: {s:?}"))
}

/// Sum of x² for x in 0..n, wrapping as the u64 task does.
fn sum_of_squares(n: u64) -> u64 {
    (0..n).fold(0u64, |a, x| a.wrapping_add(x.wrapping_mul(x)))
}

// ---- the procpool side of each case (runs in a child process) ----

fn map_auto(args: &[String]) -> anyhow::Result<f64> {
    let n = arg(args, 0)?;
    let pool = Pool::new(2)?;
    pool.apply(SQUARE, 1)?;
    let t = Instant::now();
    let out = pool.map(SQUARE, 0..n)?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(out.len() as u64 == n && out.last() == Some(&((n - 1) * (n - 1))));
    Ok(secs)
}

/// Two workers each `fetch_add` one key `n` times (Python: a
/// `Manager().dict()` under a `Lock`); increments per second.
fn dict_counter(args: &[String]) -> anyhow::Result<f64> {
    let n = arg(args, 0)?;
    let pool = Pool::new(2)?;
    pool.apply(SQUARE, 1)?;
    let m = SharedMap::<u8, u64>::new();
    let t = Instant::now();
    pool.map_chunked(DICT_COUNT, [(m.clone(), n), (m.clone(), n)], 1)?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(
        m.get(&0)? == Some(2 * n),
        "counted {:?} of {}",
        m.get(&0)?,
        2 * n
    );
    Ok(2.0 * n as f64 / secs)
}

fn map_chunk1(args: &[String]) -> anyhow::Result<f64> {
    let n = arg(args, 0)?;
    let pool = Pool::builder().workers(2).chunk_size(1).build()?;
    pool.apply(SQUARE, 1)?;
    let t = Instant::now();
    let out = pool.map(SQUARE, 0..n)?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(out.len() as u64 == n && out.last() == Some(&((n - 1) * (n - 1))));
    Ok(secs * 1e6 / n as f64)
}

/// `n` buffers of `size` bytes, each filled with its index.
fn big_inputs(args: &[String]) -> anyhow::Result<(Vec<ByteBuf>, u64, u64)> {
    let (n, size) = (arg(args, 0)?, arg(args, 1)?);
    let size_usize = usize::try_from(size)?;
    let inputs = (0..n)
        .map(|i| ByteBuf::from(vec![i as u8; size_usize]))
        .collect();
    Ok((inputs, n, size))
}

/// GiB/s of `Pool::map` over large buffers, returning their lengths.
fn map_big_len(args: &[String]) -> anyhow::Result<f64> {
    let (inputs, n, size) = big_inputs(args)?;
    let pool = Pool::new(2)?;
    pool.apply(SQUARE, 1)?;
    let t = Instant::now();
    let out = pool.map(BUF_LEN, inputs)?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(out.len() as u64 == n && out.iter().all(|&l| l == size));
    Ok((n * size) as f64 / secs / f64::from(1u32 << 30))
}

/// GiB/s of `Pool::map` over large buffers, returning them.
fn map_big_echo(args: &[String]) -> anyhow::Result<f64> {
    let (inputs, n, size) = big_inputs(args)?;
    let pool = Pool::new(2)?;
    pool.apply(SQUARE, 1)?;
    let t = Instant::now();
    let out = pool.map(BUF_ECHO, inputs)?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(out.len() as u64 == n);
    for (i, b) in out.iter().enumerate() {
        ensure!(b.len() as u64 == size && b.first() == Some(&(i as u8)));
    }
    Ok((n * size) as f64 / secs / f64::from(1u32 << 30))
}

fn apply(args: &[String]) -> anyhow::Result<f64> {
    let n = arg(args, 0)?;
    let pool = Pool::new(2)?;
    for i in 0..100 {
        ensure!(pool.apply(SQUARE, i)? == i * i);
    }
    let mut times = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        let r = pool.apply(SQUARE, i)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        ensure!(r == i * i);
    }
    Ok(median(&mut times))
}

fn startup(_: &[String]) -> anyhow::Result<f64> {
    let t = Instant::now();
    let pool = Pool::new(2)?;
    let r = pool.apply(SQUARE, 3)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    ensure!(r == 9);
    Ok(ms)
}

fn imap_rss(args: &[String]) -> anyhow::Result<f64> {
    let n = arg(args, 0)?;
    let pool = Pool::new(2)?;
    pool.apply(SQUARE, 1)?;
    let base = harness_mem::baseline()?;
    let mut count = 0u64;
    let mut sum = 0u64;
    for r in pool.imap_unordered(SQUARE, 0..n)? {
        sum = sum.wrapping_add(r?);
        count += 1;
    }
    let growth = harness_mem::growth_mib(base)?;
    ensure!(count == n && sum == sum_of_squares(n), "wrong results");
    Ok(growth)
}

fn cpu_scaling(args: &[String]) -> anyhow::Result<f64> {
    let tasks = arg(args, 0)?;
    let spin_n = arg(args, 1)?;
    let mut secs = [0.0; 2];
    for (workers, slot) in [1, 2].into_iter().zip(&mut secs) {
        let pool = Pool::builder().workers(workers).chunk_size(1).build()?;
        pool.apply(SQUARE, 1)?;
        let t = Instant::now();
        let out = pool.map(SPIN, (0..tasks).map(|_| spin_n))?;
        *slot = t.elapsed().as_secs_f64();
        ensure!(out.len() as u64 == tasks);
    }
    Ok(secs[0] / secs[1])
}

/// Median of `v` (sorted in place); NaN when empty.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Peak resident memory of this process, from `/proc/self/status`.
mod harness_mem {
    use anyhow::Context;

    fn status_kib(field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string("/proc/self/status")
            .context("reading /proc/self/status (Linux only)")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/self/status"))
    }

    /// The current RSS in KiB, with the peak reset to it (`clear_refs` 5,
    /// Linux ≥ 4.0) so that the peak measured later is this run's own.
    pub(crate) fn baseline() -> anyhow::Result<u64> {
        // Not fatal where unsupported: the peak then includes start-up.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        status_kib("VmRSS")
    }

    /// Peak RSS growth over `base` KiB, in MiB.
    pub(crate) fn growth_mib(base: u64) -> anyhow::Result<f64> {
        let peak = status_kib("VmHWM")?;
        Ok(peak.saturating_sub(base) as f64 / 1024.0)
    }
}

//! Chaos soak: drive a pool from several threads while killing, stopping and
//! replacing its workers, and check that it keeps its promises.
//!
//! ```text
//! cargo run --release --example soak -- --seconds 30 [--remote 1] [--seed 42]
//! ```
//!
//! # Structure
//!
//! - **The pool slot.** The current pool lives in `Soak::slot`, an
//!   `RwLock<Option<Current>>`. Drivers hold the read lock for one
//!   operation at a time; a *swap* (retire the pool, build a fresh one)
//!   raises `swap_pending` so drivers stop taking the lock, calls
//!   `shutdown()` (their calls return `Interrupted` at once), takes the write
//!   lock and removes the pool. With no pool alive and every driver idle, the
//!   master's threads and descriptors can be compared exactly with the level
//!   measured before the first pool.
//! - **Drivers** (one thread each): `map` on small batches, `imap_unordered`
//!   over a few thousand items, `submit`/`apply` (some tasks sleep; a few
//!   overrun the task timeout on purpose), and queue rounds (a
//!   `JoinableQueue` of sequence numbers drained by consumer tasks, and
//!   sometimes a `Process`, into a result queue).
//! - **Chaos** (one thread, seeded xorshift): SIGKILL a worker, SIGSTOP one
//!   for 50-500 ms, kill a remote worker child and start another, stop a
//!   remote worker past its heartbeat timeout, and every ~10 s retire the
//!   pool (`shutdown`, sometimes `terminate`) and build a new one. Off Unix
//!   only the remote kills and the swaps remain.
//! - **Checks**, counted as violations: every result is right or a typed
//!   error of an expected kind; `Interrupted`/`Closed`/`Terminated` only
//!   once the pool is being retired; every call returns within its bound
//!   (timed by `Soak::timed`, and watched while it runs by the main thread,
//!   so a call that never returns is reported too); a retired pool's stats
//!   add up; its workers and remote children are gone after the drop; the
//!   master's threads and descriptors return to their level and its RSS
//!   stays bounded (Linux); queue items are never duplicated, and lost only
//!   when a consumer died holding them (at most one per dead consumer).
//!
//! At the end a table lists operations, faults, worst blocking times and
//! violations; the exit status is 0 only without violations.
//!
//! A remote worker is this program again, started with
//! `SOAK_REMOTE="ADDR KEY"` in its environment.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, TryLockError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use procpool::{Error, GetError, JoinableQueue, Pool, Process, Queue, QueueError, Registry, Task};

// ---------------------------------------------------------------- tasks --

const SQUARE: Task<u64, u64> = Task::new("square");
/// Sleeps this many milliseconds, returns the input.
const SLEEP_MS: Task<u64, u64> = Task::new("sleep_ms");
/// Moves every item of `jobs` to `results` (`task_done` after each) until
/// `jobs` is closed and drained; returns how many it moved.
const CONSUME: Task<(JoinableQueue<u64>, Queue<u64>), u64> = Task::new("consume");

fn consume((jobs, results): (JoinableQueue<u64>, Queue<u64>)) -> Result<u64, String> {
    let mut moved = 0;
    loop {
        match jobs.get() {
            Ok(x) => {
                results.put(x).map_err(|e| format!("put {x}: {e}"))?;
                jobs.task_done()
                    .map_err(|e| format!("task_done {x}: {e}"))?;
                moved += 1;
            }
            Err(GetError::Closed) => return Ok(moved),
            Err(e) => return Err(format!("get: {e}")),
        }
    }
}

fn registry() -> Registry {
    Registry::new()
        .task(SQUARE, |x| x * x)
        .task(SLEEP_MS, |ms| {
            thread::sleep(Duration::from_millis(ms));
            ms
        })
        .try_task(CONSUME, consume)
}

// ------------------------------------------------------------- settings --

/// Set in a remote worker child: `"ADDR KEY"` of the pool to join.
const REMOTE_ENV: &str = "SOAK_REMOTE";
/// The remote worker's own heartbeat timeout (procpool's variable), in ms.
const REMOTE_HEARTBEAT_ENV: &str = "PROCPOOL_HEARTBEAT_TIMEOUT_MS";
const LOCAL_WORKERS: usize = 3;
const TASK_TIMEOUT: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_secs(2);
const GRACE: Duration = Duration::from_secs(1);
const RETRIES: u32 = 1;
/// Longest a call without a deadline of its own may block: the task
/// timeout plus 5 s of slack.
const CALL_BOUND: Duration = Duration::from_secs(2 + 5);
/// Slack on top of a call's own timeout (`wait_timeout`, `get_timeout`).
const SLACK: Duration = Duration::from_secs(2);
/// Slack for a drop or terminate: the grace period, then kill and reap.
const STOP_BOUND: Duration = Duration::from_secs(1 + 5);
/// How long a submitted task may take to end, waiting in pieces.
const RESULT_DEADLINE: Duration = Duration::from_secs(15);
/// Average time between pool swaps.
const SWAP_EVERY: Duration = Duration::from_secs(10);
/// Tasks in this many milliseconds overrun `TASK_TIMEOUT` on purpose.
const OVERRUN_MS: u64 = 2_500;
/// Allowed growth over the level measured before the first pool.
const THREAD_SLACK: usize = 2;
const FD_SLACK: usize = 4;
const RSS_SLACK_KIB: u64 = 200 * 1024;

// ------------------------------------------------------------------ main --

fn main() -> ExitCode {
    // Above `init`, so it runs in every process: a remote worker child is
    // told so by its environment (local workers never have this variable).
    if let Some(spec) = std::env::var_os(REMOTE_ENV) {
        let spec = spec.to_string_lossy().into_owned();
        let Some((addr, key)) = spec.split_once(' ') else {
            eprintln!("{REMOTE_ENV} must be \"ADDR KEY\", not {spec:?}");
            return ExitCode::from(2);
        };
        procpool::run_remote_worker(addr, key.as_bytes(), registry());
    }
    procpool::init(registry());

    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}\nusage: soak [--seconds N] [--remote K] [--seed S]");
            return ExitCode::from(2);
        }
    };
    run(args)
}

#[derive(Clone, Copy, Debug)]
struct Args {
    seconds: u64,
    remote: usize,
    seed: u64,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut args = Args {
            seconds: 20,
            remote: 0,
            seed: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
        };
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|e| format!("{flag} {value}: {e}"))
            };
            match flag.as_str() {
                "--seconds" => args.seconds = number()?.max(1),
                "--remote" => {
                    args.remote = usize::try_from(number()?).map_err(|e| e.to_string())?;
                }
                "--seed" => args.seed = number()?,
                _ => return Err(format!("unknown argument {flag}")),
            }
        }
        Ok(args)
    }
}

/// Indices into `Soak::busy` of the threads that make timed calls.
const DRIVERS: [(&str, Step); 4] = [
    ("map", step_map),
    ("imap_unordered", step_imap),
    ("submit", step_submit),
    ("queue", step_queue),
];
const CHAOS: usize = DRIVERS.len();
const MAIN: usize = DRIVERS.len() + 1;

fn run(args: Args) -> ExitCode {
    println!(
        "soak: {} s, {LOCAL_WORKERS} local + {} remote workers, seed {} (pid {})",
        args.seconds,
        args.remote,
        args.seed,
        std::process::id()
    );
    let soak = Arc::new(Soak::new(args));
    let mut drivers = Vec::new();
    for (i, (name, step)) in DRIVERS.into_iter().enumerate() {
        let s = Arc::clone(&soak);
        let seed = args.seed.wrapping_add(i as u64 + 1);
        drivers.push((name, spawn(name, move || drive(&s, i, seed, step))));
    }
    let chaos = {
        let s = Arc::clone(&soak);
        spawn("chaos", move || chaos(&s))
    };

    // Everything that outlives the pools runs now, and no pool exists yet:
    // the reference level for the leak checks.
    thread::sleep(Duration::from_millis(50));
    if let Some(level) = resources() {
        let _ = soak.baseline.set(level);
    }
    if start_generation(&soak, MAIN) {
        monitor(&soak, soak.end);
    }
    soak.stop.store(true, Ordering::SeqCst);

    // The chaos thread may be in a swap or a long stop: give it time.
    if !wait_finished(&soak, "chaos", &chaos, Duration::from_secs(45)) {
        return abandon(&soak);
    }
    retire(&soak, MAIN, false);
    for (name, handle) in &drivers {
        if !wait_finished(&soak, name, handle, Duration::from_secs(15)) {
            return abandon(&soak);
        }
    }
    for (name, handle) in drivers {
        if handle.join().is_err() {
            soak.violation("thread_panicked", format!("driver {name} panicked"));
        }
    }
    if chaos.join().is_err() {
        soak.violation("thread_panicked", "the chaos thread panicked".into());
    }
    check_resources(&soak, "at the end");
    if report(&soak) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    thread::Builder::new()
        .name(format!("soak-{name}"))
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"))
}

/// Waits for a thread to end; a violation if it does not within `limit`.
fn wait_finished(soak: &Soak, name: &str, handle: &JoinHandle<()>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !handle.is_finished() {
        if Instant::now() > deadline {
            soak.violation(
                "wedged",
                format!(
                    "thread {name} still running {limit:?} after the end; busy: {}",
                    soak.busy_list()
                ),
            );
            return false;
        }
        soak.watch();
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A thread is stuck: report, kill the remote children and leave without
/// running destructors that might block too (local workers see their
/// connection close and exit).
fn abandon(soak: &Soak) -> ExitCode {
    for mut remote in lock(&soak.remotes).drain(..) {
        let _ = remote.child.kill();
        let _ = remote.child.wait();
    }
    let clean = report(soak);
    std::process::exit(if clean { 0 } else { 1 })
}

/// Until `end`: watches running calls and resources, every 100 ms.
fn monitor(soak: &Soak, end: Instant) {
    while Instant::now() < end && !soak.stop.load(Ordering::SeqCst) {
        soak.watch();
        if let Some(now) = resources() {
            soak.note_peak(&now);
            if let Some(base) = soak.baseline.get() {
                if now.rss_kib > base.rss_kib + RSS_SLACK_KIB {
                    soak.violation(
                        "rss",
                        format!(
                            "master RSS {} MiB, more than {} MiB over the start ({} MiB)",
                            now.rss_kib / 1024,
                            RSS_SLACK_KIB / 1024,
                            base.rss_kib / 1024
                        ),
                    );
                }
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ----------------------------------------------------------- the state --

/// The pool drivers use now.
#[derive(Clone)]
struct Current {
    generation: u64,
    pool: Arc<Pool>,
    /// Set before `shutdown`/`terminate`: from then on `Interrupted`,
    /// `Closed` and `Terminated` are expected.
    retiring: Arc<AtomicBool>,
}

/// A remote worker child and the pool generation it was started for.
struct RemoteChild {
    child: Child,
    generation: u64,
}

/// A timed call in progress (see `Soak::timed`).
struct Busy {
    op: &'static str,
    started: Instant,
    bound: Duration,
    /// Already reported as blocked by the watcher.
    reported: bool,
}

#[derive(Default)]
struct OpStat {
    calls: u64,
    ok: u64,
    errors: BTreeMap<&'static str, u64>,
    worst: Duration,
}

/// Everything counted, for the final table.
#[derive(Default)]
struct Book {
    ops: BTreeMap<&'static str, OpStat>,
    faults: BTreeMap<&'static str, u64>,
    counters: BTreeMap<&'static str, u64>,
    /// Per kind: how many, and the first one's details.
    violations: BTreeMap<&'static str, (u64, String)>,
    peak: Resources,
}

struct Soak {
    args: Args,
    end: Instant,
    stop: AtomicBool,
    /// A swap is under way: drivers do not take the slot's lock.
    swap_pending: AtomicBool,
    slot: RwLock<Option<Current>>,
    generations: AtomicU64,
    /// Remote worker children (of the current pool, and of retired ones
    /// until they are checked).
    remotes: Mutex<Vec<RemoteChild>>,
    /// Local worker pids seen in the current pool.
    pids_seen: Mutex<HashSet<u32>>,
    book: Mutex<Book>,
    busy: Mutex<Vec<Option<Busy>>>,
    baseline: OnceLock<Resources>,
}

/// A local queue's length; an error (which a local queue never returns) is
/// a violation, counted as 0.
fn queue_len<T>(soak: &Soak, q: &Queue<T>) -> usize {
    q.len().unwrap_or_else(|e| {
        soak.violation("queue_error", format!("len of a local queue: {e}"));
        0
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Soak {
    fn new(args: Args) -> Self {
        Soak {
            args,
            end: Instant::now() + Duration::from_secs(args.seconds),
            stop: AtomicBool::new(false),
            swap_pending: AtomicBool::new(false),
            slot: RwLock::new(None),
            generations: AtomicU64::new(0),
            remotes: Mutex::new(Vec::new()),
            pids_seen: Mutex::new(HashSet::new()),
            book: Mutex::new(Book::default()),
            busy: Mutex::new((0..=MAIN).map(|_| None).collect()),
            baseline: OnceLock::new(),
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The current pool, if any (a clone: the lock is not held).
    fn current(&self) -> Option<Current> {
        self.slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn violation(&self, kind: &'static str, detail: String) {
        eprintln!("VIOLATION {kind}: {detail}");
        let mut book = lock(&self.book);
        book.violations
            .entry(kind)
            .and_modify(|(n, _)| *n += 1)
            .or_insert((1, detail));
    }

    fn fault(&self, kind: &'static str) {
        *lock(&self.book).faults.entry(kind).or_default() += 1;
    }

    fn count(&self, kind: &'static str, n: u64) {
        *lock(&self.book).counters.entry(kind).or_default() += n;
    }

    fn ok(&self, op: &'static str, n: u64) {
        lock(&self.book).ops.entry(op).or_default().ok += n;
    }

    /// Records a typed error from `op`: its kind if expected under chaos, a
    /// violation otherwise. `Interrupted`, `Closed` and `Terminated` are
    /// expected only once the pool is retiring.
    fn error(&self, op: &'static str, cur: &Current, e: &Error) {
        let kind = match e.inner() {
            Error::WorkerDied { .. } => "worker_died",
            Error::Timeout { .. } => "timeout",
            Error::RemoteWorkerLost { .. } => "remote_lost",
            Error::Interrupted => "interrupted",
            Error::Closed => "closed",
            Error::Terminated => "terminated",
            _ => "UNEXPECTED",
        };
        *lock(&self.book)
            .ops
            .entry(op)
            .or_default()
            .errors
            .entry(kind)
            .or_default() += 1;
        if kind == "UNEXPECTED" {
            self.violation("unexpected_error", format!("{op}: {e} ({e:?})"));
        } else if matches!(kind, "interrupted" | "closed" | "terminated")
            && !cur.retiring.load(Ordering::SeqCst)
        {
            self.violation(
                "stop_error_without_stop",
                format!(
                    "{op} on pool {} returned {e} though nobody stopped it",
                    cur.generation
                ),
            );
        }
    }

    /// Runs a blocking call as `who`, timing it: a violation if it takes
    /// longer than `bound` (the watcher reports it meanwhile if it never
    /// returns).
    fn timed<T>(&self, who: usize, op: &'static str, bound: Duration, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        lock(&self.busy)[who] = Some(Busy {
            op,
            started,
            bound,
            reported: false,
        });
        let out = f();
        let took = started.elapsed();
        let reported = lock(&self.busy)[who].take().is_some_and(|b| b.reported);
        {
            let mut book = lock(&self.book);
            let stat = book.ops.entry(op).or_default();
            stat.calls += 1;
            stat.worst = stat.worst.max(took);
        }
        if took > bound && !reported {
            self.violation(
                "blocked_too_long",
                format!("{op} took {took:.2?}, bound {bound:?}"),
            );
        }
        out
    }

    /// Reports calls running past their bound (once each).
    fn watch(&self) {
        let mut late = Vec::new();
        for (who, busy) in lock(&self.busy).iter_mut().enumerate() {
            if let Some(b) = busy.as_mut().filter(|b| !b.reported) {
                let took = b.started.elapsed();
                if took > b.bound {
                    b.reported = true;
                    late.push(format!(
                        "{} (thread {who}) still blocked after {took:.2?}, bound {:?}",
                        b.op, b.bound
                    ));
                }
            }
        }
        for detail in late {
            self.violation("blocked_too_long", detail);
        }
    }

    fn busy_list(&self) -> String {
        let busy = lock(&self.busy);
        let list: Vec<String> = busy
            .iter()
            .enumerate()
            .filter_map(|(who, b)| {
                b.as_ref()
                    .map(|b| format!("{} (thread {who}) for {:.2?}", b.op, b.started.elapsed()))
            })
            .collect();
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    }

    fn note_pids(&self, cur: &Current) {
        lock(&self.pids_seen).extend(cur.pool.worker_pids());
    }

    fn note_peak(&self, now: &Resources) {
        let mut book = lock(&self.book);
        book.peak.threads = book.peak.threads.max(now.threads);
        book.peak.fds = book.peak.fds.max(now.fds);
        book.peak.rss_kib = book.peak.rss_kib.max(now.rss_kib);
    }
}

// ------------------------------------------------------------------ rng --

/// xorshift64*: small, seeded, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so nearby seeds diverge; never zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

// -------------------------------------------------------------- drivers --

/// One operation of a driver, on the current pool.
type Step = fn(&Soak, usize, &Current, &mut Rng);

fn drive(soak: &Soak, who: usize, seed: u64, step: Step) {
    let mut rng = Rng::new(seed);
    while !soak.stopping() {
        if soak.swap_pending.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(2));
            continue;
        }
        let guard = soak.slot.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(cur) => step(soak, who, cur, &mut rng),
            None => {
                drop(guard);
                thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn step_map(soak: &Soak, who: usize, cur: &Current, rng: &mut Rng) {
    let n = rng.range(1, 200);
    match soak.timed(who, "map", CALL_BOUND, || cur.pool.map(SQUARE, 0..n)) {
        Ok(v) => {
            let wrong = v.iter().zip(0..).find(|&(&y, x)| y != x * x);
            if v.len() as u64 != n || wrong.is_some() {
                soak.violation(
                    "wrong_result",
                    format!(
                        "map(SQUARE, 0..{n}) gave {} results, first wrong: {wrong:?}",
                        v.len()
                    ),
                );
            } else {
                soak.ok("map", 1);
            }
        }
        Err(e) => soak.error("map", cur, &e),
    }
}

fn step_imap(soak: &Soak, who: usize, cur: &Current, rng: &mut Rng) {
    let n = rng.range(500, 4000);
    let mut it = match soak.timed(who, "imap_unordered", CALL_BOUND, || {
        cur.pool.imap_unordered(SQUARE, 0..n)
    }) {
        Ok(it) => it,
        Err(e) => return soak.error("imap_unordered", cur, &e),
    };
    let mut seen = vec![false; n as usize];
    let (mut ok, mut failed, mut stopped) = (0u64, 0u64, false);
    while let Some(item) = soak.timed(who, "imap_next", CALL_BOUND, || it.next()) {
        match item {
            Ok(y) => {
                let x = y.isqrt();
                if x * x != y || x >= n || std::mem::replace(&mut seen[x as usize], true) {
                    soak.violation(
                        "wrong_result",
                        format!("imap_unordered(SQUARE, 0..{n}) yielded {y}: not a square of the input, or twice"),
                    );
                }
                ok += 1;
            }
            Err(e) => {
                stopped |= matches!(e, Error::Interrupted | Error::Terminated);
                failed += 1;
                soak.error("imap_item", cur, &e);
            }
        }
    }
    soak.ok("imap_item", ok);
    // One outcome per item, unless a stop (shutdown: Interrupted, terminate:
    // Terminated) ended the iteration early.
    if ok + failed != n && !(stopped && ok + failed <= n) {
        soak.violation(
            "not_exactly_once",
            format!("imap_unordered over {n} items ended after {ok} results and {failed} errors"),
        );
    }
}

/// Waits for a submitted task in pieces of random length, each timed, up
/// to `RESULT_DEADLINE`; `None` if it never ended.
fn wait_result(
    soak: &Soak,
    who: usize,
    handle: &mut procpool::AsyncResult<u64>,
    rng: &mut Rng,
) -> Option<Result<u64, Error>> {
    let deadline = Instant::now() + RESULT_DEADLINE;
    loop {
        let piece = rng.ms(50, 2000);
        let got = soak.timed(who, "wait_timeout", piece + SLACK, || {
            handle.wait_timeout(piece).cloned()
        });
        if got.is_some() || Instant::now() > deadline {
            return got;
        }
    }
}

fn step_submit(soak: &Soak, who: usize, cur: &Current, rng: &mut Rng) {
    let mut pending = Vec::new();
    for _ in 0..rng.range(1, 8) {
        let (task, x, expected) = if rng.chance(60) {
            (SLEEP_MS, OVERRUN_MS, None) // must time out
        } else if rng.chance(2) {
            let ms = rng.range(0, 10);
            (SLEEP_MS, ms, Some(ms))
        } else {
            let x = rng.range(0, 1 << 30);
            (SQUARE, x, Some(x * x))
        };
        match soak.timed(who, "submit", CALL_BOUND, || cur.pool.submit(task, x)) {
            Ok(handle) => pending.push((handle, task.name(), x, expected)),
            Err(e) => soak.error("submit", cur, &e),
        }
    }
    for (mut handle, name, x, expected) in pending {
        match wait_result(soak, who, &mut handle, rng) {
            None => soak.violation(
                "task_never_ended",
                format!(
                    "{name}({x}) on pool {} had no outcome after {RESULT_DEADLINE:?}",
                    cur.generation
                ),
            ),
            Some(Ok(y)) if Some(y) == expected => soak.ok("submit", 1),
            Some(Ok(y)) => soak.violation(
                "wrong_result",
                format!("{name}({x}) returned {y}, expected {expected:?} (None: a timeout)"),
            ),
            Some(Err(e)) => soak.error("submit", cur, &e),
        }
    }
    let x = rng.range(0, 1 << 30);
    match soak.timed(who, "apply", CALL_BOUND, || cur.pool.apply(SQUARE, x)) {
        Ok(y) if y == x * x => soak.ok("apply", 1),
        Ok(y) => soak.violation("wrong_result", format!("apply(SQUARE, {x}) returned {y}")),
        Err(e) => soak.error("apply", cur, &e),
    }
}

/// One queue round: `n` sequence numbers into `jobs` (then closed),
/// consumer tasks (and sometimes a `Process`, sometimes killed) move them
/// to `results`. Afterwards the master takes what is left in `jobs` and
/// everything in `results`, and checks each number came back at most once,
/// and that the missing ones (taken by a consumer that died before putting
/// them back) are no more than the consumers that died.
fn step_queue(soak: &Soak, who: usize, cur: &Current, rng: &mut Rng) {
    let n = rng.range(50, 600);
    let jobs: JoinableQueue<u64> = JoinableQueue::new();
    let results: Queue<u64> = Queue::new();
    let mut consumers = Vec::new();
    for _ in 0..rng.range(1, 3) {
        let arg = (jobs.clone(), results.clone());
        match soak.timed(who, "submit", CALL_BOUND, || cur.pool.submit(CONSUME, arg)) {
            Ok(h) => consumers.push(h),
            Err(e) => soak.error("queue_consumer", cur, &e),
        }
    }
    let mut process = None;
    if rng.chance(3) {
        let builder = Pool::builder().grace_period(GRACE);
        let arg = (jobs.clone(), results.clone());
        match soak.timed(who, "process_spawn", CALL_BOUND, || {
            Process::spawn_with(builder, CONSUME, arg)
        }) {
            Ok(p) => process = Some(p),
            Err(e) => soak.violation("unexpected_error", format!("Process::spawn: {e}")),
        }
    }
    for x in 0..n {
        if let Err(e) = soak.timed(who, "queue_put", CALL_BOUND, || jobs.put(x)) {
            soak.violation("queue_error", format!("put {x} into a local queue: {e}"));
        }
    }
    if let Err(e) = jobs.close() {
        soak.violation("queue_error", format!("close a local queue: {e}"));
    }
    soak.count("queue items put", n);

    // Kill the process consumer half the time, while it works.
    let killed = process.is_some() && rng.chance(2);
    if let Some(p) = process.as_ref().filter(|_| killed) {
        thread::sleep(rng.ms(0, 5));
        soak.fault("kill_process_consumer");
        soak.timed(who, "process_kill", STOP_BOUND, || p.kill());
    }

    // The consumers' outcomes; each one that did not finish may have lost
    // the item it held.
    // A consumer task that ends (with a result or an error) may have
    // been retried: each of its attempts may have died holding one item.
    let mut died = 0;
    let mut moved = 0;
    let mut outcomes = Vec::new();
    let tasks = consumers.len() as u64;
    for mut h in consumers {
        match wait_result(soak, who, &mut h, rng) {
            Some(Ok(m)) => {
                moved += m;
                outcomes.push(format!("task moved {m}"));
                soak.ok("queue_consumer", 1);
            }
            Some(Err(e)) => {
                died += 1;
                outcomes.push(format!("task failed: {e}"));
                soak.error("queue_consumer", cur, &e);
            }
            None => {
                died += 1;
                outcomes.push("task never ended".into());
                soak.violation(
                    "task_never_ended",
                    format!("a queue consumer had no outcome after {RESULT_DEADLINE:?}"),
                );
            }
        }
    }
    if let Some(mut p) = process {
        let pid = p.pid();
        let deadline = Instant::now() + RESULT_DEADLINE;
        while soak.timed(
            who,
            "process_join_timeout",
            Duration::from_millis(500) + SLACK,
            || p.join_timeout(Duration::from_millis(500)).is_none(),
        ) && Instant::now() < deadline
        {}
        match soak.timed(who, "process_join", STOP_BOUND, || p.join()) {
            Ok(m) => {
                moved += m;
                outcomes.push(format!("process {pid} moved {m}"));
                soak.ok("process_consumer", 1);
            }
            Err(Error::Terminated) if killed => {
                died += 1;
                outcomes.push(format!("process {pid} killed"));
                soak.ok("process_consumer_killed", 1);
            }
            Err(e) => {
                died += 1;
                outcomes.push(format!("process {pid} failed: {e}"));
                soak.violation("unexpected_error", format!("process consumer: {e}"));
            }
        }
    }

    // What is left in `jobs`: the master takes it until closed and drained
    // (items a dead consumer held and had not taken come back for this).
    let mut count = vec![0u32; n as usize];
    let mark = |count: &mut Vec<u32>, x: u64, from: &str| match count.get_mut(x as usize) {
        Some(c) => *c += 1,
        None => soak.violation(
            "queue_foreign_item",
            format!("{x} in {from}, only 0..{n} put"),
        ),
    };
    let mut leftover = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let piece = Duration::from_millis(200);
        match soak.timed(who, "queue_get", piece + SLACK, || jobs.get_timeout(piece)) {
            Ok(x) => {
                mark(&mut count, x, "jobs");
                leftover += 1;
                if let Err(e) = jobs.task_done() {
                    soak.violation("queue_error", format!("task_done in the hub: {e}"));
                }
            }
            Err(GetError::Closed) => break,
            Err(GetError::Empty) if Instant::now() < deadline => {}
            Err(e) => {
                soak.violation(
                    "queue_not_drained",
                    format!(
                        "jobs: {e} ({} items still counted) 5 s after the consumers ended",
                        queue_len(soak, &jobs)
                    ),
                );
                break;
            }
        }
    }
    // `Closed` promises every item has been taken. Items a dying consumer
    // held still count in `len` and come back to `jobs` when its
    // connection is cleaned up; if that happens after `Closed`, consumers
    // that saw `Closed` have left and the items would be stranded.
    let closed_at = Instant::now();
    let held_at_close = queue_len(soak, &jobs);
    let (mut late, mut last_late) = (0, Duration::ZERO);
    while queue_len(soak, &jobs) > 0 && closed_at.elapsed() < Duration::from_secs(5) {
        match jobs.try_get() {
            Ok(x) => {
                mark(&mut count, x, "jobs (after Closed)");
                late += 1;
                last_late = closed_at.elapsed();
                let _ = jobs.task_done();
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    let still_held = queue_len(soak, &jobs);
    leftover += late;
    // Everything in `results`: until all numbers are accounted for, or
    // nothing more arrives for a second.
    let mut got = 0;
    let mut quiet = Instant::now();
    while got + leftover < n && quiet.elapsed() < Duration::from_secs(1) {
        let piece = Duration::from_millis(100);
        match soak.timed(who, "queue_get", piece + SLACK, || {
            results.get_timeout(piece)
        }) {
            Ok(x) => {
                mark(&mut count, x, "results");
                got += 1;
                quiet = Instant::now();
            }
            Err(GetError::Empty) => {}
            Err(e) => {
                soak.violation("queue_error", format!("get from results: {e}"));
                break;
            }
        }
    }
    while let Ok(x) = results.try_get() {
        mark(&mut count, x, "results (late)");
        got += 1;
    }
    let allowed = died + tasks * u64::from(RETRIES);
    let dups = count.iter().filter(|&&c| c > 1).count();
    let missing = count.iter().filter(|&&c| c == 0).count() as u64;
    soak.count("queue items back", got);
    soak.count("queue items left in jobs", leftover);
    soak.count("queue items lost with their consumer", missing);
    soak.count("queue rounds", 1);
    // A live consumer (say, one whose task reported `Interrupted` while it
    // still ran) may hold items at `Closed` and take them: that is fine.
    if late > 0 || still_held > 0 {
        soak.count("queue items back in jobs after Closed", late);
        soak.violation(
            "queue_closed_too_early",
            format!(
                "pool {}: jobs.get returned Closed while jobs.len() was {held_at_close} of {n} (held by a consumer); {late} came back to jobs later (the last {last_late:.0?} after Closed), {still_held} still held 5 s after; consumers: {}",
                cur.generation,
                outcomes.join(", ")
            ),
        );
    }
    if dups > 0 {
        soak.violation(
            "queue_duplicate",
            format!("{dups} of {n} items came back more than once"),
        );
    }
    if missing > allowed {
        soak.violation(
            "queue_lost_items",
            format!(
                "pool {}: {missing} of {n} items lost (taken, never put back), but at most {allowed} consumer attempts died; {leftover} left in jobs, {got} back; consumers: {}",
                cur.generation,
                outcomes.join(", ")
            ),
        );
    }
    if moved > got {
        soak.violation(
            "queue_lost_items",
            format!(
                "finished consumers moved {moved} items, {got} arrived; consumers: {}",
                outcomes.join(", ")
            ),
        );
    }
    // A consumer that died owing a task_done (it took the item, and may or
    // may not have put it to `results`) is reported by `join`, once, and
    // its item leaves the unfinished count: the reported items are at
    // least the lost ones and at most one per dead consumer attempt, and
    // then `join` succeeds. A dead consumer's connection may be cleaned up
    // a moment after its outcome is known: until then `join` waits.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reported = 0;
    let mut reports = Vec::new();
    let joined = loop {
        let piece = Duration::from_millis(200);
        let joined = soak.timed(who, "queue_join", piece + SLACK, || {
            jobs.join_timeout(piece)
        });
        match joined {
            Err(QueueError::ConsumerDied { pid, unfinished }) => {
                reported += unfinished;
                reports.push(format!("{pid:?} left {unfinished}"));
            }
            Ok(false) if Instant::now() < deadline => {}
            other => break other,
        }
    };
    soak.count("queue items reported with their consumer", reported);
    if !matches!(joined, Ok(true)) {
        soak.violation(
            "queue_unfinished",
            format!(
                "join after the round: {joined:?} with {:?} unfinished; reported: [{}]; consumers: {}",
                jobs.unfinished(),
                reports.join(", "),
                outcomes.join(", ")
            ),
        );
    } else if reported < missing || reported > allowed {
        soak.violation(
            "queue_unfinished",
            format!(
                "{reported} items reported unfinished by dead consumers ([{}]): expected between {missing} lost and {allowed} dead consumer attempts; consumers: {}",
                reports.join(", "),
                outcomes.join(", ")
            ),
        );
    }
}

// ---------------------------------------------------------------- chaos --

fn chaos(soak: &Soak) {
    let mut rng = Rng::new(soak.args.seed);
    let mut next_swap = Instant::now() + SWAP_EVERY;
    while !soak.stopping() {
        let nap = Instant::now() + rng.ms(50, 400);
        while Instant::now() < nap && !soak.stopping() {
            thread::sleep(Duration::from_millis(10));
        }
        if soak.stopping() {
            break;
        }
        let Some(cur) = soak.current() else { continue };
        soak.note_pids(&cur);
        if Instant::now() >= next_swap {
            drop(cur);
            let terminate = rng.chance(3);
            if !retire(soak, CHAOS, terminate) || !start_generation(soak, CHAOS) {
                soak.stop.store(true, Ordering::SeqCst);
                break;
            }
            next_swap = Instant::now() + SWAP_EVERY - Duration::from_secs(2) + rng.ms(0, 4000);
            continue;
        }
        let remote = soak.args.remote > 0;
        match rng.range(0, 9) {
            0..=3 => sigkill_worker(soak, &cur, &mut rng),
            4..=6 => sigstop_worker(soak, &cur, &mut rng),
            7 | 8 if remote => kill_remote(soak, &cur, &mut rng),
            9 if remote => stop_remote(soak, &mut rng),
            _ => {}
        }
        replenish_remotes(soak, &cur);
    }
}

/// A random local worker of `cur` that is (still) our child.
#[cfg(unix)]
fn pick_worker(cur: &Current, rng: &mut Rng) -> Option<u32> {
    let pids: Vec<u32> = cur
        .pool
        .worker_pids()
        .into_iter()
        .filter(|&p| is_our_child(p))
        .collect();
    (!pids.is_empty()).then(|| pids[rng.range(0, pids.len() as u64 - 1) as usize])
}

#[cfg(unix)]
fn sigkill_worker(soak: &Soak, cur: &Current, rng: &mut Rng) {
    if let Some(pid) = pick_worker(cur, rng) {
        if signal(pid, libc::SIGKILL) {
            soak.fault("sigkill_worker");
        }
    }
}

#[cfg(unix)]
fn sigstop_worker(soak: &Soak, cur: &Current, rng: &mut Rng) {
    if let Some(pid) = pick_worker(cur, rng) {
        if signal(pid, libc::SIGSTOP) {
            soak.fault("sigstop_worker_50_500ms");
            thread::sleep(rng.ms(50, 500));
            signal(pid, libc::SIGCONT);
        }
    }
}

/// Stops a remote worker child past the pool's heartbeat timeout: the pool
/// must declare it lost (its task fails or is retried) and carry on.
#[cfg(unix)]
fn stop_remote(soak: &Soak, rng: &mut Rng) {
    let pid = {
        let remotes = lock(&soak.remotes);
        if remotes.is_empty() {
            return;
        }
        remotes[rng.range(0, remotes.len() as u64 - 1) as usize]
            .child
            .id()
    };
    if signal(pid, libc::SIGSTOP) {
        soak.fault("sigstop_remote_past_heartbeat");
        thread::sleep(HEARTBEAT + Duration::from_secs(1));
        signal(pid, libc::SIGCONT);
    }
}

// Off Unix there are no signals: chaos is remote kills and pool swaps.
#[cfg(not(unix))]
fn sigkill_worker(_: &Soak, _: &Current, _: &mut Rng) {}
#[cfg(not(unix))]
fn sigstop_worker(_: &Soak, _: &Current, _: &mut Rng) {}
#[cfg(not(unix))]
fn stop_remote(_: &Soak, _: &mut Rng) {}

#[cfg(unix)]
fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) takes two integers and touches none of our memory.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Whether `pid` is a child of this process (Linux: its parent in /proc),
/// so a pid that ended and was reused is never signalled. Elsewhere: alive.
fn is_our_child(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        parent_pid(pid) == Some(std::process::id())
    }
    #[cfg(not(target_os = "linux"))]
    {
        procpool_ipc::endpoint::process_alive(pid)
    }
}

/// A process's parent pid, from /proc/PID/stat.
#[cfg(target_os = "linux")]
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name in parentheses may hold spaces: fields start after the last
    // ')', with the state first and the parent pid second.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn kill_remote(soak: &Soak, cur: &Current, rng: &mut Rng) {
    let victim = {
        let mut remotes = lock(&soak.remotes);
        if remotes.is_empty() {
            return;
        }
        let i = rng.range(0, remotes.len() as u64 - 1) as usize;
        remotes.swap_remove(i)
    };
    let mut child = victim.child;
    let _ = child.kill();
    let _ = soak.timed(CHAOS, "remote_child_reap", STOP_BOUND, || child.wait());
    soak.fault("kill_remote_worker");
    replenish_remotes(soak, cur);
}

/// Reaps remote children of `cur` that exited (killed, or lost and gone)
/// and starts new ones until there are `--remote` of them.
fn replenish_remotes(soak: &Soak, cur: &Current) {
    let Some(addr) = cur.pool.listen_addr() else {
        return;
    };
    let mut remotes = lock(&soak.remotes);
    remotes.retain_mut(|r| {
        r.generation != cur.generation || !matches!(r.child.try_wait(), Ok(Some(_)))
    });
    let alive = remotes
        .iter()
        .filter(|r| r.generation == cur.generation)
        .count();
    for _ in alive..soak.args.remote {
        match start_remote(&addr.to_string(), &key_for(soak, cur.generation)) {
            Ok(child) => remotes.push(RemoteChild {
                child,
                generation: cur.generation,
            }),
            Err(e) => soak.violation("remote_start", format!("cannot start a remote worker: {e}")),
        }
    }
}

fn start_remote(addr: &str, key: &str) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .env(REMOTE_ENV, format!("{addr} {key}"))
        .env(
            REMOTE_HEARTBEAT_ENV,
            (2 * HEARTBEAT).as_millis().to_string(),
        )
        // Remote workers retry joining until a deadline (for a master not
        // up yet); ours start once their pool listens, so a short one lets
        // a child started as its pool goes away give up within the time
        // `check_remotes_gone` allows.
        .env(
            procpool::JOIN_TIMEOUT_ENV,
            HEARTBEAT.as_millis().to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A child started as its pool goes away cannot join and says so.
        .stderr(Stdio::null())
        .spawn()
}

/// The key of one pool generation: unguessable enough for a local soak.
fn key_for(soak: &Soak, generation: u64) -> String {
    let mut rng = Rng::new(soak.args.seed ^ u64::from(std::process::id()) ^ (generation << 32));
    format!("soak-{:016x}{:016x}", rng.next(), rng.next())
}

// ------------------------------------------------------ pool lifecycle --

/// Builds a pool, starts its remote children, and lets the drivers at it.
/// False (with a violation) if it cannot.
fn start_generation(soak: &Soak, who: usize) -> bool {
    let generation = soak.generations.fetch_add(1, Ordering::SeqCst) + 1;
    let mut builder = Pool::builder()
        .workers(LOCAL_WORKERS)
        .task_timeout(TASK_TIMEOUT)
        .retries(RETRIES)
        .heartbeat_timeout(HEARTBEAT)
        .grace_period(GRACE);
    if soak.args.remote > 0 {
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        builder = builder.listen(any, key_for(soak, generation).into_bytes());
    }
    let pool = match soak.timed(who, "pool_build", CALL_BOUND, || builder.build()) {
        Ok(pool) => Arc::new(pool),
        Err(e) => {
            soak.violation("pool_build", format!("pool {generation}: {e}"));
            return false;
        }
    };
    let cur = Current {
        generation,
        pool,
        retiring: Arc::new(AtomicBool::new(false)),
    };
    if soak.args.remote > 0 {
        replenish_remotes(soak, &cur);
        let want = LOCAL_WORKERS + soak.args.remote;
        let limit = Duration::from_secs(10);
        if !soak.timed(who, "wait_for_workers", limit + SLACK, || {
            cur.pool.wait_for_workers(want, limit)
        }) {
            soak.violation(
                "remote_join",
                format!("pool {generation}: {want} workers not ready after {limit:?}"),
            );
        }
    }
    soak.note_pids(&cur);
    *soak.slot.write().unwrap_or_else(PoisonError::into_inner) = Some(cur);
    soak.swap_pending.store(false, Ordering::SeqCst);
    true
}

/// Retires the current pool: stops it (`shutdown`, or `terminate`), waits
/// for the drivers to let go, checks its stats, drops it, and checks that
/// its workers, its remote children, the master's threads and descriptors
/// are gone. Leaves `swap_pending` set. False if the drivers never let go.
fn retire(soak: &Soak, who: usize, terminate: bool) -> bool {
    soak.swap_pending.store(true, Ordering::SeqCst);
    let Some(cur) = soak.current() else {
        return true;
    };
    soak.note_pids(&cur);
    cur.retiring.store(true, Ordering::SeqCst);
    if terminate {
        soak.fault("pool_terminate_and_rebuild");
        soak.timed(who, "pool_terminate", STOP_BOUND, || cur.pool.terminate());
    } else {
        soak.fault("pool_shutdown_and_rebuild");
        soak.timed(who, "pool_shutdown", SLACK, || cur.pool.shutdown());
    }
    let generation = cur.generation;
    drop(cur);

    // The drivers' calls return at once now; wait until none holds the pool.
    let deadline = Instant::now() + Duration::from_secs(20);
    let cur = loop {
        match soak.slot.try_write() {
            Ok(mut slot) => break slot.take(),
            Err(TryLockError::Poisoned(p)) => break p.into_inner().take(),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                soak.watch();
                thread::sleep(Duration::from_millis(2));
            }
            Err(TryLockError::WouldBlock) => {
                soak.violation(
                    "wedged",
                    format!(
                        "pool {generation}: drivers still in calls 20 s after shutdown: {}",
                        soak.busy_list()
                    ),
                );
                return false;
            }
        }
    };
    let Some(cur) = cur else { return true };

    // Once idle, every task accepted has ended one way.
    let deadline = Instant::now() + GRACE + Duration::from_secs(5);
    let stats = loop {
        let st = cur.pool.stats();
        if st.completed + st.failed + st.cancelled == st.submitted || Instant::now() > deadline {
            break st;
        }
        thread::sleep(Duration::from_millis(10));
    };
    if stats.completed + stats.failed + stats.cancelled != stats.submitted {
        soak.violation(
            "stats_mismatch",
            format!(
                "pool {generation} idle: submitted {} != completed {} + failed {} + cancelled {}",
                stats.submitted, stats.completed, stats.failed, stats.cancelled
            ),
        );
    }
    soak.count("tasks submitted (stats)", stats.submitted);
    soak.count("tasks completed (stats)", stats.completed);
    soak.count("tasks failed (stats)", stats.failed);
    soak.count("tasks cancelled (stats)", stats.cancelled);
    soak.count("workers replaced (stats)", stats.workers_replaced);

    let pids: Vec<u32> = lock(&soak.pids_seen).drain().collect();
    match Arc::try_unwrap(cur.pool) {
        Ok(pool) => soak.timed(who, "pool_drop", STOP_BOUND, || drop(pool)),
        Err(_) => soak.violation("soak_bug", "the retired pool is still shared".into()),
    }
    println!(
        "pool {generation} retired ({}): {} tasks submitted, {} completed, {} failed, {} cancelled; {} worker pids seen, {} replaced",
        if terminate { "terminate" } else { "shutdown" },
        stats.submitted,
        stats.completed,
        stats.failed,
        stats.cancelled,
        pids.len(),
        stats.workers_replaced
    );
    check_workers_gone(soak, generation, &pids);
    check_remotes_gone(soak, generation);
    check_resources(soak, &format!("after pool {generation} was dropped"));
    true
}

/// Every local worker of a dropped pool is gone and reaped.
fn check_workers_gone(soak: &Soak, generation: u64, pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        // A pid reused by a stranger is not ours: only our children count.
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&p| procpool_ipc::endpoint::process_alive(p) && is_our_child(p))
            .collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            soak.violation(
                "worker_leak",
                format!(
                    "pool {generation} dropped, its workers {left:?} still exist (or are unreaped)"
                ),
            );
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The remote children of a dropped pool exit on their own (end of their
/// connection); any that does not is killed.
fn check_remotes_gone(soak: &Soak, generation: u64) {
    let old: Vec<RemoteChild> = {
        let mut remotes = lock(&soak.remotes);
        let (old, keep): (Vec<_>, Vec<_>) =
            remotes.drain(..).partition(|r| r.generation <= generation);
        *remotes = keep;
        old
    };
    let deadline = Instant::now() + 2 * HEARTBEAT + Duration::from_secs(2);
    for mut r in old {
        loop {
            match r.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    soak.violation(
                        "remote_child_leak",
                        format!(
                            "remote worker pid {} still running after pool {generation} was dropped ({})",
                            r.child.id(),
                            describe(r.child.id())
                        ),
                    );
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    break;
                }
            }
        }
    }
}

/// What a process is doing, for a violation's message: on Linux, each
/// thread's name, state and kernel wait channel, and its sockets' count.
fn describe(pid: u32) -> String {
    #[cfg(target_os = "linux")]
    {
        let read = |p: String| std::fs::read_to_string(p).unwrap_or_default();
        let mut out = Vec::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let dir = t.path().display().to_string();
                let stat = read(format!("{dir}/stat"));
                let state = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().next())
                    .unwrap_or("?")
                    .to_owned();
                out.push(format!(
                    "{} {state} {}",
                    read(format!("{dir}/comm")).trim(),
                    read(format!("{dir}/wchan")).trim()
                ));
            }
        }
        let sockets = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |fds| {
            fds.flatten()
                .filter(|f| {
                    std::fs::read_link(f.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        });
        format!("threads: {}; sockets: {sockets}", out.join(", "))
    }
    #[cfg(not(target_os = "linux"))]
    {
        format!("pid {pid}")
    }
}

// ------------------------------------------------------------ resources --

#[derive(Clone, Copy, Debug, Default)]
struct Resources {
    threads: usize,
    fds: usize,
    rss_kib: u64,
}

/// The master's threads, open descriptors and resident memory (Linux).
#[cfg(target_os = "linux")]
fn resources() -> Option<Resources> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Resources {
        threads: usize::try_from(field("Threads:")?).ok()?,
        // The directory handle read_dir holds is counted too: one over.
        fds: std::fs::read_dir("/proc/self/fd")
            .ok()?
            .count()
            .saturating_sub(1),
        rss_kib: field("VmRSS:")?,
    })
}

#[cfg(not(target_os = "linux"))]
fn resources() -> Option<Resources> {
    None
}

/// Threads and descriptors back near the level before the first pool
/// (waiting a little for threads that are ending).
fn check_resources(soak: &Soak, when: &str) {
    let Some(base) = soak.baseline.get().copied() else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let Some(now) = resources() else { return };
        soak.note_peak(&now);
        let threads_ok = now.threads <= base.threads + THREAD_SLACK;
        let fds_ok = now.fds <= base.fds + FD_SLACK;
        if threads_ok && fds_ok {
            return;
        }
        if Instant::now() > deadline {
            if !threads_ok {
                soak.violation(
                    "thread_leak",
                    format!(
                        "{when}: {} threads, {} before the first pool",
                        now.threads, base.threads
                    ),
                );
            }
            if !fds_ok {
                soak.violation(
                    "fd_leak",
                    format!(
                        "{when}: {} open fds, {} before the first pool",
                        now.fds, base.fds
                    ),
                );
            }
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// --------------------------------------------------------------- report --

/// Prints the table; whether there were no violations.
fn report(soak: &Soak) -> bool {
    let book = lock(&soak.book);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== soak: {} s, seed {}, {} pools, {LOCAL_WORKERS} local + {} remote workers",
        soak.args.seconds,
        soak.args.seed,
        soak.generations.load(Ordering::SeqCst),
        soak.args.remote
    );
    let _ = writeln!(
        out,
        "\n{:<24} {:>8} {:>9} {:>10}  errors (expected kinds)",
        "operation", "calls", "ok", "worst ms"
    );
    for (op, s) in &book.ops {
        let errors: Vec<String> = s.errors.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(
            out,
            "{op:<24} {:>8} {:>9} {:>10.1}  {}",
            s.calls,
            s.ok,
            s.worst.as_secs_f64() * 1e3,
            errors.join(" ")
        );
    }
    let _ = writeln!(out, "\n{:<36} {:>8}", "fault injected", "count");
    for (kind, n) in &book.faults {
        let _ = writeln!(out, "{kind:<36} {n:>8}");
    }
    let _ = writeln!(out, "\n{:<36} {:>8}", "counter", "value");
    for (kind, n) in &book.counters {
        let _ = writeln!(out, "{kind:<36} {n:>8}");
    }
    if let Some(base) = soak.baseline.get() {
        let _ = writeln!(
            out,
            "\nmaster: threads {} (peak {}), fds {} (peak {}), RSS {} MiB (peak {} MiB)",
            base.threads,
            book.peak.threads,
            base.fds,
            book.peak.fds,
            base.rss_kib / 1024,
            book.peak.rss_kib / 1024
        );
    }
    let total: u64 = book.violations.values().map(|(n, _)| n).sum();
    let _ = writeln!(out, "\ninvariant violations: {total}");
    for (kind, (n, first)) in &book.violations {
        let _ = writeln!(out, "  {kind:<28} {n:>6}  first: {first}");
    }
    print!("{out}");
    total == 0
}

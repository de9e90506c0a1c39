//! Several processes share a counter and take turns incrementing it in a
//! critical section under one `Lock`, after starting together on an
//! `Event`. One of them is killed while it holds the lock: in Python every
//! other process would wait for that lock forever; here the next one gets
//! it with `LockError::OwnerDied`, and they all carry on. The counter (in
//! a `SharedMap`, read and written back under the lock) ends exact, and
//! each turn is logged (enter, leave) on a queue the master reads, to show
//! that no two processes were ever inside at once.
//!
//! ```text
//! cargo run --example locks
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

use procpool::{Event, Lock, LockError, Process, Queue, Registry, SharedMap, SimpleQueue, Task};

/// (process id, entering): one line of the critical section's log.
type Log = Queue<(u32, bool)>;
/// The shared counter, under key 0 (a plain read, then a write: only the
/// lock keeps increments from being lost).
type Counter = SharedMap<u8, u64>;

/// Takes the lock, logs its entry, says so, and then holds the lock until
/// it is killed.
const VICTIM: Task<(Lock, Log, SimpleQueue<()>), ()> = Task::new("victim");
/// Waits for the start signal, then enters the critical section `rounds`
/// times; returns whether it was told a holder had died.
const WORKER: Task<(Lock, Log, Counter, Event, u64), bool> = Task::new("worker");

fn victim((lock, log, holding): (Lock, Log, SimpleQueue<()>)) {
    let _guard = lock.acquire().expect("acquire");
    log.put((std::process::id(), true)).expect("log");
    holding.put(()).expect("holding");
    loop {
        std::thread::park(); // holds the lock until killed
    }
}

fn worker((lock, log, counter, start, rounds): (Lock, Log, Counter, Event, u64)) -> bool {
    let me = std::process::id();
    start.wait().expect("wait for the start");
    let mut told = false;
    for _ in 0..rounds {
        let _guard = match lock.acquire() {
            Ok(guard) => guard,
            Err(LockError::OwnerDied(guard)) => {
                // What the dead holder protected may be half-done: a real
                // program checks or repairs it here.
                println!("process {me}: the previous holder died holding the lock; it is ours now");
                told = true;
                guard
            }
            Err(e) => panic!("acquire: {e}"),
        };
        log.put((me, true)).expect("log");
        let n = counter.get(&0).expect("read").unwrap_or(0);
        counter.insert(&0, &(n + 1)).expect("write");
        log.put((me, false)).expect("log");
    }
    told
}

fn main() -> anyhow::Result<()> {
    procpool::init(Registry::new().task(VICTIM, victim).task(WORKER, worker));

    let lock = Lock::new();
    let log = Log::new();
    let counter = Counter::new();
    let start = Event::new();
    let holding = SimpleQueue::new();

    let holder = Process::spawn(VICTIM, (lock.clone(), log.clone(), holding.clone()))?;
    holding.get()?;
    println!("process {} holds the lock", holder.pid());

    let rounds = 100;
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let args = (
                lock.clone(),
                log.clone(),
                counter.clone(),
                start.clone(),
                rounds,
            );
            Process::spawn(WORKER, args)
        })
        .collect::<Result<_, _>>()?;
    start.set()?; // every worker now waits for the lock
    holder.kill();
    println!("killed process {} while it held the lock", holder.pid());

    let mut told = 0;
    for w in workers {
        told += usize::from(w.join()?);
    }
    // The victim's entry, then enter/leave pairs that never interleave.
    let (dead, entered) = log.try_get()?;
    anyhow::ensure!(
        dead == holder.pid() && entered,
        "the log starts with the victim"
    );
    let mut turns = 0;
    while let Ok((pid, entered)) = log.try_get() {
        let (left_pid, left) = log.try_get()?;
        anyhow::ensure!(
            entered && !left && left_pid == pid,
            "two processes inside at once"
        );
        turns += 1;
    }
    anyhow::ensure!(told == 1, "{told} workers were told the owner died");
    anyhow::ensure!(turns == 3 * rounds, "{turns} turns");
    let count = counter.get(&0)?.unwrap_or(0);
    anyhow::ensure!(count == 3 * rounds, "the counter says {count}");
    println!("one worker was told the owner died; {turns} turns, never two inside at once");
    println!("the shared counter is {count}: no increment lost");
    Ok(())
}

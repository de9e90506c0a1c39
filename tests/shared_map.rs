//! `SharedMap` across real processes (issue 15): counters that end exact,
//! operations from the master and workers on one map, a process killed
//! mid-operation, and the map freed once every handle is gone.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a test program reports progress

mod common;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use common::*;
use procpool::{Event, Pool, Process, SharedMap, SimpleQueue, Task};
use procpool_ipc::shared_map::hub_holds;

const LIMIT: Duration = Duration::from_secs(120);
/// Long enough for any process start under load; only hangs reach it.
const PATIENCE: Duration = Duration::from_secs(30);
/// Items in a scribbled value.
const WIDTH: usize = 10_000;

/// `fetch_add(&"count", 1)`, `n` times.
const COUNT: Task<(SharedMap<String, u64>, u64), ()> = Task::new("count");
/// Worker `id`: reads key 0, inserts `id` → "w{id}", removes `100 + id`;
/// returns what it read and removed.
const MAP_OPS: Task<(Names, u32), (Option<String>, Option<String>)> = Task::new("map_ops");
type Names = SharedMap<u32, String>;
/// Inserts `i % 8` → `[i; WIDTH]` for i = 0, 1, ... until killed; says
/// so after the first 20.
const SCRIBBLE: Task<(Rows, SimpleQueue<()>), ()> = Task::new("scribble");
type Rows = SharedMap<u32, Vec<u32>>;
/// Says it holds the map, waits for the event, then reads key 1.
const HOLD_THEN_READ: Task<(Bytes, SimpleQueue<()>, Event), Option<u8>> =
    Task::new("hold_then_read");
type Bytes = SharedMap<u8, u8>;

fn map_registry() -> procpool::Registry {
    registry()
        .task(COUNT, |(m, n)| {
            let key = "count".to_owned();
            for _ in 0..n {
                m.fetch_add(&key, 1).expect("fetch_add");
            }
        })
        .task(MAP_OPS, |(m, id)| {
            let read = m.get(&0).expect("get");
            m.insert(&id, &format!("w{id}")).expect("insert");
            let removed = m.remove(&(100 + id)).expect("remove");
            (read, removed)
        })
        .task(SCRIBBLE, |(m, ready)| {
            for i in 0u32.. {
                m.insert(&(i % 8), &vec![i; WIDTH]).expect("insert");
                if i == 20 {
                    ready.put(()).expect("ready");
                }
            }
        })
        .task(HOLD_THEN_READ, |(m, ready, go)| {
            ready.put(()).expect("ready");
            go.wait_timeout(PATIENCE).expect("wait for go");
            m.get(&1).expect("get")
        })
}

fn main() {
    procpool::init(map_registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        four_workers_count_to_forty_thousand,
        master_and_workers_share_inserts_gets_and_removes,
        process_killed_mid_operation_leaves_the_map_consistent,
        map_lives_while_a_child_holds_it_and_is_freed_after,
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// 4 worker processes add 1 to one key 10,000 times each: no update is
/// lost (each `fetch_add` is one operation in the hub). Once the workers'
/// handles and the master's are gone, the hub has freed the map.
fn four_workers_count_to_forty_thousand() -> anyhow::Result<()> {
    let m = SharedMap::<String, u64>::new();
    let id = m.id();
    let pool = Pool::new(4)?.watched();
    let inputs = (0..4).map(|_| (m.clone(), 10_000));
    pool.map_chunked(COUNT, inputs, 1)?;
    ensure!(m.get(&"count".to_owned())? == Some(40_000));
    drop(pool);
    drop(m);
    ensure!(!hub_holds(id), "the map outlived every handle");
    Ok(())
}

/// Workers see the master's inserts, the master sees theirs, and removes
/// happen once.
fn master_and_workers_share_inserts_gets_and_removes() -> anyhow::Result<()> {
    let m = SharedMap::<u32, String>::new();
    m.insert(&0, &"master".to_owned())?;
    for id in 1..=3 {
        m.insert(&(100 + id), &format!("for w{id}"))?;
    }
    let pool = Pool::new(3)?.watched();
    let got = pool.map_chunked(MAP_OPS, (1..=3).map(|id| (m.clone(), id)), 1)?;
    for (i, (read, removed)) in got.into_iter().enumerate() {
        let id = i as u32 + 1;
        ensure!(read.as_deref() == Some("master"), "w{id} read {read:?}");
        ensure!(
            removed == Some(format!("for w{id}")),
            "w{id} removed {removed:?}"
        );
        ensure!(m.get(&id)? == Some(format!("w{id}")));
        ensure!(!m.contains_key(&(100 + id))?);
    }
    let mut keys = m.keys()?;
    keys.sort_unstable();
    ensure!(keys == [0, 1, 2, 3], "{keys:?}");
    Ok(())
}

/// A child SIGKILLed while inserting 40 KB values (some frames cut off
/// mid-write): every value in the map is one whole insert, and the map
/// keeps working.
fn process_killed_mid_operation_leaves_the_map_consistent() -> anyhow::Result<()> {
    let m = SharedMap::<u32, Vec<u32>>::new();
    let ready = SimpleQueue::new();
    let child = Process::spawn(SCRIBBLE, (m.clone(), ready.clone()))?.watched();
    ready.get()?;
    child.kill();
    let items = m.items()?;
    ensure!(items.len() == 8, "{} keys", items.len());
    for (k, v) in &items {
        let first = *v.first().context("an empty value")?;
        if v.len() != WIDTH || v.iter().any(|x| *x != first) || first % 8 != *k {
            bail!("key {k}: a torn value ({} items, first {first})", v.len());
        }
    }
    ensure!(m.insert(&99, &vec![1])?.is_none());
    ensure!(m.remove(&99)? == Some(vec![1]));
    Ok(())
}

/// The master moves its only handle into a child: the map lives while the
/// child holds it (the child reads what the master wrote), and is freed
/// once the child has let go.
fn map_lives_while_a_child_holds_it_and_is_freed_after() -> anyhow::Result<()> {
    let m = SharedMap::<u8, u8>::new();
    m.insert(&1, &7)?;
    let id = m.id();
    let ready = SimpleQueue::new();
    let go = Event::new();
    let child = Process::spawn(HOLD_THEN_READ, (m, ready.clone(), go.clone()))?.watched();
    ready.get()?;
    ensure!(hub_holds(id), "freed while the child holds a handle");
    go.set()?;
    ensure!(child.join()? == Some(7), "the child's read");
    ensure!(!hub_holds(id), "the map outlived every handle");
    Ok(())
}

//! `SharedMemory`, `Value` and `Array` across real processes (issue 15):
//! a counter under the shared lock ends exact, a 256 MiB buffer written
//! by a worker is read by the master, a holder killed with the lock held
//! hands it on as owner-died, and the memory is freed once every handle
//! is gone.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a test program reports progress

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::*;
use procpool::{Array, Event, LockError, Pool, Process, SharedMemory, SimpleQueue, Task, Value};
use procpool_ipc::shared_memory::hub_holds;

const LIMIT: Duration = Duration::from_secs(180);
/// Long enough for any process start under load; only hangs reach it.
const PATIENCE: Duration = Duration::from_secs(30);
/// The big buffer: 256 MiB.
const BIG: usize = 256 << 20;
/// A buffer length no other segment has, to find its descriptor.
const ODD_LEN: usize = 3_333_333;

/// `n` times: lock, load, store + 1, unlock.
const INCREMENT: Task<(Value<u64>, u64), ()> = Task::new("increment");
/// Fills the buffer with `pattern(offset)`, 1 MiB at a time.
const FILL: Task<SharedMemory, ()> = Task::new("fill");
/// Takes the lock, stores 7, says so, then waits to be killed.
const HOLD_LOCK: Task<(Value<u64>, SimpleQueue<()>), ()> = Task::new("hold_lock");
/// Doubles every element of the array, then says it holds the buffer and
/// waits for the event.
const DOUBLE_AND_HOLD: Task<(Array<u32>, SharedMemory, SimpleQueue<()>, Event), ()> =
    Task::new("double_and_hold");

fn pattern(offset: usize) -> u8 {
    (offset % 251) as u8 ^ (offset >> 20) as u8
}

fn shm_registry() -> procpool::Registry {
    registry()
        .task(INCREMENT, |(v, n)| {
            for _ in 0..n {
                let _g = v.lock().expect("lock");
                v.store(v.load() + 1);
            }
        })
        .task(FILL, |buf| {
            let mut chunk = vec![0u8; 1 << 20];
            for start in (0..buf.len()).step_by(chunk.len()) {
                for (i, b) in chunk.iter_mut().enumerate() {
                    *b = pattern(start + i);
                }
                buf.write_at(start, &chunk).expect("write");
            }
        })
        .task(HOLD_LOCK, |(v, ready)| {
            let guard = v.lock().expect("lock");
            v.store(7);
            ready.put(()).expect("ready");
            loop {
                std::thread::park();
                let _ = &guard;
            }
        })
        .task(DOUBLE_AND_HOLD, |(a, _buf, ready, go)| {
            for i in 0..a.len() {
                a.set(i, a.get(i).expect("get") * 2).expect("set");
            }
            ready.put(()).expect("ready");
            go.wait_timeout(PATIENCE).expect("wait for go");
        })
}

fn main() {
    procpool::init(shm_registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        four_workers_increment_a_value_under_its_lock,
        a_worker_fills_256_mib_the_master_reads_it,
        holder_killed_with_the_lock_held_hands_it_on_as_owner_died,
        buffer_lives_while_a_child_holds_it_and_is_freed_after,
        out_of_bounds_is_a_typed_error,
        a_worker_cannot_map_a_buffer_without_a_descriptor_channel,
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// 4 worker processes increment one `Value<u64>` 100,000 times each under
/// its lock (in shared memory, no hub round trip): no update is lost.
fn four_workers_increment_a_value_under_its_lock() -> anyhow::Result<()> {
    let v = Value::new(0u64)?;
    let pool = Pool::new(4)?.watched();
    pool.map_chunked(INCREMENT, (0..4).map(|_| (v.clone(), 100_000)), 1)?;
    ensure!(v.load() == 400_000, "ended at {}", v.load());
    Ok(())
}

/// A worker writes 256 MiB into a buffer the master created; the master
/// reads every byte back. The task's input is the handle (a few bytes)
/// and its result is `()`: the frames on the worker's socket are tiny,
/// and the bytes can only have come through the shared mapping.
fn a_worker_fills_256_mib_the_master_reads_it() -> anyhow::Result<()> {
    let buf = SharedMemory::new(BIG)?;
    let pool = Pool::new(1)?.watched();
    pool.apply(FILL, buf.clone())?;
    let mut chunk = vec![0u8; 1 << 20];
    for start in (0..BIG).step_by(chunk.len()) {
        buf.read_at(start, &mut chunk)?;
        if let Some(i) = (0..chunk.len()).find(|&i| chunk[i] != pattern(start + i)) {
            bail!(
                "byte {} is {}, not {}",
                start + i,
                chunk[i],
                pattern(start + i)
            );
        }
    }
    Ok(())
}

/// A child SIGKILLed while holding a value's lock: the master's next
/// `lock()` returns `OwnerDied` with the guard (no deadlock), sees what
/// the child stored, and the lock works afterwards.
fn holder_killed_with_the_lock_held_hands_it_on_as_owner_died() -> anyhow::Result<()> {
    let v = Value::new(0u64)?;
    let ready = SimpleQueue::new();
    let child = Process::spawn(HOLD_LOCK, (v.clone(), ready.clone()))?.watched();
    ready.get()?;
    child.kill();
    let start = Instant::now();
    let v2 = v.clone();
    let (died, _) = within("lock after the holder died", PATIENCE, move || {
        match v2.lock() {
            Err(LockError::OwnerDied(g)) => {
                v2.store(v2.load() + 1);
                drop(g);
                true
            }
            Ok(_) => false,
            Err(_) => false,
        }
    })?;
    println!("owner-died after {:?}", start.elapsed());
    ensure!(died, "the next acquirer was not told the owner died");
    ensure!(v.load() == 8, "value {}", v.load());
    let g = v.lock().ok().context("lock after recovery")?;
    drop(g);
    Ok(())
}

fn memfds_of_len(len: usize) -> anyhow::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let path = entry?.path();
        let Ok(target) = std::fs::read_link(&path) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("/memfd:") {
            continue;
        }
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == len as u64) {
            n += 1;
        }
    }
    Ok(n)
}

/// The master moves its only handles into a child: the buffers live while
/// the child holds them (it doubles what the master wrote), and once the
/// child has let go the hub frees them: no descriptor of that length is
/// left in the master.
fn buffer_lives_while_a_child_holds_it_and_is_freed_after() -> anyhow::Result<()> {
    let a = Array::from_slice(&[1u32, 2, 3])?;
    let buf = SharedMemory::new(ODD_LEN)?;
    let (a_id, buf_id) = (a.shared_memory().id(), buf.id());
    if cfg!(target_os = "linux") {
        ensure!(memfds_of_len(ODD_LEN)? == 1, "the buffer's descriptor");
    }
    let ready = SimpleQueue::new();
    let go = Event::new();
    let child =
        Process::spawn(DOUBLE_AND_HOLD, (a.clone(), buf, ready.clone(), go.clone()))?.watched();
    ready.get()?;
    ensure!(hub_holds(buf_id), "freed while the child holds a handle");
    ensure!(a.to_vec() == [2, 4, 6], "{:?}", a.to_vec());
    drop(a);
    go.set()?;
    child.join()?;
    let deadline = Instant::now() + PATIENCE;
    while hub_holds(buf_id) || hub_holds(a_id) {
        ensure!(Instant::now() < deadline, "a buffer outlived every handle");
        std::thread::sleep(Duration::from_millis(10));
    }
    if cfg!(target_os = "linux") {
        ensure!(
            memfds_of_len(ODD_LEN)? == 0,
            "the descriptor outlived the buffer"
        );
    }
    Ok(())
}

/// Reads and writes outside the buffer fail with the range, and change
/// nothing.
fn out_of_bounds_is_a_typed_error() -> anyhow::Result<()> {
    let buf = SharedMemory::new(8)?;
    match buf.write_at(6, b"abc") {
        Err(procpool::SharedMemoryError::OutOfBounds {
            offset: 6,
            len: 3,
            buffer_len: 8,
        }) => {}
        other => bail!("{other:?}"),
    }
    ensure!(buf.to_vec() == [0; 8]);
    let a = Array::<u64>::new(2)?;
    ensure!(a.get(2).is_err() && a.set(2, 1).is_err());
    Ok(())
}

/// Without a descriptor channel the worker's task fails to decode its
/// input with a message naming why, instead of working on memory that is
/// not shared. It runs when `PROCPOOL_SHM_THRESHOLD=off` (which leaves
/// local connections without the channel), else it passes without
/// checking.
fn a_worker_cannot_map_a_buffer_without_a_descriptor_channel() -> anyhow::Result<()> {
    let off = std::env::var("PROCPOOL_SHM_THRESHOLD").is_ok_and(|v| v == "off" || v == "0");
    if !off {
        println!("not run: local connections have descriptor channels here");
        return Ok(());
    }
    let buf = SharedMemory::new(4096)?;
    let pool = Pool::new(1)?.watched();
    match pool.apply(FILL, buf) {
        Err(e) => {
            let msg = format!("{:#}", anyhow::Error::from(e));
            println!("{msg}");
            ensure!(msg.contains("descriptor channel"), "{msg}");
        }
        Ok(()) => bail!("a worker mapped a buffer without a descriptor channel"),
    }
    Ok(())
}

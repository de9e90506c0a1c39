//! Review of queues on lanes (issue 11): `len`/`empty` count items in the
//! ring and in the hub after a child's puts overflowed the ring, and big
//! items (64 KiB, and fragmented ones over 512 KiB) pass intact and in
//! order between a child and the master.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a test program reports progress

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::*;
use procpool::{GetError, Process, Queue, Task};
use serde_bytes::ByteBuf;

const LIMIT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(20);

/// `(seq, payload)`.
type Item = (u32, ByteBuf);

/// Puts `n` items of `len` bytes each; returns whether it used the lane.
const PUT: Task<(Queue<Item>, u32, u32), bool> = Task::new("qreview_put");

fn payload(seq: u32, len: usize) -> ByteBuf {
    ByteBuf::from(
        (0..len)
            .map(|i| (seq as usize + i) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Gets with a blocking `get` until the queue ends; returns how many
/// items it got, or the error that was not the end.
const GET_TO_END: Task<Queue<Item>, Result<u32, String>> = Task::new("qreview_get_to_end");

fn registry() -> procpool::Registry {
    common::registry()
        .task(PUT, |(q, n, len)| {
            for seq in 0..n {
                q.put((seq, payload(seq, len as usize))).expect("put");
            }
            q.uses_lane()
        })
        .task(GET_TO_END, |q| {
            let mut n = 0;
            loop {
                match q.get() {
                    Ok(_) => n += 1,
                    Err(GetError::Closed) => return Ok(n),
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
}

fn main() {
    procpool::init(registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        len_counts_ring_and_hub_items,
        big_and_fragmented_items_pass_intact_in_order,
        close_ends_getters_blocked_in_children,
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// Gets `n` items, checking order and content, then checks the queue is
/// empty.
fn get_all(q: &Queue<Item>, n: u32, len: usize) -> anyhow::Result<()> {
    for want in 0..n {
        let (seq, p) = q.get_timeout(WAIT)?;
        ensure!(seq == want, "got item {seq}, expected {want}");
        ensure!(p == payload(seq, len), "item {seq} damaged");
    }
    ensure!(q.is_empty()?, "queue not empty after every item was got");
    ensure!(q.len()? == 0, "len {} after every item was got", q.len()?);
    Ok(())
}

/// A child puts 2,000 items of 2 KiB (more than the 1 MiB ring holds, so
/// some settle into the hub) and exits before anyone gets: `len` says
/// 2,000, and falls to 0 as the master gets them in order.
fn len_counts_ring_and_hub_items() -> anyhow::Result<()> {
    let q = Queue::<Item>::new();
    let (n, len) = (2_000u32, 2048usize);
    let lane = Process::spawn(PUT, (q.clone(), n, len as u32))?.join()?;
    ensure!(lane || cfg!(not(unix)), "the child did not use the lane");
    ensure!(!q.is_empty()?, "queue empty after 2,000 puts returned");
    ensure!(q.len()? == n as usize, "len {} after {n} puts", q.len()?);
    get_all(&q, n, len)
}

/// 64 KiB items and 600 KiB items (fragmented) from a child arrive
/// intact and in order.
fn big_and_fragmented_items_pass_intact_in_order() -> anyhow::Result<()> {
    for (n, len) in [(40u32, 64 * 1024usize), (6, 600 * 1024)] {
        let q = Queue::<Item>::new();
        let child = Process::spawn(PUT, (q.clone(), n, len as u32))?;
        get_all(&q, n, len)?;
        child.join()?;
    }
    Ok(())
}

/// Two children block in `get` on a lane queue; the master puts 300
/// items, then closes the queue: both getters see the end, and together
/// got every item.
fn close_ends_getters_blocked_in_children() -> anyhow::Result<()> {
    let q = Queue::<Item>::new();
    let mut getters = vec![
        Process::spawn(GET_TO_END, q.clone())?,
        Process::spawn(GET_TO_END, q.clone())?,
    ];
    for seq in 0..300 {
        q.put((seq, payload(seq, 100)))?;
    }
    q.close()?;
    let mut total = 0;
    for g in &mut getters {
        match g.join_timeout(WAIT) {
            Some(Ok(Ok(n))) => total += n,
            Some(Ok(Err(e))) => anyhow::bail!("a getter failed: {e}"),
            Some(Err(e)) => anyhow::bail!("a getter died: {e}"),
            None => {
                for g in &getters {
                    g.kill();
                }
                anyhow::bail!("a getter blocked in get did not see close within {WAIT:?}");
            }
        }
    }
    ensure!(total == 300, "getters got {total} of 300 items");
    Ok(())
}

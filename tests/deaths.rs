//! A worker's death fails (or retries) only the item that was running
//! (procpool issue 14): finished items keep their results, the others run
//! again.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

mod common;

use std::time::Duration;

use anyhow::{Context, ensure};
use common::*;
use procpool::{Error, Pool, TaskError};

const LIMIT: Duration = Duration::from_secs(60);

fn main() {
    procpool::init(registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        death_fails_only_the_running_item_of_a_chunk,
        death_with_retries_fails_only_the_running_item,
        death_under_automatic_chunks_fails_one_item,
        slow_finished_item_keeps_its_result,
        errors_name_their_input,
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// Inputs for `ABORT_ON_13` where item `bad` aborts its worker.
fn inputs(n: u64, bad: u64) -> Vec<u64> {
    (0..n)
        .map(|i| if i == bad { 13 } else { i + 1000 })
        .collect()
}

/// The indexes of the failed results; every failure must be a death.
fn failed(results: &[Result<u64, Error>]) -> anyhow::Result<Vec<usize>> {
    let mut dead = Vec::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => ensure!(*v == i as u64 + 1000, "item {i}: wrong value {v}"),
            Err(e) => {
                ensure!(e.is_worker_died(), "item {i}: {e:?}");
                dead.push(i);
            }
        }
    }
    Ok(dead)
}

fn death_fails_only_the_running_item_of_a_chunk() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(2).chunk_size(10).build()?.watched();
    let got: Vec<_> = pool.imap(ABORT_ON_13, inputs(100, 42))?.collect();
    ensure!(got.len() == 100);
    let dead = failed(&got)?;
    ensure!(dead == [42], "failed items {dead:?}");
    Ok(())
}

fn death_with_retries_fails_only_the_running_item() -> anyhow::Result<()> {
    let pool = Pool::builder()
        .workers(2)
        .chunk_size(10)
        .retries(1)
        .build()?
        .watched();
    let got: Vec<_> = pool.imap(ABORT_ON_13, inputs(100, 42))?.collect();
    let dead = failed(&got)?;
    ensure!(dead == [42], "failed items {dead:?}");
    Ok(())
}

fn death_under_automatic_chunks_fails_one_item() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(2).build()?.watched();
    let got: Vec<_> = pool
        .imap_unordered(ABORT_ON_13, inputs(2000, 1500))?
        .collect();
    ensure!(got.len() == 2000);
    let dead = got.iter().filter(|r| r.is_err()).count();
    ensure!(dead == 1, "{dead} items failed");
    // `map` with its automatic chunks: the first error is the death.
    let e = pool.map(ABORT_ON_13, inputs(2000, 700)).unwrap_err();
    ensure!(e.is_worker_died(), "{e:?}");
    let ok = pool.map(ABORT_ON_13, inputs(2000, 3000))?;
    ensure!(ok.len() == 2000);
    Ok(())
}

/// An item that ran long before the death was reported at once: its
/// result stays, only the item that died fails.
fn slow_finished_item_keeps_its_result() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(1).chunk_size(3).build()?.watched();
    // (sleep ms, then abort when the second element is 13)
    let got: Vec<_> = pool
        .imap(SLEEP_THEN_ABORT_ON_13, [(20, 1), (0, 13), (0, 3)])?
        .collect();
    ensure!(matches!(got[0], Ok(1)), "{:?}", got[0]);
    ensure!(
        matches!(&got[1], Err(e) if e.is_worker_died()),
        "{:?}",
        got[1]
    );
    ensure!(matches!(got[2], Ok(3)), "{:?}", got[2]);
    Ok(())
}

/// Every per-input error names the input's index, in `Display` too; pool
/// stops do not. Failed before: the errors carried no index.
fn errors_name_their_input() -> anyhow::Result<()> {
    let pool = Pool::builder()
        .workers(2)
        .chunk_size(4)
        .task_timeout(Duration::from_secs(2))
        .build()?
        .watched();
    // A panic, through `map`.
    let e = pool.map(PANIC_ON_13, 0..40u64).unwrap_err();
    ensure!(e.index() == Some(13) && e.is_panic(), "{e:?}");
    ensure!(e.to_string().starts_with("input 13: "), "{e}");
    // A returned error, through `imap_unordered`.
    let words = ["1", "2", "x", "4", "5"];
    let got: Vec<_> = pool
        .imap_unordered(PARSE, words.map(String::from))?
        .collect();
    let errors: Vec<_> = got.iter().filter_map(|r| r.as_ref().err()).collect();
    ensure!(errors.len() == 1, "{got:?}");
    ensure!(errors[0].index() == Some(2), "{:?}", errors[0]);
    ensure!(
        matches!(errors[0].inner(), Error::Task(TaskError::Failed { .. })),
        "{:?}",
        errors[0]
    );
    // A death, through `imap`.
    let got: Vec<_> = pool.imap(ABORT_ON_13, inputs(30, 21))?.collect();
    let e = got[21].as_ref().err().context("item 21 must fail")?;
    ensure!(e.index() == Some(21) && e.is_worker_died(), "{e:?}");
    ensure!(e.to_string().contains("input 21"), "{e}");
    // A timeout, through `apply` (index 0).
    let e = pool.apply(SLEEP_MS, 600_000).unwrap_err();
    ensure!(e.index() == Some(0), "{e:?}");
    ensure!(matches!(e.inner(), Error::Timeout { .. }), "{e:?}");
    ensure!(e.to_string().starts_with("input 0: "), "{e}");
    Ok(())
}

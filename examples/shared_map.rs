//! A word count shared by a pool: each worker adds the words of its lines
//! to one `SharedMap` (Python's `Manager().dict()`), with `fetch_add`
//! where Python code would take a lock around `d[w] = d.get(w, 0) + 1`,
//! and keeps the longest word seen with a `compare_and_swap` loop (any
//! read-modify-write works this way: the hub cannot run a closure). The
//! master checks the totals against its own count.
//!
//! ```text
//! cargo run --example shared_map
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

use std::collections::HashMap;

use procpool::{Pool, Registry, SharedMap, Task};

/// Word → occurrences, and "longest" in a map of its own.
type Counts = SharedMap<String, u64>;
type Longest = SharedMap<&'static str, String>;

/// Counts the words of one line into the shared maps.
const COUNT_LINE: Task<(Counts, Longest, String), ()> = Task::new("count_line");

fn count_line((counts, longest, line): (Counts, Longest, String)) {
    for word in line.split_whitespace() {
        counts.fetch_add(&word.to_owned(), 1).expect("fetch_add");
        // Longer than what is there? Swap, unless someone changed it since
        // we looked; then look again.
        let mut seen = longest.get(&"longest").expect("get");
        while seen.as_ref().is_none_or(|s| word.len() > s.len()) {
            let new = word.to_owned();
            match longest
                .compare_and_swap(&"longest", seen.as_ref(), Some(&new))
                .expect("compare_and_swap")
            {
                Ok(()) => break,
                Err(actual) => seen = actual,
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    procpool::init(Registry::new().task(COUNT_LINE, count_line));

    let text = "the quick brown fox jumps over the lazy dog \
                and the dog sleeps while the fox runs through the extraordinarily quiet wood";
    let words: Vec<&str> = text.split_whitespace().collect();
    // 200 lines of 3 to 12 words each, starting at every word in turn.
    let lines: Vec<String> = (0..200)
        .map(|i| {
            let line: Vec<&str> = (0..3 + i % 10)
                .map(|j| words[(i + j) % words.len()])
                .collect();
            line.join(" ")
        })
        .collect();

    let counts = Counts::new();
    let longest = Longest::new();
    let pool = Pool::new(4)?;
    pool.map(
        COUNT_LINE,
        lines
            .iter()
            .map(|l| (counts.clone(), longest.clone(), l.clone())),
    )?;

    let mut want: HashMap<String, u64> = HashMap::new();
    for word in lines.iter().flat_map(|l| l.split_whitespace()) {
        *want.entry(word.to_owned()).or_default() += 1;
    }
    let got: HashMap<String, u64> = counts.items()?.into_iter().collect();
    anyhow::ensure!(got == want, "shared counts {got:?}, expected {want:?}");
    let total: u64 = got.values().sum();
    let longest = longest.get(&"longest")?.unwrap_or_default();
    let want_longest = want.keys().map(String::len).max().unwrap_or(0);
    anyhow::ensure!(longest.len() == want_longest, "longest {longest:?}");
    println!(
        "counted {total} words, {} distinct, as the master counts them; longest: {longest}",
        got.len()
    );
    Ok(())
}

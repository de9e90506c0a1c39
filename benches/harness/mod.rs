//! The harness: options, child processes with time limits, interleaved
//! repetitions, medians, the table.

mod floor;
mod ring_floor;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use crate::{Better, Case, Ctx, Side, median, spin};

/// Tells a re-executed copy of this binary what it is: `case` (one
/// procpool measurement), `floor_peer` (the socketpair floor's far end) or
/// `ring_peer` (a producer or consumer of the shared ring's floor).
const ROLE_ENV: &str = "PROCPOOL_BENCH_ROLE";

/// Where the Python programs live.
fn python_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python/compare.py")
}

fn python_exe() -> String {
    env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

struct Options {
    quick: bool,
    reps: usize,
    only: Vec<String>,
    timeout: Duration,
}

const USAGE: &str = "\
usage: cargo bench --bench compare [-- [--quick] [--reps N] [--only SUBSTR]... [--timeout SECS]]
  --quick        reduced sizes and 3 runs per case (under a minute)
  --reps N       runs per case (default 5, quick 3)
  --only SUBSTR  only the cases whose key or name contains SUBSTR (repeatable;
                 'floor' selects the socketpair and shared ring floors)
  --timeout SECS time limit for one run of one side (default 300, quick 30)
env: PYTHON (default python3)";

fn options() -> Result<Options, String> {
    let mut quick = false;
    let mut reps = None;
    let mut only = Vec::new();
    let mut timeout = None;
    let mut args = env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => quick = true,
            // cargo bench passes --bench to a harness = false target.
            "--bench" => {}
            "--reps" => {
                let v = value("--reps")?;
                reps = Some(v.parse().map_err(|_| format!("--reps {v:?}"))?);
            }
            "--only" => only.push(value("--only")?),
            "--timeout" => {
                let v = value("--timeout")?;
                let secs: f64 = v.parse().map_err(|_| format!("--timeout {v:?}"))?;
                timeout = Some(Duration::from_secs_f64(secs));
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Options {
        quick,
        reps: reps.unwrap_or(if quick { 3 } else { 5 }).max(1),
        only,
        timeout: timeout.unwrap_or(Duration::from_secs(if quick { 30 } else { 300 })),
    })
}

/// Entry point for every process of this binary that is not a worker.
pub(crate) fn main(cases: &[Case]) -> i32 {
    match env::var(ROLE_ENV).as_deref() {
        Ok("case") => child_case(cases),
        Ok("floor_peer") => floor::peer(),
        Ok("ring_peer") => ring_floor::peer(),
        _ => match options() {
            Ok(opts) => run(cases, &opts),
            Err(e) => {
                if !e.is_empty() {
                    eprintln!("{e}");
                }
                eprintln!("{USAGE}");
                if e.is_empty() { 0 } else { 2 }
            }
        },
    }
}

/// A re-executed child: run one case's procpool side, print its value.
fn child_case(cases: &[Case]) -> i32 {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some(case) = args.first().and_then(|k| cases.iter().find(|c| c.key == k)) else {
        eprintln!("unknown case {:?}", args.first());
        return 2;
    };
    match (case.run)(&args[1..]) {
        Ok(v) => {
            println!("{v}");
            0
        }
        Err(e) => {
            eprintln!("{}: {e:#}", case.key);
            1
        }
    }
}

/// The measurements of one row, each side's values or why it failed.
struct Row {
    label: String,
    unit: &'static str,
    better: Better,
    floor: bool,
    sides: [Result<Vec<f64>, String>; 2],
}

impl Row {
    fn new(label: String, unit: &'static str, better: Better, floor: bool) -> Row {
        Row {
            label,
            unit,
            better,
            floor,
            sides: [Ok(Vec::new()), Ok(Vec::new())],
        }
    }

    fn record(&mut self, side: usize, r: Result<f64, String>) {
        let slot = &mut self.sides[side];
        match (slot, r) {
            (Ok(v), Ok(x)) => v.push(x),
            (slot @ Ok(_), Err(e)) => *slot = Err(e),
            (Err(_), _) => {}
        }
    }

    fn failed(&self, side: usize) -> bool {
        self.sides[side].is_err()
    }

    fn median(&self, side: usize) -> Option<f64> {
        match &self.sides[side] {
            Ok(v) if !v.is_empty() => Some(median(&mut v.clone())),
            _ => None,
        }
    }

    fn line(&self) -> String {
        let cell = |side: usize| match (&self.sides[side], self.median(side)) {
            (Err(_), _) => "FAILED".to_string(),
            (_, Some(m)) => fmt_value(m),
            (_, None) => "-".to_string(),
        };
        if self.floor {
            return format!("{}\t{}\t-\t{}\t-", self.label, cell(0), self.unit);
        }
        let ratio = match (self.median(0), self.median(1)) {
            (Some(pp), Some(py)) => {
                let (num, den) = match self.better {
                    Better::Higher => (pp, py),
                    Better::Lower => (py, pp),
                };
                if den > 0.0 {
                    format!("{:.2}", num / den)
                } else {
                    "inf".to_string()
                }
            }
            _ => "-".to_string(),
        };
        format!(
            "{}\t{}\t{}\t{}\t{}",
            self.label,
            cell(0),
            cell(1),
            self.unit,
            ratio
        )
    }
}

/// About three significant digits, no exponent.
fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 {
        return "0".into();
    }
    let digits = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{v:.digits$}")
}

fn selected(opts: &Options, key: &str, label: &str) -> bool {
    opts.only.is_empty()
        || opts
            .only
            .iter()
            .any(|s| key.contains(s.as_str()) || label.contains(s.as_str()))
}

fn run(cases: &[Case], opts: &Options) -> i32 {
    let started = Instant::now();
    let python_spin = calibrate_python(opts.timeout);
    let calibration = started.elapsed();
    let ctx = Ctx {
        quick: opts.quick,
        rust_spin_20ms: calibrate_rust(),
        python_spin_20ms: *python_spin.as_ref().unwrap_or(&0),
    };
    eprintln!(
        "calibrated 20 ms ({:.1} s): spin({}) in Rust, {} in Python; {} runs per case{}",
        calibration.as_secs_f64(),
        ctx.rust_spin_20ms,
        python_spin
            .as_ref()
            .map_or_else(|e| format!("failed ({e})"), |n| format!("spin({n})")),
        opts.reps,
        if opts.quick { ", quick" } else { "" }
    );
    let cases: Vec<&Case> = cases
        .iter()
        .filter(|c| selected(opts, c.key, &(c.label)(&ctx)))
        .collect();
    let floors: Vec<&floor::FloorCase> = floor::CASES
        .iter()
        .filter(|f| selected(opts, "floor", f.label))
        .collect();
    let mut rows: Vec<Row> = cases
        .iter()
        .map(|c| Row::new((c.label)(&ctx), c.unit, c.better, false))
        .chain(
            floors
                .iter()
                .map(|f| Row::new(f.label.into(), f.unit, f.better, true)),
        )
        .collect();
    if let Err(e) = &python_spin {
        for row in rows.iter_mut().filter(|r| !r.floor) {
            row.sides[1] = Err(format!("python unavailable: {e}"));
        }
    }

    for rep in 0..opts.reps {
        for (case, row) in cases.iter().zip(rows.iter_mut()) {
            // Alternate which side goes first, so drift hits both alike.
            let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                if row.failed(side) {
                    continue;
                }
                let t = Instant::now();
                let r = run_side(case, &ctx, side, opts.timeout);
                match &r {
                    Ok(v) => eprintln!(
                        "[{}/{}] {} {}: {} {} ({:.1} s)",
                        rep + 1,
                        opts.reps,
                        row.label,
                        ["procpool", "python"][side],
                        fmt_value(*v),
                        row.unit,
                        t.elapsed().as_secs_f64()
                    ),
                    Err(e) => eprintln!(
                        "[{}/{}] {} {}: FAILED: {e}",
                        rep + 1,
                        opts.reps,
                        row.label,
                        ["procpool", "python"][side]
                    ),
                }
                row.record(side, r);
            }
        }
        for (f, row) in floors.iter().zip(rows.iter_mut().skip(cases.len())) {
            if row.failed(0) {
                continue;
            }
            let t = Instant::now();
            let r = (f.run)(&ctx, opts.timeout);
            match &r {
                Ok(v) => eprintln!(
                    "[{}/{}] {}: {} {} ({:.1} s)",
                    rep + 1,
                    opts.reps,
                    f.label,
                    fmt_value(*v),
                    f.unit,
                    t.elapsed().as_secs_f64()
                ),
                Err(e) => eprintln!("[{}/{}] {}: FAILED: {e}", rep + 1, opts.reps, f.label),
            }
            row.record(0, r);
        }
    }

    let mut table = String::from("case\tprocpool\tpython\tunit\tratio\n");
    for row in &rows {
        table.push_str(&row.line());
        table.push('\n');
    }
    print!("{table}");
    let path = target_dir().join("bench").join("compare.tsv");
    match fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
        .and_then(|()| fs::write(&path, &table))
    {
        Ok(()) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    for row in &rows {
        for side in 0..2 {
            if let Err(e) = &row.sides[side] {
                eprintln!("{} {} failed: {e}", row.label, ["procpool", "python"][side]);
            }
        }
    }
    targets(&rows);
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    if rows
        .iter()
        .any(|r| r.failed(0) || (!r.floor && r.failed(1)))
    {
        1
    } else {
        0
    }
}

/// The targets, checked against this run (on stderr: not part of the
/// table).
fn targets(rows: &[Row]) {
    let find = |part: &str| rows.iter().find(|r| r.label.contains(part));
    let pp = |part: &str| find(part).and_then(|r| r.median(0));
    let ratio = |part: &str| {
        let r = find(part)?;
        let (a, b) = (r.median(0)?, r.median(1)?);
        Some(if r.better == Better::Higher {
            a / b
        } else {
            b / a
        })
    };
    let apply_vs_floor = pp("apply_round_trip")
        .zip(pp("socketpair_512B_round_trip"))
        .map(|(a, f)| a / f);
    let pipe_vs_floor = pp("pipe_512B_one_way")
        .zip(pp("socketpair_512B_one_way"))
        .map(|(p, f)| p / f);
    type Check<'a> = (&'a str, Option<f64>, &'a str, fn(f64) -> bool);
    let checks: [Check<'_>; 10] = [
        (
            "Queue 512 B, procpool/python ops/s",
            ratio("queue_512B_1_producer"),
            ">= 10",
            |v| v >= 10.0,
        ),
        (
            "Remote queue 512 B over TCP, procpool/python ops/s (issue 12)",
            ratio("remote_queue_512B"),
            ">= 20",
            |v| v >= 20.0,
        ),
        (
            "Pipe 512 B one way / socketpair one way",
            pipe_vs_floor,
            ">= 0.5",
            |v| v >= 0.5,
        ),
        (
            "JoinableQueue 1 producer 2 consumers, procpool/python ops/s",
            ratio("joinable_queue"),
            ">= 10",
            |v| v >= 10.0,
        ),
        (
            "map 1M auto chunk, python/procpool time",
            ratio("map_1M"),
            ">= 4",
            |v| v >= 4.0,
        ),
        (
            "map chunk 1, procpool us per task",
            pp("chunk1"),
            "<= 3",
            |v| v <= 3.0,
        ),
        (
            "apply round trip / socketpair round trip",
            apply_vs_floor,
            "<= 2",
            |v| v <= 2.0,
        ),
        (
            "start-up, python/procpool time",
            ratio("startup"),
            ">= 2",
            |v| v >= 2.0,
        ),
        (
            "imap master RSS growth, MiB",
            pp("imap_unordered"),
            "<= 10 at 10M items",
            |v| v <= 10.0,
        ),
        ("CPU-bound speedup, 2 workers", pp("cpu_"), ">= 1.9", |v| {
            v >= 1.9
        }),
    ];
    eprintln!("targets (issue 7):");
    for (what, value, goal, ok) in checks {
        match value {
            Some(v) => eprintln!(
                "  {what}: {} (target {goal}) {}",
                fmt_value(v),
                if ok(v) { "met" } else { "MISSED" }
            ),
            None => eprintln!("  {what}: not measured"),
        }
    }
}

fn target_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    match env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

/// Iterations of [`spin`] that take 20 ms on this machine (the fastest of a
/// few tries, so that load elsewhere does not shorten the tasks).
fn calibrate_rust() -> u64 {
    let k = 2_000_000u64;
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        std::hint::black_box(spin(std::hint::black_box(k)));
        best = best.min(t.elapsed().as_secs_f64());
    }
    (0.020 * k as f64 / best) as u64
}

fn calibrate_python(timeout: Duration) -> Result<u64, String> {
    let mut cmd = Command::new(python_exe());
    cmd.arg(python_script()).args(["calibrate", "20"]);
    let v = run_child(cmd, timeout)?;
    if v >= 1.0 {
        Ok(v as u64)
    } else {
        Err(format!("calibration printed {v}"))
    }
}

fn run_side(case: &Case, ctx: &Ctx, side: usize, timeout: Duration) -> Result<f64, String> {
    let cmd = if side == 0 {
        let exe = env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.env(ROLE_ENV, "case")
            .arg(case.key)
            .args((case.args)(ctx, Side::Procpool));
        cmd
    } else {
        let mut cmd = Command::new(python_exe());
        cmd.arg(python_script())
            .arg(case.key)
            .args((case.args)(ctx, Side::Python));
        cmd
    };
    run_child(cmd, timeout)
}

/// Runs `cmd` in a process group of its own and returns the number on the
/// last line of its stdout. Past `timeout` the whole group is killed; so is
/// anything the child left behind.
fn run_child(mut cmd: Command, timeout: Duration) -> Result<f64, String> {
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let pgid = child.id();
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                kill_group(pgid);
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "timed out after {} s, killed",
                    timeout.as_secs_f64()
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                kill_group(pgid);
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("wait: {e}"));
            }
        }
    };
    let left = group_members(pgid);
    if left > 0 {
        kill_group(pgid);
    }
    let grace = Duration::from_secs(10);
    let out = stdout.recv_timeout(grace).unwrap_or_default();
    let err = stderr.recv_timeout(grace).unwrap_or_default();
    let tail = || {
        let lines: Vec<&str> = err.lines().collect();
        lines[lines.len().saturating_sub(6)..].join(" | ")
    };
    let status = status.map_err(|e| format!("{e}; stderr: {}", tail()))?;
    if left > 0 && status.success() {
        return Err(format!(
            "left {left} process(es) behind in its group (killed)"
        ));
    }
    if !status.success() {
        return Err(format!("{status}; stderr: {}", tail()));
    }
    let last = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    last.trim()
        .parse()
        .map_err(|_| format!("printed {last:?}, not a number; stderr: {}", tail()))
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        });
    }
    rx
}

/// Live (not zombie) processes in process group `pgid`, from `/proc`; 0
/// where there is no `/proc`.
fn group_members(pgid: u32) -> usize {
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // "pid (comm) state ppid pgrp ...": comm may hold spaces.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let mut f = rest.split_whitespace();
            let state = f.next();
            let pgrp = f.nth(1).and_then(|p| p.parse::<u32>().ok());
            state != Some("Z") && pgrp == Some(pgid)
        })
        .count()
}

/// SIGKILL to every process in group `pgid` (the shell's `kill`: std has no
/// signal API and this benchmark takes no dependencies).
fn kill_group(pgid: u32) {
    let _ = Command::new("sh")
        .args(["-c", "kill -9 \"-$0\" 2>/dev/null", &pgid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `timeout` for `child` to exit; kills it past that.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("peer exited with {s}")),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("peer did not exit, killed".into());
            }
        }
    }
}

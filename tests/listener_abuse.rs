//! The remote listener under abuse by unauthenticated peers (issue 12):
//! garbage, a 4 GiB length header, a byte every few seconds, 500 idle
//! connections, and descriptor exhaustion. The master is a child process
//! (this binary re-run with [`MASTER_ENV`]) so that its threads, CPU time
//! and memory can be read from `/proc/<pid>` without the test harness's own
//! threads in the count. Each check uses a generous bound: what is tested
//! is that costs stay bounded, not how fast anything is.
//!
//! Linux only (it reads `/proc` and lowers a limit with `prlimit`).

mod common;

#[cfg(target_os = "linux")]
use linux::*;

const LIMIT: std::time::Duration = std::time::Duration::from_secs(90);
const KEY: &str = "a long random key shared out of band";
/// Set: run as the master under test (see [`linux::serve_master`]).
const MASTER_ENV: &str = "PROCPOOL_TEST_ABUSE_MASTER";
/// `"<addr> <key>"`: run as a remote worker joining that pool.
const REMOTE_ENV: &str = "PROCPOOL_TEST_REMOTE";

fn main() {
    common::remote::serve_if_asked(REMOTE_ENV, common::registry);
    procpool::init(common::registry());
    #[cfg(target_os = "linux")]
    if std::env::var_os(MASTER_ENV).is_some() {
        serve_master();
    }
    let args = libtest_mimic::Arguments::from_args();
    #[cfg(target_os = "linux")]
    let tests = common::trials![
        LIMIT;
        unauthenticated_peers_cost_bounded_threads_memory_and_cpu,
        accept_backs_off_when_descriptors_run_out,
    ];
    #[cfg(not(target_os = "linux"))]
    let tests: Vec<libtest_mimic::Trial> = {
        let _ = (LIMIT, KEY, MASTER_ENV);
        Vec::new()
    };
    libtest_mimic::run(&args, tests).exit();
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::process::{Child, ChildStdin, Command, Stdio};
    use std::sync::mpsc;
    use std::thread;
    use std::time::{Duration, Instant};

    use anyhow::{Context, bail, ensure};

    use super::common::remote::Remote;
    use super::common::{SQUARE, Watched};
    use super::{KEY, MASTER_ENV, REMOTE_ENV};

    /// The listener's cap on handshakes in progress (`pool/src/remote.rs`).
    const MAX_HANDSHAKES: usize = 16;
    /// Threads the master may add under abuse: the handshake threads, and
    /// a few for the worker that joins at the end.
    const THREAD_SLACK: usize = MAX_HANDSHAKES + 6;

    /// The master under test: a pool with one local worker listening on
    /// loopback. Prints `addr <addr>`, then answers commands on stdin, one
    /// per line: `map` (100 squares: `ok <sum>`), `wait <n>` (`ok` once n
    /// workers have joined, within 30 s). Exits at the end of stdin.
    pub(super) fn serve_master() -> ! {
        let run = || -> anyhow::Result<()> {
            let pool = procpool::Pool::builder()
                .workers(1)
                .listen("127.0.0.1:0".parse()?, KEY)
                .build()?;
            let addr = pool.listen_addr().context("listening")?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "addr {addr}")?;
            for line in std::io::stdin().lock().lines() {
                let line = line?;
                let reply = match line.split_once(' ').unwrap_or((&line, "")) {
                    ("map", _) => {
                        let sum: u64 = pool.map(SQUARE, 0..100u64)?.into_iter().sum();
                        format!("ok {sum}")
                    }
                    ("wait", n) => {
                        let n = n.parse()?;
                        if pool.wait_for_workers(n, Duration::from_secs(30)) {
                            "ok".to_owned()
                        } else {
                            format!("only {} workers", pool.stats().workers_alive)
                        }
                    }
                    _ => bail!("unknown command {line:?}"),
                };
                writeln!(out, "{reply}")?;
            }
            Ok(())
        };
        let code = match run() {
            Ok(()) => 0,
            Err(e) => {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("abuse master: {e:#}");
                }
                1
            }
        };
        std::process::exit(code)
    }

    /// The master process, killed and reaped when dropped.
    struct Master {
        child: Child,
        stdin: ChildStdin,
        lines: mpsc::Receiver<String>,
        addr: SocketAddr,
    }

    impl Drop for Master {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Master {
        fn start() -> anyhow::Result<Master> {
            let mut child = Command::new(std::env::current_exe()?)
                .env(MASTER_ENV, "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?
                .watched();
            let stdin = child.stdin.take().expect("piped");
            let stdout = child.stdout.take().expect("piped");
            let (tx, lines) = mpsc::channel();
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            let mut master = Master {
                child,
                stdin,
                lines,
                addr: "0.0.0.0:0".parse()?,
            };
            let first = master.line(Duration::from_secs(30))?;
            let addr = first.strip_prefix("addr ").context("no address")?;
            master.addr = addr.parse()?;
            Ok(master)
        }

        fn line(&self, limit: Duration) -> anyhow::Result<String> {
            self.lines
                .recv_timeout(limit)
                .with_context(|| format!("no answer from the master within {limit:?}"))
        }

        /// Sends a command, returns the answer.
        fn ask(&mut self, command: &str, limit: Duration) -> anyhow::Result<String> {
            writeln!(self.stdin, "{command}")?;
            self.line(limit)
        }

        /// Local tasks run.
        fn map_works(&mut self) -> anyhow::Result<()> {
            let expected: u64 = (0..100u64).map(|x| x * x).sum();
            let answer = self.ask("map", Duration::from_secs(30))?;
            ensure!(answer == format!("ok {expected}"), "map: {answer}");
            Ok(())
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        fn threads(&self) -> anyhow::Result<usize> {
            Ok(std::fs::read_dir(format!("/proc/{}/task", self.pid()))?.count())
        }

        fn descriptors(&self) -> anyhow::Result<usize> {
            Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
        }

        /// User plus system CPU time so far.
        fn cpu(&self) -> anyhow::Result<Duration> {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .context("stat format")?
                .1
                .split_whitespace()
                .collect();
            // Fields 14 and 15 of proc(5); the first after ')' is field 3.
            let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
            Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()?))
        }

        /// Resident memory.
        fn rss_kib(&self) -> anyhow::Result<u64> {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
            let line = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .context("no VmRSS")?;
            Ok(line
                .split_whitespace()
                .nth(1)
                .context("VmRSS format")?
                .parse()?)
        }

        /// Sets its soft descriptor limit.
        fn limit_descriptors(&self, soft: usize) -> anyhow::Result<()> {
            let status = Command::new("prlimit")
                .arg(format!("--pid={}", self.pid()))
                .arg(format!("--nofile={soft}:"))
                .status()
                .context("prlimit (util-linux) is needed")?;
            ensure!(status.success(), "prlimit: {status}");
            Ok(())
        }

        fn soft_descriptor_limit(&self) -> anyhow::Result<usize> {
            let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid()))?;
            let line = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .context("no open-files limit")?;
            Ok(line
                .split_whitespace()
                .nth(3)
                .context("limits format")?
                .parse()?)
        }
    }

    fn clock_ticks() -> anyhow::Result<f64> {
        let out = Command::new("getconf").arg("CLK_TCK").output()?;
        Ok(String::from_utf8(out.stdout)?.trim().parse()?)
    }

    /// Whether the peer closes `stream` within `limit` (reading and
    /// discarding what it sends, the greeting included).
    fn closed_within(stream: &mut TcpStream, limit: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            stream.set_read_timeout(Some(left))?;
            match stream.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Ok(true),
            }
        }
    }

    /// Whether the peer has closed `stream` already (without waiting).
    fn closed_now(stream: &mut TcpStream) -> anyhow::Result<bool> {
        stream.set_nonblocking(true)?;
        let mut buf = [0u8; 256];
        let closed = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        stream.set_nonblocking(false)?;
        Ok(closed)
    }

    /// A peer sending one byte every `pace` (as long as the master keeps
    /// the connection): how long the master kept it.
    fn trickle(addr: SocketAddr, pace: Duration, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        while start.elapsed() < limit {
            // Reading for `pace` both paces the bytes and sees the close.
            if closed_within(&mut s, pace)? {
                return Ok(start.elapsed());
            }
            if s.write_all(b"x").is_err() {
                return Ok(start.elapsed());
            }
        }
        bail!("a peer sending a byte every {pace:?} held its connection for {limit:?}")
    }

    /// Garbage, a 4 GiB length header, a trickling peer and 500 idle
    /// connections, at once: the master's threads stay within the
    /// handshake cap, its CPU and memory barely move, local tasks keep
    /// running, and a real worker joins once the abusers are gone. (Seen
    /// failing before the cap and the overall deadline: one thread per
    /// connection, and the trickling peer held on past 30 s.)
    pub(super) fn unauthenticated_peers_cost_bounded_threads_memory_and_cpu() -> anyhow::Result<()>
    {
        let mut master = Master::start()?;
        master.map_works()?;
        let (threads0, rss0, cpu0, t0) = (
            master.threads()?,
            master.rss_kib()?,
            master.cpu()?,
            Instant::now(),
        );
        let addr = master.addr;

        // Garbage: refused at once, by the proof that does not verify.
        for i in 0..20u8 {
            let mut s = TcpStream::connect(addr)?;
            s.write_all(&[i.wrapping_mul(37); 64])?;
            ensure!(
                closed_within(&mut s, Duration::from_secs(20))?,
                "garbage kept"
            );
        }
        // A length header announcing 4 GiB, then garbage: nothing is sized
        // by it (the handshake reads fixed sizes), and it is refused.
        let mut s = TcpStream::connect(addr)?;
        s.write_all(&u32::MAX.to_le_bytes())?;
        s.write_all(&[0xAB; 60])?;
        ensure!(
            closed_within(&mut s, Duration::from_secs(20))?,
            "4 GiB header kept"
        );
        // The header alone: the handshake deadline ends it.
        let mut header_only = TcpStream::connect(addr)?;
        header_only.write_all(&u32::MAX.to_le_bytes())?;

        // A byte every 2 s: a per-read timeout of 10 s would never expire.
        let trickler =
            thread::spawn(move || trickle(addr, Duration::from_secs(2), Duration::from_secs(40)));

        // 500 idle connections: beyond the cap they are closed at once.
        let mut idle = Vec::with_capacity(500);
        for _ in 0..500 {
            idle.push(TcpStream::connect(addr)?);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut closed;
        loop {
            closed = 0;
            for s in &mut idle {
                closed += usize::from(closed_now(s)?);
            }
            // The header-only peer and the trickler may hold two slots.
            if closed >= 500 - MAX_HANDSHAKES || Instant::now() >= deadline {
                break;
            }
            // Polling connection state is the event; the pause paces it.
            thread::sleep(Duration::from_millis(50));
        }
        ensure!(
            closed >= 500 - MAX_HANDSHAKES,
            "only {closed} of 500 idle connections were closed"
        );
        let threads = master.threads()?;
        ensure!(
            threads <= threads0 + THREAD_SLACK,
            "master threads {threads0} -> {threads} with 500 idle connections"
        );
        // Local work flows meanwhile.
        master.map_works()?;

        ensure!(
            closed_within(&mut header_only, Duration::from_secs(30))?,
            "the header-only peer outlived the handshake deadline"
        );
        let held = trickler.join().expect("trickler")?;
        ensure!(
            held < Duration::from_secs(30),
            "a trickling peer held its connection for {held:?}"
        );

        let (cpu, wall) = (master.cpu()? - cpu0, t0.elapsed());
        ensure!(
            cpu < wall / 2,
            "master used {cpu:?} of CPU in {wall:?} under abuse"
        );
        let rss = master.rss_kib()?;
        ensure!(
            rss < rss0 + 64 * 1024,
            "master memory {rss0} KiB -> {rss} KiB"
        );

        // Once the abusers are gone, a worker that knows the key joins.
        drop(idle);
        let _remote = Remote::start(REMOTE_ENV, addr, KEY)?;
        let answer = master.ask("wait 2", Duration::from_secs(40))?;
        ensure!(answer == "ok", "remote worker after the abuse: {answer}");
        master.map_works()
    }

    /// With its descriptors exhausted, the master's `accept` fails on
    /// every try: it backs off instead of spinning, its local tasks keep
    /// running, and it accepts again once descriptors are free. (Seen
    /// failing before the back-off: the listener burned most of a core.)
    pub(super) fn accept_backs_off_when_descriptors_run_out() -> anyhow::Result<()> {
        let mut master = Master::start()?;
        master.map_works()?;
        let soft = master.soft_descriptor_limit()?;
        let threads0 = master.threads()?;
        // Room for two more descriptors, then none.
        master.limit_descriptors(master.descriptors()? + 2)?;
        let addr = master.addr;
        let mut conns = Vec::new();
        for _ in 0..100 {
            conns.push(TcpStream::connect(addr)?);
        }
        // Measure the master's CPU while connections wait that it cannot
        // take. The pause is the measuring window, not synchronisation.
        let (cpu0, t0) = (master.cpu()?, Instant::now());
        thread::sleep(Duration::from_secs(3));
        let (cpu, wall) = (master.cpu()? - cpu0, t0.elapsed());
        ensure!(
            cpu < wall / 5,
            "master used {cpu:?} of CPU in {wall:?} with no descriptors left"
        );
        let threads = master.threads()?;
        ensure!(
            threads <= threads0 + THREAD_SLACK,
            "master threads {threads0} -> {threads}"
        );
        master.map_works()?;

        // Descriptors back: it accepts again, and a worker joins.
        drop(conns);
        master.limit_descriptors(soft)?;
        let _remote = Remote::start(REMOTE_ENV, addr, KEY)?;
        let answer = master.ask("wait 2", Duration::from_secs(40))?;
        ensure!(answer == "ok", "remote worker after exhaustion: {answer}");
        master.map_works()
    }
}

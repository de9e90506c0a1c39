//! Fork-and-kill test of the shared byte stream
//! (`procpool_ipc::shm::stream::Stream`, the ring behind pipe lanes).
//!
//! Several senders and receivers are forked children sharing an
//! anonymous `MAP_SHARED` mapping: the stream, and a control area where
//! each records what it did. Messages have mixed sizes, some longer than
//! the ring itself (fragments under one writer lease). The parent
//! SIGKILLs children at random moments (most of a child's time is spent
//! inside `send` or `recv`), reaps each death, then does what the hub
//! does for a reaped process (`HubLane::reaped`): `clear_leases` with its
//! lane id. It respawns the role under a fresh lane id (the hub never
//! reuses one).
//!
//! Message ids are (sender, seq). A sender records a seq once its `send`
//! returned; a receiver appends each id it got to its log, and raises its
//! "busy" register around each `recv` (until the id is logged). At the
//! end: no returned send lost, except at most one per receiver killed
//! while busy (it may have taken a message it never logged), and only one
//! it can have taken: each lost message is matched to a distinct such
//! death whose window holds it (per sender, above the highest seq logged
//! by anyone when the `recv` began, below the sender's next seq when the
//! death was reaped; messages are taken in stream order, a sender's in
//! seq order). Nothing duplicated, no message never sent, no corrupt
//! byte; every lease free.
//!
//! Knobs: `STREAM_CRASH_SECS` (chaos phase, default 5; CI runs the
//! default), `STREAM_CRASH_SEED`. A single-threaded `main` (no test
//! harness), so `fork` is safe.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a program reporting to its user

#[cfg(unix)]
fn main() {
    unix::main();
}

#[cfg(not(unix))]
fn main() {}

#[cfg(unix)]
mod unix {
    use std::collections::HashMap;
    use std::ptr::NonNull;
    use std::sync::atomic::Ordering::{Relaxed, SeqCst};
    use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};
    use std::time::{Duration, Instant};

    use procpool_ipc::shm::stream::{Stream, StreamError, WRITERS_GONE};

    const SENDERS: usize = 3;
    const RECEIVERS: usize = 3;
    /// Data bytes of the stream: records of at most 504 bytes, and some
    /// messages longer than the whole ring.
    const CAPACITY: usize = 1024;
    /// Seqs per sender the control area has room for.
    const MAX_SEQ: usize = 1 << 20;
    /// Ids each receiver's log has room for.
    const LOG_CAP: usize = SENDERS * MAX_SEQ;

    /// The control area after the stream: every field an atomic, so any
    /// bit pattern (the zeroed fresh mapping) is valid.
    struct Ctl {
        base: *mut u8,
    }

    const CHAOS: usize = 0;
    const STOP: usize = 8;
    const CORRUPT: usize = 16;
    const SENDER_CELLS: usize = 64; // per sender: attempted (next seq)
    const MAX_LOGGED: usize = SENDER_CELLS + 64 * SENDERS; // per sender: highest seq logged + 1
    const RECEIVER_CELLS: usize = MAX_LOGGED + 64 * SENDERS; // busy, log len, SENDERS × floor
    const RETURNED: usize = RECEIVER_CELLS + 64 * RECEIVERS; // SENDERS × MAX_SEQ bytes
    const LOGS: usize = RETURNED + SENDERS * MAX_SEQ; // RECEIVERS × LOG_CAP u64
    const CTL_LEN: usize = LOGS + RECEIVERS * LOG_CAP * 8;

    impl Ctl {
        fn at<T>(&self, off: usize) -> &T {
            assert!(off + size_of::<T>() <= CTL_LEN && off % align_of::<T>() == 0);
            // SAFETY: in bounds of the control area (checked), aligned
            // (checked; the area starts 64-aligned), and only atomics live
            // there, valid for any bits; the mapping outlives the process's
            // use of `Ctl`.
            unsafe { &*self.base.add(off).cast::<T>() }
        }
        fn chaos(&self) -> &AtomicU32 {
            self.at(CHAOS)
        }
        fn stop(&self) -> &AtomicU32 {
            self.at(STOP)
        }
        fn corrupt(&self) -> &AtomicU64 {
            self.at(CORRUPT)
        }
        /// The next seq sender `p` sends (one past the last attempted).
        fn attempted(&self, p: usize) -> &AtomicU64 {
            self.at(SENDER_CELLS + 64 * p)
        }
        /// Non-zero while receiver `c` is in `recv` or has not logged
        /// what it got.
        fn busy(&self, c: usize) -> &AtomicU64 {
            self.at(RECEIVER_CELLS + 64 * c)
        }
        fn log_len(&self, c: usize) -> &AtomicU64 {
            self.at(RECEIVER_CELLS + 64 * c + 8)
        }
        /// One past the highest seq of sender `p` any receiver logged.
        fn max_logged(&self, p: usize) -> &AtomicU64 {
            self.at(MAX_LOGGED + 64 * p)
        }
        /// `max_logged(p)` when receiver `c` last became busy: what it
        /// takes next from `p` has at least this seq.
        fn floor(&self, c: usize, p: usize) -> &AtomicU64 {
            self.at(RECEIVER_CELLS + 64 * c + 16 + 8 * p)
        }
        fn returned(&self, p: usize, seq: usize) -> &AtomicU8 {
            self.at(RETURNED + p * MAX_SEQ + seq)
        }
        fn log(&self, c: usize, i: usize) -> &AtomicU64 {
            self.at(LOGS + (c * LOG_CAP + i) * 8)
        }
        fn append(&self, c: usize, id: u64) {
            let n = self.log_len(c).load(SeqCst) as usize;
            if n < LOG_CAP {
                self.log(c, n).store(id, SeqCst);
            }
            self.log_len(c).store(n as u64 + 1, SeqCst);
        }
    }

    /// Message length for `seq`: mostly small, some over a record
    /// (two or three fragments), some longer than the ring.
    fn len_for(seq: usize) -> usize {
        match seq % 16 {
            0 => 1100 + seq % 1900,
            1 | 2 => 505 + seq % 900,
            3..=5 => 100 + seq % 300,
            _ => 8 + seq % 57,
        }
    }

    fn byte(id: u64, i: usize) -> u8 {
        (id as u8 ^ (id >> 32) as u8 ^ 0x5a).wrapping_add(i as u8)
    }

    fn message(p: usize, seq: usize, out: &mut Vec<u8>) {
        let id = (p as u64) << 32 | seq as u64;
        out.clear();
        out.extend_from_slice(&id.to_le_bytes());
        out.extend((8..len_for(seq)).map(|i| byte(id, i)));
    }

    /// The id in `buf`, or `None` when the bytes are not one `message`.
    fn check(buf: &[u8]) -> Option<u64> {
        let id = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
        let seq = id as u32 as usize;
        let ok = buf.len() == len_for(seq)
            && buf
                .iter()
                .enumerate()
                .skip(8)
                .all(|(i, &b)| b == byte(id, i));
        ok.then_some(id)
    }

    static RNG: AtomicU64 = AtomicU64::new(1);

    fn rand() -> u64 {
        let mut x = RNG.load(Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        RNG.store(x, Relaxed);
        x
    }

    #[derive(Clone, Copy, Debug)]
    enum Role {
        Sender(usize),
        Receiver(usize),
    }

    struct Shared {
        base: NonNull<u8>,
        stream_len: usize,
        stream: Stream,
        ctl: Ctl,
    }

    fn child(sh: &Shared, role: Role, lane: u32, parent: libc::pid_t) -> ! {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        // SAFETY: plain syscall, no memory arguments.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        }
        // SAFETY: the mapping stays for the child's life and is used only
        // through `Stream`s and the control area's atomics.
        let stream = unsafe { Stream::attach(sh.base, sh.stream_len) }.expect("attach");
        let orphaned = || {
            // SAFETY: no preconditions.
            let ppid = unsafe { libc::getppid() };
            ppid != parent
        };
        let soon = || Some(Instant::now() + Duration::from_millis(50));
        let ctl = &sh.ctl;
        let code = match role {
            Role::Sender(p) => {
                let mut buf = Vec::new();
                let mut seq = ctl.attempted(p).load(SeqCst) as usize;
                'messages: loop {
                    if ctl.stop().load(SeqCst) != 0 || seq >= MAX_SEQ {
                        break 'messages 0;
                    }
                    ctl.attempted(p).store(seq as u64 + 1, SeqCst);
                    message(p, seq, &mut buf);
                    loop {
                        // A deadline between fragments leaves a partial
                        // message receivers drop; the retry sends it whole.
                        match stream.send(lane, &buf, soon()) {
                            Ok(()) => break,
                            Err(StreamError::Full)
                                if !orphaned() && ctl.stop().load(SeqCst) == 0 => {}
                            Err(StreamError::Full) => break 'messages 0,
                            Err(_) => break 'messages 3,
                        }
                    }
                    ctl.returned(p, seq).store(1, SeqCst);
                    seq += 1;
                }
            }
            Role::Receiver(c) => {
                let mut buf = Vec::new();
                loop {
                    for p in 0..SENDERS {
                        ctl.floor(c, p)
                            .store(ctl.max_logged(p).load(SeqCst), SeqCst);
                    }
                    ctl.busy(c).store(1, SeqCst);
                    // Half the takes are `try_recv`: a receiver that
                    // returned is not busy, so it must hold no part of a
                    // message between calls (defect F).
                    let got = if rand() % 2 == 0 {
                        stream.recv(lane, &mut buf, soon())
                    } else {
                        stream.try_recv(lane, &mut buf)
                    };
                    match got {
                        Ok(()) => {
                            let id = check(&buf).unwrap_or_else(|| {
                                ctl.corrupt().fetch_add(1, SeqCst);
                                u64::MAX
                            });
                            ctl.append(c, id);
                            if ((id >> 32) as usize) < SENDERS {
                                ctl.max_logged((id >> 32) as usize)
                                    .fetch_max(u64::from(id as u32) + 1, SeqCst);
                            }
                        }
                        Err(StreamError::Empty) if !orphaned() => {
                            // Not busy: a death here may lose nothing.
                            ctl.busy(c).store(0, SeqCst);
                            std::thread::yield_now();
                        }
                        Err(StreamError::Closed) => break 0,
                        Err(_) => break 4,
                    }
                    ctl.busy(c).store(0, SeqCst);
                }
            }
        };
        // SAFETY: ends the child without running the parent's destructors
        // or flushing its inherited stdio buffers.
        unsafe { libc::_exit(code) }
    }

    struct Parent {
        sh: Shared,
        parent: libc::pid_t,
        children: HashMap<libc::pid_t, (Role, u32)>,
        next_lane: u32,
        deaths: u64,
        sender_deaths: u64,
        busy_receiver_deaths: u64,
        /// Per receiver killed while busy, per sender: the seqs it may
        /// have taken, `floor..next seq` at the reaping.
        windows: Vec<[(u64, u64); SENDERS]>,
        writer_leases_cleared: u64,
        reader_leases_cleared: u64,
        failures: Vec<String>,
    }

    impl Parent {
        fn spawn(&mut self, role: Role) {
            let lane = self.next_lane;
            self.next_lane += 1;
            let seed = rand();
            // SAFETY: this process is single-threaded (no test harness), so
            // the child may run arbitrary code after `fork`.
            let pid = unsafe { libc::fork() };
            match pid {
                -1 => panic!("fork: {}", std::io::Error::last_os_error()),
                0 => {
                    RNG.store(seed | 1, Relaxed);
                    child(&self.sh, role, lane, self.parent)
                }
                pid => {
                    self.children.insert(pid, (role, lane));
                }
            }
        }

        /// Reaps every exited child (blocking for one if `block`), clears
        /// its leases (as the hub does once a process is reaped) and, if it
        /// was killed, respawns its role when `respawn` says so.
        fn reap(&mut self, block: bool, respawn: impl Fn(Role) -> bool) {
            loop {
                let mut status = 0;
                let flags = if block { 0 } else { libc::WNOHANG };
                // SAFETY: `status` is a live out-parameter.
                let pid = unsafe { libc::waitpid(-1, &mut status, flags) };
                if pid <= 0 {
                    return;
                }
                let (role, lane) = self.children.remove(&pid).expect("a child of ours");
                let (w, r) = self.sh.stream.clear_leases(lane);
                self.writer_leases_cleared += u64::from(w);
                self.reader_leases_cleared += u64::from(r);
                let killed = libc::WIFSIGNALED(status);
                if killed {
                    self.deaths += 1;
                    match role {
                        Role::Sender(_) => self.sender_deaths += 1,
                        Role::Receiver(c) => {
                            let ctl = &self.sh.ctl;
                            if ctl.busy(c).swap(0, SeqCst) != 0 {
                                self.busy_receiver_deaths += 1;
                                self.windows.push(std::array::from_fn(|p| {
                                    (ctl.floor(c, p).load(SeqCst), ctl.attempted(p).load(SeqCst))
                                }));
                            }
                        }
                    }
                } else if libc::WEXITSTATUS(status) != 0 {
                    self.failures.push(format!(
                        "{role:?} exited with {}",
                        libc::WEXITSTATUS(status)
                    ));
                }
                if killed && respawn(role) {
                    self.spawn(role);
                }
                if block {
                    return;
                }
            }
        }

        fn kill_one(&mut self) {
            let pids: Vec<_> = self.children.keys().copied().collect();
            if let Some(&pid) = pids.get(rand() as usize % pids.len().max(1)) {
                // SAFETY: `pid` is our unreaped child, so it is not reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }

        fn kill_all(&mut self) {
            for &pid in self.children.keys() {
                // SAFETY: our unreaped children.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            while !self.children.is_empty() {
                self.reap(true, |_| false);
            }
        }
    }

    fn env_u64(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    pub(super) fn main() {
        let secs = env_u64("STREAM_CRASH_SECS", 5);
        let seed = env_u64(
            "STREAM_CRASH_SEED",
            u64::from(std::process::id()) << 20 ^ 0x9e37_79b9,
        );
        RNG.store(seed | 1, Relaxed);
        println!("stream_crash: {secs} s of chaos, seed {seed}");

        let stream_len = Stream::bytes_needed(CAPACITY).expect("capacity");
        let ctl_off = stream_len.next_multiple_of(64);
        let len = ctl_off + CTL_LEN;
        // SAFETY: a fresh anonymous shared mapping; no address hint.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let base = NonNull::new(ptr.cast::<u8>()).expect("mmap returned null");
        // SAFETY: `len >= stream_len` fresh bytes, page-aligned, mapped
        // until the process exits, used only through `Stream`s (in this
        // process and its children) and the control area beyond.
        let stream = unsafe { Stream::init(base, stream_len, CAPACITY) }.expect("init");
        // SAFETY: `ctl_off < len`: the control area inside the mapping.
        let ctl_base = unsafe { base.as_ptr().add(ctl_off) };
        let ctl = Ctl { base: ctl_base };
        ctl.chaos().store(1, SeqCst);

        let mut parent = Parent {
            sh: Shared {
                base,
                stream_len,
                stream,
                ctl,
            },
            // SAFETY: no preconditions.
            parent: unsafe { libc::getpid() },
            children: HashMap::new(),
            next_lane: 1,
            deaths: 0,
            sender_deaths: 0,
            busy_receiver_deaths: 0,
            windows: Vec::new(),
            writer_leases_cleared: 0,
            reader_leases_cleared: 0,
            failures: Vec::new(),
        };
        for p in 0..SENDERS {
            parent.spawn(Role::Sender(p));
        }
        for c in 0..RECEIVERS {
            parent.spawn(Role::Receiver(c));
        }

        let start = Instant::now();
        let watchdog = Duration::from_secs(secs + 60);
        // Chaos: kill a random child every 0-1 ms (the pause only spreads
        // the kills in time), respawn everything that dies.
        while start.elapsed() < Duration::from_secs(secs) {
            parent.reap(false, |_| true);
            std::thread::sleep(Duration::from_micros(rand() % 1000));
            parent.kill_one();
        }
        // Wind down: no more deaths; senders stop, then the writers are
        // gone (as the hub says) and receivers drain the stream.
        parent.sh.ctl.chaos().store(0, SeqCst);
        parent.sh.ctl.stop().store(1, SeqCst);
        let sending = |p: &Parent| {
            p.children
                .values()
                .any(|(r, _)| matches!(r, Role::Sender(_)))
        };
        while sending(&parent) && start.elapsed() < watchdog {
            parent.reap(true, |r| matches!(r, Role::Receiver(_)));
        }
        parent.sh.stream.set_flag(WRITERS_GONE);
        while !parent.children.is_empty() && start.elapsed() < watchdog {
            parent.reap(true, |r| matches!(r, Role::Receiver(_)));
        }
        if !parent.children.is_empty() {
            parent
                .failures
                .push(format!("children still running after {watchdog:?}"));
            parent.kill_all();
        }
        verify(&mut parent);
    }

    /// Lost messages left once each is matched to a distinct receiver
    /// death whose window holds it (a bipartite matching by augmenting
    /// paths: a death may explain one message only).
    fn unexplained(lost: &[(usize, u64)], windows: &[[(u64, u64); SENDERS]]) -> u64 {
        fn augment(
            i: usize,
            lost: &[(usize, u64)],
            windows: &[[(u64, u64); SENDERS]],
            owner: &mut [Option<usize>],
            seen: &mut [bool],
        ) -> bool {
            let (p, seq) = lost[i];
            for (d, w) in windows.iter().enumerate() {
                let (floor, next) = w[p];
                if seen[d] || seq < floor || seq >= next {
                    continue;
                }
                seen[d] = true;
                let free = match owner[d] {
                    None => true,
                    Some(j) => augment(j, lost, windows, owner, seen),
                };
                if free {
                    owner[d] = Some(i);
                    return true;
                }
            }
            false
        }
        let mut owner = vec![None; windows.len()];
        let mut unmatched = 0;
        for i in 0..lost.len() {
            let mut seen = vec![false; windows.len()];
            if !augment(i, lost, windows, &mut owner, &mut seen) {
                unmatched += 1;
            }
        }
        unmatched
    }

    fn verify(parent: &mut Parent) {
        let ctl = &parent.sh.ctl;
        let mut counts: HashMap<u64, u32> = HashMap::new();
        for c in 0..RECEIVERS {
            let n = ctl.log_len(c).load(SeqCst) as usize;
            if n > LOG_CAP {
                parent.failures.push(format!("receiver {c} log overflow"));
            }
            for i in 0..n.min(LOG_CAP) {
                *counts.entry(ctl.log(c, i).load(SeqCst)).or_default() += 1;
            }
        }
        let (mut promised, mut phantom, mut fragmented) = (0u64, 0u64, 0u64);
        let mut lost = Vec::new();
        for p in 0..SENDERS {
            let attempted = ctl.attempted(p).load(SeqCst) as usize;
            for seq in 0..attempted.min(MAX_SEQ) {
                let id = (p as u64) << 32 | seq as u64;
                if len_for(seq) > CAPACITY / 2 - 8 && counts.contains_key(&id) {
                    fragmented += 1;
                }
                if ctl.returned(p, seq).load(SeqCst) != 0 {
                    promised += 1;
                    if !counts.contains_key(&id) {
                        lost.push((p, seq as u64));
                    }
                }
            }
            phantom += counts
                .keys()
                .filter(|&&id| id >> 32 == p as u64 && id as u32 as usize >= attempted)
                .count() as u64;
        }
        phantom += counts
            .keys()
            .filter(|&&id| id >> 32 >= SENDERS as u64 && id != u64::MAX)
            .count() as u64;
        let duplicated = counts
            .iter()
            .filter(|&(&id, &n)| n > 1 && id != u64::MAX)
            .count() as u64;
        let corrupt = ctl.corrupt().load(SeqCst);
        let delivered = counts.len() as u64;
        let leases = parent.sh.stream.leases();
        let unexplained = unexplained(&lost, &parent.windows);
        let lost = lost.len();
        println!(
            "stream_crash: {} deaths injected ({} senders, {} receivers while busy; \
             leases cleared: {} writer, {} reader); {promised} sends promised (returned), \
             {delivered} messages delivered ({fragmented} fragmented); lost {lost} \
             ({unexplained} not explained by a receiver killed while taking it), \
             duplicated {duplicated}, phantom {phantom}, corrupt {corrupt}",
            parent.deaths,
            parent.sender_deaths,
            parent.busy_receiver_deaths,
            parent.writer_leases_cleared,
            parent.reader_leases_cleared,
        );
        let checks = [
            (
                unexplained,
                "promised messages lost that no killed receiver can have taken",
            ),
            (duplicated, "messages delivered twice"),
            (phantom, "messages never sent delivered"),
            (corrupt, "corrupt messages"),
        ];
        for (n, what) in checks {
            if n != 0 {
                parent.failures.push(format!("{n} {what}"));
            }
        }
        if leases != (0, 0) {
            parent
                .failures
                .push(format!("leases still held at the end: {leases:?}"));
        }
        if promised == 0 || fragmented == 0 || parent.deaths == 0 {
            parent.failures.push(
                "nothing was sent, nothing fragmented, or nobody died: the test tested nothing"
                    .into(),
            );
        }
        if !parent.failures.is_empty() {
            for f in &parent.failures {
                eprintln!("stream_crash FAILED: {f}");
            }
            std::process::exit(1);
        }
        println!("stream_crash: ok");
    }
}

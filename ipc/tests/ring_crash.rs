//! Fork-and-kill test of the shared ring (`procpool_ipc::shm::Ring`).
//!
//! Producers and consumers are forked children sharing an anonymous
//! `MAP_SHARED` mapping: the ring, and a control area where each records
//! what it did. The parent kills children with SIGKILL at random moments,
//! and children kill themselves at random *inside* `put` and `get` (after
//! a claim, halfway through a copy, after the commit, before the take)
//! through the ring's fault hook. The parent reaps each death, calls
//! `recover(owner)`, and respawns the role with the freed owner id reused.
//!
//! Items are (producer, seq) ids. A producer records a seq once its `put`
//! returned; a consumer appends each id it got to its log (a consumer
//! killed between the take and the append is resolved by the parent from
//! its "pending" register and the recovery result). At the end: no
//! returned put lost, nothing duplicated, no torn payload, and the ring's
//! `unfinished` count equals the number of distinct items delivered.
//!
//! Knobs: `RING_CRASH_SECS` (chaos phase, default 3), `RING_CRASH_SEED`,
//! `RING_CRASH_SELF_KILL_ONE_IN` (per fault point reached, default 2000;
//! 0 disables). A single-threaded `main` (no test harness), so `fork` is
//! safe.

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
    use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicU64};
    use std::time::{Duration, Instant};

    use procpool_ipc::shm::ring::{FaultPoint, Geometry, Owner, Ring, RingError};

    const PRODUCERS: usize = 2;
    const CONSUMERS: usize = 2;
    const OWNERS: u32 = 8;
    /// Seqs per producer the control area has room for.
    const MAX_SEQ: usize = 1 << 21;
    /// Ids each consumer's log has room for.
    const LOG_CAP: usize = PRODUCERS * MAX_SEQ;
    const GEOMETRY: Geometry = Geometry {
        slots: 64,
        slot_size: 64,
        owners: OWNERS,
    };

    /// The control area after the ring: every field an atomic, so any bit
    /// pattern (the zeroed fresh mapping) is valid.
    struct Ctl {
        base: *mut u8,
    }

    const CHAOS: usize = 0;
    const STOP: usize = 8;
    const TORN: usize = 16;
    const PRODUCER_CELLS: usize = 64; // per producer: attempted (next seq)
    const CONSUMER_CELLS: usize = PRODUCER_CELLS + 64 * PRODUCERS; // pending id, pending len, log len
    const RETURNED: usize = CONSUMER_CELLS + 64 * CONSUMERS; // PRODUCERS × MAX_SEQ bytes
    const LOGS: usize = RETURNED + PRODUCERS * MAX_SEQ; // CONSUMERS × LOG_CAP u64
    const CTL_LEN: usize = LOGS + CONSUMERS * LOG_CAP * 8;

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
        fn torn(&self) -> &AtomicU64 {
            self.at(TORN)
        }
        /// The next seq producer `p` puts (one past the last attempted).
        fn attempted(&self, p: usize) -> &AtomicU64 {
            self.at(PRODUCER_CELLS + 64 * p)
        }
        fn pending_id(&self, c: usize) -> &AtomicU64 {
            self.at(CONSUMER_CELLS + 64 * c)
        }
        fn pending_len(&self, c: usize) -> &AtomicU64 {
            self.at(CONSUMER_CELLS + 64 * c + 8)
        }
        fn log_len(&self, c: usize) -> &AtomicU64 {
            self.at(CONSUMER_CELLS + 64 * c + 16)
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

    fn item(p: usize, seq: usize, out: &mut Vec<u8>) {
        let id = (p as u64) << 32 | seq as u64;
        out.clear();
        out.extend_from_slice(&id.to_le_bytes());
        out.resize(8 + seq % 57, id as u8 ^ 0x5a);
    }

    /// The id in `buf`, or `None` when the payload is not one `item` made.
    fn check(buf: &[u8]) -> Option<u64> {
        let id = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
        let seq = id as u32 as usize;
        let ok = buf.len() == 8 + seq % 57 && buf[8..].iter().all(|&b| b == id as u8 ^ 0x5a);
        ok.then_some(id)
    }

    // Child-side state for the fault hook (children are single-threaded).
    static RNG: AtomicU64 = AtomicU64::new(1);
    static SELF_KILL_ONE_IN: AtomicU64 = AtomicU64::new(0);
    static CHAOS_FLAG: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());
    static PENDING: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());

    fn rand() -> u64 {
        let mut x = RNG.load(Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        RNG.store(x, Relaxed);
        x
    }

    fn hook(point: FaultPoint, data: &[u8]) {
        if point == FaultPoint::GetCopied {
            let id = check(data).map_or(u64::MAX, |id| id + 1);
            // SAFETY: set before the ring is used, to a cell of the
            // control area, which outlives the child.
            unsafe { &*PENDING.load(Relaxed) }.store(id, SeqCst);
        }
        let one_in = SELF_KILL_ONE_IN.load(Relaxed);
        // SAFETY: as above, a cell of the control area.
        let chaos = unsafe { &*CHAOS_FLAG.load(Relaxed) }.load(Relaxed) != 0;
        if chaos && one_in != 0 && rand() % one_in == 0 {
            // SAFETY: raising a signal has no memory preconditions.
            unsafe { libc::raise(libc::SIGKILL) };
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Role {
        Producer(usize),
        Consumer(usize),
    }

    struct Shared {
        base: NonNull<u8>,
        ring_len: usize,
        ring: Ring,
        ctl: Ctl,
    }

    fn child(sh: &Shared, role: Role, owner: Owner, parent: libc::pid_t, seed: u64) -> ! {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        // SAFETY: plain syscall, no memory arguments.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        }
        RNG.store(seed | 1, Relaxed);
        CHAOS_FLAG.store(std::ptr::from_ref(sh.ctl.chaos()).cast_mut(), Relaxed);
        // SAFETY: the mapping stays for the child's life and is used only
        // through `Ring`s and the control area's atomics.
        let mut ring = unsafe { Ring::attach(sh.base, sh.ring_len) }.expect("attach");
        ring.set_fault_hook(hook);
        let orphaned = || {
            // SAFETY: no preconditions.
            let ppid = unsafe { libc::getppid() };
            ppid != parent
        };
        let soon = || Some(Instant::now() + Duration::from_millis(50));
        let ctl = &sh.ctl;
        let code = match role {
            Role::Producer(p) => {
                let mut buf = Vec::with_capacity(64);
                let mut seq = ctl.attempted(p).load(SeqCst) as usize;
                'items: loop {
                    if ctl.stop().load(SeqCst) != 0 || seq >= MAX_SEQ {
                        break 'items 0;
                    }
                    ctl.attempted(p).store(seq as u64 + 1, SeqCst);
                    item(p, seq, &mut buf);
                    loop {
                        match ring.put(owner, 0, &buf, soon()) {
                            Ok(()) => break,
                            Err(RingError::Full) if !orphaned() && ctl.stop().load(SeqCst) == 0 => {
                            }
                            Err(RingError::Full) => break 'items 0,
                            Err(_) => break 'items 3,
                        }
                    }
                    ctl.returned(p, seq).store(1, SeqCst);
                    seq += 1;
                }
            }
            Role::Consumer(c) => {
                PENDING.store(std::ptr::from_ref(ctl.pending_id(c)).cast_mut(), Relaxed);
                let mut buf = Vec::with_capacity(64);
                loop {
                    ctl.pending_len(c)
                        .store(ctl.log_len(c).load(SeqCst), SeqCst);
                    match ring.get(owner, &mut buf, soon()) {
                        Ok(_) => {
                            let id = check(&buf).unwrap_or_else(|| {
                                ctl.torn().fetch_add(1, SeqCst);
                                u64::MAX
                            });
                            ctl.append(c, id);
                            ctl.pending_id(c).store(0, SeqCst);
                        }
                        Err(RingError::Empty) if !orphaned() => {}
                        Err(RingError::Closed) => break 0,
                        Err(_) => break 4,
                    }
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
        children: HashMap<libc::pid_t, (Role, Owner)>,
        free: Vec<u16>,
        seed: u64,
        deaths: u64,
        tombstoned: u64,
        requeued: u64,
        resolved_by_parent: u64,
        failures: Vec<String>,
    }

    impl Parent {
        fn spawn(&mut self, role: Role) {
            let owner = Owner(self.free.pop().expect("a free owner id"));
            self.seed = self
                .seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // SAFETY: this process is single-threaded (no test harness), so
            // the child may run arbitrary code after `fork`.
            let pid = unsafe { libc::fork() };
            match pid {
                -1 => panic!("fork: {}", std::io::Error::last_os_error()),
                0 => child(&self.sh, role, owner, self.parent, self.seed),
                pid => {
                    self.children.insert(pid, (role, owner));
                }
            }
        }

        /// Reaps every exited child (blocking for one if `block`), recovers
        /// its owner id and, if it was killed, respawns its role when
        /// `respawn` says so.
        fn reap(&mut self, block: bool, respawn: impl Fn(Role) -> bool) {
            loop {
                let mut status = 0;
                let flags = if block { 0 } else { libc::WNOHANG };
                // SAFETY: `status` is a live out-parameter.
                let pid = unsafe { libc::waitpid(-1, &mut status, flags) };
                if pid <= 0 {
                    return;
                }
                let (role, owner) = self.children.remove(&pid).expect("a child of ours");
                let rec = self.sh.ring.recover(owner).expect("recover");
                self.tombstoned += u64::from(rec.tombstoned);
                self.requeued += u64::from(rec.requeued);
                let killed = libc::WIFSIGNALED(status);
                if killed {
                    self.deaths += 1;
                } else if libc::WEXITSTATUS(status) != 0 {
                    self.failures.push(format!(
                        "{role:?} exited with {}",
                        libc::WEXITSTATUS(status)
                    ));
                }
                if let Role::Consumer(c) = role {
                    self.resolve_pending(c, rec.requeued);
                }
                // Reuse the id at once: `recover` ran.
                self.free.push(owner.0);
                if killed && respawn(role) {
                    self.spawn(role);
                }
                if block {
                    return;
                }
            }
        }

        /// A consumer died holding `pending`: if its item was not requeued,
        /// the take happened; record it unless the consumer did.
        fn resolve_pending(&mut self, c: usize, requeued: u32) {
            let ctl = &self.sh.ctl;
            let pending = ctl.pending_id(c).swap(0, SeqCst);
            if pending == 0 || requeued > 0 {
                return;
            }
            if ctl.log_len(c).load(SeqCst) > ctl.pending_len(c).load(SeqCst) {
                return; // appended before it died
            }
            self.resolved_by_parent += 1;
            ctl.append(c, pending.wrapping_sub(1));
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
        let secs = env_u64("RING_CRASH_SECS", 3);
        let seed = env_u64(
            "RING_CRASH_SEED",
            u64::from(std::process::id()) << 20 ^ 0x9e37_79b9,
        );
        SELF_KILL_ONE_IN.store(env_u64("RING_CRASH_SELF_KILL_ONE_IN", 2000), Relaxed);
        RNG.store(seed | 1, Relaxed);
        println!("ring_crash: {secs} s of chaos, seed {seed}");

        let ring_len = Ring::bytes_needed(GEOMETRY).expect("geometry");
        let ctl_off = ring_len.next_multiple_of(64);
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
        // SAFETY: `len >= ring_len` fresh bytes, page-aligned, mapped until
        // the process exits, used only through `Ring`s (in this process and
        // its children) and the control area beyond `ring_len`.
        let ring = unsafe { Ring::init(base, ring_len, GEOMETRY) }.expect("init");
        // SAFETY: `ctl_off < len`: the control area inside the mapping.
        let ctl_base = unsafe { base.as_ptr().add(ctl_off) };
        let ctl = Ctl { base: ctl_base };
        ctl.chaos().store(1, SeqCst);

        let mut parent = Parent {
            sh: Shared {
                base,
                ring_len,
                ring,
                ctl,
            },
            // SAFETY: no preconditions.
            parent: unsafe { libc::getpid() },
            children: HashMap::new(),
            free: (0..OWNERS as u16).rev().collect(),
            seed,
            deaths: 0,
            tombstoned: 0,
            requeued: 0,
            resolved_by_parent: 0,
            failures: Vec::new(),
        };
        for p in 0..PRODUCERS {
            parent.spawn(Role::Producer(p));
        }
        for c in 0..CONSUMERS {
            parent.spawn(Role::Consumer(c));
        }

        let start = Instant::now();
        let watchdog = Duration::from_secs(secs + 60);
        // Chaos: kill a random child every 0-2 ms (the pause only spreads
        // the kills in time), respawn everything that dies.
        while start.elapsed() < Duration::from_secs(secs) {
            parent.reap(false, |_| true);
            std::thread::sleep(Duration::from_micros(rand() % 2000));
            parent.kill_one();
        }
        // Wind down: no more deaths; producers stop, then the ring closes
        // and consumers drain it.
        parent.sh.ctl.chaos().store(0, SeqCst);
        parent.sh.ctl.stop().store(1, SeqCst);
        let producing = |p: &Parent| {
            p.children
                .values()
                .any(|(r, _)| matches!(r, Role::Producer(_)))
        };
        while producing(&parent) && start.elapsed() < watchdog {
            parent.reap(true, |r| matches!(r, Role::Consumer(_)));
        }
        parent.sh.ring.close();
        while !parent.children.is_empty() && start.elapsed() < watchdog {
            parent.reap(true, |r| matches!(r, Role::Consumer(_)));
        }
        if !parent.children.is_empty() {
            parent
                .failures
                .push(format!("children still running after {watchdog:?}"));
            parent.kill_all();
        }
        verify(&mut parent);
    }

    fn verify(parent: &mut Parent) {
        let ctl = &parent.sh.ctl;
        let mut counts: HashMap<u64, u32> = HashMap::new();
        for c in 0..CONSUMERS {
            let n = ctl.log_len(c).load(SeqCst) as usize;
            if n > LOG_CAP {
                parent.failures.push(format!("consumer {c} log overflow"));
            }
            for i in 0..n.min(LOG_CAP) {
                *counts.entry(ctl.log(c, i).load(SeqCst)).or_default() += 1;
            }
        }
        let (mut returned, mut lost, mut phantom) = (0u64, 0u64, 0u64);
        for p in 0..PRODUCERS {
            let attempted = ctl.attempted(p).load(SeqCst) as usize;
            for seq in 0..attempted.min(MAX_SEQ) {
                if ctl.returned(p, seq).load(SeqCst) != 0 {
                    returned += 1;
                    if !counts.contains_key(&((p as u64) << 32 | seq as u64)) {
                        lost += 1;
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
            .filter(|&&id| id >> 32 >= PRODUCERS as u64)
            .count() as u64;
        let duplicated = counts.values().filter(|&&n| n > 1).count() as u64;
        let torn = ctl.torn().load(SeqCst);
        let delivered = counts.len() as u64;
        let unfinished = u64::from(parent.sh.ring.unfinished());
        println!(
            "ring_crash: {} deaths injected ({} tombstones, {} requeued, {} takes resolved by the parent); \
             {returned} puts returned, {delivered} items delivered; \
             lost {lost}, duplicated {duplicated}, phantom {phantom}, torn {torn}; unfinished {unfinished}",
            parent.deaths, parent.tombstoned, parent.requeued, parent.resolved_by_parent,
        );
        let checks = [
            (lost, "returned puts lost"),
            (duplicated, "items delivered twice"),
            (phantom, "items never put delivered"),
            (torn, "torn payloads"),
        ];
        for (n, what) in checks {
            if n != 0 {
                parent.failures.push(format!("{n} {what}"));
            }
        }
        if unfinished != delivered & 0xffff_ffff {
            parent.failures.push(format!(
                "unfinished {unfinished} != {delivered} items delivered"
            ));
        }
        if returned == 0 || parent.deaths == 0 {
            parent
                .failures
                .push("nothing was put or nobody died: the test tested nothing".into());
        }
        if !parent.failures.is_empty() {
            for f in &parent.failures {
                eprintln!("ring_crash FAILED: {f}");
            }
            std::process::exit(1);
        }
        println!("ring_crash: ok");
    }
}

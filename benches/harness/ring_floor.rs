//! The shared ring's floor: `procpool_ipc::shm::Ring` (1024 slots of
//! 512 bytes) in a file mapping shared by re-executed copies of this
//! binary, `P` producer and `C` consumer processes, 512-byte items. No
//! pool, no codec: what the queues' shared-memory data plane can reach.
//!
//! The clock starts once every peer has mapped the ring and stops when the
//! last one has exited; the file is unlinked before the clock starts.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};
use std::{env, thread};

use procpool_ipc::shm::ring::{Geometry, Owner, Ring};

use super::{ROLE_ENV, wait_or_kill};
use crate::Ctx;

const GEOMETRY: Geometry = Geometry {
    slots: 1024,
    slot_size: 512,
    owners: 8,
};
const PAYLOAD: usize = 512;

/// Offsets: the ring, then the `ready` counter and the `go` flag.
fn layout() -> Result<(usize, usize), String> {
    let ring_len = Ring::bytes_needed(GEOMETRY).map_err(|e| e.to_string())?;
    let flags = ring_len.next_multiple_of(64);
    Ok((ring_len, flags))
}

/// A file mapped shared, read-write.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn open(path: &Path, len: usize, create: bool) -> io::Result<Mapping> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .open(path)?;
        if create {
            file.set_len(len as u64)?;
        }
        // SAFETY: a fresh mapping of an open file of at least `len` bytes;
        // no address hint. The mapping outlives the descriptor.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    /// The flag word `i` (0: ready count, 1: go) after the ring.
    fn flag(&self, i: usize) -> &AtomicU32 {
        let (_, flags) = layout().expect("checked when the mapping was made");
        assert!(flags + 4 * (i + 1) <= self.len);
        // SAFETY: in bounds (checked), 4-aligned (the flags start at a
        // multiple of 64 in a page-aligned mapping), only ever accessed as
        // atomics, valid for any bits; borrowed no longer than the mapping.
        unsafe { &*self.ptr.as_ptr().add(flags + 4 * i).cast::<AtomicU32>() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no `Ring` over it outlives this value
        // (each function drops its ring first).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Children killed and reaped if the measurement fails half-way.
struct Peers(Vec<Child>);

impl Drop for Peers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `producers` → `consumers` through the ring; messages per second.
pub(super) fn throughput(
    ctx: &Ctx,
    timeout: Duration,
    producers: u16,
    consumers: u16,
) -> Result<f64, String> {
    let per_peer: u64 = if ctx.quick { 500_000 } else { 2_000_000 };
    let n = per_peer * u64::from(producers.max(consumers));
    let (ring_len, flags) = layout()?;
    let path = env::temp_dir().join(format!("procpool-ring-floor-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let map = Mapping::open(&path, flags + 64, true)
        .map_err(|e| format!("map {}: {e}", path.display()))?;
    // SAFETY: a fresh shared mapping of `flags + 64 >= ring_len` bytes,
    // page-aligned, unmapped only after `ring` is dropped (declared after
    // `map`, so dropped first), used only through `Ring`s and the flag atomics beyond it.
    let _ring = unsafe { Ring::init(map.ptr, ring_len, GEOMETRY) }.map_err(|e| e.to_string())?;
    let exe = env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut peers = Peers(Vec::new());
    let roles = (0..producers).map(|p| ("put", p, n / u64::from(producers)));
    let roles =
        roles.chain((0..consumers).map(|c| ("get", producers + c, n / u64::from(consumers))));
    for (mode, owner, count) in roles {
        let child = Command::new(&exe)
            .env(ROLE_ENV, "ring_peer")
            .arg(&path)
            .args([mode, &owner.to_string(), &count.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn ring peer: {e}"))?;
        peers.0.push(child);
    }
    let deadline = Instant::now() + timeout;
    let all = u32::from(producers + consumers);
    while map.flag(0).load(SeqCst) < all {
        if Instant::now() > deadline
            || peers
                .0
                .iter_mut()
                .any(|c| !matches!(c.try_wait(), Ok(None)))
        {
            let _ = std::fs::remove_file(&path);
            return Err("ring peers did not start".into());
        }
        thread::sleep(Duration::from_millis(1));
    }
    let _ = std::fs::remove_file(&path);
    let t = Instant::now();
    map.flag(1).store(1, SeqCst);
    for c in &mut peers.0 {
        wait_or_kill(c, timeout)?;
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(n as f64 / secs)
}

/// A ring peer process: `PATH put|get OWNER COUNT`.
pub(super) fn peer() -> i32 {
    match serve() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ring peer: {e}");
            1
        }
    }
}

fn serve() -> Result<(), String> {
    let args: Vec<String> = env::args().skip(1).collect();
    let bad = || format!("arguments {args:?}");
    let path = args.first().ok_or_else(bad)?;
    let mode = args.get(1).ok_or_else(bad)?.as_str();
    let owner: u16 = args.get(2).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let count: u64 = args.get(3).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let (ring_len, flags) = layout()?;
    let map = Mapping::open(Path::new(path), flags + 64, false)
        .map_err(|e| format!("map {path}: {e}"))?;
    // SAFETY: the master's formatted ring in a shared mapping that stays
    // until `map` drops, after `ring`.
    let ring = unsafe { Ring::attach(map.ptr, ring_len) }.map_err(|e| e.to_string())?;
    map.flag(0).fetch_add(1, SeqCst);
    let start = Instant::now();
    while map.flag(1).load(SeqCst) == 0 {
        if start.elapsed() > Duration::from_secs(120) {
            return Err("no go from the master".into());
        }
        thread::sleep(Duration::from_micros(100));
    }
    let deadline = Some(Instant::now() + Duration::from_secs(600));
    let owner = Owner(owner);
    let mut buf = vec![0xab_u8; PAYLOAD];
    for _ in 0..count {
        match mode {
            "put" => ring.put(owner, 0, &buf, deadline),
            "get" => ring.get(owner, &mut buf, deadline).map(drop),
            _ => return Err(bad()),
        }
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

//! The floor: a plain `socketpair` between this process and a re-executed
//! copy of itself, 512-byte (and, one way, 64 KiB) payloads in
//! length-prefixed frames through `BufWriter`/`BufReader`. No pool, no
//! codec, no threads: what any IPC on this machine can hope to reach.
//! The shared ring's lines (`ring_floor.rs`) sit beside these.

use std::env;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{ROLE_ENV, wait_or_kill};
use crate::{Better, Ctx, median};

const PAYLOAD: usize = 512;
/// The payload of the large one-way line, as the `Queue` 64 KiB case.
const LARGE: usize = 64 * 1024;
const READY: u8 = 0x5a;

/// One `floor` line.
pub(super) struct FloorCase {
    pub(super) label: &'static str,
    pub(super) unit: &'static str,
    pub(super) better: Better,
    pub(super) run: fn(&Ctx, Duration) -> Result<f64, String>,
}

pub(super) const CASES: [FloorCase; 5] = [
    FloorCase {
        label: "floor_socketpair_512B_one_way",
        unit: "msgs/s",
        better: Better::Higher,
        run: |ctx, timeout| {
            let n = if ctx.quick { 200_000 } else { 1_000_000 };
            one_way(n, PAYLOAD, timeout)
        },
    },
    FloorCase {
        label: "floor_socketpair_64KiB_one_way",
        unit: "msgs/s",
        better: Better::Higher,
        run: |ctx, timeout| {
            let n = if ctx.quick { 5_000 } else { 50_000 };
            one_way(n, LARGE, timeout)
        },
    },
    FloorCase {
        label: "floor_socketpair_512B_round_trip_median",
        unit: "us",
        better: Better::Lower,
        run: round_trip,
    },
    FloorCase {
        label: "floor_shm_ring_512B_1to1",
        unit: "msgs/s",
        better: Better::Higher,
        run: |ctx, timeout| super::ring_floor::throughput(ctx, timeout, 1, 1),
    },
    FloorCase {
        label: "floor_shm_ring_512B_2to2",
        unit: "msgs/s",
        better: Better::Higher,
        run: |ctx, timeout| super::ring_floor::throughput(ctx, timeout, 2, 2),
    },
];

/// The master's end of a connection to a peer process.
struct Peer {
    child: Child,
    reader: BufReader<UnixStream>,
    writer: BufWriter<UnixStream>,
}

impl Peer {
    fn start(mode: &str, n: u64, size: usize, timeout: Duration) -> Result<Peer, String> {
        let (mine, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let exe = env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let child = {
            // The peer's end becomes its stdin; the Command (and with it our
            // copy of that end) is dropped right after the spawn.
            let mut cmd = Command::new(exe);
            cmd.env(ROLE_ENV, "floor_peer")
                .args([mode, &n.to_string(), &size.to_string()])
                .stdin(Stdio::from(OwnedFd::from(theirs)))
                .stdout(Stdio::null());
            cmd.spawn().map_err(|e| format!("spawn peer: {e}"))?
        };
        let io = |e: io::Error| format!("socket: {e}");
        mine.set_read_timeout(Some(timeout)).map_err(io)?;
        mine.set_write_timeout(Some(timeout)).map_err(io)?;
        let mut peer = Peer {
            child,
            reader: BufReader::new(mine.try_clone().map_err(io)?),
            writer: BufWriter::new(mine),
        };
        let mut ready = [0u8];
        peer.reader
            .read_exact(&mut ready)
            .map_err(|e| format!("peer not ready: {e}"))?;
        if ready[0] != READY {
            return Err("peer sent garbage".into());
        }
        Ok(peer)
    }

    fn finish(mut self) -> Result<(), String> {
        wait_or_kill(&mut self.child, Duration::from_secs(10))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Only does something when a measurement failed half-way.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    w.write_all(&(payload.len() as u32).to_le_bytes())?;
    w.write_all(payload)
}

/// Reads one frame into `buf`, returns its length.
fn read_frame(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    r.read_exact(&mut buf[..len])?;
    Ok(len)
}

/// Master → peer, `n` frames of `size` bytes back to back, flushed once;
/// the peer answers with the count it read. Messages per second.
fn one_way(n: u64, size: usize, timeout: Duration) -> Result<f64, String> {
    let mut peer = Peer::start("one_way", n, size, timeout)?;
    let payload = vec![0xab_u8; size];
    let io = |e: io::Error| format!("one way: {e}");
    let t = Instant::now();
    for _ in 0..n {
        write_frame(&mut peer.writer, &payload).map_err(io)?;
    }
    peer.writer.flush().map_err(io)?;
    let mut ack = [0u8; 8];
    peer.reader.read_exact(&mut ack).map_err(io)?;
    let secs = t.elapsed().as_secs_f64();
    if u64::from_le_bytes(ack) != n {
        return Err(format!("peer read {} of {n}", u64::from_le_bytes(ack)));
    }
    peer.finish()?;
    Ok(n as f64 / secs)
}

/// One frame there and back, `n` times; the median round trip, µs.
fn round_trip(ctx: &Ctx, timeout: Duration) -> Result<f64, String> {
    let n: u64 = if ctx.quick { 20_000 } else { 100_000 };
    let mut peer = Peer::start("round_trip", n, PAYLOAD, timeout)?;
    let payload = [0xab_u8; PAYLOAD];
    let mut buf = [0u8; PAYLOAD];
    let mut times = Vec::with_capacity(n as usize);
    let io = |e: io::Error| format!("round trip: {e}");
    for _ in 0..n {
        let t = Instant::now();
        write_frame(&mut peer.writer, &payload).map_err(io)?;
        peer.writer.flush().map_err(io)?;
        let len = read_frame(&mut peer.reader, &mut buf).map_err(io)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        if len != PAYLOAD {
            return Err(format!("echo of {len} bytes"));
        }
    }
    peer.finish()?;
    Ok(median(&mut times))
}

/// The peer process: its stdin is its end of the socketpair.
pub(super) fn peer() -> i32 {
    match serve() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("floor peer: {e}");
            1
        }
    }
}

fn serve() -> io::Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("arguments {args:?}"));
    let mode = args.first().ok_or_else(bad)?.clone();
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let size: usize = args.get(2).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let stream = UnixStream::from(io::stdin().as_fd().try_clone_to_owned()?);
    // The master may die; do not outlive it by much.
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    writer.write_all(&[READY])?;
    writer.flush()?;
    let mut buf = vec![0u8; size];
    match mode.as_str() {
        "one_way" => {
            for _ in 0..n {
                read_frame(&mut reader, &mut buf)?;
            }
            writer.write_all(&n.to_le_bytes())?;
            writer.flush()?;
        }
        "round_trip" => {
            for _ in 0..n {
                let len = read_frame(&mut reader, &mut buf)?;
                write_frame(&mut writer, &buf[..len])?;
                writer.flush()?;
            }
        }
        _ => return Err(bad()),
    }
    Ok(())
}

//! The remote handshake, both sides, against a peer whose bytes come from
//! the fuzz input: `master_handshake` (what `accept_worker` runs) reading
//! a worker's preface and first Noise message, `worker_handshake` (what
//! `connect_to_master` runs) reading a master's preface and answer.
//! Neither may panic or hang (the stream ends where the input does),
//! neither may accept a peer that did not prove it knows the key, and
//! both must accept one that did.
//!
//! Input: a flags byte, 8 bytes of the master's heartbeat timeout (µs),
//! then the peer's bytes. Flags: bit 0 makes the peer answer the Noise
//! handshake honestly, with the key (so the success paths are reached
//! despite the random ephemeral keys); bit 1 makes it send a correct
//! preface (else its 12 bytes come from the input); bit 2 makes writes
//! fail; bits 3-7 choose the read chunk size.
#![no_main]

use std::io::{self, Read, Write};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use procpool_ipc::proto::PROTOCOL_VERSION;
use procpool_ipc::remote::{NOISE_PARAMS, master_handshake, worker_handshake};
use procpool_ipc::secure::psk;

const KEY: &[u8] = b"fuzzing key, sixteen bytes or more";
const PREFACE_LEN: usize = 12;
/// `-> psk, e`: 32 + 16; `<- e, ee` with 4 bytes: 32 + 4 + 16.
const MSG1_LEN: usize = 48;
const MSG2_LEN: usize = 52;

fn preface() -> Vec<u8> {
    let mut p = b"procpool".to_vec();
    p.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    p
}

fn noise(prologue: &[u8], initiator: bool) -> snow::HandshakeState {
    let psk = psk(KEY);
    let b = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
        .psk(0, &psk)
        .unwrap()
        .prologue(prologue)
        .unwrap();
    if initiator {
        b.build_initiator().unwrap()
    } else {
        b.build_responder().unwrap()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    /// The code under test is the master; the peer plays a worker.
    Master,
    /// The code under test is the worker; the peer plays a master.
    Worker,
}

/// The other end of the connection, in memory.
struct Peer<'a> {
    side: Side,
    data: &'a [u8],
    pending: Vec<u8>,
    written: Vec<u8>,
    /// 0: the preface is next; 1: the Noise message; 2: only input.
    stage: u8,
    our_preface: Vec<u8>,
    honest_preface: bool,
    honest_noise: bool,
    /// The peer's handshake, once it answered honestly.
    noise: Option<snow::HandshakeState>,
    /// The timeout an honest master sent.
    ms: Option<u32>,
    fail_writes: bool,
    chunk: usize,
}

impl Peer<'_> {
    fn take_data(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head.to_vec()
    }

    /// The next piece the peer sends, once the code under test said
    /// enough for it.
    fn refill(&mut self) {
        match self.stage {
            0 => {
                self.pending = if self.honest_preface {
                    preface()
                } else {
                    self.take_data(PREFACE_LEN)
                };
                self.our_preface = self.pending.clone();
                self.stage = 1;
            }
            1 if !self.honest_noise => self.stage = 2,
            1 => match self.side {
                // An honest worker: its first message.
                Side::Master if self.written.len() >= PREFACE_LEN => {
                    let prologue = [&self.written[..PREFACE_LEN], &self.our_preface].concat();
                    let mut hs = noise(&prologue, true);
                    let mut msg = [0u8; 64];
                    let n = hs.write_message(&[], &mut msg).unwrap();
                    self.pending = msg[..n].to_vec();
                    self.noise = Some(hs);
                    self.stage = 2;
                }
                // An honest master: its answer to the worker's message,
                // with a timeout from the input.
                Side::Worker if self.written.len() >= PREFACE_LEN + MSG1_LEN => {
                    self.stage = 2;
                    let prologue = [&self.our_preface, &self.written[..PREFACE_LEN]].concat();
                    let mut hs = noise(&prologue, false);
                    let msg1 = &self.written[PREFACE_LEN..PREFACE_LEN + MSG1_LEN];
                    if hs.read_message(msg1, &mut [0u8; 64]).is_err() {
                        return;
                    }
                    let mut ms = [0u8; 4];
                    let d = self.take_data(4);
                    ms[..d.len()].copy_from_slice(&d);
                    let mut msg = [0u8; 64];
                    let n = hs.write_message(&ms, &mut msg).unwrap();
                    self.pending = msg[..n].to_vec();
                    self.ms = Some(u32::from_le_bytes(ms));
                }
                _ => {}
            },
            _ => {}
        }
    }
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            self.refill();
        }
        let src: &[u8] = if self.pending.is_empty() {
            self.data
        } else {
            &self.pending
        };
        let n = buf.len().min(self.chunk).min(src.len());
        buf[..n].copy_from_slice(&src[..n]);
        if self.pending.is_empty() {
            self.data = &self.data[n..];
        } else {
            self.pending.drain(..n);
        }
        Ok(n)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.fail_writes {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn expected_error(e: &io::Error) {
    assert!(
        matches!(
            e.kind(),
            io::ErrorKind::PermissionDenied
                | io::ErrorKind::Unsupported
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
        ),
        "unexpected error: {e:?}"
    );
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 9 {
        return;
    }
    let flags = input[0];
    let hb = Duration::from_micros(u64::from_le_bytes(input[1..9].try_into().unwrap()));
    let data = &input[9..];
    let peer = |side| Peer {
        side,
        data,
        pending: Vec::new(),
        written: Vec::new(),
        stage: 0,
        our_preface: Vec::new(),
        honest_preface: flags & 2 != 0,
        honest_noise: flags & 1 != 0,
        noise: None,
        ms: None,
        fail_writes: flags & 4 != 0,
        chunk: usize::from(flags >> 3) * 3 + 1,
    };

    // The master, against a would-be worker.
    let mut p = peer(Side::Master);
    match master_handshake(&mut p, KEY, hb) {
        Ok(_session) => {
            let mut hs = p
                .noise
                .take()
                .expect("the master accepted a worker that did not answer with the key");
            assert_eq!(p.written.len(), PREFACE_LEN + MSG2_LEN);
            assert_eq!(p.written[..PREFACE_LEN], preface());
            // Its answer opens with the key and carries the timeout.
            let mut ms = [0u8; 64];
            let n = hs
                .read_message(&p.written[PREFACE_LEN..], &mut ms)
                .expect("the master's answer opens");
            let want = u32::try_from(hb.as_millis()).unwrap_or(u32::MAX);
            assert_eq!(ms[..n], want.to_le_bytes());
        }
        Err(e) => expected_error(&e),
    }

    // The worker, against a would-be master.
    let mut p = peer(Side::Worker);
    match worker_handshake(&mut p, KEY) {
        Ok((_session, timeout)) => {
            let ms = p
                .ms
                .expect("the worker accepted a master that did not answer with the key");
            assert_eq!(timeout, Duration::from_millis(u64::from(ms).max(1)));
        }
        Err(e) => expected_error(&e),
    }
    // The worker sent its preface first, and its first message only to a
    // master of its version.
    if !p.written.is_empty() {
        assert_eq!(p.written[..PREFACE_LEN.min(p.written.len())], preface()[..PREFACE_LEN.min(p.written.len())]);
    }
    if p.written.len() > PREFACE_LEN {
        assert_eq!(p.our_preface, preface());
    }
});

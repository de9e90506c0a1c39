//! The remote handshake, both sides, against a peer whose bytes come from
//! the fuzz input: `master_handshake` (what `accept_worker` runs) reading
//! a worker's answer, `worker_handshake` (what `connect_to_master` runs)
//! reading a master's greeting and proof. Neither may panic or hang (the
//! stream ends where the input does), neither may accept a peer that did
//! not prove it knows the key, and both must accept one that did.
//!
//! Input: a flags byte, 8 bytes of the master's heartbeat timeout (µs),
//! then the peer's bytes. Flags: bit 0 splices the correct proof into the
//! stream at the point the peer would send it (so the success paths are
//! reached despite the random nonces); bit 1 prefixes the master's
//! greeting; bit 2 makes writes fail; bits 3-7 choose the read chunk size.
#![no_main]

use std::io::{self, Read, Write};
use std::time::Duration;

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use procpool_ipc::remote::{master_handshake, worker_handshake};
use sha2::Sha256;

const KEY: &[u8] = b"fuzzing key, sixteen bytes or more";
const GREETING: &[u8] = b"PPAUTH2";

fn mac(role: &[u8], nonce: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(KEY).expect("any key length");
    m.update(role);
    m.update(nonce);
    m.update(extra);
    m.finalize().into_bytes().to_vec()
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
    splice_proof: bool,
    spliced: bool,
    fail_writes: bool,
    chunk: usize,
}

impl Peer<'_> {
    /// Once the code under test has said enough, the correct answer.
    fn splice(&mut self) {
        if !self.splice_proof || self.spliced {
            return;
        }
        match self.side {
            // The master wrote "PPAUTH2" and its challenge.
            Side::Master if self.written.len() >= 39 => {
                self.pending = mac(b"worker", &self.written[7..39], &[]);
            }
            // The worker wrote its proof and nonce.
            Side::Worker if self.written.len() >= 64 => {
                let mut ms = [0u8; 4];
                let n = self.data.len().min(4);
                ms[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                self.pending = mac(b"master", &self.written[32..64], &ms);
                self.pending.extend_from_slice(&ms);
            }
            _ => return,
        }
        self.spliced = true;
    }
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            self.splice();
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
    let peer = |side, greeting: bool| Peer {
        side,
        data,
        pending: if greeting {
            GREETING.to_vec()
        } else {
            Vec::new()
        },
        written: Vec::new(),
        splice_proof: flags & 1 != 0,
        spliced: false,
        fail_writes: flags & 4 != 0,
        chunk: usize::from(flags >> 3) * 3 + 1,
    };

    // The master, against a would-be worker.
    let mut p = peer(Side::Master, false);
    match master_handshake(&mut p, KEY, hb) {
        Ok(()) => {
            assert!(p.spliced, "the master accepted a worker without a proof");
            assert_eq!(p.written.len(), 7 + 32 + 32 + 4);
            let ms = u32::try_from(hb.as_millis()).unwrap_or(u32::MAX);
            assert_eq!(p.written[71..], ms.to_le_bytes());
            // Its proof is over our nonce (what followed our proof) and the timeout.
            let nonce = &data[..32];
            assert_eq!(p.written[39..71], mac(b"master", nonce, &ms.to_le_bytes()));
        }
        Err(e) => expected_error(&e),
    }

    // The worker, against a would-be master.
    let mut p = peer(Side::Worker, flags & 2 != 0);
    match worker_handshake(&mut p, KEY) {
        Ok(timeout) => {
            assert!(p.spliced, "the worker accepted a master without a proof");
            assert!(timeout >= Duration::from_millis(1));
            assert!(timeout <= Duration::from_millis(u64::from(u32::MAX)));
        }
        Err(e) => expected_error(&e),
    }
    // Whatever the worker wrote is its proof over the challenge it read.
    if p.written.len() >= 32 {
        let start = if flags & 2 != 0 { 0 } else { 7 };
        let challenge = &data[start..start + 32];
        assert_eq!(p.written[..32], mac(b"worker", challenge, &[]));
    }
});

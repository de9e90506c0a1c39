use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use super::*;
use crate::link::Sink;

const KEY: &[u8] = b"a long random key shared out of band";
const LIMIT: Duration = Duration::from_secs(20);

/// A connected pair of loopback sockets, bounded by [`LIMIT`].
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (b, _) = listener.accept().unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.set_write_timeout(Some(LIMIT)).unwrap();
    }
    (a, b)
}

/// Both sides' sessions, agreed over a fresh pair; the master's socket,
/// then the worker's.
fn sessions() -> (Session, TcpStream, Session, TcpStream) {
    let (mut m, mut w) = pair();
    let master = {
        let mut m = m.try_clone().unwrap();
        thread::spawn(move || master_handshake(&mut m, KEY, Duration::from_millis(777)))
    };
    let (ws, timeout) = worker_handshake(&mut w, KEY).unwrap();
    assert_eq!(timeout, Duration::from_millis(777));
    let ms = master.join().unwrap().unwrap();
    m.flush().unwrap();
    (ms, m, ws, w)
}

fn clone(s: &TcpStream) -> TcpStream {
    s.try_clone().unwrap()
}

#[test]
fn bytes_round_trip_both_ways_in_records() {
    let (ms, m, ws, w) = sessions();
    let (mut mr, mut mw) = ms.split(clone(&m), clone(&m));
    let (mut wr, mut ww) = ws.split(clone(&w), clone(&w));
    // Larger than one batch, so several records and several seals.
    let big: Vec<u8> = (0..(MAX_BATCH * 2 + 12345)).map(|i| i as u8).collect();
    let sent = big.clone();
    let writer = thread::spawn(move || {
        ww.write_all(b"small").unwrap();
        ww.write_all(&sent).unwrap();
        ww
    });
    let mut got = [0u8; 5];
    mr.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"small");
    let mut got = vec![0u8; big.len()];
    mr.read_exact(&mut got).unwrap();
    assert!(got == big);
    drop(writer.join().unwrap());

    // The other way, through the non-blocking path a link takes first.
    let mut n = 0;
    while n < big.len() {
        match mw.try_write(&big[n..]) {
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        if mw.is_holding() {
            break;
        }
    }
    let reader = thread::spawn(move || {
        let mut got = vec![0u8; big.len()];
        wr.read_exact(&mut got).unwrap();
        assert!(got == big);
    });
    mw.write_all(&[]).unwrap();
    mw.flush().unwrap();
    assert!(!mw.is_holding());
    let rest: Vec<u8> = (n..(MAX_BATCH * 2 + 12345)).map(|i| i as u8).collect();
    mw.write_all(&rest).unwrap();
    reader.join().unwrap();
    drop((m, w));
}

#[test]
fn the_wire_carries_no_plaintext() {
    let (_ms, m, ws, w) = sessions();
    let (_wr, mut ww) = ws.split(clone(&w), clone(&w));
    let secret = b"the distinctive plaintext procpool-7f3a";
    ww.write_all(secret).unwrap();
    let mut wire = vec![0u8; 2 + secret.len() + TAG_LEN];
    (&m).read_exact(&mut wire).unwrap();
    assert!(!wire.windows(secret.len()).any(|win| win == secret));
}

/// The worker writes `records` (one record each); the test carries the
/// sealed bytes to a second connection, changed by `tamper`, where the
/// master's reader opens them.
fn relay(records: &[&[u8]], tamper: impl FnOnce(Vec<Vec<u8>>) -> Vec<u8>) -> SecureReader {
    let (ms, m, ws, w) = sessions();
    let (_wr, mut ww) = ws.split(clone(&w), clone(&w));
    let mut sealed = Vec::new();
    for r in records {
        ww.write_all(r).unwrap();
        let mut wire = vec![0u8; 2 + r.len() + TAG_LEN];
        (&m).read_exact(&mut wire).unwrap();
        sealed.push(wire);
    }
    let (a, b) = pair();
    (&a).write_all(&tamper(sealed)).unwrap();
    drop(a);
    let (mr, _mw) = ms.split(b, clone(&m));
    mr
}

fn rejected(e: &io::Error) -> Option<RecordRejected> {
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    e.get_ref()?.downcast_ref::<RecordRejected>().copied()
}

#[test]
fn a_flipped_byte_is_rejected() {
    let mut r = relay(&[b"hello"], |mut recs| {
        recs[0][4] ^= 1;
        recs.concat()
    });
    let err = r.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(rejected(&err), Some(RecordRejected { record: 0 }), "{err}");
}

#[test]
fn a_replayed_or_reordered_record_is_rejected() {
    let mut r = relay(&[b"one", b"two"], |recs| {
        [recs[0].clone(), recs[0].clone()].concat()
    });
    let mut got = [0u8; 3];
    r.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"one");
    let err = r.read(&mut got).unwrap_err();
    assert_eq!(rejected(&err), Some(RecordRejected { record: 1 }), "{err}");

    let mut r = relay(&[b"one", b"two"], |recs| {
        [recs[1].clone(), recs[0].clone()].concat()
    });
    let err = r.read(&mut got).unwrap_err();
    assert_eq!(rejected(&err), Some(RecordRejected { record: 0 }), "{err}");
}

#[test]
fn a_record_shorter_than_a_tag_is_rejected() {
    let mut r = relay(&[], |_| vec![0, 3, 1, 2, 3]);
    let err = r.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(rejected(&err), Some(RecordRejected { record: 0 }), "{err}");
}

#[test]
fn a_dropped_connection_mid_record_is_an_error_between_records_an_end() {
    let mut r = relay(&[b"whole"], |recs| recs.concat());
    let mut got = [0u8; 5];
    r.read_exact(&mut got).unwrap();
    assert_eq!(r.read(&mut got).unwrap(), 0, "clean end between records");

    let mut r = relay(&[b"whole"], |recs| recs[0][..10].to_vec());
    let err = r.read(&mut got).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
}

/// A peer that sends a preface of protocol `version` and reads what it
/// is sent until the other side hangs up.
fn peer_of_version(version: u32) -> (std::net::SocketAddr, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let mut p = preface();
        p[MAGIC.len()..].copy_from_slice(&version.to_le_bytes());
        let _ = s.write_all(&p);
        let _ = io::copy(&mut s, &mut io::sink());
    });
    (addr, peer)
}

#[test]
fn a_version_mismatch_is_refused_on_both_sides_before_the_key_is_used() {
    let other = PROTOCOL_VERSION + 1;
    // The worker's view of a newer master.
    let (addr, peer) = peer_of_version(other);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let err = worker_handshake(&mut s, KEY).unwrap_err();
    drop(s);
    peer.join().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<VersionMismatch>());
    assert_eq!(
        inner,
        Some(&VersionMismatch {
            master: other,
            worker: PROTOCOL_VERSION,
            seen_by: Role::Worker
        })
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the master speaks protocol {other}, this worker {PROTOCOL_VERSION}: run the same procpool version on both sides"
        )
    );

    // The master's view of an older worker.
    let (addr, peer) = peer_of_version(PROTOCOL_VERSION - 1);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let err = master_handshake(&mut s, KEY, Duration::from_secs(1)).unwrap_err();
    drop(s);
    peer.join().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "the worker speaks protocol {}, this master {PROTOCOL_VERSION}",
            PROTOCOL_VERSION - 1
        )),
        "{err}"
    );
}

#[test]
fn the_psk_depends_on_every_byte_of_the_key() {
    assert_ne!(psk(b"0123456789abcdef"), psk(b"0123456789abcdeF"));
    assert_ne!(psk(b"0123456789abcdef"), psk(b"0123456789abcdef0"));
    // RFC 5869 test case 1 (first 32 bytes of its 42-byte output).
    let okm = hkdf(
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        &[0x0b; 22],
        &[0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9],
    );
    let hex: String = okm.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
    );
}

/// A link over an encrypted sink keeps the stuck-peer promises: sends
/// never block on a peer that does not read, records the kernel took only
/// part of are finished by the writer thread, and `drain` waits for them;
/// every frame then arrives in order (small ones batched into records,
/// large ones split).
#[test]
fn a_link_over_an_encrypted_sink_never_blocks_and_drains() {
    use crate::frame::{DEFAULT_MAX_FRAME_LEN, FrameReader};
    use crate::link::Link;
    use crate::proto::Message;

    let (ms, m, ws, w) = sessions();
    // Small socket buffers, so a few hundred KiB fill them (and the test
    // stays quick in a debug build, where encryption is slow).
    socket2::SockRef::from(&w)
        .set_send_buffer_size(64 << 10)
        .unwrap();
    socket2::SockRef::from(&m)
        .set_recv_buffer_size(64 << 10)
        .unwrap();
    let (mr, _mw) = ms.split(clone(&m), clone(&m));
    let (_wr, ww) = ws.split(clone(&w), clone(&w));
    let link = Link::new(ww, DEFAULT_MAX_FRAME_LEN).unwrap();
    let big = vec![7u8; 512 << 10];
    let sizes: Vec<usize> = (0..40)
        .map(|i| if i % 10 == 9 { big.len() } else { i * 37 })
        .collect();
    for &n in &sizes {
        let msg = Message::Run {
            id: n as u64,
            task: 0,
            count: 1,
            payload: &big[..n],
        };
        link.send(&msg).unwrap();
    }
    // Nobody reads yet: the link holds what the kernel did not take.
    assert!(
        !link
            .drain(Some(std::time::Instant::now() + Duration::from_millis(50)))
            .unwrap()
    );
    let reader = thread::spawn(move || {
        let mut fr = FrameReader::new(mr, DEFAULT_MAX_FRAME_LEN);
        let mut frame = Vec::new();
        for &n in &sizes {
            assert!(fr.read_frame(&mut frame).unwrap());
            match Message::decode(&frame).unwrap() {
                Message::Run { id, payload, .. } => {
                    assert_eq!((id, payload.len()), (n as u64, n));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    assert!(link.drain(Some(std::time::Instant::now() + LIMIT)).unwrap());
    reader.join().unwrap();
    drop(w);
}

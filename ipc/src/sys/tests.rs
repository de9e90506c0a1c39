//! Contract tests for the platform backend; they run on every OS.

use super::*;

#[test]
fn bad_endpoint_values_are_errors() {
    for value in ["", "fd:", "nonsense", "fd:-1", "pipe:"] {
        assert!(connect(value).is_err(), "{value:?} must not connect");
    }
}

/// One thread writes into a connection while another reads from it, each
/// half moved to its own thread: the bytes arrive complete and in order,
/// and the reader sees the end of the stream once the writer is dropped.
/// `test_pair` is a socketpair (Unix) or a named pipe both of whose ends
/// are in this process (Windows).
#[test]
fn halves_are_usable_from_two_threads() {
    use std::io::{Read, Write};
    use std::sync::mpsc;
    use std::time::Duration;

    let (mut read, mut write) = test_pair().expect("a socketpair");
    // More than any socket buffer holds: the writer blocks until the reader
    // drains, so the two really run at the same time.
    let sent: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let expected = sent.clone();
    let writer = std::thread::spawn(move || {
        for piece in sent.chunks(65_537) {
            write.write_all(piece).expect("write");
        }
        write.flush().expect("flush");
        // Dropping `write` closes the connection: the reader sees EOF.
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = tx.send(read.read_to_end(&mut got).map(|_| got));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the reader did not finish within 60 s")
        .expect("read");
    writer.join().expect("the writer panicked");
    assert_eq!(got.len(), expected.len(), "bytes received");
    assert!(got == expected, "the bytes arrived altered or out of order");
}

#[test]
fn our_own_process_is_alive() {
    assert!(process_alive(std::process::id()));
}

#[test]
fn a_reaped_child_is_not_alive() {
    // This test binary itself, asked only to list its tests: a child that
    // exists on every OS and exits at once.
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = std::process::Command::new(exe)
        .arg("--list")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a child");
    let pid = child.id();
    // Until it is reaped, a Unix child exists (perhaps as a zombie) whatever
    // it has done; a Windows child may already have exited.
    #[cfg(unix)]
    assert!(process_alive(pid), "unreaped child {pid} reads as gone");
    let status = child.wait().expect("reap the child");
    assert!(status.success(), "{status}");
    // Checked while `child` still holds its process handle: on Windows that
    // keeps the pid from being reused by another process meanwhile. (On
    // Unix the pid is free once reaped, but pids are allocated in sequence,
    // so it is not handed out again this soon.)
    assert!(
        !process_alive(pid),
        "reaped child {pid} still reads as alive"
    );
    drop(child);
}

/// A descriptor (Windows: a handle duplicated into the receiver) sent on a
/// descriptor channel whose receiving end is dropped without claiming it
/// is closed, not leaked: the probe connection it is one end of reads
/// EOF at its other end.
#[test]
fn an_unclaimed_descriptor_is_closed_when_its_channel_drops() {
    use std::io::Read;
    use std::sync::mpsc;
    use std::time::Duration;

    let (mut far, near) = probe_pair();
    let (a, b) = test_fd_channels().expect("descriptor channels");
    a.send(7, &near).expect("send");
    drop(near);
    drop(b);
    drop(a);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1];
        let _ = tx.send(far.read(&mut buf).map_or(true, |n| n == 0));
    });
    let eof = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the sent end stayed open: leaked in the receiver");
    assert!(eof, "the probe read data instead of its end");
}

/// A connection in this process: one end to read, the other as the
/// descriptor (handle) to send.
#[cfg(unix)]
fn probe_pair() -> (std::os::unix::net::UnixStream, std::os::fd::OwnedFd) {
    let (far, near) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    (far, near.into())
}

#[cfg(windows)]
fn probe_pair() -> (
    impl std::io::Read + Send + 'static,
    std::os::windows::io::OwnedHandle,
) {
    let (far, near) = imp::test_pipe().expect("a pipe");
    (far, near.try_into().expect("the pipe's handle"))
}

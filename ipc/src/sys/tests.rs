//! Contract tests for the platform backend; they run on every OS.

use std::io::{Read, Write};

use super::*;

#[test]
fn bad_endpoint_values_are_errors() {
    for value in ["", "fd:", "nonsense", "fd:-1", "pipe:"] {
        assert!(connect(value).is_err(), "{value:?} must not connect");
    }
}

#[test]
fn halves_are_usable_from_two_threads() {
    // A real child that echoes its stdin is platform-specific; here we check
    // the Read/Write impls are Send by moving them across threads.
    fn assert_send<T: Send + Read>() {}
    fn assert_send_w<T: Send + Write>() {}
    assert_send::<ReadHalf>();
    assert_send_w::<WriteHalf>();
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

//! Unix backend: a `socketpair(AF_UNIX, SOCK_STREAM)` made by the master; the
//! child's end is inherited at [`CHILD_FD`], every other descriptor is
//! close-on-exec.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use super::ENDPOINT_ENV;

/// The descriptor a worker finds its end of the connection at.
const CHILD_FD: RawFd = 3;

/// The reading direction of a connection. EOF (or a broken pipe) means
/// the peer is gone.
#[derive(Debug)]
pub struct ReadHalf(UnixStream);

/// The writing direction of a connection.
#[derive(Debug)]
pub struct WriteHalf(UnixStream);

super::forward_io!(ReadHalf, WriteHalf);

impl ReadHalf {
    /// Liveness on a local connection: reads and writes that wait longer
    /// than `timeout` fail (the socket is shared by both halves).
    pub(crate) fn set_timeouts(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.0.set_read_timeout(timeout)?;
        self.0.set_write_timeout(timeout)
    }
}

impl WriteHalf {
    /// Writes what the socket takes without blocking.
    pub(crate) fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        try_send(self.0.as_fd(), buf)
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
// Elsewhere SIGPIPE is ignored by the Rust runtime's default set-up.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

/// `send` that never blocks: `WouldBlock` when the socket's buffer is full.
fn try_send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration
    // of the call, and `fd` is an open descriptor the caller borrows.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), SEND_FLAGS) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

/// [`try_send`] on a TCP stream.
pub(crate) fn try_send_tcp(stream: &std::net::TcpStream, buf: &[u8]) -> io::Result<usize> {
    try_send(stream.as_fd(), buf)
}

/// A connected pair of halves in this process, for tests.
#[cfg(test)]
pub(crate) fn test_pair() -> io::Result<(ReadHalf, WriteHalf)> {
    let (a, b) = UnixStream::pair()?;
    Ok((halves(a)?.0, halves(b)?.1))
}

fn halves(stream: UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    Ok((ReadHalf(stream.try_clone()?), WriteHalf(stream)))
}

pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Clears or sets close-on-exec on `fd`.
fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: fcntl(F_SETFD) on a descriptor the caller borrows; no memory is touched.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flag) }).map(drop)
}

pub(crate) fn spawn(mut cmd: Command) -> io::Result<(Child, ReadHalf, WriteHalf)> {
    // std creates both ends with SOCK_CLOEXEC, so no other child inherits them.
    let (master, child_end) = UnixStream::pair()?;
    let child_raw = child_end.as_raw_fd();
    let master_pid = std::process::id();
    cmd.env(ENDPOINT_ENV, format!("fd:{CHILD_FD}:{master_pid}"));
    let pre_exec = move || -> io::Result<()> {
        // Only async-signal-safe calls from here on: we are between fork and exec.
        if child_raw == CHILD_FD {
            // SAFETY: F_SETFD on our own open descriptor.
            cvt(unsafe { libc::fcntl(CHILD_FD, libc::F_SETFD, 0) })?;
        } else {
            // SAFETY: dup2 of an open descriptor onto CHILD_FD; the copy is not close-on-exec.
            cvt(unsafe { libc::dup2(child_raw, CHILD_FD) })?;
        }
        // SAFETY: setting a signal disposition to SIG_IGN is async-signal-safe.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // SAFETY: prctl with integer arguments only.
            cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })?;
            // SAFETY: getppid has no preconditions.
            if unsafe { libc::getppid() } as u32 != master_pid {
                // The master died before the death signal was armed. A raw
                // OS error: nothing may allocate between fork and exec.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        let _ = master_pid;
        Ok(())
    };
    // SAFETY: the closure only calls fcntl, dup2, signal, prctl and getppid,
    // all async-signal-safe, and allocates nothing.
    unsafe { cmd.pre_exec(pre_exec) };
    let child = cmd.spawn()?;
    // Our copy of the child's end must go, or we would never see EOF when the child dies.
    drop(child_end);
    let (r, w) = halves(master)?;
    Ok((child, r, w))
}

/// Parses `fd:<n>:<master pid>`.
fn parse_endpoint(value: &str) -> Option<(RawFd, u32)> {
    let (fd, pid) = value.strip_prefix("fd:")?.split_once(':')?;
    Some((fd.parse().ok()?, pid.parse().ok()?))
}

/// Whether `value` was set for this very process: its descriptor is a
/// socket made by the master it names (Linux: the socket's peer
/// credentials, fixed when the master called `socketpair`, carry its pid;
/// elsewhere: the descriptor is a socket). A worker sets its end
/// close-on-exec, so a program it starts inherits the variable but not the
/// descriptor, and is told it is no worker.
pub(crate) fn endpoint_is_ours(value: &str) -> bool {
    let Some((fd, master)) = parse_endpoint(value) else {
        return false;
    };
    if !is_socket(fd) {
        return false;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: `ucred` is a plain C struct of integers, for which
        // all-zero bytes are a valid value; getsockopt overwrites it.
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt on an integer descriptor writes at most `len`
        // bytes into `cred`, which outlives the call; a wrong fd is EBADF.
        let ret = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        };
        ret == 0 && u32::try_from(cred.pid).ok() == Some(master)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = master;
        true
    }
}

/// Whether `fd` is an open socket.
fn is_socket(fd: RawFd) -> bool {
    // SAFETY: `libc::stat` is a plain C struct of integers (and padding),
    // for which all-zero bytes are a valid value; fstat overwrites it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on any integer is safe; an unopened fd yields EBADF.
    let ret = unsafe { libc::fstat(fd, &mut st) };
    ret == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
}

pub(crate) fn connect(value: &str) -> io::Result<(ReadHalf, WriteHalf)> {
    let (fd, _) = parse_endpoint(value).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad endpoint {value:?}"),
        )
    })?;
    if !is_socket(fd) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("endpoint fd {fd} is not a socket"),
        ));
    }
    // SAFETY: the master put our end of the socketpair at `fd` for us alone;
    // `endpoint::connect_worker` calls this at most once per process, so
    // nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Tasks may start programs of their own: they must not inherit the
    // connection, or our death would not read as EOF in the master.
    set_cloexec(owned.as_fd(), true)?;
    halves(UnixStream::from(owned))
}

/// A child to wait on without reaping it: its pid.
#[derive(Debug)]
pub(crate) struct ExitWatch(libc::id_t);

impl ExitWatch {
    pub(crate) fn new(child: &Child) -> io::Result<Self> {
        // `id_t` is unsigned on Linux and signed on the BSDs.
        libc::id_t::try_from(child.id())
            .map(Self)
            .map_err(|_| io::Error::other("pid out of range"))
    }

    /// Blocks until the child has exited, leaving it to be reaped.
    /// `ECHILD` (the system reaps children itself when this process
    /// ignores `SIGCHLD`) means it is gone too.
    pub(crate) fn wait(&self) -> io::Result<()> {
        loop {
            // SAFETY: `siginfo_t` is a plain C struct (integers and a union
            // of integers and pointers) for which all-zero bytes are valid;
            // waitid overwrites it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is valid for writes for the call; WNOWAIT
            // leaves the child waitable, so its pid stays ours.
            let ret = unsafe {
                libc::waitid(
                    libc::P_PID,
                    self.0,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if ret == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ECHILD) => return Ok(()),
                _ => return Err(e),
            }
        }
    }
}

pub(crate) fn ignore_interrupts() {
    // SAFETY: setting SIGINT to SIG_IGN has no memory effects.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
}

pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that `pid` exists and may be signalled;
    // nothing is delivered and no memory is touched.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    // It exists but belongs to someone we may not signal.
    io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Asks a child to end (SIGTERM). The caller holds the `Child` unreaped,
/// so its pid cannot have been reused.
pub(crate) fn terminate(child: &Child) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(child.id()).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill takes plain integers and touches no memory of ours; the
    // pid is our unreaped child's.
    cvt(unsafe { libc::kill(pid, libc::SIGTERM) }).map(drop)
}

/// Python's `exitcode`: the exit status, or minus the signal that ended
/// the process.
pub(crate) fn exit_code(status: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| -s))
}

pub(crate) fn hostname() -> io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, the most
    // `gethostname` writes.
    cvt(unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) })?;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..len].to_vec())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the host name is not UTF-8"))
}

pub(crate) fn interface_addrs() -> io::Result<Vec<(String, std::net::IpAddr)>> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid place for `getifaddrs` to store the list.
    cvt(unsafe { libc::getifaddrs(&mut head) })?;
    let mut found = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list `getifaddrs` returned, which
        // stays allocated until `freeifaddrs` below.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() && !ifa.ifa_name.is_null() {
            // SAFETY: `ifa_name` is a NUL-terminated string of the list.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: `ifa_addr` is non-null and points to a socket address
            // of the list; its family field says which type it is.
            let family = libc::c_int::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an `AF_INET` address is a `sockaddr_in`.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                found.push((name, IpAddr::V4(ip)));
            } else if family == libc::AF_INET6 {
                // SAFETY: an `AF_INET6` address is a `sockaddr_in6`.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                found.push((name, IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from `getifaddrs` and is freed once; nothing
    // borrowed from the list outlives this (the names were copied).
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

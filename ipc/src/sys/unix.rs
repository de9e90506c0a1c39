//! Unix backend: a `socketpair(AF_UNIX, SOCK_STREAM)` made by the master; the
//! child's end is inherited at [`CHILD_FD`], every other descriptor is
//! close-on-exec.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use super::ENDPOINT_ENV;

/// The descriptor a worker finds its end of the connection at.
const CHILD_FD: RawFd = 3;

/// The descriptor a worker finds its end of the descriptor channel at.
const CHILD_FD_CHANNEL: RawFd = 4;

/// The reading direction of a connection. EOF (or a broken pipe) means
/// the peer is gone. A local connection also carries the descriptor
/// channel, until it is taken.
#[derive(Debug)]
pub struct ReadHalf(UnixStream, Option<FdChannel>);

/// The writing direction of a connection.
#[derive(Debug)]
pub struct WriteHalf(UnixStream);

super::forward_io!(ReadHalf, WriteHalf);

impl ReadHalf {
    /// The connection's descriptor channel, if it has one and it was not
    /// taken yet.
    pub(crate) fn take_fd_channel(&mut self) -> Option<FdChannel> {
        self.1.take()
    }

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
    Ok((ReadHalf(stream.try_clone()?, None), WriteHalf(stream)))
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
    let (master_fds, child_fds) = UnixDatagram::pair()?;
    // Copies above the target numbers, so that neither `dup2` below
    // overwrites the source of the other.
    let child_end = dup_above(child_end.as_fd(), CHILD_FD_CHANNEL + 1)?;
    let child_fds = dup_above(child_fds.as_fd(), CHILD_FD_CHANNEL + 1)?;
    let (child_raw, fds_raw) = (child_end.as_raw_fd(), child_fds.as_raw_fd());
    let master_pid = std::process::id();
    cmd.env(
        ENDPOINT_ENV,
        format!("fd:{CHILD_FD}:{master_pid}:{CHILD_FD_CHANNEL}"),
    );
    let pre_exec = move || -> io::Result<()> {
        // Only async-signal-safe calls from here on: we are between fork and exec.
        // SAFETY: dup2 of open descriptors (both above the targets) onto
        // CHILD_FD and CHILD_FD_CHANNEL; the copies are not close-on-exec.
        cvt(unsafe { libc::dup2(child_raw, CHILD_FD) })?;
        // SAFETY: as above.
        cvt(unsafe { libc::dup2(fds_raw, CHILD_FD_CHANNEL) })?;
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
    drop(child_fds);
    let (mut r, w) = halves(master)?;
    r.1 = Some(FdChannel::new(master_fds)?);
    Ok((child, r, w))
}

/// A close-on-exec copy of `fd` numbered at least `min`.
fn dup_above(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller borrows returns a
    // new descriptor (or -1); no memory is touched.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: `new` was just returned by fcntl; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Parses `fd:<n>:<master pid>[:<descriptor channel fd>]`.
fn parse_endpoint(value: &str) -> Option<(RawFd, u32, Option<RawFd>)> {
    let mut parts = value.strip_prefix("fd:")?.split(':');
    let fd = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    let channel = match parts.next() {
        Some(c) => Some(c.parse().ok()?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((fd, pid, channel))
}

/// Whether `value` was set for this very process: its descriptor is a
/// socket made by the master it names (Linux: the socket's peer
/// credentials, fixed when the master called `socketpair`, carry its pid;
/// elsewhere: the descriptor is a socket). A worker sets its end
/// close-on-exec, so a program it starts inherits the variable but not the
/// descriptor, and is told it is no worker.
pub(crate) fn endpoint_is_ours(value: &str) -> bool {
    let Some((fd, master, _)) = parse_endpoint(value) else {
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
    let (fd, _, channel) = parse_endpoint(value).ok_or_else(|| {
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
    let (mut r, w) = halves(UnixStream::from(owned))?;
    if let Some(channel) = channel.filter(|&c| c != fd && is_socket(c)) {
        // SAFETY: the master put the descriptor channel at `channel` for
        // us alone, and this runs once per process (as above).
        let owned = unsafe { OwnedFd::from_raw_fd(channel) };
        set_cloexec(owned.as_fd(), true)?;
        r.1 = Some(FdChannel::new(UnixDatagram::from(owned))?);
    }
    Ok((r, w))
}

/// How long [`FdChannel::recv`] waits for a descriptor its peer announced
/// (it was sent before the announcement, so it is normally there already).
const FD_RECV_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The descriptor channel of a local connection: a `SOCK_DGRAM`
/// socketpair beside the stream, on which each datagram is an 8-byte
/// token with exactly one descriptor attached (`SCM_RIGHTS`). Datagrams
/// keep each token with its descriptor, which a byte stream would not.
#[derive(Debug)]
pub(crate) struct FdChannel(UnixDatagram);

impl FdChannel {
    fn new(socket: UnixDatagram) -> io::Result<Self> {
        socket.set_read_timeout(Some(FD_RECV_TIMEOUT))?;
        Ok(Self(socket))
    }

    /// Sends `fd` with `token`, without blocking: `WouldBlock` when the
    /// peer has not read earlier ones.
    pub(crate) fn send(&self, token: u64, fd: &OwnedFd) -> io::Result<()> {
        let data = token.to_le_bytes();
        let mut iov = libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        };
        // Aligned for `cmsghdr`, and larger than CMSG_SPACE of one fd.
        let mut control = [0u64; 8];
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as _) } as usize;
        debug_assert!(space <= std::mem::size_of_val(&control));
        // SAFETY: `msghdr` is a plain C struct of integers and pointers, for
        // which all-zero bytes are valid (null pointers, zero lengths).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg.msg_control` points to `control`, at least `space`
        // bytes and aligned for `cmsghdr`, so the first header fits in it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as _) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        }
        // SAFETY: `msg` points to `iov` (to `data`) and `control`, all
        // alive for the call; sendmsg only reads them.
        let n = unsafe { libc::sendmsg(self.0.as_raw_fd(), &msg, SEND_FLAGS) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives the next descriptor and its token; blocks up to
    /// [`FD_RECV_TIMEOUT`]. `UnexpectedEof` when the peer is gone,
    /// `InvalidData` for a datagram that is not one token with one
    /// descriptor (any descriptors it carried are closed).
    pub(crate) fn recv(&self) -> io::Result<(u64, OwnedFd)> {
        let mut data = [0u8; 16];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut control = [0u64; 8];
        // SAFETY: as in `send`.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        let flags = libc::MSG_CMSG_CLOEXEC;
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
        let flags = 0;
        let n = loop {
            // SAFETY: `msg` points to `iov` (to `data`) and `control`, valid
            // for writes of the lengths it gives, for the call.
            let n = unsafe { libc::recvmsg(self.0.as_raw_fd(), &mut msg, flags) };
            if n >= 0 {
                break n.unsigned_abs();
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut fds = Vec::new();
        // SAFETY: the kernel filled `control` up to `msg.msg_controllen`;
        // CMSG_FIRSTHDR/CMSG_NXTHDR stay within it, and each SCM_RIGHTS
        // header's data holds `(cmsg_len - CMSG_LEN(0)) / size_of::<RawFd>()`
        // descriptors that are now ours (each wrapped at once, so closed
        // if refused below).
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data_len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let first = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..data_len / std::mem::size_of::<RawFd>() {
                        let raw = std::ptr::read_unaligned(first.add(i));
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if n == 0 && fds.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if n != 8 || fds.len() != 1 || msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed message on the descriptor channel",
            ));
        }
        let fd = fds.pop().expect("one descriptor");
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
        set_cloexec(fd.as_fd(), true)?;
        let token = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        Ok((token, fd))
    }
}

/// A connected pair of descriptor channels in this process, for tests.
#[cfg(test)]
pub(crate) fn test_fd_channels() -> io::Result<(FdChannel, FdChannel)> {
    let (a, b) = UnixDatagram::pair()?;
    Ok((FdChannel::new(a)?, FdChannel::new(b)?))
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

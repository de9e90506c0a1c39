//! Windows backend: one duplex byte-mode named pipe per worker, created by
//! the master, connected by the child, authenticated by a token.
//!
//! - **Name.** `\\.\pipe\procpool-<master pid>-<128 random bits>`: the pid
//!   alone is not enough, since pids are small and reused (very much so under
//!   Wine). The first instance is created with `FILE_FLAG_FIRST_PIPE_INSTANCE`
//!   (interprocess does that), so a name squatted by another process makes
//!   `spawn` fail instead of connecting the worker to an impostor.
//! - **Token.** The master puts the pipe name and a random 16-byte token in
//!   [`ENDPOINT_ENV`] (`pipe:<name>:<32 hex digits>`); the first 16 bytes the
//!   child sends must be that token, so no other local process that finds the
//!   name can pose as the worker.
//! - **Concurrency.** interprocess opens both ends with `FILE_FLAG_OVERLAPPED`
//!   and runs every read and write as its own overlapped operation
//!   (`ReadFileEx`/`WriteFileEx` plus an alertable wait), so a read blocked on
//!   one thread does not hold up a write on another thread of the same
//!   handle, as it would on a synchronous handle. One duplex pipe, split into
//!   its two halves, is therefore enough.
//! - **Death.** Neither end is inheritable, so when the peer process dies its
//!   end closes and a pending read completes with `ERROR_BROKEN_PIPE`, which
//!   interprocess reports as `Ok(0)`. Workers are assigned to a job object
//!   with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`, held by the master only, so
//!   they die with it.
//! - **Ctrl-C.** Workers start with `CREATE_NEW_PROCESS_GROUP`, which makes
//!   them ignore Ctrl-C from their first instruction (the flag implies
//!   `SetConsoleCtrlHandler(NULL, TRUE)` in the child), just as the Unix
//!   backend sets `SIGINT` to `SIG_IGN` before `exec`. Ctrl-Break still
//!   reaches them, as `SIGQUIT` would on Unix.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::os::windows::process::CommandExt;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use interprocess::ConnectWaitMode;
use interprocess::os::windows::named_pipe::{
    DuplexPipeStream, PipeListener, PipeListenerOptions, PipeMode, RecvPipeStream, SendPipeStream,
    pipe_mode::Bytes,
};
use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, INVALID_HANDLE_VALUE, STILL_ACTIVE, WAIT_OBJECT_0,
};
use windows_sys::Win32::System::Console::SetConsoleCtrlHandler;
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, PROCESSENTRY32W, Process32FirstW, Process32NextW, TH32CS_SNAPPROCESS,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
    SetInformationJobObject,
};
use windows_sys::Win32::System::Threading::{
    CREATE_NEW_PROCESS_GROUP, GetExitCodeProcess, INFINITE, OpenProcess,
    PROCESS_QUERY_LIMITED_INFORMATION, TerminateProcess, WaitForSingleObject,
};

use super::{ENDPOINT_ENV, ExitedBeforeConnecting};

/// Length of the authentication token, in bytes.
const TOKEN_LEN: usize = 16;

/// How long `spawn` waits for the child to connect and authenticate.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How often `spawn` checks whether the child has exited while it waits.
const POLL: Duration = Duration::from_millis(20);

/// How long the worker waits for a free pipe instance (there is exactly one,
/// meant for it) before giving up.
const WORKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Pipe buffer size hint for each direction, like a Unix socket buffer; with
/// interprocess's default (512 bytes) every frame would wait for the reader.
const PIPE_BUFFER: u32 = 64 << 10;

/// Prefix of every pipe name; the rest is `<pid>-<32 hex digits>`.
const NAME_PREFIX: &str = "procpool-";

/// The reading direction of a connection. EOF (or a broken pipe) means
/// the peer is gone.
#[derive(Debug)]
pub struct ReadHalf(RecvPipeStream<Bytes>);

/// The writing direction of a connection.
#[derive(Debug)]
pub struct WriteHalf(SendPipeStream<Bytes>);

/// No descriptor channel on Windows yet: large payloads keep travelling
/// over the named pipe (see `crate::shm::transport`).
#[derive(Debug)]
pub(crate) enum FdChannel {}

impl FdChannel {
    pub(crate) fn send(&self, _token: u64, _handle: &OwnedHandle) -> io::Result<()> {
        match *self {}
    }

    pub(crate) fn recv(&self) -> io::Result<(u64, OwnedHandle)> {
        match *self {}
    }
}

impl ReadHalf {
    /// Always `None`: see [`FdChannel`].
    pub(crate) fn take_fd_channel(&mut self) -> Option<FdChannel> {
        None
    }
}

// `flush` is a no-op, as on Unix: a completed write is already in the pipe.
// interprocess's `flush` is `FlushFileBuffers`, which waits until the peer
// has *read* everything; passing it through would turn each flush into a
// round trip (and two peers flushing at each other into a deadlock).
// Unflushed data is still not lost when the stream is dropped: interprocess
// hands the handle to its linger pool, which flushes before closing.
super::forward_io!(ReadHalf, WriteHalf);

/// A child to wait on without reaping it: a handle of our own to its process.
#[derive(Debug)]
pub(crate) struct ExitWatch(OwnedHandle);

impl ExitWatch {
    pub(crate) fn new(child: &Child) -> io::Result<Self> {
        use std::os::windows::io::AsHandle;
        Ok(Self(child.as_handle().try_clone_to_owned()?))
    }

    /// Blocks until the process has exited.
    pub(crate) fn wait(&self) -> io::Result<()> {
        // SAFETY: the handle is ours and open for as long as `self` lives.
        let ret = unsafe { WaitForSingleObject(self.0.as_raw_handle(), INFINITE) };
        if ret == WAIT_OBJECT_0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl ReadHalf {
    /// Named pipes have no read or write timeouts: heartbeats on local
    /// connections are not available here.
    pub(crate) fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        match timeout {
            None => Ok(()),
            Some(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "heartbeats on local worker connections are not supported on Windows",
            )),
        }
    }
}

impl WriteHalf {
    /// Named pipes have no per-call non-blocking write: always `WouldBlock`,
    /// so the link's writer thread does the writing.
    pub(crate) fn try_write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// No per-call non-blocking send here: always `WouldBlock`.
pub(crate) fn try_send_tcp(_stream: &std::net::TcpStream, _buf: &[u8]) -> io::Result<usize> {
    Err(io::ErrorKind::WouldBlock.into())
}

/// Splits a connected stream into its two halves.
fn halves(stream: DuplexPipeStream<Bytes>) -> (ReadHalf, WriteHalf) {
    let (r, w) = stream.split();
    (ReadHalf(r), WriteHalf(w))
}

/// `N` bytes from the system's random number generator.
fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf)
        .map_err(|e| io::Error::other(format!("no randomness for the worker endpoint: {e}")))?;
    Ok(buf)
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Parses exactly `TOKEN_LEN` bytes of hex.
fn parse_token(s: &str) -> Option<[u8; TOKEN_LEN]> {
    if s.len() != TOKEN_LEN * 2 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; TOKEN_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The full path of the pipe called `name`.
fn pipe_path(name: &str) -> String {
    format!(r"\\.\pipe\{name}")
}

/// An endpoint variable's content, parsed.
struct Endpoint {
    /// The pipe's name, without the `\\.\pipe\` prefix.
    name: String,
    /// What the child sends first.
    token: [u8; TOKEN_LEN],
}

impl Endpoint {
    /// The variable's content: `pipe:<name>:<hex token>`.
    fn to_value(&self) -> String {
        format!("pipe:{}:{}", self.name, hex(&self.token))
    }

    /// Parses what [`to_value`](Self::to_value) produced; the name must look
    /// like one of ours, so the variable cannot point a worker at any file.
    fn parse(value: &str) -> io::Result<Self> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad endpoint {value:?}"),
            )
        };
        let rest = value.strip_prefix("pipe:").ok_or_else(bad)?;
        let (name, token) = rest.rsplit_once(':').ok_or_else(bad)?;
        let suffix = name.strip_prefix(NAME_PREFIX).ok_or_else(bad)?;
        if suffix.is_empty()
            || !suffix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad());
        }
        let token = parse_token(token).ok_or_else(bad)?;
        Ok(Self {
            name: name.to_owned(),
            token,
        })
    }
}

/// The job object every worker of this process is assigned to, created on
/// first use; `None` if it could not be created (workers then only die with
/// the master by noticing EOF).
fn job() -> Option<&'static OwnedHandle> {
    static JOB: OnceLock<Option<OwnedHandle>> = OnceLock::new();
    JOB.get_or_init(create_kill_on_close_job).as_ref()
}

/// Creates an unnamed, non-inheritable job object that kills its processes
/// when its last handle closes, i.e. when this process exits in any way.
fn create_kill_on_close_job() -> Option<OwnedHandle> {
    // SAFETY: null attributes (default security, not inheritable) and a null
    // name are valid arguments; the call touches no memory of ours.
    let raw = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
    if raw.is_null() {
        return None;
    }
    // SAFETY: `raw` is a valid handle we just created and nobody else owns.
    let job = unsafe { OwnedHandle::from_raw_handle(raw) };
    // SAFETY: the struct is plain old data (integers only), for which all
    // zeroes is a valid value meaning "no limits".
    let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
    info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    let len = u32::try_from(size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>()).ok()?;
    // SAFETY: `job` is a valid job handle; the pointer and length describe
    // `info`, which lives across the call and matches the information class.
    let ok = unsafe {
        SetInformationJobObject(
            job.as_raw_handle(),
            JobObjectExtendedLimitInformation,
            (&raw const info).cast(),
            len,
        )
    };
    (ok != 0).then_some(job)
}

/// Puts `child` in the job object, if there is one.
///
/// Failure is tolerated: the master may itself run in a job that forbids
/// nesting or breakaway. The worker still exits when its connection reads
/// EOF, just not when it is stuck in a task.
fn assign_to_job(child: &Child) {
    if let Some(job) = job() {
        // SAFETY: both handles are valid for the duration of the call: the
        // job lives in a static, the process handle in `child`.
        let _ = unsafe { AssignProcessToJobObject(job.as_raw_handle(), child.as_raw_handle()) };
    }
}

/// Kills and reaps a child we are giving up on.
fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for one client on `listener` and checks its token.
fn accept(
    listener: PipeListener<Bytes, Bytes>,
    token: &[u8; TOKEN_LEN],
) -> io::Result<DuplexPipeStream<Bytes>> {
    let mut stream = listener.accept()?;
    // Nobody else may connect: the spare instance `accept` created goes now.
    drop(listener);
    let mut got = [0u8; TOKEN_LEN];
    stream.read_exact(&mut got).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                e.kind(),
                "worker closed its connection before authenticating",
            )
        } else {
            e
        }
    })?;
    // Constant time: how much of a guess matched must not show in timing.
    if got.iter().zip(token).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a process connected to the worker's pipe with a wrong token",
        ));
    }
    Ok(stream)
}

/// Releases an `accept` blocked on the pipe at `path` by connecting to it,
/// and closing at once (which also ends the token read that follows).
fn unblock_accept(path: &str) {
    // The instance may already be gone (accepted, listener dropped): then
    // this fails fast and there is nothing to unblock.
    let _ = DuplexPipeStream::<Bytes>::connect_by_path_with_wait_mode(
        path,
        ConnectWaitMode::Timeout(POLL),
    );
}

/// Master side: creates the pipe, starts `cmd` with the endpoint in its
/// environment, and waits (at most [`CONNECT_TIMEOUT`]) until the child has
/// connected and sent the token. A child that exits first, or a wrong token,
/// is an error; in every error case the child has been reaped.
pub(crate) fn spawn(mut cmd: Command) -> io::Result<(Child, ReadHalf, WriteHalf)> {
    let endpoint = Endpoint {
        name: format!(
            "{NAME_PREFIX}{}-{}",
            std::process::id(),
            hex(&random::<16>()?)
        ),
        token: random()?,
    };
    let path = pipe_path(&endpoint.name);
    let listener = PipeListenerOptions::new()
        .path(path.as_str())
        .mode(PipeMode::Bytes)
        .input_buffer_size_hint(PIPE_BUFFER)
        .output_buffer_size_hint(PIPE_BUFFER)
        .create_duplex::<Bytes>()?;
    cmd.env(ENDPOINT_ENV, endpoint.to_value());
    // Replaces any creation flags the caller set; see the module docs.
    cmd.creation_flags(CREATE_NEW_PROCESS_GROUP);
    let mut child = cmd.spawn()?;
    assign_to_job(&child);

    // `accept` cannot be interrupted, so it runs on its own thread while this
    // one watches the child and the clock.
    let (tx, rx) = mpsc::sync_channel(1);
    let token = endpoint.token;
    let accepter = thread::Builder::new()
        .name("procpool-accept".into())
        .spawn(move || {
            let _ = tx.send(accept(listener, &token));
        });
    if let Err(e) = accepter {
        kill_and_reap(&mut child);
        return Err(e);
    }
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Ok(stream)) => {
                let (r, w) = halves(stream);
                return Ok((child, r, w));
            }
            Ok(Err(e)) => {
                kill_and_reap(&mut child);
                return Err(e);
            }
            Err(RecvTimeoutError::Disconnected) => {
                kill_and_reap(&mut child);
                return Err(io::Error::other(
                    "the thread accepting the worker's connection panicked",
                ));
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                unblock_accept(&path);
                let _ = child.wait();
                return Err(io::Error::other(ExitedBeforeConnecting { status }));
            }
            Ok(None) if Instant::now() >= deadline => {
                // Killing the child also ends a token read it left hanging.
                kill_and_reap(&mut child);
                unblock_accept(&path);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("worker did not connect to its master within {CONNECT_TIMEOUT:?}"),
                ));
            }
            Ok(None) => {}
            Err(e) => {
                kill_and_reap(&mut child);
                unblock_accept(&path);
                return Err(e);
            }
        }
    }
}

/// Worker side: connects to the pipe named in `value` and sends the token.
/// Whether `value` was set for this very process: the master its pipe's
/// name carries (`procpool-<pid>-…`) is our parent. A program a worker
/// starts inherits the variable, but its parent is the worker: it is told
/// it is no worker.
pub(crate) fn endpoint_is_ours(value: &str) -> bool {
    let Ok(endpoint) = Endpoint::parse(value) else {
        return false;
    };
    let master = endpoint.name[NAME_PREFIX.len()..]
        .split('-')
        .next()
        .and_then(|pid| pid.parse::<u32>().ok());
    master.is_some() && master == parent_pid()
}

/// This process's parent's pid, from a snapshot of the process table.
fn parent_pid() -> Option<u32> {
    // SAFETY: CreateToolhelp32Snapshot takes plain integers; failure is
    // INVALID_HANDLE_VALUE, checked below.
    let raw = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    if raw == INVALID_HANDLE_VALUE {
        return None;
    }
    // SAFETY: `raw` is a valid snapshot handle we own alone.
    let snapshot = unsafe { OwnedHandle::from_raw_handle(raw) };
    // SAFETY: PROCESSENTRY32W is a plain C struct of integers and arrays,
    // for which all-zero bytes are a valid value.
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
    let me = std::process::id();
    // SAFETY: the snapshot handle is valid and `entry` is a writable
    // PROCESSENTRY32W whose dwSize is set, as both calls require.
    let mut more = unsafe { Process32FirstW(snapshot.as_raw_handle(), &mut entry) } != 0;
    while more {
        if entry.th32ProcessID == me {
            return Some(entry.th32ParentProcessID);
        }
        // SAFETY: as for Process32FirstW.
        more = unsafe { Process32NextW(snapshot.as_raw_handle(), &mut entry) } != 0;
    }
    None
}

pub(crate) fn connect(value: &str) -> io::Result<(ReadHalf, WriteHalf)> {
    let endpoint = Endpoint::parse(value)?;
    let mut stream = DuplexPipeStream::<Bytes>::connect_by_path_with_wait_mode(
        pipe_path(&endpoint.name).as_str(),
        ConnectWaitMode::Timeout(WORKER_CONNECT_TIMEOUT),
    )?;
    stream.write_all(&endpoint.token)?;
    Ok(halves(stream))
}

/// Ignores Ctrl-C in this process (a no-op for workers started by
/// [`spawn`], which start that way); Ctrl-Break is left alone.
pub(crate) fn ignore_interrupts() {
    // SAFETY: a null handler with TRUE only sets the process's
    // ignore-Ctrl-C flag; no memory of ours is involved.
    unsafe { SetConsoleCtrlHandler(None, 1) };
}

pub(crate) fn process_alive(pid: u32) -> bool {
    // SAFETY: OpenProcess takes plain integers; a pid with no process gives
    // a null handle and an error, never undefined behaviour.
    let raw = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if raw.is_null() {
        // Access denied means the process exists but is not ours to query;
        // anything else (ERROR_INVALID_PARAMETER) means there is none.
        return io::Error::last_os_error().raw_os_error() == Some(ERROR_ACCESS_DENIED as i32);
    }
    // SAFETY: `raw` is a valid process handle we just opened and own alone.
    let process = unsafe { OwnedHandle::from_raw_handle(raw) };
    let mut code = 0u32;
    // SAFETY: the handle is valid and has query rights; `code` outlives the call.
    let ok = unsafe { GetExitCodeProcess(process.as_raw_handle(), &mut code) };
    ok != 0 && code == STILL_ACTIVE as u32
}

/// The exit code [`terminate`] gives a process, as Python's
/// `multiprocessing` does (`TERMINATE`); [`exit_code`] reads it as
/// minus SIGTERM.
const TERMINATE_CODE: u32 = 0x10000;

/// Ends a child with `TerminateProcess` and [`TERMINATE_CODE`]: Windows
/// has no gentler request a console-less child would act on.
pub(crate) fn terminate(child: &Child) -> io::Result<()> {
    // SAFETY: the handle is the child's, open for as long as `child` lives.
    let ok = unsafe { TerminateProcess(child.as_raw_handle(), TERMINATE_CODE) };
    if ok == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Python's `exitcode`: the exit code, with [`TERMINATE_CODE`] read as
/// minus SIGTERM (15).
pub(crate) fn exit_code(status: std::process::ExitStatus) -> Option<i32> {
    status
        .code()
        .map(|c| if c as u32 == TERMINATE_CODE { -15 } else { c })
}

/// The computer's name, as Windows sets it in the environment.
pub(crate) fn hostname() -> io::Result<String> {
    std::env::var("COMPUTERNAME")
        .map_err(|_| io::Error::new(io::ErrorKind::NotFound, "COMPUTERNAME is not set"))
}

/// Not implemented on Windows: give a host name or an address instead.
pub(crate) fn interface_addrs() -> io::Result<Vec<(String, std::net::IpAddr)>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "interface names are not supported on Windows",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_value_round_trips() {
        let e = Endpoint {
            name: format!("{NAME_PREFIX}42-{}", hex(&[0xab; 16])),
            token: [7; TOKEN_LEN],
        };
        let back = Endpoint::parse(&e.to_value()).unwrap();
        assert_eq!(back.name, e.name);
        assert_eq!(back.token, e.token);
    }

    #[test]
    fn foreign_names_and_bad_tokens_are_refused() {
        let token = hex(&[1; TOKEN_LEN]);
        for value in [
            format!(r"pipe:..\..\x:{token}"),
            format!("pipe:other-1-2:{token}"),
            format!("pipe:{NAME_PREFIX}:{token}"),
            format!("pipe:{NAME_PREFIX}1-2:{}", &token[1..]),
            format!("pipe:{NAME_PREFIX}1-2:{}zz", &token[2..]),
            format!("pipe:{NAME_PREFIX}1-2"),
        ] {
            let err = Endpoint::parse(&value).err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{value}");
        }
    }
}

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
//! - **Handle channel.** Beside the connection, a second pipe
//!   (`<name>-h`, connected and authenticated with the same token right
//!   after it) carries shared memory handles: the sender duplicates a
//!   handle into the peer and sends its value ([`FdChannel`]).
//! - **Ctrl-C.** Workers start with `CREATE_NEW_PROCESS_GROUP`, which makes
//!   them ignore Ctrl-C from their first instruction (the flag implies
//!   `SetConsoleCtrlHandler(NULL, TRUE)` in the child), just as the Unix
//!   backend sets `SIGINT` to `SIG_IGN` before `exec`. Ctrl-Break still
//!   reaches them, as `SIGQUIT` would on Unix.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::os::windows::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use interprocess::ConnectWaitMode;
use interprocess::os::windows::named_pipe::{
    DuplexPipeStream, PipeListener, PipeListenerOptions, PipeMode, RecvPipeStream, SendPipeStream,
    pipe_mode::Bytes,
};
use windows_sys::Win32::Foundation::{
    DUPLICATE_CLOSE_SOURCE, DUPLICATE_SAME_ACCESS, DuplicateHandle, ERROR_ACCESS_DENIED, HANDLE,
    INVALID_HANDLE_VALUE, STILL_ACTIVE, WAIT_OBJECT_0,
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
    CREATE_NEW_PROCESS_GROUP, GetCurrentProcess, GetExitCodeProcess, INFINITE, OpenProcess,
    PROCESS_DUP_HANDLE, PROCESS_QUERY_LIMITED_INFORMATION, TerminateProcess, WaitForSingleObject,
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
pub struct ReadHalf(RecvPipeStream<Bytes>, Option<FdChannel>);

/// The writing direction of a connection.
#[derive(Debug)]
pub struct WriteHalf(SendPipeStream<Bytes>);

/// How long [`FdChannel::recv`] waits for a handle its peer announced
/// (it was sent before the announcement, so it is normally there already).
const HANDLE_RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Suffix of the handle channel's pipe name, after the connection's.
const HANDLE_PIPE_SUFFIX: &str = "-h";

/// One record on the handle channel: an 8-byte token and the 8-byte value
/// of a handle already duplicated into the reader's process, both
/// little-endian.
const RECORD_LEN: usize = 16;

/// The record a side writes when it drops its channel: it sends nothing
/// after it, so the peer's reader can stop there (token `u64::MAX`, no
/// handle).
const BYE: [u8; RECORD_LEN] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// What the handle channel's reader thread hands to [`FdChannel::recv`].
type Record = io::Result<(u64, OwnedHandle)>;

/// The handle channel of a local connection (the Windows counterpart of
/// the Unix descriptor channel): a second duplex named pipe beside the
/// connection, authenticated like it, that carries [`RECORD_LEN`]-byte
/// records.
///
/// - **Who duplicates into whom.** The sender duplicates the handle
///   *into the peer process* (`DuplicateHandle` with
///   `DUPLICATE_SAME_ACCESS`, not inheritable) and writes the token and
///   the new handle's value; the receiver takes ownership of that value.
///   The master holds each child's process handle (from `CreateProcess`,
///   all access); a child opens its master (`OpenProcess` with
///   `PROCESS_DUP_HANDLE`, the pid is in the pipe name) while the master
///   waits for it to connect, so the pid cannot have been reused. A child
///   that cannot open its master still receives; its sends fail
///   (`Unsupported`), which turns its side of the transport off.
/// - **Ordering.** As on Unix: a handle goes on this channel before the
///   frame naming it goes on the connection, and the receiver waits on
///   this channel (up to [`HANDLE_RECV_TIMEOUT`]) for the token a frame
///   names, keeping others in its inbox by token.
/// - **Leaks.** A duplicated handle belongs to the receiver from the
///   moment it exists. If the record cannot be written (the peer is gone
///   or closed the pipe) the sender closes the duplicate in the peer
///   (`DUPLICATE_CLOSE_SOURCE`): the peer never learned its value. A
///   peer that died takes its duplicates with it. Records the receiver
///   has not claimed are read by a reader thread (started by the first
///   `recv`, or by the drop of a channel never read) until the sender's
///   [`BYE`] (written when it drops its channel: nothing follows it) or
///   the end of the pipe; each handle read after this side dropped its
///   channel is closed at once. So a living receiver that never claims a
///   handle closes it when the link ends, on both sides of the race
///   between a late send and the drop.
/// - **Blocking.** A send is one 16-byte pipe write: it would block only
///   with 4096 records unread (the 64 KiB pipe buffer), which the reader
///   thread prevents once started.
#[derive(Debug)]
pub(crate) struct FdChannel {
    /// The peer process, with at least `PROCESS_DUP_HANDLE`; `None` when
    /// it could not be opened (sends fail).
    peer: Option<OwnedHandle>,
    tx: Mutex<SendPipeStream<Bytes>>,
    rx: Mutex<Inbound>,
}

#[derive(Debug)]
struct Inbound {
    /// The pipe's reading half until the reader thread takes it.
    pipe: Option<RecvPipeStream<Bytes>>,
    /// What the reader thread has read.
    records: Option<crossbeam_channel::Receiver<Record>>,
}

impl FdChannel {
    fn new(pipe: DuplexPipeStream<Bytes>, peer: Option<OwnedHandle>) -> Self {
        let (r, w) = pipe.split();
        Self {
            peer,
            tx: Mutex::new(w),
            rx: Mutex::new(Inbound {
                pipe: Some(r),
                records: None,
            }),
        }
    }

    /// Duplicates `handle` into the peer and sends its value there with
    /// `token`.
    pub(crate) fn send(&self, token: u64, handle: &OwnedHandle) -> io::Result<()> {
        let peer = self.peer.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "this worker could not open its master to hand it handles",
            )
        })?;
        let mut remote: HANDLE = std::ptr::null_mut();
        // SAFETY: the source is this process (a pseudo-handle, valid
        // always) and `handle`, which we borrow open for the call; `peer`
        // is an open process handle with PROCESS_DUP_HANDLE; `remote` is
        // valid for the one write. The new handle lives in the peer, so
        // nothing here owns it.
        let ok = unsafe {
            DuplicateHandle(
                GetCurrentProcess(),
                handle.as_raw_handle(),
                peer.as_raw_handle(),
                &mut remote,
                0,
                0,
                DUPLICATE_SAME_ACCESS,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut record = [0u8; RECORD_LEN];
        record[..8].copy_from_slice(&token.to_le_bytes());
        record[8..].copy_from_slice(&(remote as usize as u64).to_le_bytes());
        let written = crate::sync::lock(&self.tx).write_all(&record);
        if let Err(e) = written {
            // The peer never read this value: nobody there will close it.
            // SAFETY: `remote` is a handle in the peer's table that we
            // created above and whose value no record delivered, so no
            // code in the peer uses it; DUPLICATE_CLOSE_SOURCE with no
            // target closes it there and touches no memory of ours.
            unsafe {
                DuplicateHandle(
                    peer.as_raw_handle(),
                    remote,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    0,
                    0,
                    DUPLICATE_CLOSE_SOURCE,
                )
            };
            return Err(e);
        }
        Ok(())
    }

    /// Receives the next handle and its token; blocks up to
    /// [`HANDLE_RECV_TIMEOUT`] (`TimedOut`). `UnexpectedEof` once the peer
    /// is gone, `InvalidData` for a record naming no handle.
    pub(crate) fn recv(&self) -> io::Result<(u64, OwnedHandle)> {
        let mut inbound = crate::sync::lock(&self.rx);
        if inbound.records.is_none() {
            let (tx, rx) = crossbeam_channel::unbounded();
            let pipe = inbound.pipe.take().ok_or(io::ErrorKind::UnexpectedEof)?;
            start_reader(pipe, tx)?;
            inbound.records = Some(rx);
        }
        let records = inbound.records.as_ref().expect("set above");
        match records.recv_timeout(HANDLE_RECV_TIMEOUT) {
            Ok(record) => record,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no handle arrived on the handle channel",
            )),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                Err(io::ErrorKind::UnexpectedEof.into())
            }
        }
    }
}

impl Drop for FdChannel {
    fn drop(&mut self) {
        // Nothing follows: the peer's reader may stop after this.
        let _ = self
            .tx
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(&BYE);
        // Handles sent to us and never claimed: a reader whose records
        // nobody takes closes each one as it reads it (see the type docs).
        let inbound = self.rx.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(pipe) = inbound.pipe.take() {
            let (tx, rx) = crossbeam_channel::unbounded();
            drop(rx);
            let _ = start_reader(pipe, tx);
        }
    }
}

/// Starts the thread that reads `pipe` up to the peer's [`BYE`] or the
/// pipe's end, sending each record to `out` (a handle whose send fails is
/// closed with the failed message).
fn start_reader(
    mut pipe: RecvPipeStream<Bytes>,
    out: crossbeam_channel::Sender<Record>,
) -> io::Result<()> {
    thread::Builder::new()
        .name("procpool-handles".into())
        .spawn(move || {
            let mut record = [0u8; RECORD_LEN];
            loop {
                if let Err(e) = pipe.read_exact(&mut record) {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe
                    ) {
                        let _ = out.send(Err(e));
                    }
                    return;
                }
                if record == BYE {
                    return;
                }
                let token = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
                let value = u64::from_le_bytes(record[8..].try_into().expect("8 bytes"));
                let raw = value as usize as RawHandle;
                if raw.is_null() || raw == INVALID_HANDLE_VALUE {
                    let _ = out.send(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed record on the handle channel",
                    )));
                    continue;
                }
                // SAFETY: the peer (authenticated by the connection's
                // token) duplicated this handle into our process for this
                // record alone and never uses the value itself; only this
                // thread reads the records, so nothing else here owns it.
                let handle = unsafe { OwnedHandle::from_raw_handle(raw) };
                // A failed send (the channel was dropped) drops, so
                // closes, the handle.
                let _ = out.send(Ok((token, handle)));
            }
        })
        .map(drop)
}

impl ReadHalf {
    /// The connection's handle channel, if it has one and it was not
    /// taken yet.
    pub(crate) fn take_fd_channel(&mut self) -> Option<FdChannel> {
        self.1.take()
    }
}

/// A connected pair of duplex pipe streams in this process (server,
/// client), for tests.
#[cfg(test)]
pub(crate) fn test_pipe() -> io::Result<(DuplexPipeStream<Bytes>, DuplexPipeStream<Bytes>)> {
    let name = format!(
        "{NAME_PREFIX}{}-{}",
        std::process::id(),
        hex(&random::<16>()?)
    );
    let path = pipe_path(&name);
    let listener = listen(&path)?;
    let client = thread::spawn(move || {
        DuplexPipeStream::<Bytes>::connect_by_path_with_wait_mode(
            path.as_str(),
            ConnectWaitMode::Timeout(WORKER_CONNECT_TIMEOUT),
        )
    });
    let server = listener.accept()?;
    let client = client
        .join()
        .map_err(|_| io::Error::other("the connecting thread panicked"))??;
    Ok((server, client))
}

/// A connected pair of halves in this process, for tests: what the
/// `WriteHalf` writes, the `ReadHalf` reads.
#[cfg(test)]
pub(crate) fn test_pair() -> io::Result<(ReadHalf, WriteHalf)> {
    let (server, client) = test_pipe()?;
    let (r, _) = halves(server);
    let (_, w) = halves(client);
    Ok((r, w))
}

/// A connected pair of handle channels in this process (each duplicates
/// into this process), for tests.
#[cfg(test)]
pub(crate) fn test_fd_channels() -> io::Result<(FdChannel, FdChannel)> {
    let (a, b) = test_pipe()?;
    Ok((
        FdChannel::new(a, Some(open_for_dup(std::process::id())?)),
        FdChannel::new(b, Some(open_for_dup(std::process::id())?)),
    ))
}

/// Opens process `pid` to duplicate handles into it.
fn open_for_dup(pid: u32) -> io::Result<OwnedHandle> {
    // SAFETY: OpenProcess takes plain integers and returns a new handle
    // or null.
    let raw = unsafe { OpenProcess(PROCESS_DUP_HANDLE, 0, pid) };
    if raw.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by OpenProcess; nothing else owns it.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
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
    (ReadHalf(r, None), WriteHalf(w))
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

/// Master side: creates the pipes (the connection and its handle
/// channel), starts `cmd` with the endpoint in its environment, and waits
/// (at most [`CONNECT_TIMEOUT`]) until the child has connected to both and
/// sent the token on each. A child that exits first, or a wrong token,
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
    let handle_path = format!("{path}{HANDLE_PIPE_SUFFIX}");
    let listener = listen(&path)?;
    let handle_listener = listen(&handle_path)?;
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
            let both = accept(listener, &token)
                .and_then(|conn| Ok((conn, accept(handle_listener, &token)?)));
            let _ = tx.send(both);
        });
    if let Err(e) = accepter {
        kill_and_reap(&mut child);
        return Err(e);
    }
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Ok((stream, handles))) => {
                use std::os::windows::io::AsHandle;
                let (mut r, w) = halves(stream);
                // The process handle CreateProcess gave us has all access,
                // PROCESS_DUP_HANDLE included.
                let peer = child.as_handle().try_clone_to_owned();
                match peer {
                    Ok(peer) => r.1 = Some(FdChannel::new(handles, Some(peer))),
                    Err(e) => {
                        kill_and_reap(&mut child);
                        return Err(e);
                    }
                }
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
                unblock_accept(&handle_path);
                let _ = child.wait();
                return Err(io::Error::other(ExitedBeforeConnecting { status }));
            }
            Ok(None) if Instant::now() >= deadline => {
                // Killing the child also ends a token read it left hanging.
                kill_and_reap(&mut child);
                unblock_accept(&path);
                unblock_accept(&handle_path);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("worker did not connect to its master within {CONNECT_TIMEOUT:?}"),
                ));
            }
            Ok(None) => {}
            Err(e) => {
                kill_and_reap(&mut child);
                unblock_accept(&path);
                unblock_accept(&handle_path);
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
    let mut handles = DuplexPipeStream::<Bytes>::connect_by_path_with_wait_mode(
        format!("{}{HANDLE_PIPE_SUFFIX}", pipe_path(&endpoint.name)).as_str(),
        ConnectWaitMode::Timeout(WORKER_CONNECT_TIMEOUT),
    )?;
    handles.write_all(&endpoint.token)?;
    // The master waits for us to connect, so the pid in its pipe's name
    // is still its own. Without it we can still receive handles.
    let master = endpoint.name[NAME_PREFIX.len()..]
        .split('-')
        .next()
        .and_then(|pid| pid.parse::<u32>().ok());
    let peer = master.and_then(|pid| open_for_dup(pid).ok());
    let (mut r, w) = halves(stream);
    r.1 = Some(FdChannel::new(handles, peer));
    Ok((r, w))
}

/// Creates the first instance of the pipe at `path` (refused if the name
/// exists: see the module docs).
fn listen(path: &str) -> io::Result<PipeListener<Bytes, Bytes>> {
    PipeListenerOptions::new()
        .path(path)
        .mode(PipeMode::Bytes)
        .input_buffer_size_hint(PIPE_BUFFER)
        .output_buffer_size_hint(PIPE_BUFFER)
        .create_duplex::<Bytes>()
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

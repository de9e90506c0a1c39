//! Anonymous shared memory on Unix: a descriptor with no name anywhere,
//! mapped `MAP_SHARED` read/write.
//!
//! - Linux and FreeBSD: `memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING)`
//!   (FreeBSD implements it as `shm_open(SHM_ANON)`), then `ftruncate` and
//!   the seals `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`: once sealed,
//!   nobody (not even a misbehaving peer holding the descriptor) can
//!   shrink the object under a mapping, which would turn a later access
//!   into `SIGBUS`. [`Mapping::open`] refuses a descriptor that is not
//!   sealed against shrinking.
//! - macOS: `shm_open` of a random name with `O_CREAT | O_EXCL`, then
//!   `shm_unlink` at once, so the name exists for a few microseconds and
//!   nothing is left behind after a crash. macOS has no seals; a peer that
//!   holds the descriptor cannot resize a macOS shm object either (its
//!   size is set once, by the first `ftruncate`).
//! - Other Unixes: as macOS.
//!
//! The object's size is at least one byte, so that every segment has a
//! mapping (`mmap` of 0 bytes fails); a zero-length segment maps one byte
//! it never touches.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use crate::sys::unix::cvt;

/// Linux maps every page at once (`MAP_POPULATE`): one system call
/// instead of a page fault per page on first touch, which is what makes a
/// fresh segment slow in a virtual machine.
#[cfg(any(target_os = "linux", target_os = "android"))]
const MAP_FLAGS: libc::c_int = libc::MAP_SHARED | libc::MAP_POPULATE;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const MAP_FLAGS: libc::c_int = libc::MAP_SHARED;

/// What a segment travels as between processes: its descriptor.
pub type ShmHandle = OwnedFd;

/// One shared mapping of an anonymous memory object, and the object's
/// descriptor. Unmapped and closed on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    /// Bytes the caller may use (the mapping may be one byte longer when
    /// this is 0).
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; the raw
// pointer is only an address, and every access through it is a copy under
// the rules of `Mapping::copy_in`/`copy_out` (or the caller's own `unsafe`
// through `ptr`), which hold from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: `&Mapping` allows only copies in and out, which
// are sound concurrently (bytes have no invalid values; see `copy_out`).
unsafe impl Sync for Mapping {}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn create_object(size: usize) -> io::Result<OwnedFd> {
    let name = c"procpool-shm";
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let fd = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: memfd_create just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_size(fd.as_fd(), size)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl(F_ADD_SEALS) with an integer argument on our descriptor.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
    Ok(fd)
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn create_object(size: usize) -> io::Result<OwnedFd> {
    use std::fmt::Write as _;
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
    // macOS limits shm names to 31 bytes: "/pp-" + 16 hex digits.
    let mut name = String::from("/pp-");
    for b in random {
        let _ = write!(name, "{b:02x}");
    }
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    let oflag = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    let mode: libc::c_uint = 0o600;
    // SAFETY: `name` is NUL-terminated and outlives the call; the mode is
    // passed as the variadic `c_uint` the C prototype expects.
    let fd = cvt(unsafe { libc::shm_open(name.as_ptr(), oflag, mode) })?;
    // SAFETY: shm_open just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `name` is NUL-terminated; unlinking only removes the name.
    cvt(unsafe { libc::shm_unlink(name.as_ptr()) })?;
    set_size(fd.as_fd(), size)?;
    Ok(fd)
}

fn set_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<()> {
    let size = libc::off_t::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    // SAFETY: ftruncate on a descriptor the caller borrows; no memory is touched.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
}

/// The size of the memory object behind `fd` (`fstat`).
pub(crate) fn object_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: `libc::stat` is a plain C struct of integers (and padding),
    // for which all-zero bytes are a valid value; fstat overwrites it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid for writes for the call; `fd` is borrowed open.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    u64::try_from(st.st_size).map_err(|_| io::Error::other("negative object size"))
}

/// Whether the object behind `fd` can no longer shrink (Linux/FreeBSD
/// seals). Elsewhere `true`: there is nothing to check.
fn cannot_shrink(fd: BorrowedFd<'_>) -> io::Result<bool> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        // SAFETY: fcntl(F_GET_SEALS) takes no pointer; a non-memfd is EINVAL.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals == -1 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINVAL) {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(seals & libc::F_SEAL_SHRINK != 0)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        let _ = fd;
        Ok(true)
    }
}

/// Why [`Mapping::open`] refused a descriptor.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The object holds fewer bytes than asked for.
    TooSmall {
        actual: u64,
    },
    /// The object could still shrink under the mapping (Linux/FreeBSD: not
    /// sealed with `F_SEAL_SHRINK`), so it is refused.
    NotSealed,
    Io(io::Error),
}

impl Mapping {
    /// A new anonymous object of `len` bytes (zeroed), mapped.
    pub(crate) fn create(len: usize) -> io::Result<Self> {
        let fd = create_object(len.max(1))?;
        Self::map(fd, len)
    }

    /// Maps the object behind `fd` (received from another process), after
    /// checking it holds at least `len` bytes and cannot shrink.
    pub(crate) fn open(fd: OwnedFd, len: usize) -> Result<Self, OpenError> {
        let actual = object_size(fd.as_fd()).map_err(OpenError::Io)?;
        let needed = u64::try_from(len.max(1)).unwrap_or(u64::MAX);
        if actual < needed && !(len == 0 && actual == 0) {
            return Err(OpenError::TooSmall { actual });
        }
        if !cannot_shrink(fd.as_fd()).map_err(OpenError::Io)? {
            return Err(OpenError::NotSealed);
        }
        Self::map(fd, len).map_err(OpenError::Io)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping chosen by the kernel (null hint):
        // it overlaps nothing of ours. The object holds at least
        // `len.max(1)` bytes (checked by both callers), except a foreign
        // empty object for a zero-length segment, whose single mapped byte
        // is never accessed (`len` is 0).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                MAP_FLAGS,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("null mapping"))?;
        Ok(Self { fd, ptr, len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// A new descriptor for the same object, for sending.
    pub(crate) fn clone_handle(&self) -> io::Result<ShmHandle> {
        self.fd.try_clone()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len.max(1)` are exactly what `mmap` returned
        // and was given; the mapping is unmapped once, here, and no
        // reference into it outlives `self` (accessors hand out copies or
        // raw pointers whose use is the caller's `unsafe`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len.max(1)) };
    }
}

/// Below this, a destination is not worth a system call (measured at
/// 16 MiB: see `prefault`).
#[cfg(target_os = "linux")]
const PREFAULT_MIN: usize = 4 << 20;

/// Faults in, with one system call, the pages of `len` bytes at `ptr`: a
/// large destination about to be filled by a copy out of a segment. Fresh
/// memory otherwise takes a page fault per 4 KiB during the copy, which
/// in a virtual machine costs more than the copy itself (issue 11: `map`
/// echoing 16 × 16 MiB went from 0.49 to 0.56 GiB/s in the mean of 8
/// alternated runs). A hint: `MADV_POPULATE_WRITE` (Linux 5.14) changes no
/// byte, and an older kernel's refusal is ignored.
#[cfg(target_os = "linux")]
pub(crate) fn prefault(ptr: *mut u8, len: usize) {
    const PAGE: usize = 4096;
    if len < PREFAULT_MIN {
        return;
    }
    let start = (ptr as usize).next_multiple_of(PAGE);
    let end = (ptr as usize + len) / PAGE * PAGE;
    if end <= start {
        return;
    }
    // SAFETY: the whole page-aligned range lies inside the caller's
    // destination, memory of this process it may write; populating its
    // pages for writing leaves every byte as it was.
    unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn prefault(_: *mut u8, _: usize) {}

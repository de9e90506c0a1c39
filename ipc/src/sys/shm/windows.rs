//! Anonymous shared memory on Windows: an unnamed pagefile-backed file
//! mapping (`CreateFileMappingW(INVALID_HANDLE_VALUE, ..)` with no name),
//! viewed read/write. It lives as long as a handle or a view of it does,
//! so nothing is left behind after a crash. A section cannot be resized,
//! so a peer cannot shrink it under a view.
//!
//! The section's size is at least one byte (a zero-size pagefile section
//! is refused); a zero-length segment views one byte it never touches.

use std::io;
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::ptr::NonNull;

use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, FILE_MAP_ALL_ACCESS, MEMORY_BASIC_INFORMATION, MEMORY_MAPPED_VIEW_ADDRESS,
    MapViewOfFile, PAGE_READWRITE, UnmapViewOfFile, VirtualQuery,
};

/// What a segment travels as between processes: its section handle.
pub type ShmHandle = OwnedHandle;

/// One read/write view of an unnamed section, and the section's handle.
/// Unmapped and closed on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    handle: OwnedHandle,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the view is plain shared memory owned by this value; the raw
// pointer is only an address, and every access through it is a copy under
// the rules of `copy_in`/`copy_out` (or the caller's own `unsafe`), which
// hold from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: `&Mapping` allows only copies, which are sound
// concurrently (bytes have no invalid values).
unsafe impl Sync for Mapping {}

/// Why [`Mapping::open`] refused a handle.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The section holds fewer bytes than asked for (page-rounded).
    TooSmall {
        actual: u64,
    },
    /// Never on Windows (sections cannot shrink); kept for one interface.
    #[allow(dead_code)]
    NotSealed,
    Io(io::Error),
}

/// Views `len` bytes of the section (0: all of it).
fn map_view(handle: BorrowedHandle<'_>, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: MapViewOfFile takes a section handle we borrow and returns a
    // fresh view chosen by the system (or null); no memory of ours is
    // touched. It fails if `len` exceeds the section.
    let view = unsafe { MapViewOfFile(handle.as_raw_handle(), FILE_MAP_ALL_ACCESS, 0, 0, len) };
    NonNull::new(view.Value.cast::<u8>()).ok_or_else(io::Error::last_os_error)
}

fn unmap(ptr: NonNull<u8>) {
    // SAFETY: `ptr` is the base of a view `map_view` returned, unmapped
    // once; no reference into it outlives the owner.
    unsafe {
        UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS {
            Value: ptr.as_ptr().cast(),
        })
    };
}

/// The size of the view at `ptr`, rounded up to pages.
fn view_size(ptr: NonNull<u8>) -> io::Result<u64> {
    // SAFETY: `MEMORY_BASIC_INFORMATION` is a plain C struct of integers
    // and pointers, for which all-zero bytes are valid; VirtualQuery
    // overwrites it.
    let mut info: MEMORY_BASIC_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is valid for writes of its size for the call.
    let n = unsafe {
        VirtualQuery(
            ptr.as_ptr().cast(),
            &mut info,
            std::mem::size_of::<MEMORY_BASIC_INFORMATION>(),
        )
    };
    if n == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.RegionSize as u64)
}

impl Mapping {
    /// A new unnamed section of `len` bytes (zeroed), viewed.
    pub(crate) fn create(len: usize) -> io::Result<Self> {
        let size = len.max(1) as u64;
        // SAFETY: a pagefile-backed section (INVALID_HANDLE_VALUE) with no
        // name and default security; returns a new handle or null.
        let raw = unsafe {
            CreateFileMappingW(
                INVALID_HANDLE_VALUE,
                std::ptr::null(),
                PAGE_READWRITE,
                (size >> 32) as u32,
                size as u32,
                std::ptr::null(),
            )
        };
        if raw.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: CreateFileMappingW just returned this handle; nothing
        // else owns it.
        let handle = unsafe { OwnedHandle::from_raw_handle(raw) };
        let ptr = map_view(handle.as_handle(), len.max(1))?;
        Ok(Self { handle, ptr, len })
    }

    /// Views the section behind `handle` (received from another process),
    /// after checking it holds at least `len` bytes.
    pub(crate) fn open(handle: OwnedHandle, len: usize) -> Result<Self, OpenError> {
        // View all of it to learn its size; a view longer than the section
        // is refused by the system, so `len` cannot be trusted blindly.
        let ptr = map_view(handle.as_handle(), 0).map_err(OpenError::Io)?;
        let actual = match view_size(ptr) {
            Ok(n) => n,
            Err(e) => {
                unmap(ptr);
                return Err(OpenError::Io(e));
            }
        };
        if actual < len.max(1) as u64 {
            unmap(ptr);
            return Err(OpenError::TooSmall { actual });
        }
        Ok(Self { handle, ptr, len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// A new handle to the same section, for sending.
    pub(crate) fn clone_handle(&self) -> io::Result<ShmHandle> {
        self.handle.try_clone()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        unmap(self.ptr);
    }
}

/// No hint here (see the Unix backend's).
pub(crate) fn prefault(_: *mut u8, _: usize) {}

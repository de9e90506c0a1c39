//! A hello's task names are decoded without allocating the lengths their
//! prefixes announce (issue 14, found by the `proto` fuzz target:
//! fuzz/corpus/proto/seed-regression-hello-huge-string-alloc). A binary of
//! its own: it counts allocations with a global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use procpool_ipc::proto::Message;

/// The system allocator, remembering the largest allocation it was asked for.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

#[test]
fn a_hello_announcing_huge_names_allocates_nothing_of_the_sort() {
    // The fuzzer's input: kind, "PPOL", version 2, pid, then a list of 155
    // task names whose first claims 0x1AFF_FFFF bytes (452 MB; varint
    // 0xFC: a u32 follows), in a 22-byte body ...
    let found: &[u8] = &[
        0x01, 0x50, 0x50, 0x4f, 0x4c, 0x02, 0x00, 0x00, 0x00, 0x5d, 0x01, 0x00, 0x00, 0x9b, 0xfc,
        0xff, 0xff, 0xff, 0x1a, 0xff, 0xf9, 0x09,
    ];
    // ... and the same with a name of 512 MiB announced, 2 bytes sent.
    let mut huge = b"\x01PPOL\x02\x00\x00\x00\x01\x00\x00\x00".to_vec();
    huge.extend_from_slice(&[1, 0xFC]);
    huge.extend_from_slice(&(512u32 << 20).to_le_bytes());
    huge.extend_from_slice(b"ab");
    for body in [found, &huge] {
        LARGEST.store(0, Ordering::Relaxed);
        assert!(Message::decode(body).is_err());
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(largest < 1 << 20, "allocated {largest} bytes for {body:?}");
    }
}

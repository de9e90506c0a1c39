//! [`Value`] and [`Array`]: plain data in a [`SharedMemory`] buffer, with
//! a crash-safe lock in the buffer itself.
//!
//! # Layout
//!
//! The first [`HEADER`] bytes hold the lock word (a `u32` at offset 0);
//! the data follows at offset [`HEADER`] (64, enough alignment for any
//! `T` with `align_of::<T>() <= 64`: mappings are page-aligned).
//!
//! # The lock
//!
//! The word is 0 when free, else the pid of the holding process. Acquire:
//! compare-and-swap 0 → own pid; when contended, check whether the holder
//! is still alive (`sys::process_alive`), and if so sleep on the word
//! (`sys::futex`: shared futex on Linux, `_umtx_op` on FreeBSD, polling
//! elsewhere) for at most [`RECHECK`] before looking again. Release:
//! store 0 and wake every waiter. A holder that died (killed, crashed,
//! exited with the guard alive) is found dead by the next acquirer's check
//! once its process is gone (reaped: an unreaped zombie still counts as
//! alive), and the acquirer swaps its pid in and gets
//! [`LockError::OwnerDied`] carrying the guard, as the hub
//! [`Lock`](crate::sync_prims::Lock) does. No hub round trip is needed, so
//! the lock works between any processes that map the buffer.
//!
//! Limits: the lock is not re-entrant (a second `lock()` in the holding
//! process waits, also from another thread of that process, as
//! intended), and a pid reused by a new process before the check would
//! look alive (the acquirer then waits for that process instead).

use std::fmt;
use std::marker::PhantomData;
use std::mem::size_of;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytemuck::Pod;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{SharedMemory, SharedMemoryError};
use crate::queues::sync::LockError;
use crate::sys::{futex, process_alive};

/// Bytes before the data: the lock word and padding.
pub const HEADER: usize = 64;

/// Longest a waiter sleeps before checking the holder is alive again.
const RECHECK: Duration = Duration::from_millis(50);

/// Marker for types that may live in a [`Value`] or [`Array`]: plain
/// data ([`bytemuck::Pod`]: any bit pattern is a valid value, no
/// pointers, no padding) aligned to at most 64 bytes.
pub trait Plain: Pod {}
impl<T: Pod> Plain for T {}

/// Holds the lock of a [`Value`] or [`Array`]; dropping it releases the
/// lock.
pub struct ValueGuard<'a> {
    word: &'a AtomicU32,
}

impl fmt::Debug for ValueGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ValueGuard")
    }
}

impl Drop for ValueGuard<'_> {
    fn drop(&mut self) {
        self.word.store(0, Ordering::Release);
        futex::wake_all(self.word);
    }
}

/// Acquires the lock in `buf`; `Ok(true)` if its previous holder died.
fn acquire(word: &AtomicU32) -> bool {
    let me = std::process::id();
    loop {
        let cur = match word.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return false,
            Err(cur) => cur,
        };
        if cur != me && !process_alive(cur) {
            if word
                .compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return true;
            }
            continue;
        }
        futex::wait(word, cur, Some(RECHECK));
    }
}

fn lock_word(buf: &SharedMemory) -> &AtomicU32 {
    // Every Value and Array buffer is at least HEADER bytes (checked when
    // made and when received) and page-aligned.
    buf.segment()
        .atomic_u32(0)
        .expect("value buffers hold an aligned lock word at offset 0")
}

fn lock(buf: &SharedMemory) -> Result<ValueGuard<'_>, LockError<ValueGuard<'_>>> {
    let word = lock_word(buf);
    let died = acquire(word);
    let guard = ValueGuard { word };
    if died {
        Err(LockError::OwnerDied(guard))
    } else {
        Ok(guard)
    }
}

/// Checks a received buffer is large enough for `n` `T`s.
fn check_len<T, E: serde::de::Error>(buf: &SharedMemory, n: usize) -> Result<(), E> {
    let needed = size_of::<T>()
        .checked_mul(n)
        .and_then(|b| b.checked_add(HEADER));
    if needed.is_none_or(|needed| buf.len() < needed) {
        return Err(E::custom("shared buffer too small for its value type"));
    }
    Ok(())
}

const fn check_align<T>() {
    assert!(
        std::mem::align_of::<T>() <= HEADER,
        "Value and Array hold types aligned to at most 64 bytes"
    );
}

/// One value of plain data in shared memory, with a crash-safe lock
/// (Python's `multiprocessing.Value`).
///
/// `load` and `store` copy the whole value; they are not atomic with
/// respect to each other across processes: take [`lock`](Self::lock) around
/// read-modify-write, as Python code does with `get_lock()`. If the lock's
/// holder dies, the next `lock()` returns [`LockError::OwnerDied`] with the
/// guard (see the module docs). The handle is `Serialize` and reaches the
/// same processes as a [`SharedMemory`].
///
/// ```
/// use procpool::Value;
///
/// let v = Value::new(41u64).unwrap();
/// {
///     let _g = v.lock().unwrap();
///     v.store(v.load() + 1);
/// }
/// assert_eq!(v.load(), 42);
/// ```
pub struct Value<T> {
    buf: SharedMemory,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            buf: self.buf.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value").field("buf", &self.buf).finish()
    }
}

impl<T: Plain> Value<T> {
    /// A value in a new shared buffer, starting at `value`.
    ///
    /// # Errors
    /// [`SharedMemoryError::Os`] if the system refuses the memory.
    pub fn new(value: T) -> Result<Self, SharedMemoryError> {
        const { check_align::<T>() };
        let v = Value {
            buf: SharedMemory::new(HEADER + size_of::<T>())?,
            _type: PhantomData,
        };
        v.store(value);
        Ok(v)
    }

    /// The current value (a copy).
    pub fn load(&self) -> T {
        let mut out = T::zeroed();
        // In bounds: the buffer holds HEADER + size_of::<T>() bytes.
        let _ = self.buf.read_at(HEADER, bytemuck::bytes_of_mut(&mut out));
        out
    }

    /// Replaces the value.
    pub fn store(&self, value: T) {
        // In bounds, as in `load`.
        let _ = self.buf.write_at(HEADER, bytemuck::bytes_of(&value));
    }

    /// Takes the value's lock, waiting while another holder lives.
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] (holding the guard) if the previous holder
    /// died holding it; the value may be half-updated.
    pub fn lock(&self) -> Result<ValueGuard<'_>, LockError<ValueGuard<'_>>> {
        lock(&self.buf)
    }

    /// The shared buffer underneath (lock word, then the value).
    pub fn shared_memory(&self) -> &SharedMemory {
        &self.buf
    }
}

impl<T> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.buf.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let buf = SharedMemory::deserialize(d)?;
        check_len::<T, D::Error>(&buf, 1)?;
        Ok(Value {
            buf,
            _type: PhantomData,
        })
    }
}

/// A fixed-length array of plain data in shared memory, with a
/// crash-safe lock (Python's `multiprocessing.Array`).
///
/// Element reads and writes copy; take [`lock`](Self::lock) around
/// anything that must be consistent (see [`Value`]).
///
/// ```
/// use procpool::Array;
///
/// let a = Array::<i32>::new(4).unwrap();
/// a.set(2, -7).unwrap();
/// assert_eq!(a.get(2).unwrap(), -7);
/// assert_eq!(a.to_vec(), vec![0, 0, -7, 0]);
/// assert!(a.get(4).is_err());
/// ```
pub struct Array<T> {
    buf: SharedMemory,
    len: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            buf: self.buf.clone(),
            len: self.len,
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("len", &self.len)
            .field("buf", &self.buf)
            .finish()
    }
}

impl<T: Plain> Array<T> {
    /// `len` zeroed elements in a new shared buffer.
    ///
    /// # Errors
    /// [`SharedMemoryError::Os`] if the system refuses the memory (or the
    /// size overflows).
    pub fn new(len: usize) -> Result<Self, SharedMemoryError> {
        const { check_align::<T>() };
        let bytes = size_of::<T>()
            .checked_mul(len)
            .and_then(|b| b.checked_add(HEADER))
            .ok_or(SharedMemoryError::OutOfBounds {
                offset: HEADER as u64,
                len: u64::MAX,
                buffer_len: 0,
            })?;
        Ok(Array {
            buf: SharedMemory::new(bytes)?,
            len,
            _type: PhantomData,
        })
    }

    /// An array holding a copy of `items`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn from_slice(items: &[T]) -> Result<Self, SharedMemoryError> {
        let a = Self::new(items.len())?;
        a.buf.write_at(HEADER, bytemuck::cast_slice(items))?;
        Ok(a)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn offset(&self, i: usize) -> Result<usize, SharedMemoryError> {
        if i >= self.len {
            return Err(SharedMemoryError::OutOfBounds {
                offset: i as u64,
                len: 1,
                buffer_len: self.len as u64,
            });
        }
        Ok(HEADER + i * size_of::<T>())
    }

    /// Element `i` (a copy).
    ///
    /// # Errors
    /// [`SharedMemoryError::OutOfBounds`] if `i >= len` (offsets and
    /// lengths in the error count elements).
    pub fn get(&self, i: usize) -> Result<T, SharedMemoryError> {
        let mut out = T::zeroed();
        self.buf
            .read_at(self.offset(i)?, bytemuck::bytes_of_mut(&mut out))?;
        Ok(out)
    }

    /// Replaces element `i`.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn set(&self, i: usize, value: T) -> Result<(), SharedMemoryError> {
        self.buf
            .write_at(self.offset(i)?, bytemuck::bytes_of(&value))
    }

    /// All elements, copied.
    pub fn to_vec(&self) -> Vec<T> {
        let mut out = vec![T::zeroed(); self.len];
        // In bounds: the buffer holds HEADER + len * size_of::<T>() bytes.
        let _ = self.buf.read_at(HEADER, bytemuck::cast_slice_mut(&mut out));
        out
    }

    /// Takes the array's lock, waiting while another holder lives.
    ///
    /// # Errors
    /// As [`Value::lock`].
    pub fn lock(&self) -> Result<ValueGuard<'_>, LockError<ValueGuard<'_>>> {
        lock(&self.buf)
    }

    /// The shared buffer underneath (lock word, then the elements).
    pub fn shared_memory(&self) -> &SharedMemory {
        &self.buf
    }
}

impl<T> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.len as u64, &self.buf).serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (len, buf) = <(u64, SharedMemory)>::deserialize(d)?;
        let len = usize::try_from(len).map_err(D::Error::custom)?;
        check_len::<T, D::Error>(&buf, len)?;
        Ok(Array {
            buf,
            len,
            _type: PhantomData,
        })
    }
}

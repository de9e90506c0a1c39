//! The buffer and the lock word within one process (across processes:
//! `tests/shared_memory.rs`).

use super::{Array, SharedMemory, SharedMemoryError, Value, value::HEADER};

#[test]
fn threads_increment_under_the_lock() {
    let v = Value::new(0u64).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..2_000 {
                    let _g = v.lock().unwrap();
                    v.store(v.load() + 1);
                }
            });
        }
    });
    assert_eq!(v.load(), 8_000);
}

/// A lock word naming a process that no longer exists is taken over,
/// with `OwnerDied`; the lock works normally afterwards.
#[test]
fn a_dead_holder_is_reported_and_replaced() {
    use crate::queues::sync::LockError;
    use std::sync::atomic::Ordering;

    // This test program, listing its tests: a child that exits at once.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--list")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let a = Array::<u8>::new(1).unwrap();
    let word = a.shared_memory().segment().atomic_u32(0).unwrap();
    word.store(dead, Ordering::Release);
    match a.lock() {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(word.load(Ordering::Acquire), std::process::id());
            drop(g);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(word.load(Ordering::Acquire), 0);
    drop(a.lock().unwrap());
}

#[test]
fn ranges_are_checked() {
    let buf = SharedMemory::new(HEADER).unwrap();
    assert!(matches!(
        buf.read_at(HEADER, &mut [0]),
        Err(SharedMemoryError::OutOfBounds { .. })
    ));
    assert!(buf.write_at(0, &[1; HEADER]).is_ok());
    assert_eq!(buf.to_vec(), vec![1; HEADER]);
    let a = Array::from_slice(&[1.5f64, -2.0]).unwrap();
    assert_eq!(a.to_vec(), [1.5, -2.0]);
    assert!(a.set(2, 0.0).is_err());
}

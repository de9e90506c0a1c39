//! The hub-side rules, in one process (the cross-process behaviour is in
//! the workspace's `tests/sync.rs`).

use std::time::Duration;

use super::*;

#[test]
fn lock_excludes_and_hands_over_in_order() {
    let lock = Lock::new();
    let g = lock.acquire().unwrap();
    assert!(lock.try_acquire().unwrap_err().is_timeout());
    assert!(
        lock.acquire_timeout(Duration::from_millis(5))
            .unwrap_err()
            .is_timeout()
    );
    let other = lock.clone();
    let t = std::thread::spawn(move || other.acquire().map(drop).is_ok());
    drop(g);
    assert!(t.join().unwrap());
    drop(lock.try_acquire().unwrap());
}

#[test]
fn a_dead_connection_s_permits_come_back_orphaned() {
    let lock = Lock::new();
    let Place::Local(prim) = &lock.place else {
        unreachable!()
    };
    // A remote holder (link 7) that ends while holding the lock.
    {
        let mut state = prim.lock();
        assert_eq!(prim.take(&mut state, Party::Link(7)), Some(false));
    }
    assert!(lock.try_acquire().unwrap_err().is_timeout());
    disconnect(7, &mut Dirty::default());
    let guard = lock.try_acquire().unwrap_err().recover().unwrap();
    drop(guard);
    // The news goes to one acquirer only.
    drop(lock.try_acquire().unwrap());
}

#[test]
fn rlock_nests_in_one_thread_and_excludes_others() {
    let r = RLock::new();
    let outer = r.acquire().unwrap();
    let inner = r.try_acquire().unwrap();
    let other = r.clone();
    let blocked = std::thread::spawn(move || other.try_acquire().map(drop).is_err());
    assert!(blocked.join().unwrap());
    drop(outer);
    let other = r.clone();
    let still = std::thread::spawn(move || other.try_acquire().map(drop).is_err());
    assert!(still.join().unwrap(), "one level is still held");
    drop(inner);
    let other = r.clone();
    let free = std::thread::spawn(move || other.try_acquire().map(drop).is_ok());
    assert!(free.join().unwrap());
}

#[test]
fn bounded_semaphore_refuses_extra_releases() {
    let s = Semaphore::bounded(1);
    assert!(matches!(s.release(), Err(ReleaseError::NotHeld)));
    let g = s.acquire().unwrap();
    std::mem::forget(g);
    s.release().unwrap();
    let u = Semaphore::new(0);
    u.release().unwrap();
    drop(u.try_acquire().unwrap());
}

#[test]
fn event_wakes_waiters_and_clears() {
    let e = Event::new();
    assert!(!e.is_set().unwrap());
    let w = e.clone();
    let t = std::thread::spawn(move || w.wait_timeout(Duration::from_secs(30)).unwrap());
    e.set().unwrap();
    assert!(t.join().unwrap());
    assert!(e.wait_timeout(Duration::ZERO).unwrap());
    e.clear().unwrap();
    assert!(!e.wait_timeout(Duration::from_millis(1)).unwrap());
}

#[test]
fn barrier_releases_rounds_and_a_timeout_breaks_it() {
    let b = Barrier::new(2);
    for _ in 0..3 {
        let other = b.clone();
        let t = std::thread::spawn(move || other.wait().unwrap());
        let mine = b.wait().unwrap();
        assert_eq!(mine + t.join().unwrap(), 1);
    }
    assert!(matches!(
        b.wait_timeout(Duration::from_millis(5)),
        Err(BarrierError::Timeout)
    ));
    assert!(b.is_broken().unwrap());
    assert!(matches!(b.wait(), Err(BarrierError::Broken)));
    b.reset().unwrap();
    assert!(!b.is_broken().unwrap());
    b.abort().unwrap();
    assert!(matches!(b.wait(), Err(BarrierError::Broken)));
}

#[test]
fn a_dead_party_breaks_the_barrier_for_waiters() {
    let b = Barrier::new(3);
    let Place::Local(prim) = &b.place else {
        unreachable!()
    };
    {
        let mut state = prim.lock();
        state.members.insert(Party::Link(9));
    }
    let other = b.clone();
    let t = std::thread::spawn(move || other.wait_timeout(Duration::from_secs(30)));
    // Until the thread has arrived, a break reaches it at its wait instead.
    disconnect(9, &mut Dirty::default());
    assert!(matches!(t.join().unwrap(), Err(BarrierError::Broken)));
}

#[test]
fn condition_wait_releases_the_lock_and_notify_wakes() {
    let c = Condition::new();
    let other = c.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let g = other.acquire().unwrap();
        tx.send(()).unwrap();
        let (g, notified) = g.wait_timeout(Duration::from_secs(30)).unwrap();
        drop(g);
        notified
    });
    rx.recv().unwrap();
    // Held by the waiter until it waits: this acquire means it waits.
    let g = c.acquire().unwrap();
    assert_eq!(g.notify(1).unwrap(), 1);
    drop(g);
    assert!(t.join().unwrap());
    let g = c.acquire().unwrap();
    assert_eq!(g.notify_all().unwrap(), 0);
    let (_g, notified) = g.wait_timeout(Duration::from_millis(1)).unwrap();
    assert!(!notified);
}

#[test]
fn condition_over_a_lock_shares_it_with_the_lock_s_holders() {
    let lock = Lock::new();
    let c = Condition::with_lock(&lock);
    let theirs = c.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let g = theirs.acquire().unwrap();
        tx.send(()).unwrap();
        let (g, notified) = g.wait_timeout(Duration::from_secs(30)).unwrap();
        (notified, g)
    });
    rx.recv().unwrap();
    // Free once the waiter waits; taking the lock itself blocks a notify
    // from nobody, so go through the condition.
    let g = c.acquire().unwrap();
    assert!(lock.try_acquire().unwrap_err().is_timeout());
    assert_eq!(g.notify_all().unwrap(), 1);
    drop(g);
    let (notified, g) = t.join().unwrap();
    assert!(notified);
    assert!(
        lock.try_acquire().unwrap_err().is_timeout(),
        "the waiter holds it"
    );
    drop(g);
    drop(lock.try_acquire().unwrap());
}

#[test]
fn a_condition_reports_its_lock_s_dead_holder() {
    let lock = Lock::new();
    let c = Condition::with_lock(&lock);
    let Place::Local(prim) = &lock.place else {
        unreachable!()
    };
    {
        let mut state = prim.lock();
        assert_eq!(prim.take(&mut state, Party::Link(8)), Some(false));
    }
    assert!(c.try_acquire().unwrap_err().is_timeout());
    disconnect(8, &mut Dirty::default());
    let g = c.try_acquire().unwrap_err().recover().unwrap();
    assert!(lock.try_acquire().unwrap_err().is_timeout());
    drop(g);
}

/// Whether another thread finds `r` held (taking it if free, and giving
/// it back).
fn held_elsewhere(r: &RLock) -> bool {
    std::thread::scope(|s| s.spawn(|| r.try_acquire().is_err()).join().unwrap())
}

#[test]
fn rcondition_wait_releases_every_level_and_restores_them() {
    let r = RLock::new();
    let c = RCondition::with_rlock(&r);
    let (theirs, their_r) = (c.clone(), r.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let outer = their_r.acquire().unwrap();
        let middle = their_r.acquire().unwrap();
        let g = theirs.acquire().unwrap();
        tx.send(()).unwrap();
        let (g, notified) = g.wait_timeout(Duration::from_secs(30)).unwrap();
        // Three levels again: the lock is free only after the last.
        let mut held = Vec::new();
        drop(g);
        held.push(held_elsewhere(&their_r));
        drop(middle);
        held.push(held_elsewhere(&their_r));
        drop(outer);
        held.push(held_elsewhere(&their_r));
        (notified, held)
    });
    rx.recv().unwrap();
    // Free only once the waiter waits, whatever its depth.
    let g = c.acquire_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(g.notify(1).unwrap(), 1);
    drop(g);
    assert_eq!(t.join().unwrap(), (true, vec![true, true, false]));
    // One wait set for every condition over the lock; adopt and timeout.
    let g = RCondition::with_rlock(&r)
        .adopt(r.acquire().unwrap())
        .unwrap();
    let (g, notified) = g.wait_timeout(Duration::from_millis(1)).unwrap();
    assert!(!notified);
    assert!(held_elsewhere(&r));
    drop(g.into_rlock_guard());
    assert!(!held_elsewhere(&r));
}

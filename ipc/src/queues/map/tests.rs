//! The map's rules, in one process (across processes: the workspace's
//! `tests/shared_map.rs`).

use super::*;

#[test]
fn operations_do_what_their_names_say() {
    let m = SharedMap::<String, i64>::new();
    let k = |s: &str| s.to_owned();
    assert_eq!(m.insert(&k("a"), &1).unwrap(), None);
    assert_eq!(m.insert(&k("a"), &2).unwrap(), Some(1));
    assert_eq!(m.get(&k("a")).unwrap(), Some(2));
    assert_eq!(m.get(&k("b")).unwrap(), None);
    assert!(m.contains_key(&k("a")).unwrap());
    assert_eq!(m.insert_if_absent(&k("a"), &9).unwrap(), Some(2));
    assert_eq!(m.insert_if_absent(&k("b"), &9).unwrap(), None);
    assert_eq!(m.len().unwrap(), 2);
    let mut items = m.items().unwrap();
    items.sort();
    assert_eq!(items, [(k("a"), 2), (k("b"), 9)]);
    let mut keys = m.keys().unwrap();
    keys.sort();
    assert_eq!(keys, [k("a"), k("b")]);
    let mut values = m.values().unwrap();
    values.sort_unstable();
    assert_eq!(values, [2, 9]);
    assert_eq!(m.remove(&k("b")).unwrap(), Some(9));
    assert_eq!(m.remove(&k("b")).unwrap(), None);
    m.clear().unwrap();
    assert!(m.is_empty().unwrap());
}

#[test]
fn compare_and_swap_changes_only_what_it_saw() {
    let m = SharedMap::<u8, String>::new();
    let s = |x: &str| x.to_owned();
    assert_eq!(m.compare_and_swap(&1, None, Some(&s("x"))).unwrap(), Ok(()));
    assert_eq!(
        m.compare_and_swap(&1, None, Some(&s("y"))).unwrap(),
        Err(Some(s("x")))
    );
    assert_eq!(
        m.compare_and_swap(&1, Some(&s("x")), Some(&s("y")))
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        m.compare_and_swap(&2, Some(&s("x")), None).unwrap(),
        Err(None)
    );
    assert_eq!(m.compare_and_swap(&1, Some(&s("y")), None).unwrap(), Ok(()));
    assert!(m.is_empty().unwrap());
}

#[test]
fn fetch_add_counts_from_zero_and_refuses_overflow() {
    let m = SharedMap::<u8, u32>::new();
    assert_eq!(m.fetch_add(&0, 3).unwrap(), 0);
    assert_eq!(m.fetch_add(&0, 4).unwrap(), 3);
    assert_eq!(m.get(&0).unwrap(), Some(7));
    m.insert(&1, &u32::MAX).unwrap();
    assert!(matches!(m.fetch_add(&1, 1), Err(MapError::Overflow)));
    assert_eq!(m.get(&1).unwrap(), Some(u32::MAX));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    m.fetch_add(&2, 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(m.get(&2).unwrap(), Some(4000));
}

#[test]
fn a_value_of_another_type_is_not_added_to() {
    let m = SharedMap::<u8, String>::new();
    m.insert(&0, &"seven".to_owned()).unwrap();
    let bytes = enc(&m);
    let (ints, _): (SharedMap<u8, i64>, _) = codec::decode(&bytes).unwrap();
    assert!(matches!(ints.fetch_add(&0, 1), Err(MapError::NotAnInteger)));
}

#[test]
fn keys_compare_by_encoding() {
    // A `&str` key and a `String` key encode alike: one entry.
    let m = SharedMap::<String, u8>::new();
    m.insert(&"k".to_owned(), &1).unwrap();
    let bytes = enc(&m);
    let (strs, _): (SharedMap<&'static str, u8>, _) = codec::decode(&bytes).unwrap();
    assert_eq!(strs.get(&"k").unwrap(), Some(1));
}

#[test]
fn an_oversized_entry_is_refused_before_it_is_sent() {
    let m = SharedMap::<u8, String>::new();
    let big = "x".repeat(DEFAULT_MAX_PAYLOAD_LEN as usize);
    match m.insert(&0, &big) {
        Err(MapError::TooLarge { len, max }) => assert!(len > max, "{len} <= {max}"),
        other => panic!("{other:?}"),
    }
    assert!(m.is_empty().unwrap());
}

#[test]
fn handles_held_by_connections_keep_the_map_until_they_go() {
    let m = SharedMap::<u8, u8>::new();
    let id = m.place.id();
    m.insert(&1, &1).unwrap();
    // A handle sent to a worker (link 41) that holds it, then drops it.
    let bytes = enc(&m);
    drop(m);
    let store = Store::lookup(id).expect("pinned while on its way");
    store_life(&store, 41, qop::HOLD, pin_of(&bytes));
    drop(store);
    assert!(Store::lookup(id).is_some(), "held by link 41");
    store_life(&Store::lookup(id).unwrap(), 41, qop::UNHOLD, 0);
    assert!(Store::lookup(id).is_none(), "nothing holds the map");
    // The same through a connection's end.
    let m = SharedMap::<u8, u8>::new();
    let id = m.place.id();
    let sent = enc(&m);
    drop(m);
    store_life(&Store::lookup(id).unwrap(), 42, qop::HOLD, pin_of(&sent));
    disconnect(42);
    assert!(Store::lookup(id).is_none(), "the holder's connection ended");
    drop(bytes);
}

fn store_life(store: &Arc<Store>, link: u64, code: u8, pin: u64) {
    store.life_op(link, code, pin);
}

/// The pin token in a handle's bytes.
fn pin_of(bytes: &[u8]) -> u64 {
    let (Wire { pin, .. }, _) = codec::decode(bytes).unwrap();
    pin
}

fn enc<T: Serialize>(value: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    codec::encode_into(value, &mut buf).unwrap();
    buf
}

/// A writer into a buffer the test reads back.
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::sync::lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn an_answer_too_large_for_the_link_is_refused_not_dropped() {
    use crate::frame::FrameReader;
    use crate::link::{Blocking, Dirty, Link};
    use crate::proto::Message;

    let m = SharedMap::<u8, String>::new();
    m.insert(&1, &"x".repeat(10_000)).unwrap();
    m.insert(&2, &"small".to_owned()).unwrap();
    let bytes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let max = 4096;
    let link = Link::new(Blocking(Capture(Arc::clone(&bytes))), max).unwrap();
    let ask = |req: u64, code: u8, arg: u64, payload: &[u8]| {
        let msg = Message::Hub {
            req,
            op: code,
            queue: m.id(),
            arg,
            payload,
        };
        let mut dirty = Dirty::default();
        hub::serve(&link, &msg, &mut dirty);
    };
    let key = |k: u8| Request::new().part(&k).unwrap().0;
    ask(1, op::GET, 0, &key(1));
    ask(2, op::SNAPSHOT, 3, &[]);
    ask(3, op::GET, 0, &key(2));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    assert!(link.drain(Some(deadline)).unwrap(), "not drained");
    let bytes = std::mem::take(&mut *crate::sync::lock(&bytes));
    let mut reader = FrameReader::new(&bytes[..], max);
    let mut frame = Vec::new();
    let mut got = Vec::new();
    while reader.read_frame(&mut frame).unwrap() {
        if let Message::Reply {
            req, status, value, ..
        } = Message::decode(&frame).unwrap()
        {
            got.push((req, status, value));
        }
    }
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].1, status::TOO_LARGE);
    assert!(got[0].2 > 10_000, "{got:?}");
    assert_eq!(got[1].1, status::TOO_LARGE);
    assert_eq!((got[2].0, got[2].1, got[2].2), (3, qstatus::OK, 1));
}

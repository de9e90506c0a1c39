//! How `Imap` cuts its input into chunks, without a pool.

use serde::Serializer;
use serde::ser::Error as _;

use super::*;

/// A payload limit.
const MAX: u64 = 31;
/// Bytes a chunk may hold under [`MAX`]: the limit and the encoding's slack.
const LIMIT: usize = (MAX + ENCODING_SLACK) as usize;

/// An input whose encoding fails.
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(S::Error::custom("refused"))
    }
}

/// An input of `n` bytes once encoded (a byte vector's length prefix is
/// one byte below 251).
fn bytes(n: usize) -> Vec<u8> {
    assert!((1..=251).contains(&n));
    let item = vec![0xAB; n - 1];
    assert_eq!(encoded(&item).len(), n);
    item
}

fn encoded<I: Serialize + ?Sized>(item: &I) -> Vec<u8> {
    let mut buf = Vec::new();
    codec::encode_into(item, &mut buf).expect("encodes");
    buf
}

/// A chunk with its payload as bytes.
fn bytes_of((mut payload, count): (Encoded, u32)) -> (Vec<u8>, u32) {
    (std::mem::take(payload.make_bytes()), count)
}

/// What a push gave: the full chunk's size and count, and the failure.
fn summary(p: Packed) -> (Option<(usize, u32)>, Option<Error>) {
    (p.full.map(|(payload, n)| (payload.len(), n)), p.failed)
}

#[test]
fn inputs_are_packed_back_to_back() {
    let mut p = Packer::new(LIMIT as u64);
    assert!(p.take().is_none(), "nothing packed yet");
    for s in ["a", "bc", "def"] {
        let (full, failed) = summary(p.push(&s));
        assert!(full.is_none() && failed.is_none());
    }
    assert_eq!(p.count(), 3);
    let (payload, count) = p.take().map(bytes_of).expect("a chunk");
    assert_eq!(count, 3);
    assert_eq!(
        payload,
        [encoded("a"), encoded("bc"), encoded("def")].concat()
    );
    assert_eq!(p.count(), 0);
    assert!(p.take().is_none(), "taken");
}

#[test]
fn a_chunk_is_cut_before_it_exceeds_the_frame() {
    let mut p = Packer::new(LIMIT as u64);
    // Up to the limit exactly is fine.
    let (full, failed) = summary(p.push(&bytes(LIMIT - 1)));
    assert!(full.is_none() && failed.is_none());
    let (full, failed) = summary(p.push(&bytes(1)));
    assert!(full.is_none() && failed.is_none());
    // One more byte would pass it: the chunk goes, this input starts the next.
    let (full, failed) = summary(p.push(&bytes(1)));
    assert_eq!(full, Some((LIMIT, 2)));
    assert!(failed.is_none());
    assert_eq!(p.count(), 1);
    let (payload, count) = p.take().map(bytes_of).expect("the next chunk");
    assert_eq!((payload, count), (encoded(&bytes(1)), 1));
}

#[test]
fn a_cut_keeps_every_input_in_order() {
    let mut p = Packer::new(LIMIT as u64);
    let items: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 19]).collect();
    let mut chunks = Vec::new();
    for item in &items {
        let Packed { full, failed } = p.push(item);
        assert!(failed.is_none());
        chunks.extend(full.map(bytes_of));
    }
    chunks.extend(p.take().map(bytes_of));
    // 20 bytes each: two fit in 47.
    assert_eq!(chunks.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [2; 5]);
    let all: Vec<u8> = chunks
        .into_iter()
        .flat_map(|(payload, _)| payload)
        .collect();
    assert_eq!(all, items.iter().flat_map(encoded).collect::<Vec<_>>());
}

#[test]
fn an_oversized_input_fails_alone() {
    let mut p = Packer::new(LIMIT as u64);
    // First in its chunk: it fails, nothing is sent.
    let (full, failed) = summary(p.push(&bytes(LIMIT + 1)));
    assert!(full.is_none());
    let len = (LIMIT + 1) as u64;
    assert!(
        matches!(failed, Some(Error::PayloadTooLarge { what: Oversized::Input, len: l, max: MAX }) if l == len),
        "{failed:?}"
    );
    assert_eq!(p.count(), 0);
    assert!(p.take().is_none());
    // After others: they go as a chunk, then it fails; the next starts afresh.
    assert!(p.push(&bytes(3)).failed.is_none());
    let (full, failed) = summary(p.push(&bytes(200)));
    assert_eq!(full, Some((3, 1)));
    assert!(
        matches!(
            failed,
            Some(Error::PayloadTooLarge {
                len: 200,
                max: MAX,
                ..
            })
        ),
        "{failed:?}"
    );
    assert_eq!(p.count(), 0);
    assert!(p.push(&bytes(5)).failed.is_none());
    assert_eq!(p.take().map(bytes_of), Some((encoded(&bytes(5)), 1)));
}

#[test]
fn an_input_that_does_not_encode_fails_and_cuts_the_chunk() {
    let mut p = Packer::new(LIMIT as u64);
    let (full, failed) = summary(p.push(&Unencodable));
    assert!(full.is_none());
    assert!(matches!(failed, Some(Error::Encode(_))), "{failed:?}");
    assert!(p.push(&"a").failed.is_none());
    assert!(p.push(&"b").failed.is_none());
    let (full, failed) = summary(p.push(&Unencodable));
    assert_eq!(full, Some((4, 2)), "the inputs before it go first");
    assert!(matches!(failed, Some(Error::Encode(_))), "{failed:?}");
    assert!(p.take().is_none());
}

#[test]
fn the_default_frame_limit_holds_large_chunks() {
    let mut p = Packer::new(procpool_ipc::frame::DEFAULT_MAX_FRAME_LEN);
    for i in 0..10_000u32 {
        assert!(p.push(&i).full.is_none());
    }
    assert_eq!(p.count(), 10_000);
}

#[test]
fn a_chunk_waits_for_room_in_the_window() {
    // Nothing out: a whole chunk, at most the window.
    assert_eq!(next_chunk_len(10, 0, 4, 0), Some(4));
    assert_eq!(next_chunk_len(10, 0, 64, 0), Some(10));
    // Room for a whole chunk.
    assert_eq!(next_chunk_len(10, 6, 4, 1), Some(4));
    // Only a sliver of room while chunks are out: wait for them.
    assert_eq!(next_chunk_len(10, 7, 4, 1), None);
    assert_eq!(next_chunk_len(10, 1, 64, 1), None);
    // Nothing out (the outstanding inputs failed locally): take what fits.
    assert_eq!(next_chunk_len(10, 7, 4, 0), Some(3));
}

#[test]
fn a_fixed_chunk_size_never_changes() {
    let mut c = Chunking::Fixed(7);
    c.learn(7, 1);
    c.learn(7, u64::MAX);
    assert_eq!(c.size(), 7);
}

#[test]
fn an_adaptive_chunk_size_aims_at_two_milliseconds() {
    let adaptive = |current| Chunking::Adaptive { current, max: 1000 };
    // 1 µs per item: 2000 would be ideal, but it grows at most 4× a step.
    let mut c = adaptive(1);
    let mut sizes = Vec::new();
    for _ in 0..6 {
        c.learn(10, 10_000);
        sizes.push(c.size());
    }
    assert_eq!(sizes, [4, 16, 64, 256, 1000, 1000], "up to the maximum");
    // 100 µs per item: 20 items.
    c.learn(2, 200_000);
    assert_eq!(c.size(), 20);
    // Slower than the target: one item.
    c.learn(1, 5_000_000);
    assert_eq!(c.size(), 1);
    // No time measured, or no items: counted as 1 ns per item.
    let mut c = adaptive(100);
    c.learn(0, 0);
    assert_eq!(c.size(), 400);
    // Shrinks at once.
    let mut c = adaptive(1000);
    c.learn(1, 1_000_000);
    assert_eq!(c.size(), 2);
}

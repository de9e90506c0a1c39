use super::*;

#[test]
fn new_segment_is_zeroed_and_round_trips() {
    let seg = Segment::new(10_000).unwrap();
    assert_eq!(seg.len(), 10_000);
    assert_eq!(seg.read_to_vec(0, 10_000).unwrap(), vec![0u8; 10_000]);
    seg.write_at(9_995, b"12345").unwrap();
    let mut buf = [0u8; 5];
    seg.read_at(9_995, &mut buf).unwrap();
    assert_eq!(&buf, b"12345");
}

#[test]
fn a_second_handle_sees_the_same_memory() {
    let seg = Segment::new(1 << 20).unwrap();
    let other = Segment::from_handle(seg.try_clone_handle().unwrap(), seg.len()).unwrap();
    other.write_at(1 << 19, b"shared").unwrap();
    assert_eq!(seg.read_to_vec(1 << 19, 6).unwrap(), b"shared");
    // A shorter view of the same object is fine.
    let short = Segment::from_handle(seg.try_clone_handle().unwrap(), 100).unwrap();
    assert_eq!(short.len(), 100);
}

#[test]
fn ranges_outside_the_segment_are_refused() {
    let seg = Segment::new(64).unwrap();
    for (offset, len) in [(60, 5), (65, 0), (usize::MAX, 1), (1, usize::MAX)] {
        let err = seg.read_to_vec(offset, len).unwrap_err();
        assert!(
            matches!(
                err,
                SegmentError::OutOfBounds {
                    segment_len: 64,
                    ..
                }
            ),
            "{offset} {len}: {err}"
        );
    }
    let err = seg.write_at(63, b"ab").unwrap_err();
    assert!(matches!(
        err,
        SegmentError::OutOfBounds {
            offset: 63,
            len: 2,
            ..
        }
    ));
    let mut out = vec![7u8];
    assert!(seg.read_into_vec(64, 1, &mut out).is_err());
    assert_eq!(out, [7], "untouched on error");
    seg.write_at(64, b"").unwrap();
}

#[test]
fn zero_length_segments_work() {
    let seg = Segment::new(0).unwrap();
    assert!(seg.is_empty());
    assert_eq!(seg.read_to_vec(0, 0).unwrap(), b"");
    assert!(seg.write_at(0, b"x").is_err());
    let again = Segment::from_handle(seg.try_clone_handle().unwrap(), 0).unwrap();
    assert!(again.is_empty());
}

#[test]
fn an_announced_length_beyond_the_object_is_refused() {
    let seg = Segment::new(4096).unwrap();
    let err = Segment::from_handle(seg.try_clone_handle().unwrap(), 1 << 30).unwrap_err();
    assert!(
        matches!(err, SegmentError::TooSmall { needed, actual } if needed == 1 << 30 && actual < 1 << 30),
        "{err}"
    );
}

/// A plain file could be truncated by whoever else holds it, turning a
/// later read into SIGBUS: only sealed memory objects are accepted.
#[cfg(any(target_os = "linux", target_os = "freebsd"))]
#[test]
fn an_unsealed_object_is_refused() {
    let dir = std::env::temp_dir().join(format!("procpool-shm-test-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&dir)
        .unwrap();
    std::fs::remove_file(&dir).unwrap();
    file.set_len(4096).unwrap();
    let err = Segment::from_handle(std::os::fd::OwnedFd::from(file), 4096).unwrap_err();
    assert!(matches!(err, SegmentError::NotSealed), "{err}");
}

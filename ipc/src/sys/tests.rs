//! Contract tests for the platform backend; they run on every OS.

use std::io::{Read, Write};

use super::*;

#[test]
fn bad_endpoint_values_are_errors() {
    for value in ["", "fd:", "nonsense", "fd:-1", "pipe:"] {
        assert!(connect(value).is_err(), "{value:?} must not connect");
    }
}

#[test]
fn halves_are_usable_from_two_threads() {
    // A real child that echoes its stdin is platform-specific; here we check
    // the Read/Write impls are Send by moving them across threads.
    fn assert_send<T: Send + Read>() {}
    fn assert_send_w<T: Send + Write>() {}
    assert_send::<ReadHalf>();
    assert_send_w::<WriteHalf>();
}

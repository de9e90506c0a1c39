//! `Message::decode` on arbitrary frame bodies: never panics; whatever
//! decodes survives a round trip through `Message::write`, a `FrameWriter`
//! and a `FrameReader` unchanged, and its encoding is canonical (encoding
//! the re-decoded message gives the same bytes again).
#![no_main]

use libfuzzer_sys::fuzz_target;
use procpool_ipc::frame::{FrameReader, FrameWriter};
use procpool_ipc::proto::Message;

fn encode(msg: &Message<'_>) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut w = FrameWriter::new(&mut wire, u64::MAX);
    msg.write(&mut w).expect("a decoded message re-encodes");
    w.flush().expect("flush to a Vec");
    drop(w);
    let mut r = FrameReader::new(&wire[..], u64::MAX);
    let mut body = Vec::new();
    assert!(r.read_frame(&mut body).expect("our own frame reads back"));
    assert!(
        !r.read_frame(&mut Vec::new()).expect("one frame"),
        "one frame"
    );
    body
}

fuzz_target!(|body: &[u8]| {
    let Ok(msg) = Message::decode(body) else {
        return;
    };
    let encoded = encode(&msg);
    let again = Message::decode(&encoded).expect("our own encoding decodes");
    assert_eq!(again, msg, "decode(encode(m)) != m");
    assert_eq!(encode(&again), encoded, "encoding is not canonical");
});

#!/usr/bin/env python3
"""Writes the seed corpus: fuzz/corpus/<target>/seed-* (valid inputs and a
few hostile ones). Run from anywhere; rewrites only seed-* files.

The layouts are those of ipc/src/frame.rs, ipc/src/proto.rs and
ipc/src/remote.rs; each target's input format is described at the top of
its fuzz_targets/<target>.rs.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def u8(v):
    return struct.pack("<B", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def frame(body):
    return u32(len(body)) + body


def varint(n):
    # bincode 2's standard varint (little-endian).
    if n < 251:
        return u8(n)
    if n < 1 << 16:
        return u8(251) + struct.pack("<H", n)
    if n < 1 << 32:
        return u8(252) + u32(n)
    return u8(253) + u64(n)


def strings(xs):
    return varint(len(xs)) + b"".join(varint(len(x)) + x for x in xs)


def hello(tasks, sigs, version=2):
    return b"\x01PPOL" + u32(version) + u32(4242) + strings(tasks) + strings(sigs)


MESSAGES = {
    "hello": hello([b"square"], [b"u64 -> u64"]),
    "hello-empty": hello([], []),
    "run": u8(2) + u64(7) + u32(0) + u32(2) + b"\x03\x04",
    "done": u8(3) + u64(7) + u32(2) + u64(12345) + b"\x00\x09\x00\x10",
    "shutdown": u8(4),
    "heartbeat": u8(8),
    "hub-put": u8(5) + u64(0) + u8(1) + u64(1 << 32 | 1) + u64(0) + b"\x05item",
    "reply": u8(6) + u64(3) + u8(0) + u64(1) + b"",
    "deliver": u8(7) + u64(1 << 32 | 1) + u8(0) + b"\x01x",
    "deliver-closed": u8(7) + u64(1 << 32 | 1) + u8(1),
}

HOSTILE_MESSAGES = {
    "hello-wrong-version": hello([], [], version=99),
    "hello-huge-vec": b"\x01PPOL" + u32(2) + u32(1) + varint(1 << 60),
    "hello-huge-string": b"\x01PPOL" + u32(2) + u32(1) + varint(1) + varint(1 << 40) + b"ab",
    "hello-mismatched": hello([b"a", b"b"], [b"x"]),
    "run-short": u8(2) + u64(7),
    "unknown-kind": u8(200) + b"\x00" * 8,
}

# frame: a mode byte (chunking, interruptions), then the stream.
FRAMES = {
    "two-frames": u8(0x1F) + frame(b"hello") + frame(b""),
    "chunked": u8(0x40) + frame(b"a" * 100) + frame(b"b" * 3),
    "messages": u8(0x03) + b"".join(frame(m) for m in MESSAGES.values()),
    "header-4gib": u8(0) + b"\xff\xff\xff\xff" + b"\x01\x02\x03",
    "header-1gib": u8(0) + u32(1 << 30) + b"\x01\x02\x03",
    "header-max": u8(0) + u32(1 << 20) + b"x" * 16,
    "truncated-frame": u8(0) + u32(5) + b"ab",
    "truncated-header": u8(0) + b"\x05\x00",
}

def handshake(flags, hb_us, data):
    return u8(flags) + u64(hb_us) + data


NONCE = bytes(range(32))
HANDSHAKES = {
    # Master side succeeds (proof spliced), then the worker side sees garbage.
    "master-ok": handshake(1, 1_234_000, NONCE + u32(1234)),
    # Worker side: greeting prefixed, challenge, proof spliced with a timeout.
    "worker-ok": handshake(3, 10_000_000, NONCE + u32(10_000)),
    "worker-greeting": handshake(0, 0, b"PPAUTH2" + NONCE + b"\x00" * 36),
    "wrong-greeting": handshake(0, 0, b"PPAUTH1" + NONCE),
    "wrong-proof": handshake(2, 1, NONCE + b"\x00" * 36),
    "writes-fail": handshake(5, 1, NONCE + NONCE),
    "huge-timeout": handshake(3, (1 << 64) - 1, NONCE + u32(0xFFFFFFFF)),
    "truncated": handshake(2, 0, NONCE[:10]),
}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, "seed-" + name), "wb") as f:
            f.write(data)


write("frame", FRAMES)
write("proto", {**MESSAGES, **HOSTILE_MESSAGES})
write("handshake", HANDSHAKES)
# hub: structured inputs (arbitrary); its seeds are inputs the fuzzer found
# (kept as seed-* by hand), not generated here.

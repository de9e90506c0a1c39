//! The payload codec: serde + bincode 2 with one fixed configuration.
//!
//! Every typed value that crosses a process boundary goes through these two
//! functions, so swapping the codec means changing this file only.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::IpcError;

/// How much a decoder may claim per byte of input. bincode claims, before
/// allocating, the in-memory size of what a length prefix announces (an
/// owned `String` or byte buffer is allocated at its announced length
/// before its bytes are read) and of every primitive it decodes (8 bytes
/// for a `u64` that took one), so a bound proportional to the input
/// lets every honest value through and keeps what a lying prefix can make
/// this process allocate to a small multiple of the bytes it received.
const CLAIM_PER_BYTE: usize = 64;

/// The smallest claim limit, so small inputs need no arithmetic.
const MIN_CLAIM: usize = 1 << 20;

type Config<const LIMIT: usize> = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<LIMIT>,
>;

const fn config<const LIMIT: usize>() -> Config<LIMIT> {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Evaluates `$decode` with `$cfg` bound to a configuration whose claim
/// limit is at least [`CLAIM_PER_BYTE`] times `$len` (the limit is a
/// constant of the configuration's type: one of a few sizes, 16 times
/// apart, is picked).
macro_rules! with_claim_limit {
    ($len:expr, |$cfg:ident| $decode:expr) => {{
        let need = $len.saturating_mul(CLAIM_PER_BYTE);
        if need <= MIN_CLAIM {
            let $cfg = config::<MIN_CLAIM>();
            $decode
        } else if need <= 1 << 24 {
            let $cfg = config::<{ 1 << 24 }>();
            $decode
        } else if need <= 1 << 28 {
            let $cfg = config::<{ 1 << 28 }>();
            $decode
        } else if need <= 1 << 32 {
            let $cfg = config::<{ 1 << 32 }>();
            $decode
        } else if need <= 1 << 36 {
            let $cfg = config::<{ 1 << 36 }>();
            $decode
        } else {
            let $cfg = config::<{ usize::MAX }>();
            $decode
        }
    }};
}

/// Appends the encoding of `value` to `buf`.
///
/// On error `buf` is restored to its previous length.
///
/// # Errors
/// [`IpcError::Encode`] when serde reports an error (for example a
/// `Serialize` impl that fails, or a map of unknown length).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), IpcError> {
    let len = buf.len();
    bincode::serde::encode_into_std_write(value, buf, config::<{ usize::MAX }>())
        .map(drop)
        .map_err(|e| {
            buf.truncate(len);
            IpcError::Encode(e)
        })
}

/// Appends the encoding of `value` to `buf`, giving up as soon as it
/// passes `limit` bytes: a value over the limit is refused without being
/// encoded whole (nor its bytes kept). Then its full size is measured
/// (encoded again into a counter, allocating nothing) for the error.
///
/// On error `buf` is restored to its previous length.
///
/// # Errors
/// [`IpcError::PayloadTooLarge`] when the encoding is longer than `limit`;
/// [`IpcError::Encode`] as [`encode_into`].
#[inline]
pub fn encode_into_limited<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
    limit: u64,
) -> Result<(), IpcError> {
    let start = buf.len();
    let writer = Limited {
        buf: &mut *buf,
        left: limit,
    };
    match bincode::serde::encode_into_writer(value, writer, config::<{ usize::MAX }>()) {
        Ok(()) => Ok(()),
        Err(e) => {
            buf.truncate(start);
            Err(refused(value, e, limit))
        }
    }
}

/// Encodes `value` into `writer`, which reports passing `limit` bytes
/// with [`OVER_LIMIT`] (as [`encode_into_limited`]'s buffer does); the
/// caller restores what the writer wrote to on error.
///
/// # Errors
/// As [`encode_into_limited`].
#[inline]
pub(crate) fn encode_into_writer<T: Serialize + ?Sized>(
    value: &T,
    writer: impl bincode::enc::write::Writer,
    limit: u64,
) -> Result<(), IpcError> {
    bincode::serde::encode_into_writer(value, writer, config::<{ usize::MAX }>())
        .map_err(|e| refused(value, e, limit))
}

/// The error for a value [`encode_into_limited`] gave up on: out of line,
/// so that the encoding path inlines into its callers (`map` over tiny
/// items encodes millions a second).
#[cold]
fn refused<T: Serialize + ?Sized>(
    value: &T,
    e: bincode::error::EncodeError,
    limit: u64,
) -> IpcError {
    if !matches!(e, bincode::error::EncodeError::Other(OVER_LIMIT)) {
        return IpcError::Encode(e);
    }
    let mut size = bincode::enc::write::SizeWriter::default();
    match bincode::serde::encode_into_writer(value, &mut size, config::<{ usize::MAX }>()) {
        Ok(()) => IpcError::PayloadTooLarge {
            len: size.bytes_written as u64,
            max: limit,
        },
        Err(e) => IpcError::Encode(e),
    }
}

/// What [`Limited`] reports when a value passes its limit.
pub(crate) const OVER_LIMIT: &str = "over the payload limit";

/// Appends to a buffer until `left` bytes have been written.
struct Limited<'a> {
    buf: &'a mut Vec<u8>,
    left: u64,
}

impl bincode::enc::write::Writer for Limited<'_> {
    // Called once per primitive: inlined into the caller's encoder (the
    // generic encoders live in other crates), or each small write costs a
    // call and a `memcpy` call (`map` over 1M integers: +50% master time).
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.left = self
            .left
            .checked_sub(bytes.len() as u64)
            .ok_or(bincode::error::EncodeError::Other(OVER_LIMIT))?;
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

/// Decodes one value from the front of `bytes`; returns it and how many
/// bytes it used.
///
/// # Errors
/// [`IpcError::Decode`] when `bytes` do not hold a valid `T`.
#[inline]
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), IpcError> {
    with_claim_limit!(bytes.len(), |cfg| bincode::serde::decode_from_slice(
        bytes, cfg
    ))
    .map_err(IpcError::Decode)
}

/// Decodes one value borrowing from `bytes` (`&str`, `&[u8]` fields point
/// into it); returns it and how many bytes it used.
///
/// Unlike [`decode`], a borrowed string or byte slice allocates nothing,
/// whatever length its prefix announces: an owned `String` is allocated at
/// its announced length (within the claim limit) before its bytes are read.
///
/// # Errors
/// [`IpcError::Decode`] when `bytes` do not hold a valid `T`.
pub(crate) fn decode_borrowed<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
) -> Result<(T, usize), IpcError> {
    with_claim_limit!(bytes.len(), |cfg| {
        bincode::serde::borrow_decode_from_slice(bytes, cfg)
    })
    .map_err(IpcError::Decode)
}

/// Decodes one value from `reader`, which holds at most `len` bytes
/// (the claim limit is set from it, as in [`decode`]).
///
/// # Errors
/// [`IpcError::Decode`] when the bytes do not hold a valid `T`.
pub(crate) fn decode_from_reader<T: DeserializeOwned, R: bincode::de::read::Reader>(
    reader: &mut R,
    len: usize,
) -> Result<T, IpcError> {
    with_claim_limit!(len, |cfg| bincode::serde::decode_from_reader(
        &mut *reader,
        cfg
    ))
    .map_err(IpcError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_sequence() {
        let mut buf = Vec::new();
        encode_into(&7u64, &mut buf).unwrap();
        encode_into("seven", &mut buf).unwrap();
        let (a, n): (u64, usize) = decode(&buf).unwrap();
        let (b, _): (String, usize) = decode(&buf[n..]).unwrap();
        assert_eq!((a, b.as_str()), (7, "seven"));
    }

    #[test]
    fn a_lying_length_cannot_claim_more_than_the_input_allows() {
        // 10 bytes announcing a 100 MiB string: before, bincode allocated
        // the 100 MiB (the limit was a fixed 1 GiB) and then found the
        // bytes missing.
        let mut bytes = Vec::new();
        encode_into(&(100u64 << 20), &mut bytes).unwrap();
        bytes.extend_from_slice(b"abc");
        let err = decode::<String>(&bytes).unwrap_err();
        assert!(
            matches!(
                &err,
                IpcError::Decode(bincode::error::DecodeError::LimitExceeded)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn honest_values_fit_the_claim_limit() {
        // Small numbers take a byte each but claim eight: still decoded.
        let many = vec![1u64; 3 << 20];
        let mut buf = Vec::new();
        encode_into(&many, &mut buf).unwrap();
        let (back, _): (Vec<u64>, usize) = decode(&buf).unwrap();
        assert_eq!(back, many);
        let text = "x".repeat(5 << 20);
        buf.clear();
        encode_into(&text, &mut buf).unwrap();
        assert_eq!(decode::<String>(&buf).unwrap().0, text);
    }

    #[test]
    fn a_value_over_the_limit_is_refused_with_its_size() {
        let mut buf = vec![7];
        let big = "x".repeat(1000);
        let err = encode_into_limited(&big, &mut buf, 100).unwrap_err();
        // 1000 bytes and their 3-byte length prefix.
        assert!(
            matches!(
                err,
                IpcError::PayloadTooLarge {
                    len: 1003,
                    max: 100
                }
            ),
            "{err:?}"
        );
        assert_eq!(buf, [7], "nothing of the refused value is kept");
        encode_into_limited(&big, &mut buf, 1003).unwrap();
        assert_eq!(buf.len(), 1004);
    }

    #[test]
    fn garbage_is_an_error() {
        // A string claiming 2^62 bytes: refused by the limit, not allocated.
        let bytes = [0xFFu8, 0, 0, 0, 0, 0, 0, 0, 0x40];
        assert!(decode::<String>(&bytes).is_err());
        assert!(decode::<u64>(&[]).is_err());
    }

    /// The cause shows in `Display` (issue 14: it showed only in `{:?}`).
    #[test]
    fn decode_errors_say_why() {
        let e = decode::<u64>(&[]).unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with("failed to decode a payload: "), "{shown}");
        assert!(
            shown.len() > "failed to decode a payload: ".len(),
            "{shown}"
        );
    }
}

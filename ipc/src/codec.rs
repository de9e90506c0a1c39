//! The payload codec: serde + bincode 2 with one fixed configuration.
//!
//! Every typed value that crosses a process boundary goes through these two
//! functions, so swapping the codec means changing this file only.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::IpcError;

/// Upper bound on what a decoder may claim to allocate for one value, so a
/// corrupt length prefix inside a payload cannot ask for more than this.
const DECODE_LIMIT: usize = 1 << 30;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
>;

const CONFIG: Config = bincode::config::standard().with_limit::<DECODE_LIMIT>();

/// Appends the encoding of `value` to `buf`.
///
/// On error `buf` is restored to its previous length.
///
/// # Errors
/// [`IpcError::Encode`] when serde reports an error (for example a
/// `Serialize` impl that fails, or a map of unknown length).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), IpcError> {
    let len = buf.len();
    bincode::serde::encode_into_std_write(value, buf, CONFIG)
        .map(drop)
        .map_err(|e| {
            buf.truncate(len);
            IpcError::Encode(e)
        })
}

/// Decodes one value from the front of `bytes`; returns it and how many
/// bytes it used.
///
/// # Errors
/// [`IpcError::Decode`] when `bytes` do not hold a valid `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), IpcError> {
    bincode::serde::decode_from_slice(bytes, CONFIG).map_err(IpcError::Decode)
}

/// Decodes one value borrowing from `bytes` (`&str`, `&[u8]` fields point
/// into it); returns it and how many bytes it used.
///
/// Unlike [`decode`], a borrowed string or byte slice allocates nothing,
/// whatever length its prefix announces: an owned `String` is allocated at
/// its announced length (up to the decode limit) before its bytes are read.
///
/// # Errors
/// [`IpcError::Decode`] when `bytes` do not hold a valid `T`.
pub(crate) fn decode_borrowed<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
) -> Result<(T, usize), IpcError> {
    bincode::serde::borrow_decode_from_slice(bytes, CONFIG).map_err(IpcError::Decode)
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

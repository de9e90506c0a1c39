//! `fetch_add`'s arithmetic, done in the hub on encoded values: the
//! integer types it knows, each with a tag the request carries.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::status;
use crate::codec;

mod sealed {
    pub trait Sealed {}
}

/// An integer type a [`SharedMap`](super::SharedMap) can add to in the
/// hub ([`fetch_add`](super::SharedMap::fetch_add)): `i32`, `i64`, `u32`,
/// `u64`. Sealed: the hub must know how to add it.
pub trait MapInteger: Serialize + DeserializeOwned + Copy + sealed::Sealed {
    /// The tag the hub knows this type by.
    #[doc(hidden)]
    const TAG: u64;
}

macro_rules! integers {
    ($($t:ty = $tag:expr),*) => {
        $(
            impl sealed::Sealed for $t {}
            impl MapInteger for $t {
                const TAG: u64 = $tag;
            }
        )*

        /// Adds encoded `delta` to the encoded `current` value (a missing
        /// one is 0), both of the type tagged `tag`: the previous value
        /// and the sum, encoded; `OVERFLOW`, or `BAD_VALUE` if a value is
        /// not of that type.
        pub(super) fn add(
            tag: u64,
            current: Option<&[u8]>,
            delta: &[u8],
        ) -> Result<(Vec<u8>, Vec<u8>), u8> {
            match tag {
                $($tag => add_as::<$t>(current, delta, <$t>::checked_add),)*
                _ => Err(crate::queues::wire::status::BAD_REQUEST),
            }
        }
    };
}

integers!(i32 = 0, i64 = 1, u32 = 2, u64 = 3);

/// Decodes exactly one `T` from `bytes`.
fn exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, u8> {
    match codec::decode::<T>(bytes) {
        Ok((v, n)) if n == bytes.len() => Ok(v),
        _ => Err(status::BAD_VALUE),
    }
}

fn add_as<T: MapInteger + Default>(
    current: Option<&[u8]>,
    delta: &[u8],
    checked_add: fn(T, T) -> Option<T>,
) -> Result<(Vec<u8>, Vec<u8>), u8> {
    let previous: T = current.map_or(Ok(T::default()), exact)?;
    let sum = checked_add(previous, exact(delta)?).ok_or(status::OVERFLOW)?;
    let encode = |v: T| {
        let mut buf = Vec::new();
        codec::encode_into(&v, &mut buf).map(|()| buf)
    };
    match (encode(previous), encode(sum)) {
        (Ok(p), Ok(s)) => Ok((p, s)),
        _ => Err(status::BAD_VALUE),
    }
}

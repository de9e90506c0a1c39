//! The hub side of a [`SharedMap`](super::SharedMap): the entries, encoded,
//! and one function per operation that both the hub process's own handles
//! and remote requests go through, so the two cannot disagree. What keeps
//! a map alive, and its id, are the registry's (`queues/held.rs`).
//!
//! # Lock order
//!
//! A map's entries, then a link's outbox (replies are only appended to it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::parts;
use super::{op, status};
use crate::IpcError;
use crate::link::{Dirty, Link};
use crate::queues::held::{self, Held, Registry};
use crate::queues::wire::status as qstatus;
use crate::sync::lock;

/// The maps this process holds, by id (bit 30 set).
pub(super) static MAPS: Registry<Entries> = Registry::new(0x4000_0000);

/// One map held by this process.
pub(crate) type Store = Held<Entries>;

/// A map's entries: encoded key → encoded value.
#[derive(Debug, Default)]
pub(crate) struct Entries {
    entries: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
}

/// An answer: `value` and payload, or a status other than `OK`.
pub(crate) type Answer = Result<(u64, Vec<u8>), u8>;

impl Store {
    pub(crate) fn new() -> Arc<Store> {
        MAPS.insert(Entries::default())
    }

    pub(crate) fn lookup(id: u64) -> Option<Arc<Store>> {
        MAPS.lookup(id)
    }
}

impl Entries {
    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Vec<u8>>> {
        lock(&self.entries)
    }

    /// One operation, atomically (see the protocol table in `map.rs`).
    pub(crate) fn exec(&self, code: u8, arg: u64, payload: &[u8]) -> Answer {
        let parts = parts::split(payload).ok_or(qstatus::BAD_REQUEST)?;
        let mut entries = self.lock();
        let found = |v: Option<Vec<u8>>| match v {
            Some(v) => (1, v),
            None => (0, Vec::new()),
        };
        match (code, parts.as_slice()) {
            (op::INSERT, [k, v]) => Ok(found(entries.insert(k.to_vec(), v.to_vec()))),
            (op::GET, [k]) => Ok(found(entries.get(*k).cloned())),
            (op::REMOVE, [k]) => Ok(found(entries.remove(*k))),
            (op::CONTAINS, [k]) => Ok((u64::from(entries.contains_key(*k)), Vec::new())),
            (op::LEN, []) => Ok((entries.len() as u64, Vec::new())),
            (op::CLEAR, []) => {
                let n = entries.len() as u64;
                entries.clear();
                Ok((n, Vec::new()))
            }
            (op::SNAPSHOT, []) => {
                let (keys, values) = (arg & 1 != 0, arg & 2 != 0);
                let mut out = Vec::new();
                for (k, v) in entries.iter() {
                    if keys {
                        parts::push(&mut out, k);
                    }
                    if values {
                        parts::push(&mut out, v);
                    }
                }
                Ok((entries.len() as u64, out))
            }
            (op::INSERT_IF_ABSENT, [k, v]) => match entries.get(*k) {
                Some(current) => Ok((1, current.clone())),
                None => {
                    entries.insert(k.to_vec(), v.to_vec());
                    Ok((0, Vec::new()))
                }
            },
            (op::COMPARE_AND_SWAP, [k, rest @ ..]) => {
                let (has_current, has_new) = (arg & 1 != 0, arg & 2 != 0);
                let (current, new) = match (has_current, has_new, rest) {
                    (true, true, [c, n]) => (Some(*c), Some(*n)),
                    (true, false, [c]) => (Some(*c), None),
                    (false, true, [n]) => (None, Some(*n)),
                    (false, false, []) => (None, None),
                    _ => return Err(qstatus::BAD_REQUEST),
                };
                let actual = entries.get(*k).map(Vec::as_slice);
                if actual != current {
                    return Ok(match actual {
                        Some(a) => (2, a.to_vec()),
                        None => (0, Vec::new()),
                    });
                }
                match new {
                    Some(n) => entries.insert(k.to_vec(), n.to_vec()),
                    None => entries.remove(*k),
                };
                Ok((1, Vec::new()))
            }
            (op::FETCH_ADD, [k, delta]) => {
                let current = entries.get(*k).map(Vec::as_slice);
                let (previous, sum) = super::integer::add(arg, current, delta)?;
                entries.insert(k.to_vec(), sum);
                Ok((0, previous))
            }
            _ => Err(qstatus::BAD_REQUEST),
        }
    }
}

/// Writes one reply; one that is too large for the link (a snapshot, or
/// a value inserted over a link with a larger limit) becomes `TOO_LARGE`
/// with `value` = its length, so the requester is answered either way.
fn reply(link: &Arc<Link>, req: u64, code: u8, value: u64, payload: &[u8], dirty: &mut Dirty) {
    if let Err(IpcError::FrameTooLarge { .. }) = held::reply(link, req, code, value, payload, dirty)
    {
        let _ = held::reply(
            link,
            req,
            status::TOO_LARGE,
            payload.len() as u64,
            &[],
            dirty,
        );
    }
}

/// Serves one `Message::Hub` for a map; false if `id` names none held here.
pub(crate) fn serve(
    link: &Arc<Link>,
    req: u64,
    code: u8,
    id: u64,
    arg: u64,
    payload: &[u8],
    dirty: &mut Dirty,
) -> bool {
    MAPS.serve(link, code, id, payload, |held| {
        match held.exec(code, arg, payload) {
            Ok((value, out)) => reply(link, req, qstatus::OK, value, &out, dirty),
            Err(code) => reply(link, req, code, 0, &[], dirty),
        }
    })
}

/// A connection ended: the handles it held let go of their maps.
pub(crate) fn disconnect(link_id: u64) {
    MAPS.disconnect(link_id);
}

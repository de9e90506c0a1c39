//! The hub side of a [`SharedMemory`](super::SharedMemory): the segment,
//! registered like a map's (`queues/held.rs`: ids and what keeps it
//! alive), and `OPEN`.

use std::sync::Arc;

use super::{NO_CHANNEL, OPEN, SEND_FAILED};
use crate::link::{Dirty, Link};
use crate::queues::held::{self, Held, Registry};
use crate::queues::wire::status as qstatus;
use crate::shm::Segment;

/// The buffers this process holds, by id (bits 30 and 31 set).
pub(super) static BUFFERS: Registry<Segment> = Registry::new(0xC000_0000);

/// One buffer held by this process: its segment.
pub(crate) type Store = Held<Segment>;

impl Store {
    pub(crate) fn new(seg: Segment) -> Arc<Store> {
        BUFFERS.insert(seg)
    }

    pub(crate) fn lookup(id: u64) -> Option<Arc<Store>> {
        BUFFERS.lookup(id)
    }
}

fn reply(link: &Arc<Link>, req: u64, code: u8, value: u64, dirty: &mut Dirty) {
    // A link that refuses a frame this small is closing: its end is seen.
    let _ = held::reply(link, req, code, value, &[], dirty);
}

/// Serves one `Message::Hub` for a buffer; false if `id` names none held
/// here.
pub(crate) fn serve(
    link: &Arc<Link>,
    req: u64,
    code: u8,
    id: u64,
    payload: &[u8],
    dirty: &mut Dirty,
) -> bool {
    BUFFERS.serve(link, code, id, payload, |seg| match code {
        OPEN => {
            // The descriptor goes first, so it is there (or on its way in
            // the kernel) when the requester reads the reply.
            let sent = link.shm().map(|shm| {
                seg.try_clone_handle()
                    .map_err(std::io::Error::other)
                    .and_then(|h| shm.send_object(id, &h))
            });
            match sent {
                Some(Ok(())) => reply(link, req, qstatus::OK, seg.len() as u64, dirty),
                Some(Err(_)) => reply(link, req, SEND_FAILED, 0, dirty),
                None => reply(link, req, NO_CHANNEL, 0, dirty),
            }
        }
        _ => reply(link, req, qstatus::BAD_REQUEST, 0, dirty),
    })
}

/// A connection ended: the handles it held let go of their buffers.
pub(crate) fn disconnect(link_id: u64) {
    BUFFERS.disconnect(link_id);
}

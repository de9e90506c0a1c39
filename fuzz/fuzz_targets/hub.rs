//! The hub's request handling: `hub::serve` with arbitrary
//! `Message::Hub` requests from two connections (which may drop and come
//! back, as a dying worker's does), interleaved with the hub process's own
//! operations on the same queues, must never panic or block.
//!
//! The queues live in this process (an unbounded and a bounded
//! `JoinableQueue`, made anew for each input); requests may also name a
//! queue that does not exist. The links write to `io::sink()`.
#![no_main]

use std::io;
use std::sync::{Arc, LazyLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use procpool_ipc::codec;
use procpool_ipc::frame::DEFAULT_MAX_FRAME_LEN;
use procpool_ipc::hub;
use procpool_ipc::link::{Blocking, Dirty, Link};
use procpool_ipc::proto::Message;
use procpool_ipc::queue::JoinableQueue;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Which {
    Unbounded,
    Bounded,
    /// A queue id nobody holds.
    Gone(u64),
}

#[derive(Arbitrary, Debug)]
enum Action {
    /// A request from a worker, as its reader thread hands it to the hub.
    Hub {
        second_link: bool,
        req: u64,
        /// Taken modulo 12: the ten operations and two unknown codes.
        op: u8,
        queue: Which,
        arg: u64,
        payload: Vec<u8>,
    },
    /// A worker's connection ends (its items go back) and a new one takes
    /// its place.
    Reconnect {
        second_link: bool,
    },
    /// The hub process's own operations, never waiting.
    TryPut {
        bounded: bool,
        item: Vec<u8>,
    },
    TryGet {
        bounded: bool,
    },
    TaskDone {
        bounded: bool,
    },
    Close {
        bounded: bool,
    },
    Len {
        bounded: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u8,
    actions: Vec<Action>,
}

/// Connections, made once per process (each has a writer thread): an
/// input's connections are disconnected from the hub at its end, and its
/// queues dropped, so the next input finds them as good as new.
static LINKS: LazyLock<Vec<Arc<Link>>> = LazyLock::new(|| {
    (0..8)
        .map(|_| Link::new(Blocking(io::sink()), DEFAULT_MAX_FRAME_LEN).expect("writer thread"))
        .collect()
});

fn id(q: &JoinableQueue<Vec<u8>>) -> u64 {
    let mut wire = Vec::new();
    codec::encode_into(q, &mut wire).expect("a queue handle encodes");
    // Received here too: that takes the pin the encoding made, so the
    // queue still goes with the input's handles.
    let (received, _) = codec::decode::<JoinableQueue<Vec<u8>>>(&wire).expect("a handle decodes");
    drop(received);
    // The wire form starts with the hub's id and the queue's.
    let ((_hub, id), _) = codec::decode::<(u64, u64)>(&wire).expect("hub and queue ids");
    id
}

fuzz_target!(|input: Input| {
    let unbounded = JoinableQueue::<Vec<u8>>::new();
    let bounded = JoinableQueue::<Vec<u8>>::bounded(usize::from(input.capacity % 8));
    let ids = [id(&unbounded), id(&bounded)];
    // The two live connections, as indices into LINKS.
    let mut links = [0, 1];
    let mut next = 2;
    let queue = |b: bool| if b { &bounded } else { &unbounded };
    for action in input.actions {
        match action {
            Action::Hub {
                second_link,
                req,
                op,
                queue,
                arg,
                payload,
            } => {
                let queue = match queue {
                    Which::Unbounded => ids[0],
                    Which::Bounded => ids[1],
                    Which::Gone(id) if ids.contains(&id) => continue,
                    Which::Gone(id) => id,
                };
                // Every op but `PIN` (12): a pin nobody takes keeps its
                // queue for the life of the process, by design, so pins
                // would pile up across inputs. `HOLD`s go with their link.
                let op = op % 15;
                if op == 12 {
                    continue;
                }
                let msg = Message::Hub {
                    req,
                    op,
                    queue,
                    arg,
                    payload: &payload,
                };
                let mut dirty = Dirty::default();
                hub::serve(&LINKS[links[usize::from(second_link)]], &msg, &mut dirty);
                dirty.flush();
            }
            Action::Reconnect { second_link } => {
                // A disconnected link's id is as good as a new one's.
                let slot = &mut links[usize::from(second_link)];
                hub::disconnect(LINKS[*slot].id(), None);
                *slot = next;
                next = (next + 1) % LINKS.len();
                if links.contains(&next) {
                    next = (next + 1) % LINKS.len();
                }
            }
            Action::TryPut { bounded, item } => {
                let _ = queue(bounded).try_put(item);
            }
            Action::TryGet { bounded } => {
                let _ = queue(bounded).try_get();
            }
            Action::TaskDone { bounded } => {
                let _ = queue(bounded).task_done();
            }
            Action::Close { bounded } => {
                let _ = queue(bounded).close();
            }
            Action::Len { bounded } => {
                let q = queue(bounded);
                let _ = (q.len(), q.unfinished());
            }
        }
    }
    for link in LINKS.iter() {
        hub::disconnect(link.id(), None);
    }
});

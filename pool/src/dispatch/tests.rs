//! Dispatch without workers: lanes write into in-memory buffers the tests
//! decode, and answers are played by calling `complete`.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::Receiver;
use procpool_ipc::frame::{DEFAULT_MAX_FRAME_LEN, DEFAULT_MAX_PAYLOAD_LEN, FrameReader};
use procpool_ipc::link::Blocking;
use procpool_ipc::proto::RUN_OVERHEAD;
use procpool_ipc::sync::lock;

use super::*;
use crate::work::{Job, Outcome};

/// How long a test waits for a link's writer thread to hand over its bytes.
const DRAIN: Duration = Duration::from_secs(10);

fn config(workers: usize, prefetch: Option<usize>, limit: Option<u64>) -> Config {
    Config {
        workers,
        program: PathBuf::from("no-such-worker"),
        args: Vec::new(),
        envs: Vec::new(),
        chunk_size: None,
        window: 64,
        prefetch,
        max_payload_len: DEFAULT_MAX_PAYLOAD_LEN,
        start_timeout: Duration::from_secs(5),
        grace_period: Duration::from_secs(5),
        task_timeout: None,
        retries: 0,
        max_tasks_per_worker: limit,
        initializer: None,
        replace_workers: true,
        listen: None,
        advertise: None,
        heartbeat_timeout: Duration::from_secs(5),
        local_heartbeat: false,
    }
}

/// A writer into a buffer the test reads back.
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer whose peer is gone.
struct Gone;

impl Write for Gone {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a worker would have read.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Run {
        id: u64,
        task: u32,
        count: u32,
        payload: Vec<u8>,
    },
    Shutdown,
}

/// A worker's end of a lane: its link, and the bytes written to it.
struct Peer {
    link: Arc<Link>,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Peer {
    fn new(max: u64) -> Self {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let link = Link::new(Blocking(Capture(Arc::clone(&bytes))), max).expect("writer thread");
        Self { link, bytes }
    }

    /// The frames written since the last call, once the writer thread has
    /// handed them over.
    fn frames(&self) -> Vec<Frame> {
        let deadline = Instant::now() + DRAIN;
        assert!(
            self.link.drain(Some(deadline)).expect("drain"),
            "not drained"
        );
        let bytes = std::mem::take(&mut *lock(&self.bytes));
        let mut reader = FrameReader::new(&bytes[..], DEFAULT_MAX_FRAME_LEN);
        let mut frame = Vec::new();
        let mut frames = Vec::new();
        while reader.read_frame(&mut frame).expect("frame") {
            frames.push(match Message::decode(&frame).expect("decode") {
                Message::Run {
                    id,
                    task,
                    count,
                    payload,
                } => Frame::Run {
                    id,
                    task,
                    count,
                    payload: payload.to_vec(),
                },
                Message::Shutdown => Frame::Shutdown,
                other => panic!("unexpected frame {other:?}"),
            });
        }
        frames
    }

    /// The payloads of the `RUN` frames written since the last call.
    fn runs(&self) -> Vec<Vec<u8>> {
        self.frames()
            .into_iter()
            .map(|f| match f {
                Frame::Run { payload, .. } => payload,
                Frame::Shutdown => panic!("unexpected shutdown"),
            })
            .collect()
    }
}

/// A link whose writes fail: its peer went away.
fn broken_link() -> Arc<Link> {
    let link = Link::new(Blocking(Gone), DEFAULT_MAX_FRAME_LEN).expect("writer thread");
    let _ = link.write(&Message::Shutdown);
    let drained = link.drain(Some(Instant::now() + DRAIN));
    assert!(drained.is_err(), "a write to a gone peer succeeded");
    link
}

fn job() -> (Arc<Job>, Receiver<Outcome>) {
    let (sink, rx) = crossbeam_channel::unbounded();
    (Arc::new(Job::new(sink)), rx)
}

/// Chunk `seq` of `job`: `count` items of task 0, its payload naming it.
fn chunk(job: &Arc<Job>, seq: u8, count: u32) -> Chunk {
    Chunk::new(Arc::clone(job), u64::from(seq), 0, count, vec![seq], |_| {
        Some(1)
    })
}

/// A dispatch whose lanes are open and write to the returned peers.
fn dispatch(config: &Config) -> (Dispatch, Vec<Peer>) {
    let mut d = Dispatch::new(config);
    let peers: Vec<Peer> = (0..config.workers)
        .map(|_| Peer::new(DEFAULT_MAX_FRAME_LEN))
        .collect();
    for (slot, peer) in peers.iter().enumerate() {
        d.lanes[slot] = Some(Lane::new(
            slot as u64,
            100 + slot as u32,
            Arc::clone(&peer.link),
        ));
    }
    (d, peers)
}

/// Queues `chunks` and pumps once; returns whether a chunk started and
/// what ended.
fn pump(d: &mut Dispatch, chunks: impl IntoIterator<Item = Chunk>) -> (bool, Ended) {
    d.pending.extend(chunks);
    let mut dirty = Dirty::default();
    let mut ended = Ended::new();
    let started = d.pump(&mut dirty, &mut ended);
    dirty.flush();
    (started, ended)
}

fn lane(d: &Dispatch, slot: usize) -> &Lane {
    d.lanes[slot].as_ref().expect("a lane")
}

fn held(d: &Dispatch, slot: usize) -> usize {
    lane(d, slot).inflight.len()
}

fn pending_seqs(d: &Dispatch) -> Vec<u64> {
    d.pending.iter().map(|c| c.first).collect()
}

/// A lane holding entries with these estimates.
fn lane_holding(estimates: &[Option<u64>]) -> Lane {
    let mut lane = Lane::new(0, 0, Peer::new(DEFAULT_MAX_FRAME_LEN).link);
    for (id, &est_ns) in (0u64..).zip(estimates) {
        lane.inflight.push_back(Inflight {
            id,
            chunk: None,
            started: None,
            est_ns,
        });
    }
    lane
}

#[test]
fn fixed_prefetch_holds_prefetch_plus_one() {
    let d = Dispatch::new(&config(1, Some(2), None));
    for held in 0..3 {
        let lane = lane_holding(&vec![None; held]);
        assert!(d.has_room(&lane, None), "holding {held}");
        assert!(d.has_room(&lane, Some(u64::MAX)), "holding {held}");
    }
    let lane = lane_holding(&[Some(1); 3]);
    assert!(
        !d.has_room(&lane, Some(1)),
        "the depth is fixed, however fast"
    );
    // prefetch 0: one chunk at a time.
    let d = Dispatch::new(&config(1, Some(0), None));
    assert!(d.has_room(&lane_holding(&[]), None));
    assert!(!d.has_room(&lane_holding(&[Some(1)]), Some(1)));
}

#[test]
fn automatic_prefetch_follows_the_queued_work() {
    let d = Dispatch::new(&config(1, None, None));
    // Fewer than three: always, even of unknown or slow work.
    for held in 0..3 {
        let lane = lane_holding(&vec![None; held]);
        assert!(d.has_room(&lane, None), "holding {held}");
        let lane = lane_holding(&vec![Some(u64::MAX); held]);
        assert!(d.has_room(&lane, Some(u64::MAX)), "holding {held}");
    }
    // From three on: while the queued work stays within 250 µs.
    let lane = lane_holding(&[Some(50_000); 3]);
    assert!(d.has_room(&lane, Some(100_000)), "exactly 250 µs");
    assert!(!d.has_room(&lane, Some(100_001)), "just over 250 µs");
    assert!(!d.has_room(&lane, None), "a chunk of unknown pace");
    let lane = lane_holding(&[Some(1), None, Some(1)]);
    assert!(!d.has_room(&lane, Some(1)), "a held chunk of unknown pace");
    let lane = lane_holding(&[Some(u64::MAX), Some(1), Some(1)]);
    assert!(!d.has_room(&lane, Some(1)), "no overflow");
    // Never 64 or more, however tiny.
    let lane = lane_holding(&[Some(1); 63]);
    assert!(d.has_room(&lane, Some(1)));
    let lane = lane_holding(&[Some(1); 64]);
    assert!(!d.has_room(&lane, Some(1)));
    let lane = lane_holding(&[Some(0); 64]);
    assert!(!d.has_room(&lane, Some(0)));
}

#[test]
fn pump_fills_the_least_loaded_open_lane_first() {
    let config = config(3, Some(3), None);
    let (mut d, peers) = dispatch(&config);
    let (job, _rx) = job();
    lane_mut(&mut d, 1).open = false;
    // The first goes to lane 0, then lane 2 (lane 1 is closed).
    let (started, ended) = pump(&mut d, [chunk(&job, 0, 1), chunk(&job, 1, 1)]);
    assert!(started && ended.is_empty());
    assert_eq!((held(&d, 0), held(&d, 1), held(&d, 2)), (1, 0, 1));
    // A tie: lane 0's turn again (after 2 comes 0); then lane 2 is the less loaded.
    pump(&mut d, [chunk(&job, 2, 1)]);
    assert_eq!((held(&d, 0), held(&d, 2)), (2, 1));
    pump(&mut d, [chunk(&job, 3, 1)]);
    assert_eq!((held(&d, 0), held(&d, 1), held(&d, 2)), (2, 0, 2));
    assert_eq!(peers[0].runs(), [vec![0], vec![2]]);
    assert!(peers[1].runs().is_empty(), "a closed lane takes nothing");
    assert_eq!(peers[2].runs(), [vec![1], vec![3]]);
    assert!(d.pending.is_empty());
}

/// Workers that answer each chunk before the next one comes are all idle
/// at every submission: they take turns, rather than the lowest slot taking
/// everything (which left every item of the Slurm `sbatch` example on the
/// first node's workers to join, and the others idle).
#[test]
fn idle_lanes_take_turns() {
    let (mut d, peers) = dispatch(&config(3, None, None));
    let (job, _rx) = job();
    for seq in 0..7 {
        pump(&mut d, [chunk(&job, seq, 1)]);
        let slot = (0..3).find(|&s| held(&d, s) == 1).expect("a lane took it");
        let id = lane(&d, slot).inflight[0].id;
        assert!(d.complete(slot, slot as u64, id, 1, 1_000).is_some());
        assert!(d.is_idle());
    }
    assert_eq!(peers[0].runs(), [vec![0], vec![3], vec![6]]);
    assert_eq!(peers[1].runs(), [vec![1], vec![4]]);
    assert_eq!(peers[2].runs(), [vec![2], vec![5]]);
}

/// Jobs that come one after another (`apply` in a loop) find every lane
/// idle: each goes back to the lane the last chunk went to, whose worker is
/// awake, rather than waking each idle worker in turn (that cost a fifth
/// more CPU per `apply`). When that lane is busy, the next one in order
/// takes the job, and a job's own chunks still take turns.
#[test]
fn a_new_job_goes_back_to_the_last_lane_while_it_is_idle() {
    let (mut d, peers) = dispatch(&config(3, None, None));
    let mut sinks = Vec::new();
    for seq in 0..4 {
        let (job, rx) = job();
        sinks.push(rx);
        pump(&mut d, [chunk(&job, seq, 1)]);
        let slot = (0..3).find(|&s| held(&d, s) == 1).expect("a lane took it");
        let id = lane(&d, slot).inflight[0].id;
        assert!(d.complete(slot, slot as u64, id, 1, 1_000).is_some());
        assert!(d.is_idle());
    }
    assert_eq!(peers[0].runs(), [vec![0], vec![1], vec![2], vec![3]]);
    // Lane 0 busy: a new job goes to lane 1; its second chunk to lane 2.
    let (busy, rx) = job();
    sinks.push(rx);
    pump(&mut d, [chunk(&busy, 4, 1)]);
    let (two, rx) = job();
    sinks.push(rx);
    pump(&mut d, [chunk(&two, 5, 1)]);
    pump(&mut d, [chunk(&two, 6, 1)]);
    assert_eq!((held(&d, 0), held(&d, 1), held(&d, 2)), (1, 1, 1));
    assert_eq!(peers[1].runs(), [vec![5]]);
    assert_eq!(peers[2].runs(), [vec![6]]);
}

/// Turns skip a lane that is closed or more loaded, and come back to it.
#[test]
fn turns_go_to_the_least_loaded_only() {
    let (mut d, peers) = dispatch(&config(4, None, None));
    let (job, _rx) = job();
    lane_mut(&mut d, 2).open = false;
    // 0, 1, (2 closed) 3; then all of 0, 1, 3 hold one: from 0 again.
    pump(&mut d, (0..4).map(|s| chunk(&job, s, 1)));
    assert_eq!(
        (held(&d, 0), held(&d, 1), held(&d, 2), held(&d, 3)),
        (2, 1, 0, 1)
    );
    // Lane 2 opens: it is the least loaded, whoever's turn it is.
    lane_mut(&mut d, 2).open = true;
    pump(&mut d, [chunk(&job, 4, 1)]);
    assert_eq!(held(&d, 2), 1);
    assert_eq!(peers[0].runs(), [vec![0], vec![3]]);
    assert_eq!(peers[1].runs(), [vec![1]]);
    assert_eq!(peers[2].runs(), [vec![4]]);
    assert_eq!(peers[3].runs(), [vec![2]]);
}

fn lane_mut(d: &mut Dispatch, slot: usize) -> &mut Lane {
    d.lanes[slot].as_mut().expect("a lane")
}

#[test]
fn pump_writes_run_frames_and_reports_a_start() {
    let (mut d, peers) = dispatch(&config(1, Some(1), None));
    let (job, _rx) = job();
    let mut c = chunk(&job, 9, 3);
    c.task = 4;
    let (started, _) = pump(&mut d, [c]);
    assert!(started, "the lane was idle: the chunk starts now");
    let (started, _) = pump(&mut d, [chunk(&job, 10, 1)]);
    assert!(!started, "queued behind the running chunk");
    assert_eq!(
        peers[0].frames(),
        [
            Frame::Run {
                id: 0,
                task: 4,
                count: 3,
                payload: vec![9]
            },
            Frame::Run {
                id: 1,
                task: 0,
                count: 1,
                payload: vec![10]
            },
        ]
    );
    let inflight = &lane(&d, 0).inflight;
    assert!(inflight[0].started.is_some(), "the head is timed");
    assert!(inflight[1].started.is_none(), "the next is not started");
    assert_eq!(lane(&d, 0).assigned, 4);
    assert!(!d.is_idle());
}

#[test]
fn pump_leaves_what_does_not_fit_queued_in_order() {
    let (mut d, peers) = dispatch(&config(1, Some(0), None));
    let (job, _rx) = job();
    let (started, ended) = pump(&mut d, (0..4).map(|s| chunk(&job, s, 1)));
    assert!(started && ended.is_empty());
    assert_eq!(pending_seqs(&d), [1, 2, 3]);
    let (started, _) = pump(&mut d, []);
    assert!(!started, "nothing moved");
    assert_eq!(pending_seqs(&d), [1, 2, 3]);
    assert_eq!(peers[0].runs(), [vec![0]]);
}

#[test]
fn no_open_lane_takes_nothing() {
    let mut d = Dispatch::new(&config(2, None, None));
    let (job, _rx) = job();
    // No lanes at all (workers not started yet).
    let (started, ended) = pump(&mut d, [chunk(&job, 0, 1)]);
    assert!(!started && ended.is_empty());
    assert_eq!(pending_seqs(&d), [0]);
    assert!(!d.is_idle());
}

#[test]
fn max_tasks_per_worker_limits_and_retires() {
    let (mut d, peers) = dispatch(&config(3, Some(8), Some(4)));
    let (job, _rx) = job();
    // Lane 2 joins later.
    lane_mut(&mut d, 2).open = false;
    // 3 tasks on lane 0.
    pump(&mut d, [chunk(&job, 0, 3)]);
    assert_eq!((lane(&d, 0).assigned, lane(&d, 0).retiring), (3, false));
    // 2 more would pass lane 0's limit: lane 1 takes them.
    pump(&mut d, [chunk(&job, 1, 2)]);
    assert_eq!(lane(&d, 1).assigned, 2);
    // 1 fits lane 0 exactly (the least loaded of 0 and 1 is 0): it retires.
    pump(&mut d, [chunk(&job, 2, 1)]);
    let l0 = lane(&d, 0);
    assert_eq!((l0.assigned, l0.retiring, l0.open), (4, true, false));
    assert!(!l0.shutdown_sent, "told to exit only once idle");
    // A chunk larger than the limit goes whole to a fresh worker.
    lane_mut(&mut d, 2).open = true;
    pump(&mut d, [chunk(&job, 3, 9)]);
    let l2 = lane(&d, 2);
    assert_eq!((l2.assigned, l2.retiring, l2.open), (9, true, false));
    // Nobody can take more now: lane 1 has 2 of 4, this needs 3.
    pump(&mut d, [chunk(&job, 4, 3)]);
    assert_eq!(pending_seqs(&d), [4]);
    assert_eq!(peers[0].runs(), [vec![0], vec![2]]);
    assert_eq!(peers[1].runs(), [vec![1]]);
    assert_eq!(peers[2].runs(), [vec![3]]);
    // Lane 2 finishes its chunk: the next pump tells it to exit.
    let id = lane(&d, 2).inflight[0].id;
    assert!(d.complete(2, 2, id, 9, 1_000).is_some());
    pump(&mut d, []);
    assert!(lane(&d, 2).shutdown_sent);
    assert_eq!(peers[2].frames(), [Frame::Shutdown]);
    assert!(peers[0].frames().is_empty(), "lane 0 is still busy");
    // Another pump does not repeat it.
    pump(&mut d, []);
    assert!(peers[2].frames().is_empty());
}

#[test]
fn cancelled_chunks_end_closed_when_their_turn_comes() {
    let (mut d, peers) = dispatch(&config(1, Some(4), None));
    let (gone, _rx) = job();
    let (live, _rx2) = job();
    gone.cancelled.store(true, Ordering::Relaxed);
    let (_, ended) = pump(
        &mut d,
        [chunk(&gone, 0, 1), chunk(&live, 1, 1), chunk(&gone, 2, 1)],
    );
    let ended: Vec<_> = ended.iter().map(|(c, e)| (c.first, e)).collect();
    assert_eq!(ended.len(), 2);
    assert!(
        ended.iter().all(|(_, e)| matches!(e, Error::Closed)),
        "{ended:?}"
    );
    assert_eq!(ended.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(peers[0].runs(), [vec![1]]);
}

#[test]
fn a_chunk_too_large_for_a_frame_ends_and_the_lane_goes_on() {
    let mut d = Dispatch::new(&config(1, Some(4), None));
    let peer = Peer::new(64);
    d.lanes[0] = Some(Lane::new(0, 1, Arc::clone(&peer.link)));
    let (job, _rx) = job();
    let mut big = chunk(&job, 0, 2);
    big.payload = vec![0; 64 - RUN_OVERHEAD + 1].into();
    let mut fits = chunk(&job, 1, 1);
    fits.payload = vec![1; 64 - RUN_OVERHEAD].into();
    let (started, ended) = pump(&mut d, [big, fits]);
    assert!(started);
    assert_eq!(ended.len(), 1);
    let (c, e) = &ended[0];
    assert_eq!(c.first, 0);
    assert!(
        matches!(e, Error::Encode(e) if matches!(**e, IpcError::FrameTooLarge { len: 65, max: 64 })),
        "{e:?}"
    );
    let l = lane(&d, 0);
    assert!(l.open, "the link is fine");
    assert_eq!(l.assigned, 1, "the refused chunk is not counted");
    assert_eq!(l.inflight.len(), 1);
    assert_eq!(peer.runs(), [vec![1; 64 - RUN_OVERHEAD]]);
}

#[test]
fn a_broken_link_closes_its_lane_and_requeues() {
    let (mut d, peers) = dispatch(&config(2, Some(4), None));
    d.lanes[0] = Some(Lane::new(0, 1, broken_link()));
    let (job, _rx) = job();
    // Lane 0 is tried first, fails, closes; the chunk goes to lane 1.
    let (started, ended) = pump(&mut d, [chunk(&job, 0, 1), chunk(&job, 1, 1)]);
    assert!(started && ended.is_empty());
    let l0 = lane(&d, 0);
    assert!(!l0.open);
    assert!(l0.inflight.is_empty(), "nothing left on the broken lane");
    assert_eq!(l0.assigned, 0);
    assert_eq!(peers[1].runs(), [vec![0], vec![1]]);

    // With no other lane, the chunk stays at the front of the queue.
    let (mut d, _peers) = dispatch(&config(1, Some(4), None));
    d.lanes[0] = Some(Lane::new(0, 1, broken_link()));
    let (started, ended) = pump(&mut d, [chunk(&job, 0, 1), chunk(&job, 1, 1)]);
    assert!(!started && ended.is_empty());
    assert!(!lane(&d, 0).open);
    assert_eq!(pending_seqs(&d), [0, 1]);
}

#[test]
fn complete_takes_only_the_head_and_starts_the_next() {
    let (mut d, _peers) = dispatch(&config(2, Some(4), None));
    let (job, _rx) = job();
    pump(&mut d, (0..3).map(|s| chunk(&job, s, 1)));
    // Lanes 0 and 1 share them: 0 and 2 on lane 0, 1 on lane 1.
    let ids: Vec<u64> = lane(&d, 0).inflight.iter().map(|i| i.id).collect();
    assert_eq!(ids.len(), 2);
    assert!(d.complete(0, 0, ids[1], 1, 1).is_none(), "not the head");
    assert!(
        d.complete(0, 1, ids[0], 1, 1).is_none(),
        "another worker's key"
    );
    assert!(
        d.complete(1, 1, ids[0], 1, 1).is_none(),
        "another lane's chunk"
    );
    assert!(d.complete(9, 0, ids[0], 1, 1).is_none(), "no such slot");
    assert_eq!(held(&d, 0), 2, "nothing taken off");
    assert!(lane(&d, 0).inflight[1].started.is_none());

    let (done, late) = d.complete(0, 0, ids[0], 1, 1).expect("the head");
    assert!(late.is_none(), "no timeout: never late");
    assert_eq!(done.id, ids[0]);
    assert_eq!(done.chunk.map(|c| c.first), Some(0));
    let l0 = lane(&d, 0);
    assert_eq!(l0.inflight.len(), 1);
    assert_eq!(l0.inflight[0].id, ids[1]);
    assert!(l0.inflight[0].started.is_some(), "the next one runs now");
    assert!(d.complete(0, 0, ids[0], 1, 1).is_none(), "answered twice");
}

/// An answer that comes back after its chunk's timeout, by the worker's
/// own clock, is a `Timeout` when it is of one item: the supervisor was
/// late to kill the worker, and the overrun must not pass for a success.
/// Failed before: the late result was handed out as the task's.
#[test]
fn a_late_answer_past_the_timeout_is_a_timeout() {
    let mut cfg = config(1, Some(8), None);
    cfg.task_timeout = Some(Duration::from_millis(2));
    let (mut d, _peers) = dispatch(&cfg);
    let (job, _rx) = job();
    pump(
        &mut d,
        [chunk(&job, 0, 1), chunk(&job, 1, 3), chunk(&job, 2, 3)],
    );
    let ids: Vec<u64> = lane(&d, 0).inflight.iter().map(|i| i.id).collect();
    // One item, 2.5 ms against 2 ms: a timeout, which names the worker.
    let (done, late) = d.complete(0, 0, ids[0], 1, 2_500_000).expect("the head");
    assert_eq!(done.id, ids[0]);
    assert!(
        matches!(
            late,
            Some(Error::Timeout {
                worker_id: 0,
                pid: 100,
                killed: false,
                ..
            })
        ),
        "{late:?}"
    );
    // Three items, 5 ms against 3 × 2 ms: in time.
    let (_, late) = d.complete(0, 0, ids[1], 3, 5_000_000).expect("the head");
    assert!(late.is_none(), "{late:?}");
    // Over 6 ms, but three items answered together: which one overran
    // is unknown, and their results stand.
    let (_, late) = d.complete(0, 0, ids[2], 3, 7_000_000).expect("the head");
    assert!(late.is_none(), "{late:?}");
}

#[test]
fn the_pace_is_a_moving_average_per_task() {
    let (mut d, _peers) = dispatch(&config(1, Some(64), None));
    let (job, _rx) = job();
    let of_task = |task, count| {
        let mut c = chunk(&job, 0, count);
        c.task = task;
        c
    };
    let answer = |d: &mut Dispatch, elapsed_ns| {
        let head = &lane(d, 0).inflight[0];
        let (id, count) = (head.id, head.chunk.as_ref().map_or(1, |c| c.count));
        d.complete(0, 0, id, count, elapsed_ns).expect("the head").0
    };
    assert_eq!(d.estimate(&of_task(0, 1)), None, "unknown at first");
    pump(&mut d, [of_task(0, 4)]);
    assert_eq!(lane(&d, 0).inflight[0].est_ns, None);
    answer(&mut d, 4_000);
    assert_eq!(d.estimate(&of_task(0, 2)), Some(2_000), "1 µs per item");
    assert_eq!(d.estimate(&of_task(1, 2)), None, "per task");
    // New chunks carry their estimate.
    pump(&mut d, [of_task(0, 3)]);
    assert_eq!(lane(&d, 0).inflight[0].est_ns, Some(3_000));
    // 5 µs per item now: (1000 * 3 + 5000) / 4.
    answer(&mut d, 15_000);
    assert_eq!(d.estimate(&of_task(0, 1)), Some(2_000));
    // Nothing measured still counts as 1 ns per item.
    pump(&mut d, [of_task(1, 10)]);
    answer(&mut d, 0);
    assert_eq!(d.estimate(&of_task(1, 1)), Some(1));
    assert_eq!(d.estimate(&of_task(0, 1)), Some(2_000), "task 0 untouched");
    // An estimate never overflows.
    assert_eq!(
        d.estimate(&of_task(0, u32::MAX)),
        Some(2_000 * u64::from(u32::MAX))
    );
}

#[test]
fn the_initializer_runs_first_and_is_not_counted() {
    let (mut d, peers) = dispatch(&config(1, Some(4), Some(1)));
    let mut dirty = Dirty::default();
    let head = d.send(0, 7, None, &mut dirty).expect("sent");
    assert!(head);
    let (job, _rx) = job();
    pump(&mut d, [chunk(&job, 0, 1)]);
    assert_eq!(
        peers[0].frames(),
        [
            Frame::Run {
                id: 0,
                task: 7,
                count: 1,
                payload: vec![]
            },
            Frame::Run {
                id: 1,
                task: 0,
                count: 1,
                payload: vec![0]
            },
        ]
    );
    assert_eq!(lane(&d, 0).assigned, 1, "only the chunk counts");
    // Its answer teaches no pace.
    let (init, _) = d.complete(0, 0, 0, 1, 1_000).expect("the initializer");
    assert!(init.chunk.is_none());
    assert!(d.item_ns.is_empty());
    // No lane: the chunk comes back.
    d.lanes[0] = None;
    let back = d.send(0, 0, Some(chunk(&job, 5, 1)), &mut dirty);
    assert!(matches!(back, Err((Some(c), IpcError::Malformed(_))) if c.first == 5));
}

#[test]
fn shutdown_is_sent_once_and_closes_the_lane() {
    let (mut d, peers) = dispatch(&config(1, Some(4), None));
    let mut dirty = Dirty::default();
    let l = lane_mut(&mut d, 0);
    l.shutdown(&mut dirty);
    l.shutdown(&mut dirty);
    assert!(l.shutdown_sent && !l.open);
    dirty.flush();
    assert_eq!(peers[0].frames(), [Frame::Shutdown]);
    let (job, _rx) = job();
    pump(&mut d, [chunk(&job, 0, 1)]);
    assert_eq!(pending_seqs(&d), [0], "a lane told to exit takes nothing");
}

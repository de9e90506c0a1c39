//! Pipes over shared-memory lanes (issue 11): ends in two children (the
//! master not an end), large messages in fragments, a sender blocked on a
//! full lane whose receiver dies, remote workers (which use the hub) as
//! receiver and as sender beside lane users, and a crash run where
//! senders and receivers are killed while streaming.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a test program reports progress

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::remote::Remote;
use common::*;
use procpool::{Error, GetError, Pipe, PipeReceiver, PipeSender, Pool, Process, Queue, Task};
use serde_bytes::ByteBuf;

const LIMIT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(20);
const KEY: &str = "a long random key shared out of band";
/// `"<addr> <key>"`: run as a remote worker joining that pool.
const REMOTE_ENV: &str = "PROCPOOL_TEST_PIPE_LANE_REMOTE";

/// A message: (sender, sequence number, payload).
type Msg = (u32, u32, ByteBuf);
/// What a receiving task reports: `(sender, seq)` of each message, all
/// intact, whether it used the lane.
type Received = (Vec<(u32, u32)>, bool, bool);

/// The payload of message `seq`: 600 KiB (more than a lane record: it
/// goes in fragments) every `big`-th message, else 100 bytes; each byte
/// derived from `seq`.
fn payload(seq: u32, big: u32) -> ByteBuf {
    let len = if big != 0 && seq % big == 0 {
        600 << 10
    } else {
        100
    };
    ByteBuf::from(vec![(seq % 251) as u8; len])
}

fn intact(seq: u32, p: &ByteBuf) -> bool {
    p.iter().all(|&b| b == (seq % 251) as u8)
}

/// Sends messages `0..n` as sender `id` (`big` as in [`payload`]), then
/// drops its end (closing it when `close`); returns whether it used the lane.
const SEND_N: Task<(PipeSender<Msg>, u32, u32, u32, bool), bool> = Task::new("lane_send_n");
/// The same with the end decoded from bytes (one of several copies).
const SEND_N_DECODED: Task<(ByteBuf, u32, u32, u32), bool> = Task::new("lane_send_n_decoded");
/// Receives until the pipe ends: `(messages as (sender, seq), all intact,
/// used the lane)`.
const RECV_ALL: Task<PipeReceiver<Msg>, Received> = Task::new("lane_recv_all");
/// Receives one message, then aborts.
const RECV_ONE_THEN_ABORT: Task<PipeReceiver<Msg>, ()> = Task::new("lane_recv_one_then_abort");
/// Crash run: sends `from..` for ever, putting each sequence number whose
/// `send` returned on the queue.
const STREAM: Task<(ByteBuf, Queue<u32>, u32), ()> = Task::new("lane_stream");
/// Crash run: receives for ever, putting each sequence number received on
/// the queue.
const DRAIN: Task<(ByteBuf, Queue<u32>), ()> = Task::new("lane_drain");

fn registry() -> procpool::Registry {
    common::registry()
        .task(SEND_N, |(tx, id, n, big, close)| {
            send_n(&tx, id, n, big);
            if close {
                tx.close().expect("close");
            }
            tx.uses_lane()
        })
        .task(SEND_N_DECODED, |(bytes, id, n, big)| {
            let (tx, _): (PipeSender<Msg>, _) =
                procpool_ipc::codec::decode(&bytes).expect("decode the end");
            send_n(&tx, id, n, big);
            tx.uses_lane()
        })
        .task(RECV_ALL, |rx| {
            let mut got = Vec::new();
            let mut ok = true;
            loop {
                match rx.recv_timeout(WAIT) {
                    Ok((id, seq, p)) => {
                        ok &= intact(seq, &p);
                        got.push((id, seq));
                    }
                    Err(GetError::Closed) => break,
                    Err(e) => panic!("recv: {e}"),
                }
            }
            (got, ok, rx.uses_lane())
        })
        .task(RECV_ONE_THEN_ABORT, |rx| {
            rx.recv_timeout(WAIT).expect("one message");
            std::process::abort();
        })
        .task(STREAM, |(bytes, acks, from)| {
            let (tx, _): (PipeSender<Msg>, _) = procpool_ipc::codec::decode(&bytes).expect("end");
            for seq in from.. {
                tx.send((0, seq, payload(seq, 97))).expect("send");
                acks.put(seq).expect("ack");
            }
        })
        .task(DRAIN, |(bytes, got)| {
            let (rx, _): (PipeReceiver<Msg>, _) = procpool_ipc::codec::decode(&bytes).expect("end");
            loop {
                match rx.recv() {
                    Ok((_, seq, p)) => {
                        assert!(intact(seq, &p), "message {seq} damaged");
                        got.put(seq).expect("forward");
                    }
                    Err(e) => panic!("recv: {e}"),
                }
            }
        })
}

fn send_n(tx: &PipeSender<Msg>, id: u32, n: u32, big: u32) {
    for seq in 0..n {
        tx.send((id, seq, payload(seq, big))).expect("send");
    }
}

fn main() {
    common::remote::serve_if_asked(REMOTE_ENV, registry);
    procpool::init(registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        a_pipe_between_two_children_uses_the_lane,
        the_master_receives_through_the_lane_with_fragments,
        a_sender_blocked_on_a_full_lane_fails_when_its_receiver_dies,
        awaited_receives_and_wait_see_a_childs_lane_messages,
        a_remote_receiver_gets_a_local_senders_messages,
        a_remote_receiver_gets_messages_sent_before_the_pipe_closed,
        a_lane_receiver_sees_a_remote_senders_messages_too,
        killed_senders_and_receivers_lose_nothing_promised,
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// Every `(sender, seq)` of `want` senders × `n`, each sender's in order.
fn check_all(got: &[(u32, u32)], senders: &[u32], n: u32) -> anyhow::Result<()> {
    let mut per: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &(id, seq) in got {
        per.entry(id).or_default().push(seq);
    }
    for id in senders {
        let seqs = per.remove(id).unwrap_or_default();
        ensure!(
            seqs == (0..n).collect::<Vec<_>>(),
            "sender {id}: {} messages, not 0..{n} in order",
            seqs.len()
        );
    }
    ensure!(per.is_empty(), "messages from unknown senders: {per:?}");
    Ok(())
}

fn a_pipe_between_two_children_uses_the_lane() -> anyhow::Result<()> {
    let (rx, tx) = Pipe::one_way::<Msg>();
    let receiver = Process::spawn(RECV_ALL, rx)?.watched();
    let sender = Process::spawn(SEND_N, (tx, 1, 3000, 1000, true))?.watched();
    ensure!(sender.join()?, "the sending child did not use the lane");
    let (got, ok, lane) = receiver.join()?;
    ensure!(lane, "the receiving child did not use the lane");
    ensure!(ok, "a message arrived damaged");
    check_all(&got, &[1], 3000)
}

fn the_master_receives_through_the_lane_with_fragments() -> anyhow::Result<()> {
    let (rx, tx) = Pipe::one_way::<Msg>();
    ensure!(rx.uses_lane(), "the hub process has no lane");
    // Dropped without close: the direction ends when the child's end goes.
    let sender = Process::spawn(SEND_N, (tx, 1, 200, 10, false))?.watched();
    let mut got = Vec::new();
    loop {
        match rx.recv_timeout(WAIT) {
            Ok((id, seq, p)) => {
                ensure!(intact(seq, &p), "message {seq} damaged");
                got.push((id, seq));
            }
            Err(GetError::Closed) => break,
            Err(e) => bail!("recv: {e}"),
        }
    }
    ensure!(sender.join()?);
    check_all(&got, &[1], 200)
}

fn a_sender_blocked_on_a_full_lane_fails_when_its_receiver_dies() -> anyhow::Result<()> {
    let (rx, tx) = Pipe::one_way::<Msg>();
    let receiver = Process::spawn(RECV_ONE_THEN_ABORT, rx)?.watched();
    // 64 KiB messages: the 1 MiB lane is full after about 16; the receiver
    // takes one and dies, and the blocked send must then fail.
    let ((sent, error), _) = within("send into a full lane", LIMIT / 2, move || {
        for seq in 0..1000 {
            if let Err(e) = tx.send((0, seq, ByteBuf::from(vec![0; 64 << 10]))) {
                return (seq, format!("{e:?}"));
            }
        }
        (1000, String::new())
    })?;
    ensure!(sent < 1000, "every send returned: nothing blocked");
    ensure!(
        error.contains("ReceiversGone"),
        "the send failed with {error}, not ReceiversGone"
    );
    ensure!(matches!(receiver.join(), Err(Error::WorkerDied { .. })));
    Ok(())
}

/// `recv_async` on one thread of a runtime, then `procpool::wait`, on a
/// lane whose sender is a child: each is woken by the lane (its watcher
/// thread), and sees the end.
fn awaited_receives_and_wait_see_a_childs_lane_messages() -> anyhow::Result<()> {
    let (rx, tx) = Pipe::one_way::<Msg>();
    let (rx2, tx2) = Pipe::one_way::<Msg>();
    let sender = Process::spawn(SEND_N, (tx, 1, 300, 100, true))?.watched();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let got = rt.block_on(async {
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, rx.recv_async()).await {
                Ok(Ok((id, seq, p))) => {
                    ensure!(intact(seq, &p), "message {seq} damaged");
                    got.push((id, seq));
                }
                Ok(Err(GetError::Closed)) => return Ok(got),
                Ok(Err(e)) => bail!("recv_async: {e}"),
                Err(_) => bail!("recv_async blocked for {WAIT:?}"),
            }
        }
    })?;
    ensure!(sender.join()?);
    check_all(&got, &[1], 300)?;
    // `wait` on a lane receiver: not ready, then ready once a child sent.
    ensure!(procpool::wait(&[&rx2], Some(Duration::from_millis(10)))?.is_empty());
    let sender = Process::spawn(SEND_N, (tx2, 1, 1, 0, false))?.watched();
    ensure!(
        procpool::wait(&[&rx2], Some(WAIT))? == [0],
        "wait missed the message"
    );
    ensure!(rx2.try_recv()?.1 == 0);
    ensure!(sender.join()?);
    ensure!(matches!(rx2.recv_timeout(WAIT), Err(GetError::Closed)));
    Ok(())
}

fn listening_pool() -> anyhow::Result<(Pool, Remote)> {
    let pool = Pool::builder()
        .workers(0)
        .listen("127.0.0.1:0".parse()?, KEY)
        .build()?;
    let addr = pool.listen_addr().context("the pool listens")?;
    let remote = Remote::start(REMOTE_ENV, addr, KEY)?;
    ensure!(
        pool.wait_for_workers(1, Duration::from_secs(30)),
        "the remote worker did not join"
    );
    Ok((pool, remote))
}

fn a_remote_receiver_gets_a_local_senders_messages() -> anyhow::Result<()> {
    let (pool, _remote) = listening_pool()?;
    let (rx, tx) = Pipe::one_way::<Msg>();
    let receiving = pool.submit(RECV_ALL, rx)?;
    // The master sends through the lane; a hub thread pumps the ring into
    // the hub queue for the remote end.
    ensure!(tx.uses_lane());
    send_n(&tx, 1, 500, 100);
    tx.close()?;
    let (got, ok, lane) = receiving.wait()?;
    ensure!(!lane, "a remote worker mapped the lane");
    ensure!(ok, "a message arrived damaged");
    check_all(&got, &[1], 500)
}

/// The ring holds messages and the direction has ended before the hub
/// pumps for a remote receiver: the pump must put them into the closed
/// hub queue (a plain put was refused, and the remote saw `Closed` at once).
fn a_remote_receiver_gets_messages_sent_before_the_pipe_closed() -> anyhow::Result<()> {
    let (pool, _remote) = listening_pool()?;
    let (rx, tx) = Pipe::one_way::<Msg>();
    ensure!(tx.uses_lane());
    send_n(&tx, 1, 10, 100);
    drop(tx);
    let (got, ok, lane) = pool.submit(RECV_ALL, rx)?.wait()?;
    ensure!(!lane, "a remote worker mapped the lane");
    ensure!(ok, "a message arrived damaged");
    check_all(&got, &[1], 10)
}

fn a_lane_receiver_sees_a_remote_senders_messages_too() -> anyhow::Result<()> {
    let (pool, _remote) = listening_pool()?;
    let (rx, tx) = Pipe::one_way::<Msg>();
    // Two copies of the sending end: one to the remote worker (hub path),
    // one to a local child (lane); the direction ends when both are gone.
    let mut bytes = [Vec::new(), Vec::new()];
    for b in &mut bytes {
        procpool_ipc::codec::encode_into(&tx, b)?;
    }
    drop(tx);
    let [remote_end, local_end] = bytes.map(ByteBuf::from);
    let remote_sender = pool.submit(SEND_N_DECODED, (remote_end, 2, 300, 0))?;
    let local_sender = Process::spawn(SEND_N_DECODED, (local_end, 1, 300, 50))?.watched();
    let mut got = Vec::new();
    loop {
        match rx.recv_timeout(WAIT) {
            Ok((id, seq, p)) => {
                ensure!(intact(seq, &p), "message {seq} damaged");
                got.push((id, seq));
            }
            Err(GetError::Closed) => break,
            Err(e) => bail!("recv: {e}"),
        }
    }
    ensure!(!remote_sender.wait()?, "the remote worker used the lane");
    ensure!(local_sender.join()?, "the local child did not use the lane");
    check_all(&got, &[1, 2], 300)
}

/// Senders and receivers (children) are killed with SIGKILL at random
/// moments while streaming numbered messages through one pipe, and
/// replaced. Every message whose `send` returned (acknowledged on a
/// queue) is received at most once, and exactly once unless a receiver
/// died while taking it (at most one per receiver death); nothing hangs.
fn killed_senders_and_receivers_lose_nothing_promised() -> anyhow::Result<()> {
    let (rx, tx) = Pipe::one_way::<Msg>();
    let (mut tx_bytes, mut rx_bytes) = (Vec::new(), Vec::new());
    procpool_ipc::codec::encode_into(&tx, &mut tx_bytes)?;
    procpool_ipc::codec::encode_into(&rx, &mut rx_bytes)?;
    // The master keeps both ends (so the direction lives across deaths)
    // but uses neither.
    let acks = Queue::<u32>::new();
    let got = Queue::<u32>::new();
    let run = Duration::from_secs(12);
    let start = Instant::now();
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15_u64);
    let spawn_sender = |from: u32| {
        Process::spawn(
            STREAM,
            (ByteBuf::from(tx_bytes.clone()), acks.clone(), from),
        )
        .map(Watched::watched)
    };
    let spawn_receiver = || {
        Process::spawn(DRAIN, (ByteBuf::from(rx_bytes.clone()), got.clone())).map(Watched::watched)
    };
    let mut sender = spawn_sender(0)?;
    let mut receiver = spawn_receiver()?;
    let (mut sender_deaths, mut receiver_deaths) = (0u32, 0u32);
    let mut acked = HashSet::new();
    let mut received = Vec::new();
    let mut top = 0u32;
    while start.elapsed() < run {
        std::thread::sleep(Duration::from_millis(50 + next() % 250));
        while let Ok(seq) = acks.try_get() {
            top = top.max(seq + 1);
            acked.insert(seq);
        }
        if next() % 2 == 0 {
            sender.kill();
            let _ = sender.join();
            sender_deaths += 1;
            while let Ok(seq) = acks.try_get() {
                top = top.max(seq + 1);
                acked.insert(seq);
            }
            // Numbers from past anything acknowledged: a message sent and
            // not acknowledged may still arrive, under its own number.
            sender = spawn_sender(top + 1_000_000 * sender_deaths)?;
        } else {
            receiver.kill();
            let _ = receiver.join();
            receiver_deaths += 1;
            receiver = spawn_receiver()?;
        }
    }
    sender.kill();
    let _ = sender.join();
    while let Ok(seq) = acks.try_get() {
        acked.insert(seq);
    }
    // Let the last receiver drain what was promised (or time out waiting
    // for the rest), then stop it.
    let mut missing: HashSet<u32> = acked.clone();
    while !missing.is_empty() {
        match got.get_timeout(Duration::from_secs(5)) {
            Ok(seq) => {
                missing.remove(&seq);
                received.push(seq);
            }
            Err(_) => break,
        }
    }
    receiver.kill();
    let _ = receiver.join();
    while let Ok(seq) = got.try_get() {
        received.push(seq);
    }
    let seen: HashSet<u32> = received.iter().copied().collect();
    let duplicated = received.len() - seen.len();
    let lost = acked.iter().filter(|s| !seen.contains(s)).count();
    println!(
        "crash run: {sender_deaths} sender and {receiver_deaths} receiver deaths, {} promised, {} received, {lost} lost, {duplicated} duplicated",
        acked.len(),
        received.len()
    );
    ensure!(duplicated == 0, "{duplicated} messages received twice");
    ensure!(
        lost <= receiver_deaths as usize,
        "{lost} promised messages lost with only {receiver_deaths} receiver deaths"
    );
    ensure!(
        !acked.is_empty(),
        "nothing was promised: the run proves nothing"
    );
    drop((rx, tx));
    Ok(())
}

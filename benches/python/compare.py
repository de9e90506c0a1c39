"""Python's multiprocessing side of `cargo bench --bench compare`.

Each sub-command measures one case the way benches/compare.rs measures it
for procpool, with the fork start method, and prints one number on stdout:

    python3 benches/python/compare.py queue_512B 400000 512  # ops/s (also queue_64B, queue_64KiB)
    python3 benches/python/compare.py queue_512B_2x2 200000 512 2  # ops/s, 2 producers, 2 consumers
    python3 benches/python/compare.py remote_queue_512B 20000 512  # ops/s, SyncManager over TCP
    python3 benches/python/compare.py pipe_one_way 400000 512  # msgs/s
    python3 benches/python/compare.py pipe_round_trip 20000 512  # median us
    python3 benches/python/compare.py joinable 200000 2      # ops/s
    python3 benches/python/compare.py map_auto 1000000      # seconds
    python3 benches/python/compare.py map_chunk1 100000     # us per task
    python3 benches/python/compare.py apply 10000           # median us
    python3 benches/python/compare.py startup               # ms
    python3 benches/python/compare.py imap_rss 10000000 1000  # MiB (chunksize 1000)
    python3 benches/python/compare.py cpu_scaling 40 N      # speedup, x
    python3 benches/python/compare.py calibrate 20          # spin(N) takes 20 ms

Adding a case: a `cmd_<key>` function here with the key used in compare.rs.
"""

import multiprocessing as mp
import statistics
import sys
import time


def ctx():
    return mp.get_context("fork")


def square(x):
    return x * x


def spin(n):
    """CPU work: an LCG chain of n steps (the Rust side's twin)."""
    x = n
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
    return x


def start(target, *args):
    """A started fork child; daemonic, so a failing master does not wait
    for it (the harness kills the process group past its time limit)."""
    p = ctx().Process(target=target, args=args, daemon=True)
    p.start()
    return p


def joined(p):
    p.join()
    assert p.exitcode == 0, f"child exited with {p.exitcode}"


def q_produce(q, n, size):
    item = bytes([0xAB]) * size
    for _ in range(n):
        q.put(item)


def q_consume(q, n, size):
    for i in range(n):
        item = q.get()
        assert len(item) == size, f"item {i} has {len(item)} bytes"


def through(q, n, size):
    """A producer process puts n items of size bytes on q, a consumer
    process gets them; from both started to the consumer's join. Items
    per second."""
    consumer = start(q_consume, q, n, size)
    producer = start(q_produce, q, n, size)
    t = time.perf_counter()
    joined(consumer)
    secs = time.perf_counter() - t
    joined(producer)
    return n / secs


def cmd_queue(n, size):
    """A producer process puts n items of size bytes, a consumer process
    gets them; from both started to the consumer's join. Items per second."""
    return through(ctx().Queue(), int(n), int(size))


cmd_queue_64B = cmd_queue_512B = cmd_queue_64KiB = cmd_queue


def cmd_queue_512B_2x2(n, size, pairs):
    """pairs producer processes put n / pairs items of size bytes each,
    pairs consumer processes get n / pairs each; from all started to the
    last consumer's join. Items per second."""
    n, size, pairs = int(n), int(size), int(pairs)
    assert n % pairs == 0, f"{n} items do not split in {pairs}"
    each = n // pairs
    q = ctx().Queue()
    consumers = [start(q_consume, q, each, size) for _ in range(pairs)]
    producers = [start(q_produce, q, each, size) for _ in range(pairs)]
    t = time.perf_counter()
    for c in consumers:
        joined(c)
    secs = time.perf_counter() - t
    for p in producers:
        joined(p)
    return n / secs


def cmd_remote_queue_512B(n, size):
    """The remote queue case: a manager process (SyncManager) serves a
    queue over loopback TCP with an authentication key; a producer
    process puts n items of size bytes through its proxy, a consumer
    process gets them through another. From both started to the
    consumer's join; items per second."""
    from multiprocessing.managers import SyncManager

    n, size = int(n), int(size)
    manager = SyncManager(
        address=("127.0.0.1", 0), authkey=b"a long random key shared out of band", ctx=ctx()
    )
    manager.start()
    try:
        return through(manager.Queue(), n, size)
    finally:
        manager.shutdown()


def pipe_send(w, n, size):
    msg = bytes([0xAB]) * size
    for _ in range(n):
        w.send(msg)
    w.close()


def cmd_pipe_one_way(n, size):
    """A child sends n messages of size bytes through Pipe(duplex=False) to
    the master; from the child started to the last message received."""
    n, size = int(n), int(size)
    r, w = ctx().Pipe(duplex=False)
    sender = start(pipe_send, w, n, size)
    w.close()
    t = time.perf_counter()
    for i in range(n):
        msg = r.recv()
        assert len(msg) == size, f"message {i} has {len(msg)} bytes"
    secs = time.perf_counter() - t
    joined(sender)
    return n / secs


def pipe_echo(end, mine):
    mine.close()
    while True:
        try:
            msg = end.recv()
        except EOFError:
            return
        end.send(msg)


def cmd_pipe_round_trip(rounds, size):
    """The master sends size bytes to a child over Pipe() and waits for them
    to come back, rounds times after 100 unmeasured; the median, us."""
    rounds, size = int(rounds), int(size)
    mine, theirs = ctx().Pipe()
    child = start(pipe_echo, theirs, mine)
    theirs.close()
    msg = bytes([0xAB]) * size
    warmup = 100
    times = []
    for i in range(warmup + rounds):
        t = time.perf_counter()
        mine.send(msg)
        back = mine.recv()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e6)
        assert len(back) == size, f"echo {i} has {len(back)} bytes"
    mine.close()
    joined(child)
    return statistics.median(times)


def jq_produce(q, n, consumers):
    for i in range(n):
        q.put(i)
    q.join()
    for _ in range(consumers):
        q.put(None)


def jq_consume(q, counts):
    got = 0
    while True:
        item = q.get()
        q.task_done()
        if item is None:
            break
        got += 1
    counts.put(got)


def cmd_joinable(n, consumers):
    """A producer process puts n small items and joins the queue while the
    consumer processes get them and call task_done; from all started to the
    producer's join (its join() returned, then it put one None per
    consumer). Items per second."""
    n, consumers = int(n), int(consumers)
    q = ctx().JoinableQueue()
    counts = ctx().SimpleQueue()
    workers = [start(jq_consume, q, counts) for _ in range(consumers)]
    producer = start(jq_produce, q, n, consumers)
    t = time.perf_counter()
    joined(producer)
    secs = time.perf_counter() - t
    got = sum(counts.get() for _ in workers)
    for w in workers:
        joined(w)
    assert got == n, f"consumers got {got} of {n}"
    return n / secs


def dict_count(d, lock, n):
    for _ in range(n):
        with lock:
            d["k"] = d.get("k", 0) + 1


def cmd_dict_counter(n):
    """Two processes each add 1 to one key of a Manager().dict() n times,
    under a Lock (the read-modify-write Python needs one for); from both
    started to both joined. Increments per second."""
    n = int(n)
    with ctx().Manager() as m:
        d = m.dict()
        lock = ctx().Lock()
        t = time.perf_counter()
        workers = [start(dict_count, d, lock, n) for _ in range(2)]
        for w in workers:
            joined(w)
        secs = time.perf_counter() - t
        assert d["k"] == 2 * n, f"counted {d['k']} of {2 * n}"
    return 2 * n / secs


def timed_map(f, items, **kw):
    """`Pool(2).map(f, items, **kw)` on a warm pool: the outputs and the
    seconds the map took (start-up and shutdown left out)."""
    with ctx().Pool(2) as pool:
        pool.apply(square, (1,))
        t = time.perf_counter()
        out = pool.map(f, items, **kw)
        secs = time.perf_counter() - t
    return out, secs


def cmd_map_auto(n):
    n = int(n)
    out, secs = timed_map(square, range(n))
    assert len(out) == n and out[-1] == (n - 1) ** 2
    return secs


def big_inputs(n, size):
    return [bytes([i % 256]) * size for i in range(n)]


def echo(b):
    return b


def cmd_map_big_len(n, size):
    n, size = int(n), int(size)
    out, secs = timed_map(len, big_inputs(n, size))
    assert out == [size] * n
    return n * size / secs / (1 << 30)


def cmd_map_big_echo(n, size):
    n, size = int(n), int(size)
    out, secs = timed_map(echo, big_inputs(n, size))
    assert len(out) == n and all(len(b) == size and b[0] == i % 256 for i, b in enumerate(out))
    return n * size / secs / (1 << 30)


def cmd_map_chunk1(n):
    n = int(n)
    out, secs = timed_map(square, range(n), chunksize=1)
    assert len(out) == n and out[-1] == (n - 1) ** 2
    return secs * 1e6 / n


def cmd_apply(n):
    n = int(n)
    times = []
    with ctx().Pool(2) as pool:
        for i in range(100):
            assert pool.apply(square, (i,)) == i * i
        for i in range(n):
            t = time.perf_counter()
            r = pool.apply(square, (i,))
            times.append((time.perf_counter() - t) * 1e6)
            assert r == i * i
    return statistics.median(times)


def cmd_startup():
    t = time.perf_counter()
    pool = ctx().Pool(2)
    r = pool.apply(square, (3,))
    ms = (time.perf_counter() - t) * 1e3
    assert r == 9
    pool.terminate()
    pool.join()
    return ms


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def cmd_imap_rss(n, chunksize):
    n, chunksize = int(n), int(chunksize)
    with ctx().Pool(2) as pool:
        pool.apply(square, (1,))
        try:
            # Reset the peak to the current RSS (Linux >= 4.0).
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        base = status_kib("VmRSS")
        count = 0
        total = 0
        for r in pool.imap_unordered(square, range(n), chunksize=chunksize):
            total += r
            count += 1
        growth = max(0, status_kib("VmHWM") - base) / 1024
    assert count == n and total == (n - 1) * n * (2 * n - 1) // 6, "wrong results"
    return growth


def cmd_cpu_scaling(tasks, n):
    tasks, n = int(tasks), int(n)
    secs = []
    for workers in (1, 2):
        with ctx().Pool(workers) as pool:
            pool.apply(square, (1,))
            t = time.perf_counter()
            out = pool.map(spin, [n] * tasks, chunksize=1)
            secs.append(time.perf_counter() - t)
            assert len(out) == tasks
    return secs[0] / secs[1]


def cmd_calibrate(ms):
    k = 100_000
    best = min(timed(spin, k) for _ in range(5))
    return int(float(ms) / 1e3 * k / best)


def timed(f, *args):
    t = time.perf_counter()
    f(*args)
    return time.perf_counter() - t


def main():
    if len(sys.argv) < 2 or "cmd_" + sys.argv[1] not in globals():
        cmds = sorted(k[4:] for k in globals() if k.startswith("cmd_"))
        sys.exit(f"usage: compare.py {{{','.join(cmds)}}} ARGS...")
    print(globals()["cmd_" + sys.argv[1]](*sys.argv[2:]))


if __name__ == "__main__":
    main()

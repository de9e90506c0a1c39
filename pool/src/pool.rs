//! [`Pool`]: the public face of the master side.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use procpool_ipc::endpoint;
use procpool_ipc::task::Payload;
use procpool_ipc::{Task, TaskError, codec};

use crate::config::Config;
use crate::msg::{Catalog, Msg};
use crate::remote::Listener;
use crate::shared::Shared;
use crate::stream::{Chunking, Imap};
use crate::supervisor::Supervisor;
use crate::work::{Chunk, Job, Outcome};
use crate::{Error, PoolBuilder};
use procpool_ipc::sync::lock;

/// What the map-like calls ([`Pool::map`], [`imap`](Pool::imap),
/// [`imap_unordered`](Pool::imap_unordered), [`map_async`](Pool::map_async)
/// and their `_chunked` forms) take: anything iterable whose items are
/// inputs `I`, owned or borrowed (`0..10`, `v`, `&v`, `v.iter()`). Every
/// such type has it; there is nothing to implement.
pub trait Inputs<I>: IntoIterator<Item: Borrow<I>> {}

impl<I, T> Inputs<I> for T
where
    T: IntoIterator,
    T::Item: Borrow<I>,
{
}

/// A pool of worker processes.
///
/// Work is named by a [`Task`] declared once and registered in the workers
/// (see `procpool::init`). Results come back in input order from
/// [`map`](Self::map) and [`imap`](Self::imap), as they finish from
/// [`imap_unordered`](Self::imap_unordered), one at a time from
/// [`submit`](Self::submit).
///
/// Dropping the pool is graceful: queued and running tasks get the grace
/// period (default 5 s) to finish, then the workers are killed. Every worker
/// is reaped before `drop` returns.
///
/// ```rust,standalone_crate
/// use procpool::{Pool, Registry, Task};
///
/// const SQUARE: Task<u64, u64> = Task::new("square");
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init(Registry::new().task(SQUARE, |x| x * x));
///     let pool = Pool::new(2)?;
///     assert_eq!(pool.map(SQUARE, 0..5)?, [0, 1, 4, 9, 16]);
///     Ok(())
/// }
/// ```
pub struct Pool {
    pub(crate) config: Arc<Config>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: Sender<Msg>,
    tasks: Catalog,
    stopped: Receiver<()>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    listen_addr: Option<SocketAddr>,
    advertised_addr: Option<String>,
    launched: Option<crate::launcher::Launched>,
    /// One-program mode: the rendezvous file this pool wrote, removed
    /// when it stops.
    published: Option<std::path::PathBuf>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.config.workers)
            .field("program", &self.config.program)
            .field("tasks", &self.tasks.names)
            .finish_non_exhaustive()
    }
}

/// A snapshot of a pool's counters, in tasks (input items) and workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Tasks accepted.
    pub submitted: u64,
    /// Tasks whose result came back from a worker (including tasks that
    /// panicked or returned an error).
    pub completed: u64,
    /// Tasks that failed without a result: worker died, timeout, stop.
    pub failed: u64,
    /// Tasks whose caller went away before they ran.
    pub cancelled: u64,
    /// Completed tasks that returned an error or panicked (counted when the
    /// caller reads them).
    pub task_errors: u64,
    /// Tasks accepted and not yet completed, failed or cancelled.
    pub in_flight: u64,
    /// Worker processes running now.
    pub workers_alive: usize,
    /// Workers started to replace one that died or timed out.
    pub workers_replaced: u64,
}

impl Pool {
    /// Starts a pool of `workers` processes with default settings.
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn new(workers: usize) -> Result<Pool, Error> {
        Self::builder().workers(workers).build()
    }

    /// A builder for a pool with non-default settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    pub(crate) fn start(config: Config) -> Result<Pool, Error> {
        if endpoint::is_unclaimed_worker() {
            return Err(Error::NotInitialized);
        }
        let config = Arc::new(config);
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared::new(&config, tx.clone()));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (stopped_tx, stopped) = crossbeam_channel::bounded::<()>(0);
        let listener = match &config.listen {
            Some((addr, key)) => Some(Listener::start(
                *addr,
                key,
                config.heartbeat_timeout,
                tx.clone(),
            )?),
            None => None,
        };
        let listen_addr = listener.as_ref().map(Listener::addr);
        let advertised_addr =
            match listen_addr {
                None => None,
                Some(bound) => {
                    let advertise = config.advertise.as_deref();
                    let host = procpool_ipc::remote::advertised_host(bound.ip(), advertise)
                        .map_err(|e| Error::Advertise {
                            host: advertise.map(str::to_owned),
                            source: Arc::new(e),
                        });
                    match host {
                        Ok(host) => Some(format!("{host}:{}", bound.port())),
                        Err(e) => {
                            if let Some(l) = &listener {
                                l.stop();
                            }
                            return Err(e);
                        }
                    }
                }
            };
        let supervisor = Supervisor::new(
            Arc::clone(&config),
            Arc::clone(&shared),
            tx.clone(),
            rx,
            ready_tx,
            listener,
        );
        let handle = thread::Builder::new()
            .name("procpool-supervisor".into())
            .spawn(move || {
                // Dropped when the supervisor is done: wakes `terminate` and `drop`.
                let _stopped = stopped_tx;
                supervisor.run();
            })
            .map_err(|e| Error::Spawn {
                program: config.program.clone(),
                source: Arc::new(e),
            })?;
        match ready_rx.recv() {
            Ok(Ok(tasks)) => {
                crate::interrupt::register(&shared, &tx);
                Ok(Pool {
                    config,
                    shared,
                    tx,
                    tasks,
                    stopped,
                    supervisor: Mutex::new(Some(handle)),
                    listen_addr,
                    advertised_addr,
                    launched: None,
                    published: None,
                })
            }
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => {
                let _ = handle.join();
                Err(Error::Terminated)
            }
        }
    }

    /// Number of worker slots.
    pub fn workers(&self) -> usize {
        self.config.workers
    }

    /// The address remote workers join at, when the pool listens (see
    /// [`PoolBuilder::listen`]); with port 0 asked for, the port chosen.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr
    }

    /// One-program mode: leaves this pool's address and key in `file` for
    /// the other ranks.
    pub(crate) fn publish(&mut self, file: &std::path::Path) -> Result<(), Error> {
        let (Some(addr), Some((bound, key))) = (&self.advertised_addr, &self.config.listen) else {
            return Ok(());
        };
        procpool_ipc::one_program::publish(file, addr, &key.0).map_err(|e| Error::Listen {
            addr: *bound,
            source: Arc::new(e),
        })?;
        self.published = Some(file.to_owned());
        Ok(())
    }

    /// Starts remote workers through `launcher`, told to join this pool.
    pub(crate) fn launch(&mut self, launcher: &crate::Srun) -> Result<(), Error> {
        let (Some(addr), Some((_, key))) = (&self.advertised_addr, &self.config.listen) else {
            return Ok(());
        };
        let launched = launcher.launch(
            &self.config.program,
            &self.config.args,
            &self.config.envs,
            addr,
            &key.0,
        )?;
        self.launched = Some(launched);
        Ok(())
    }

    /// Where remote workers should connect, as `host:port`, when the pool
    /// listens: the host [`PoolBuilder::advertise`] chose (by default this
    /// machine's name for a pool on all interfaces), and the port bound.
    /// Hand it to the workers with the key (an environment variable or a
    /// file in a shared directory), never on a command line.
    pub fn advertised_addr(&self) -> Option<&str> {
        self.advertised_addr.as_deref()
    }

    /// Waits until at least `n` workers (local and remote) have completed
    /// their handshake, for at most `timeout`; whether they have. Useful
    /// when remote workers are expected to join.
    pub fn wait_for_workers(&self, n: usize, timeout: Duration) -> bool {
        self.shared.wait_ready(n, Instant::now() + timeout)
    }

    /// Names of the tasks the workers serve.
    pub fn tasks(&self) -> &[String] {
        &self.tasks.names
    }

    /// Process ids of the workers running now.
    pub fn worker_pids(&self) -> Vec<u32> {
        let pids = lock(&self.shared.pids);
        pids.iter().flatten().copied().collect()
    }

    /// A snapshot of the pool's counters.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.stats;
        let submitted = c.submitted.load(Ordering::Relaxed);
        let completed = c.completed.load(Ordering::Relaxed);
        let failed = c.failed.load(Ordering::Relaxed);
        let cancelled = c.cancelled.load(Ordering::Relaxed);
        Stats {
            submitted,
            completed,
            failed,
            cancelled,
            task_errors: c.task_errors.load(Ordering::Relaxed),
            in_flight: submitted.saturating_sub(completed + failed + cancelled),
            workers_alive: c.workers_alive.load(Ordering::Relaxed),
            workers_replaced: c.workers_replaced.load(Ordering::Relaxed),
        }
    }

    /// The number of `task` in the workers' registry, once its types are
    /// known to match.
    pub(crate) fn task_index<I, O>(&self, task: Task<I, O>) -> Result<u32, Error> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(self.shared.refusal());
        }
        let name = task.name();
        let Some(i) = self.tasks.names.iter().position(|t| t == name) else {
            return Err(Error::UnknownTask {
                name: name.to_owned(),
                available: self.tasks.names.clone(),
            });
        };
        let ours = task.signature();
        if self.tasks.signatures[i] != ours {
            return Err(Error::TaskTypeMismatch {
                name: name.to_owned(),
                master: ours.into(),
                worker: self.tasks.signatures[i].as_str().into(),
            });
        }
        u32::try_from(i).map_err(|_| Error::UnknownTask {
            name: name.to_owned(),
            available: self.tasks.names.clone(),
        })
    }

    /// Runs `task` on every item and returns the outputs in input order.
    ///
    /// Items may be owned or borrowed: anything that [`Borrow`]s as the
    /// task's input will do, so `0..10`, a `Vec<u64>` and `&Vec<u64>` (or
    /// `v.iter()`) all feed a `Task<u64, _>`, and `&[String]` a
    /// `Task<String, _>`. Each item is encoded from its borrow, never cloned.
    ///
    /// The input is split into chunks (the builder's `chunk_size`, or
    /// Python's rule: `len / (4 × workers)` rounded up, counting remote
    /// workers that have joined). Returns at the
    /// first failed item; work not yet dispatched is then dropped.
    ///
    /// ```rust,standalone_crate
    /// use procpool::{Pool, Registry, Task};
    ///
    /// const SQUARE: Task<u64, u64> = Task::new("square");
    /// const LEN: Task<String, usize> = Task::new("len");
    ///
    /// fn main() -> Result<(), procpool::Error> {
    ///     procpool::init(Registry::new().task(SQUARE, |x| x * x).task(LEN, |s: String| s.len()));
    ///     let pool = Pool::new(2)?;
    ///     let v: Vec<u64> = vec![1, 2, 3];
    ///     assert_eq!(pool.map(SQUARE, &v)?, [1, 4, 9]); // borrowed: v is still here
    ///     assert_eq!(pool.map(SQUARE, v)?, [1, 4, 9]); // owned
    ///     assert_eq!(pool.map(SQUARE, 0..3)?, [0, 1, 4]);
    ///     let words = ["a", "bb"].map(String::from);
    ///     assert_eq!(pool.map(LEN, &words)?, [1, 2]);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// Because the item type is only bounded, not fixed, an item whose type
    /// the compiler would have taken from the task must now be named (as
    /// with `Vec::extend`, which also takes `T` and `&T`):
    /// `lines.map(|l| l.parse::<u64>())`, `Vec::<u64>::new()`, not
    /// `l.parse()` or `vec![]` ("type annotations needed").
    ///
    /// # Errors
    /// The first error among the items, as [`Error::Item`] naming the
    /// input's index ([`Error::Task`] for a panic or a returned error,
    /// [`Error::WorkerDied`], [`Error::Timeout`], ... inside), or
    /// [`Error::UnknownTask`], [`Error::Closed`], [`Error::Interrupted`].
    pub fn map<I: Payload, O: Payload, It: Inputs<I>>(
        &self,
        task: Task<I, O>,
        items: It,
    ) -> Result<Vec<O>, Error> {
        let index = self.task_index(task)?;
        let items: Vec<It::Item> = items.into_iter().collect();
        let len = items.len();
        let chunking = match self.config.chunk_size {
            Some(n) => Chunking::Fixed(n),
            None => {
                // Remote workers that have joined count too.
                let per = self.config.workers.max(self.shared.ready_workers()).max(1) * 4;
                Chunking::Even(len.div_ceil(per).max(1))
            }
        };
        let stream = Imap::new(self, index, items.into_iter(), true, usize::MAX, chunking);
        let mut out = Vec::with_capacity(len);
        for item in stream {
            out.push(item?);
        }
        Ok(out)
    }

    /// Runs `task` on every item lazily, yielding one result per item in
    /// input order.
    ///
    /// At most `window` items (a builder option, default 8192) are taken
    /// from `items` and not yet yielded, so an endless input is fine. Items
    /// may be owned or borrowed, as for [`map`](Self::map).
    ///
    /// # Errors
    /// [`Error::UnknownTask`], [`Error::Closed`] or [`Error::Interrupted`]
    /// up front; per-item errors come through the iterator.
    ///
    /// # Panics
    /// If `items` panics, the items it gave before still run and their
    /// results are yielded first; then the panic resumes from `next`, as
    /// Python's `imap` raises the input's exception after the results
    /// before it. (Dropping the iterator before that point drops the panic.)
    pub fn imap<I: Payload, O: Payload, It: Inputs<I>>(
        &self,
        task: Task<I, O>,
        items: It,
    ) -> Result<Imap<'_, I, O, It::IntoIter>, Error> {
        self.stream(task, items, true)
    }

    /// Like [`imap`](Self::imap), but yields results as they finish.
    ///
    /// # Errors
    /// As [`imap`](Self::imap).
    pub fn imap_unordered<I: Payload, O: Payload, It: Inputs<I>>(
        &self,
        task: Task<I, O>,
        items: It,
    ) -> Result<Imap<'_, I, O, It::IntoIter>, Error> {
        self.stream(task, items, false)
    }

    fn stream<I: Payload, O: Payload, It: Inputs<I>>(
        &self,
        task: Task<I, O>,
        items: It,
        ordered: bool,
    ) -> Result<Imap<'_, I, O, It::IntoIter>, Error> {
        let index = self.task_index(task)?;
        let window = self.config.window;
        let chunking = match self.config.chunk_size {
            Some(n) => Chunking::Fixed(n),
            None => Chunking::Adaptive {
                current: 1,
                max: (window
                    / (2 * self.config.workers.max(1) * (self.config.prefetch.unwrap_or(2) + 1)))
                    .max(1),
            },
        };
        Ok(Imap::new(
            self,
            index,
            items.into_iter(),
            ordered,
            window,
            chunking,
        ))
    }

    /// Runs `task` on one input and waits for its output.
    ///
    /// # Errors
    /// As [`AsyncResult::wait`].
    pub fn apply<I: Payload, O: Payload>(&self, task: Task<I, O>, item: I) -> Result<O, Error> {
        self.submit(task, item)?.wait()
    }

    /// Starts `task` on one input; the handle gives the output later.
    ///
    /// # Errors
    /// [`Error::UnknownTask`], [`Error::Closed`], [`Error::Interrupted`],
    /// [`Error::Encode`] or [`Error::PayloadTooLarge`].
    pub fn submit<I: Payload, O: Payload>(
        &self,
        task: Task<I, O>,
        item: I,
    ) -> Result<AsyncResult<O>, Error> {
        let index = self.task_index(task)?;
        let (sink, rx) = crossbeam_channel::bounded(1);
        let job = Arc::new(Job::new(sink));
        let mut payload = Vec::new();
        job.carry(|| codec::encode_into_limited(&item, &mut payload, self.config.payload_limit()))
            .map_err(Error::encode)?;
        self.shared.stats.submitted.fetch_add(1, Ordering::Relaxed);
        let weak = Arc::downgrade(&job);
        let chunk = Chunk::new(job, 0, index, 1, payload, crate::stream::skip::<I>);
        if let Err((_, e)) = self.shared.submit(chunk) {
            self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        Ok(AsyncResult {
            job: weak,
            rx,
            shared: Arc::clone(&self.shared),
            result: None,
            index: Some(0),
            _output: PhantomData,
        })
    }

    /// Waits until every task submitted so far has finished (the
    /// JoinableQueue `join`: each chunk's completion is its `task_done`).
    /// The workers stay, ready for more work.
    ///
    /// **Not Python's `Pool.join`**, which waits for the worker processes
    /// to *exit* after `close()`. Here the verbs keep the meaning they have
    /// everywhere else in procpool (`join` waits for queued work, as
    /// [`JoinableQueue::join`](procpool_ipc::queue::JoinableQueue::join)
    /// does), and the workers exit when the pool is dropped. Python's
    /// `pool.close(); pool.join()` is:
    ///
    /// ```rust,standalone_crate
    /// # use procpool::{Pool, Registry, Task};
    /// # const SQUARE: Task<u64, u64> = Task::new("square");
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init(Registry::new().task(SQUARE, |x| x * x));
    /// let pool = Pool::new(2)?;
    /// let pending = pool.submit(SQUARE, 7)?;
    /// pool.close(); // no new work
    /// pool.join()?; // every task submitted has finished
    /// drop(pool); // the workers exit and are reaped
    /// assert_eq!(pending.wait()?, 49);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Interrupted`] if a shutdown is requested meanwhile.
    pub fn join(&self) -> Result<(), Error> {
        self.join_deadline(None).map(drop)
    }

    /// [`join`](Self::join) with a limit; `Ok(false)` when it ran out.
    ///
    /// # Errors
    /// [`Error::Interrupted`] if a shutdown is requested meanwhile.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        self.join_deadline(Some(Instant::now() + timeout))
    }

    fn join_deadline(&self, deadline: Option<Instant>) -> Result<bool, Error> {
        let interrupted = || self.shared.interrupted.load(Ordering::SeqCst);
        let done = self.shared.accounting.join(deadline, interrupted);
        if !done && interrupted() {
            return Err(self.shared.stop_error());
        }
        Ok(done)
    }

    /// Refuses new work from now on; work already accepted goes on.
    pub fn close(&self) {
        self.shared.close(Error::Closed);
    }

    /// Requests a graceful stop, as a first Ctrl-C does: nothing new is
    /// dispatched, queued tasks fail with [`Error::Interrupted`], running
    /// tasks get the grace period, and every blocked call on this pool
    /// returns [`Error::Interrupted`] at once. Does not block.
    pub fn shutdown(&self) {
        self.shared.interrupt();
        // The workers hear of it now, not when the supervisor thread gets
        // to it: whatever reaches a worker after this call (a queue item
        // its running task waits for) comes behind the stop, so no task
        // queued in the worker starts after `shutdown` returned.
        self.shared.stop_lanes();
        let _ = self.tx.send(Msg::Interrupt);
    }

    /// Kills every worker now (SIGKILL on Unix, `TerminateProcess` on
    /// Windows) and waits until they are reaped; unfinished tasks fail with
    /// [`Error::Terminated`], as do calls blocked on them (`map`, `imap`,
    /// `wait`, `join`), and new calls are refused with [`Error::Closed`].
    /// As Python's `Pool.terminate`.
    ///
    /// [`Process::kill`](crate::Process::kill) is the same stop for one
    /// process; each is named after its Python counterpart.
    pub fn terminate(&self) {
        self.shared.terminate();
        let _ = self.tx.send(Msg::Terminate);
        self.wait_stopped();
        if let Some(launched) = &self.launched {
            launched.end(Duration::ZERO);
        }
    }

    fn wait_stopped(&self) {
        // Disconnects when the supervisor thread ends, after reaping.
        let _ = self.stopped.recv();
        // Taken first: the lock is not held while joining.
        let handle = lock(&self.supervisor).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Shutdown);
        // Still registered while stopping: a Ctrl-C now cuts the grace period short.
        self.wait_stopped();
        if let Some(launched) = &self.launched {
            // Its workers were told to exit: the step ends with them.
            launched.end(self.config.grace_period);
        }
        if let Some(file) = &self.published {
            let _ = std::fs::remove_file(file);
        }
        crate::interrupt::unregister(&self.shared);
    }
}

/// The pending output of one [`Pool::submit`].
///
/// The result is kept once it arrives: [`try_get`](Self::try_get) and
/// [`wait_timeout`](Self::wait_timeout) lend it, [`wait`](Self::wait) hands
/// it over.
///
/// [`wait`](Self::wait) and [`wait_timeout`](Self::wait_timeout) block the
/// calling thread; in async code, `.await` the handle instead (it is
/// [`IntoFuture`](std::future::IntoFuture), giving a
/// [`TaskFuture`](crate::TaskFuture)), which blocks nothing and works on
/// any runtime. Dropping that future before it completes cancels the task
/// if it has not started; dropping the `AsyncResult` itself does not.
pub struct AsyncResult<O> {
    /// Weak, so that a chunk lost without an outcome still disconnects `rx`.
    pub(crate) job: Weak<Job>,
    pub(crate) rx: Receiver<Outcome>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) result: Option<Result<O, Error>>,
    /// The index its errors name (see [`Error::Item`]); `None` for a
    /// [`Process`](crate::Process), which has no input list.
    index: Option<u64>,
    _output: PhantomData<fn() -> O>,
}

impl<O> fmt::Debug for AsyncResult<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.result.is_some())
            .finish_non_exhaustive()
    }
}

impl<O: Payload> AsyncResult<O> {
    /// Its errors name no input (a [`Process`](crate::Process)'s).
    pub(crate) fn unindexed(mut self) -> Self {
        self.index = None;
        self
    }

    pub(crate) fn settle(&mut self, outcome: Result<Outcome, Error>) {
        let result = outcome.and_then(|o| o.result).and_then(|r| {
            let (value, _) = r
                .decode::<Result<O, TaskError>>(0)
                .map_err(|e| Error::Decode(Arc::new(e)))?;
            value.map_err(|e| {
                self.shared
                    .stats
                    .task_errors
                    .fetch_add(1, Ordering::Relaxed);
                Error::task(e)
            })
        });
        self.result = Some(result.map_err(|e| match self.index {
            Some(index) => e.at(index),
            None => e,
        }));
    }

    fn poll(&mut self, deadline: Option<Instant>) {
        if self.result.is_some() {
            return;
        }
        let timeout = deadline.map_or(crossbeam_channel::never(), crossbeam_channel::at);
        // Also after a stop: the task ends within the grace period, with
        // its result or failed (`Interrupted`, `Terminated`).
        select! {
            recv(self.rx) -> o => self.settle(o.map_err(|_| Error::Terminated)),
            recv(timeout) -> _ => {}
        }
    }

    /// The result if it has arrived; never blocks.
    pub fn try_get(&mut self) -> Option<&Result<O, Error>> {
        if self.result.is_none()
            && let Ok(o) = self.rx.try_recv()
        {
            self.settle(Ok(o));
        }
        self.result.as_ref()
    }

    /// Waits at most `timeout` for the result.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<&Result<O, Error>> {
        self.poll(Some(Instant::now() + timeout));
        self.result.as_ref()
    }

    /// Waits for the result.
    ///
    /// # Errors
    /// The task's error ([`Error::Task`]), [`Error::WorkerDied`],
    /// [`Error::Timeout`], ... wrapped in [`Error::Item`] with index 0;
    /// [`Error::Interrupted`], [`Error::Terminated`] when the pool stopped
    /// before the task ran (a task running when the pool was shut down
    /// finishes within the grace period, and its result is kept).
    pub fn wait(mut self) -> Result<O, Error> {
        self.poll(None);
        self.result.unwrap_or(Err(Error::Terminated))
    }
}

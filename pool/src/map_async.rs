//! [`Pool::map_async`]: a whole `map` started now, its results collected
//! later through a [`MapResult`] (Python's `Pool.map_async`).

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};
use procpool_ipc::shm::body::Encoded;
use procpool_ipc::task::Payload;
use procpool_ipc::{Task, TaskError};

use crate::pool::Inputs;
use crate::shared::Shared;
use crate::stream::Packer;
use crate::work::{Chunk, Job, Outcome};
use crate::{Error, Pool};

/// The pending outputs of one [`Pool::map_async`]: every item's output in
/// input order, or the first error.
///
/// The outcome is kept once known: [`try_get`](Self::try_get) and
/// [`wait_timeout`](Self::wait_timeout) lend it, [`wait`](Self::wait)
/// hands it over. Dropping the handle cancels the items not yet
/// dispatched, as does the first error.
pub struct MapResult<O> {
    rx: Receiver<Outcome>,
    shared: Arc<Shared>,
    job: Arc<Job>,
    /// Inputs sent.
    total: u64,
    /// Outputs in, by the index of the first of each run.
    got: BTreeMap<u64, Vec<O>>,
    /// How many outputs are in `got`.
    received: u64,
    result: Option<Result<Vec<O>, Error>>,
}

impl<O> fmt::Debug for MapResult<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapResult")
            .field("inputs", &self.total)
            .field("outputs_in", &self.received)
            .field("ready", &self.result.is_some())
            .finish_non_exhaustive()
    }
}

impl<O> Drop for MapResult<O> {
    fn drop(&mut self) {
        self.job.cancelled.store(true, Ordering::Relaxed);
    }
}

impl<O: Payload> MapResult<O> {
    fn finish(&mut self, result: Result<Vec<O>, Error>) {
        if result.is_err() {
            self.job.cancelled.store(true, Ordering::Relaxed);
        }
        self.result = Some(result);
    }

    /// Takes in an outcome: some of a chunk's results (a worker reports
    /// them while the chunk runs), or its failure.
    fn accept(&mut self, outcome: Outcome) {
        if outcome.count == 0 {
            // The end of a chunk whose items were all reported before.
            return;
        }
        let results = match outcome.result {
            Ok(results) => results,
            Err(e) => return self.finish(Err(e.at(outcome.first))),
        };
        let mut offset = 0;
        let mut items = Vec::with_capacity(outcome.count as usize);
        for i in 0..u64::from(outcome.count) {
            let index = outcome.first + i;
            match results.decode::<Result<O, TaskError>>(offset) {
                Ok((Ok(item), used)) => {
                    items.push(item);
                    offset += used;
                }
                Ok((Err(e), _)) => {
                    self.shared
                        .stats
                        .task_errors
                        .fetch_add(1, Ordering::Relaxed);
                    return self.finish(Err(Error::task(e).at(index)));
                }
                Err(e) => return self.finish(Err(Error::Decode(Arc::new(e)).at(index))),
            }
        }
        self.received += u64::from(outcome.count);
        self.got.insert(outcome.first, items);
        if self.received == self.total {
            let all = std::mem::take(&mut self.got)
                .into_values()
                .flatten()
                .collect();
            self.finish(Ok(all));
        }
    }

    /// Also after a stop: every chunk ends within the grace period, with
    /// its results or failed (`Interrupted`, `Terminated`).
    fn poll(&mut self, deadline: Option<Instant>) {
        let timeout = deadline.map_or(crossbeam_channel::never(), crossbeam_channel::at);
        while self.result.is_none() {
            select! {
                recv(self.rx) -> o => match o {
                    Ok(o) => self.accept(o),
                    Err(_) => self.finish(Err(Error::Terminated)),
                },
                recv(timeout) -> _ => return,
            }
        }
    }

    /// Whether the outcome is known (every output, or an error); never
    /// blocks. Python's `ready()`.
    pub fn ready(&mut self) -> bool {
        self.try_get().is_some()
    }

    /// The outcome if it is known; never blocks.
    pub fn try_get(&mut self) -> Option<&Result<Vec<O>, Error>> {
        while self.result.is_none() {
            match self.rx.try_recv() {
                Ok(o) => self.accept(o),
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    self.finish(Err(Error::Terminated));
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
            }
        }
        self.result.as_ref()
    }

    /// Waits at most `timeout` for the outcome.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<&Result<Vec<O>, Error>> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.poll(Some(deadline)),
            None => self.poll(None),
        }
        self.result.as_ref()
    }

    /// Waits for every output, in input order.
    ///
    /// # Errors
    /// The first error among the items, as [`Pool::map`].
    pub fn wait(mut self) -> Result<Vec<O>, Error> {
        self.poll(None);
        self.result.take().unwrap_or(Err(Error::Terminated))
    }
}

impl Pool {
    /// Starts [`map`](Self::map) and returns at once: the [`MapResult`]
    /// says when every output is in, and gives them in input order, or the
    /// first error (Python's `Pool.map_async`). Chunked as `map`.
    ///
    /// ```rust,standalone_crate
    /// use procpool::{Pool, Registry, Task};
    /// use std::time::Duration;
    ///
    /// const SQUARE: Task<u64, u64> = Task::new("square");
    ///
    /// fn main() -> Result<(), procpool::Error> {
    ///     procpool::init(Registry::new().task(SQUARE, |x| x * x));
    ///     let pool = Pool::new(2)?;
    ///     let mut pending = pool.map_async(SQUARE, 0..100)?;
    ///     // ... other work here ...
    ///     assert!(pending.wait_timeout(Duration::from_secs(60)).is_some());
    ///     assert_eq!(pending.wait()?[99], 99 * 99);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownTask`], [`Error::Closed`], [`Error::Interrupted`]
    /// up front, or an item that does not encode or fit in a frame
    /// (nothing of the call then runs to completion); the items' own
    /// errors come from the `MapResult`.
    pub fn map_async<I: Payload, O: Payload, It: Inputs<I>>(
        &self,
        task: Task<I, O>,
        items: It,
    ) -> Result<MapResult<O>, Error> {
        self.start_map(task, items, None)
    }

    /// [`map_async`](Self::map_async) with `chunk_size` items per chunk
    /// for this call (Python's `chunksize` argument).
    ///
    /// # Errors
    /// As [`map_async`](Self::map_async); [`Error::InvalidSetting`] for a
    /// `chunk_size` of 0.
    pub fn map_async_chunked<I: Payload, O: Payload, It: Inputs<I>>(
        &self,
        task: Task<I, O>,
        items: It,
        chunk_size: usize,
    ) -> Result<MapResult<O>, Error> {
        if chunk_size == 0 {
            return Err(Error::InvalidSetting {
                setting: "chunk_size",
                reason: "a chunk holds at least one item",
            });
        }
        self.start_map(task, items, Some(chunk_size))
    }

    /// [`map`](Self::map) with `chunk_size` items per chunk for this call
    /// (Python's `chunksize` argument).
    ///
    /// # Errors
    /// As [`map`](Self::map).
    pub fn map_chunked<I: Payload, O: Payload, It: Inputs<I>>(
        &self,
        task: Task<I, O>,
        items: It,
        chunk_size: usize,
    ) -> Result<Vec<O>, Error> {
        self.map_async_chunked(task, items, chunk_size)?.wait()
    }

    fn start_map<I: Payload, O: Payload, It: Inputs<I>>(
        &self,
        task: Task<I, O>,
        items: It,
        chunk_size: Option<usize>,
    ) -> Result<MapResult<O>, Error> {
        let index = self.task_index(task)?;
        let items: Vec<It::Item> = items.into_iter().collect();
        let chunk = chunk_size.or(self.config.chunk_size).unwrap_or_else(|| {
            let per = self.config.workers.max(self.shared.ready_workers()) * 4;
            items.len().div_ceil(per).max(1)
        });
        let (sink, rx) = crossbeam_channel::unbounded();
        let job = Arc::new(Job::new(sink));
        let mut pending = MapResult {
            rx,
            shared: Arc::clone(&self.shared),
            job: Arc::clone(&job),
            total: 0,
            got: BTreeMap::new(),
            received: 0,
            result: None,
        };
        let mut packer = Packer::new(self.config.payload_limit());
        let send = |payload: Encoded, count: u32, first: u64| {
            self.shared
                .stats
                .submitted
                .fetch_add(u64::from(count), Ordering::Relaxed);
            let chunk = Chunk::new(
                Arc::clone(&job),
                first,
                index,
                count,
                payload,
                crate::stream::skip::<I>,
            );
            self.shared.submit(chunk).map_err(|(_, e)| {
                self.shared
                    .stats
                    .failed
                    .fetch_add(u64::from(count), Ordering::Relaxed);
                e
            })
        };
        // One `carry` for every input: the pins their handles take stay
        // with the job.
        job.carry(|| -> Result<(), Error> {
            for (i, item) in items.iter().enumerate() {
                let packed = packer.push(item.borrow());
                if let Some((payload, count)) = packed.full {
                    send(payload, count, pending.total)?;
                    pending.total += u64::from(count);
                }
                if let Some(e) = packed.failed {
                    return Err(e.at(i as u64));
                }
                if packer.count() as usize >= chunk
                    && let Some((payload, count)) = packer.take()
                {
                    send(payload, count, pending.total)?;
                    pending.total += u64::from(count);
                }
            }
            if let Some((payload, count)) = packer.take() {
                send(payload, count, pending.total)?;
                pending.total += u64::from(count);
            }
            Ok(())
        })?;
        if pending.total == 0 {
            pending.result = Some(Ok(Vec::new()));
        }
        Ok(pending)
    }
}

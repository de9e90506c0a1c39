//! Named, typed tasks a worker can run.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use procpool_ipc::frame::ENCODING_SLACK;
use procpool_ipc::link::Lease;
use procpool_ipc::task::Payload;
use procpool_ipc::{IpcError, Task, TaskError, codec};
use serde::de::DeserializeOwned;

use crate::output::Output;

/// Runs `count` encoded inputs from `inputs`, appending each one's encoded
/// `Result<Output, TaskError>` to `out` (in shared memory once it is large,
/// see [`crate::output`]). An output whose encoding passes
/// the payload limit (the third argument) is replaced by
/// [`TaskError::OutputTooLarge`], without being encoded whole.
///
/// Calls `done(out, items, latest)` (which may report and drain what `out`
/// holds) after the last item, after any item that takes `out` past the
/// payload limit (plus [`ENCODING_SLACK`]), and otherwise once as many
/// items as its previous call returned have finished: `items` is how many
/// finished since the previous call, `latest` where the latest one's result
/// starts in `out`.
pub(crate) type Runner =
    Box<dyn Fn(Inputs<'_>, u32, u64, &mut Output, &mut Done<'_>) + Send + Sync>;

/// A chunk's encoded inputs, decoded one after the other: from a frame
/// body in memory, or in place from the shared segment the body came in
/// (one copy, into the input).
#[derive(Debug)]
pub(crate) struct Inputs<'a> {
    bytes: &'a [u8],
    lease: Option<&'a Lease>,
    at: usize,
}

impl<'a> Inputs<'a> {
    /// Inputs encoded back to back in `bytes`.
    pub(crate) fn bytes(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            lease: None,
            at: 0,
        }
    }

    /// Inputs encoded back to back in `lease`'s body from `at` on.
    pub(crate) fn leased(lease: &'a Lease, at: usize) -> Self {
        Self {
            bytes: &[],
            lease: Some(lease),
            at,
        }
    }

    /// Decodes the next input.
    fn next<I: DeserializeOwned>(&mut self) -> Result<I, IpcError> {
        let (value, used) = match self.lease {
            Some(lease) => lease.decode_at(self.at)?,
            None => codec::decode(self.bytes.get(self.at..).unwrap_or_default())?,
        };
        self.at += used;
        Ok(value)
    }
}

/// The runner's report callback: see [`Runner`].
pub(crate) type Done<'a> = dyn FnMut(&mut Output, u32, usize) -> u32 + 'a;

/// The tasks a worker serves, each under its [`Task`] name.
///
/// ```
/// use procpool::{Registry, Task};
///
/// const SQUARE: Task<u64, u64> = Task::new("square");
/// const PARSE: Task<String, i64> = Task::new("parse");
///
/// let registry = Registry::new()
///     .task(SQUARE, |x| x * x)
///     .try_task(PARSE, |s: String| s.trim().parse::<i64>());
/// assert_eq!(registry.names(), ["square", "parse"]);
/// ```
#[derive(Default)]
pub struct Registry {
    names: Vec<&'static str>,
    signatures: Vec<String>,
    runners: Vec<Runner>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("tasks", &self.names)
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` as the implementation of `task`.
    ///
    /// A panic inside `f` is caught and reaches the caller as
    /// [`TaskError::Panicked`] with its message and location (unless the
    /// program is built with `panic = "abort"`, in which case the worker
    /// dies and the caller gets a worker-died error).
    ///
    /// # Panics
    /// If a task of the same name is already registered.
    pub fn task<I, O, F>(self, task: Task<I, O>, f: F) -> Self
    where
        I: Payload,
        O: Payload,
        F: Fn(I) -> O + Send + Sync + 'static,
    {
        self.add(task, runner(move |input| Ok(f(input))))
    }

    /// Registers a fallible task: `Err(e)` reaches the caller as
    /// [`TaskError::Failed`] carrying `e`'s text and the text of each of
    /// its sources. `E` is anything that converts into a boxed error:
    /// `anyhow::Error`, any `std::error::Error + Send + Sync`, `String`,
    /// `&str`.
    ///
    /// # Panics
    /// If a task of the same name is already registered.
    pub fn try_task<I, O, E, F>(self, task: Task<I, O>, f: F) -> Self
    where
        I: Payload,
        O: Payload,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
        F: Fn(I) -> Result<O, E> + Send + Sync + 'static,
    {
        self.add(
            task,
            runner(move |input| f(input).map_err(|e| failed(&*e.into()))),
        )
    }

    /// The registered task names, in registration order.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// Each task's [`Task::signature`], in registration order.
    pub fn signatures(&self) -> &[String] {
        &self.signatures
    }

    pub(crate) fn runner(&self, index: u32) -> Option<&Runner> {
        self.runners.get(index as usize)
    }

    fn add<I, O>(mut self, task: Task<I, O>, runner: Runner) -> Self {
        let name = task.name();
        assert!(
            !self.names.contains(&name),
            "procpool: task {name:?} is registered twice"
        );
        self.names.push(name);
        self.signatures.push(task.signature());
        self.runners.push(runner);
        self
    }
}

fn runner<I, O, F>(f: F) -> Runner
where
    I: Payload,
    O: Payload,
    F: Fn(I) -> Result<O, TaskError> + Send + Sync + 'static,
{
    Box::new(move |mut inputs, count, max_payload, out, done| {
        let limit = max_payload.saturating_add(ENCODING_SLACK);
        let mut bad_input: Option<String> = None;
        // Items finished since `done` was last called, and how many it
        // lets pass before the next call.
        let (mut pending, mut next) = (0u32, 1u32);
        let mut latest = out.len();
        for _ in 0..count {
            latest = out.len();
            let result = match &bad_input {
                Some(message) => Err(TaskError::DecodeInput {
                    message: message.clone(),
                }),
                None => match inputs.next::<I>() {
                    Ok(input) => call_caught(|| f(input)),
                    Err(e) => {
                        // The rest of the chunk cannot be found without this item's length.
                        let message = error_chain(&e);
                        bad_input = Some(message.clone());
                        Err(TaskError::DecodeInput { message })
                    }
                },
            };
            // On error `out` is as before: the error takes the result's place.
            if let Err(e) = out.encode(&result, limit) {
                let error = match e {
                    IpcError::PayloadTooLarge { len, .. } => TaskError::OutputTooLarge {
                        len,
                        max: max_payload,
                    },
                    e => TaskError::EncodeOutput {
                        message: error_chain(&e),
                    },
                };
                let failed: Result<O, TaskError> = Err(error);
                out.encode(&failed, u64::MAX)
                    .expect("a TaskError always encodes");
            }
            pending += 1;
            if pending >= next || out.len() as u64 > limit {
                next = done(out, pending, latest).max(1);
                pending = 0;
            }
        }
        if pending > 0 {
            done(out, pending, latest);
        }
    })
}

/// `e` and its sources, joined by ": ".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

thread_local! {
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that, on a thread running a task, records
/// the location instead of printing: the panic reaches the caller as data.
/// Panics elsewhere go to the previous hook.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_TASK.with(Cell::get) {
                let location = info.location().map(ToString::to_string);
                PANIC_LOCATION.with(|l| *l.borrow_mut() = location);
            } else {
                previous(info);
            }
        }));
    });
}

fn call_caught<O>(f: impl FnOnce() -> Result<O, TaskError>) -> Result<O, TaskError> {
    IN_TASK.with(|t| t.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    IN_TASK.with(|t| t.set(false));
    result.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-string payload".to_owned());
        Err(TaskError::Panicked {
            message,
            location: PANIC_LOCATION.with(|l| l.borrow_mut().take()),
        })
    })
}

/// A task's error as it travels: its text and its sources' texts.
fn failed(e: &(dyn std::error::Error + 'static)) -> TaskError {
    let mut causes = Vec::new();
    let mut source = e.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    TaskError::Failed {
        message: e.to_string(),
        causes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF: Task<u32, u32> = Task::new("half");
    const PARSE: Task<String, u8> = Task::new("parse");

    fn run(reg: &Registry, index: u32, inputs: &[impl serde::Serialize]) -> Vec<u8> {
        let mut payload = Vec::new();
        for i in inputs {
            codec::encode_into(i, &mut payload).unwrap();
        }
        let mut out = Output::in_memory();
        reg.runner(index).unwrap()(
            Inputs::bytes(&payload),
            inputs.len() as u32,
            1 << 20,
            &mut out,
            &mut |_, _, _| u32::MAX,
        );
        out.to_vec()
    }

    fn results<O: Payload>(mut bytes: &[u8], n: usize) -> Vec<Result<O, TaskError>> {
        (0..n)
            .map(|_| {
                let (r, used) = codec::decode(bytes).unwrap();
                bytes = &bytes[used..];
                r
            })
            .collect()
    }

    #[test]
    fn runs_catches_panics_and_failures() {
        install_panic_hook();
        let reg = Registry::new()
            .task(HALF, |x| {
                assert!(x % 2 == 0, "odd input {x}");
                x / 2
            })
            .try_task(PARSE, |s: String| s.parse::<u8>());
        let got = results::<u32>(&run(&reg, 0, &[4u32, 3, 8]), 3);
        assert_eq!(got[0], Ok(2));
        assert!(
            matches!(&got[1], Err(TaskError::Panicked { message, location: Some(_) }) if message == "odd input 3")
        );
        assert_eq!(got[2], Ok(4));
        let got = results::<u8>(&run(&reg, 1, &["7", "x"]), 2);
        assert_eq!(got[0], Ok(7));
        assert!(
            matches!(&got[1], Err(TaskError::Failed { message, .. }) if message.contains("invalid digit"))
        );
    }

    #[test]
    fn a_failure_keeps_its_sources() {
        // Before, only the outermost text crossed: "loading input 3".
        let reg = Registry::new().try_task(PARSE, |s: String| {
            let n: u8 = s
                .parse()
                .map_err(anyhow::Error::from)
                .map_err(|e| e.context("parsing the count"))
                .map_err(|e| e.context(format!("loading input {s}")))?;
            Ok::<_, anyhow::Error>(n)
        });
        let got = results::<u8>(&run(&reg, 0, &["x"]), 1);
        let Err(err @ TaskError::Failed { message, causes }) = &got[0] else {
            panic!("expected a failure, got {:?}", got[0]);
        };
        assert_eq!(message, "loading input x");
        assert_eq!(causes[0], "parsing the count");
        assert!(causes[1].contains("invalid digit"), "{causes:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "task failed: loading input x: parsing the count: {}",
                causes[1]
            )
        );
    }

    #[test]
    fn undecodable_input_fails_every_item_of_the_chunk() {
        let reg = Registry::new().task(PARSE, |s: String| s.len() as u8);
        let mut out = Output::in_memory();
        reg.runner(0).unwrap()(
            Inputs::bytes(&[0xFF, 0xFF]),
            2,
            1 << 20,
            &mut out,
            &mut |_, _, _| u32::MAX,
        );
        let got = results::<u8>(&out.to_vec(), 2);
        assert!(
            got.iter()
                .all(|r| matches!(r, Err(TaskError::DecodeInput { .. })))
        );
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn duplicate_names_panic() {
        let _ = Registry::new().task(HALF, |x| x).task(HALF, |x| x);
    }
}

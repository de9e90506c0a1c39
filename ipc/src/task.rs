//! The typed task declaration shared by the master and the worker.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The name and the input/output types of a task.
///
/// Declare each task once, as a constant both sides can see; the master
/// submits work by it and the worker registers its function under it, so a
/// wrong input or output type is a compile error, not a runtime surprise.
/// Only the name crosses the process boundary: no function address is ever
/// sent.
///
/// ```
/// use procpool::Task;
///
/// pub const SQUARE: Task<u64, u64> = Task::new("square");
/// assert_eq!(SQUARE.name(), "square");
/// ```
///
/// Inputs and outputs must be [`Payload`]s: serialisable, owned and `Send`.
/// Each claim is checked when the task is registered or used; the examples
/// below are rejected at compile time.
pub struct Task<I, O> {
    name: &'static str,
    _types: PhantomData<fn(I) -> O>,
}

/// What a task input or output must be: serialisable, owned and `Send`.
///
/// Implemented for every type that is
/// `Serialize + DeserializeOwned + Send + 'static`: derive serde's traits
/// for your own types and use owned fields (`String`, `Vec<T>`, `PathBuf`),
/// not borrowed ones. Queue and pipe items are payloads too.
///
/// ```
/// use procpool::{Payload, Task};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Job {
///     name: String,
///     weights: Vec<f64>,
/// }
///
/// fn is_payload<T: Payload>() {}
/// is_payload::<Job>();
/// const SCORE: Task<Job, f64> = Task::new("score");
/// ```
///
/// The compile-time check cannot promise that every *value* encodes. Some
/// fail at run time: a `PathBuf` that is not UTF-8, and types that need a
/// self-describing format (`#[serde(untagged)]`, `#[serde(flatten)]`,
/// `serde_json::Value`), which the codec (bincode) is not. Such a failure
/// reaches the caller as a typed encode or decode error, not a hang.
///
/// Not serialisable (no serde derive):
///
/// ```compile_fail,E0277
/// struct Job(u32);
/// fn is_payload<T: procpool::Payload>() {}
/// is_payload::<Job>();
/// ```
///
/// Not owned (`&str` borrows from its input; use `String`). The compiler
/// says "implementation of `Deserialize` is not general enough":
///
/// ```compile_fail
/// fn is_payload<T: procpool::Payload>() {}
/// is_payload::<&'static str>();
/// ```
///
/// Not `Send` (a raw pointer, even in a serialisable wrapper):
///
/// ```compile_fail,E0277
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Local(std::marker::PhantomData<*const u8>);
/// fn is_payload<T: procpool::Payload>() {}
/// is_payload::<Local>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a task input or output (a procpool `Payload`)",
    label = "not a `Payload`",
    note = "derive `Serialize`/`Deserialize`; use owned types such as `String`"
)]
pub trait Payload: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Payload for T {}

impl<I, O> Task<I, O> {
    /// Declares a task called `name`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            _types: PhantomData,
        }
    }

    /// The task's input and output types, as `"In -> Out"`: the master and
    /// a worker program built separately compare it at the handshake, so a
    /// task whose types differ on the two sides is refused instead of
    /// decoding garbage. (`std::any::type_name`: the same for the same
    /// types and compiler.)
    pub fn signature(&self) -> String {
        format!(
            "{} -> {}",
            std::any::type_name::<I>(),
            std::any::type_name::<O>()
        )
    }

    /// The task's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<I, O> Clone for Task<I, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I, O> Copy for Task<I, O> {}

impl<I, O> fmt::Debug for Task<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("name", &self.name)
            .field("input", &std::any::type_name::<I>())
            .field("output", &std::any::type_name::<O>())
            .finish()
    }
}

/// The task list of this program's registry, as `procpool::init` found it
/// in the master: each task's name and [`Task::signature`], in
/// registration order. A pool without local workers takes its task list
/// from here, since no local worker's handshake brings one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Task names; a task's number is its index.
    pub names: Vec<String>,
    /// Each task's signature, `Input -> Output`.
    pub signatures: Vec<String>,
}

static REGISTERED: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();

/// Records this process's task list (the first call wins); called by
/// `procpool::init` in the master.
#[doc(hidden)]
pub fn register_catalog(catalog: Catalog) {
    let _ = REGISTERED.set(catalog);
}

/// The task list `procpool::init` recorded in this process, if it was
/// called (in the master).
pub fn registered_catalog() -> Option<&'static Catalog> {
    REGISTERED.get()
}

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
/// use procpool_ipc::Task;
///
/// pub const SQUARE: Task<u64, u64> = Task::new("square");
/// assert_eq!(SQUARE.name(), "square");
/// ```
///
/// Inputs and outputs must be serialisable, owned and `Send`:
///
/// ```compile_fail
/// use procpool_ipc::Task;
/// // `&str` borrows: it cannot be a task input.
/// fn check<I: procpool_ipc::task::Payload>() {}
/// check::<&'static std::cell::Cell<u8>>();
/// ```
pub struct Task<I, O> {
    name: &'static str,
    _types: PhantomData<fn(I) -> O>,
}

/// What a task input or output must be: serialisable, owned and `Send`.
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

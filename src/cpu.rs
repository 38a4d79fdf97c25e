//! Where CPU-heavy work (scoring, index builds) runs: off the async
//! runtime on a blocking thread, so queries and heartbeats keep flowing;
//! except on a current-thread runtime, which has no other worker to keep
//! free, where it runs inline. That also keeps a deterministic simulation
//! (a paused current-thread runtime) deterministic: no work finishes at a
//! moment decided by another thread. A leaf.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f` off the runtime (or inline on a current-thread runtime). A
/// panic in `f` is resumed in the caller.
pub(crate) async fn run<T, F>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let inline =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
    if inline {
        return f();
    }
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("cpu task cancelled: {e}"),
    }
}

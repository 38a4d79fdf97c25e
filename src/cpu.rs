//! Where CPU-heavy work (scoring, index builds) runs: off the async
//! runtime on a blocking thread, so queries and heartbeats keep flowing;
//! except on a current-thread runtime, which has no other worker to keep
//! free, where it runs inline. That also keeps a deterministic simulation
//! (a paused current-thread runtime) deterministic: no work finishes at a
//! moment decided by another thread. A leaf.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f` on the rayon pool (sized to the cores; inline on a
/// current-thread runtime) and returns its result, or the payload of its
/// panic: many small tasks at once (a query's search units) share the
/// cores instead of each taking a blocking thread.
pub(crate) async fn pooled<T, F>(f: F) -> std::thread::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let run = move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let inline =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
    if inline {
        return run();
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(run());
    });
    rx.await.expect("the pool runs every task it is given")
}

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

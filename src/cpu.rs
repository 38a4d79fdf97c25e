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

/// Caps glibc's malloc arenas (`M_ARENA_MAX`) at one per core, unless
/// the `MALLOC_ARENA_MAX` environment variable sets it (a no-op off
/// glibc). glibc's default is eight per core, and every thread that
/// allocates may open one: a reader's cache parts are decoded on
/// blocking threads and freed from others, so each arena keeps its own
/// freed, fragmented pages. On 2 cores, a reader serving the 4M
/// noisy-copy set with a 256 MiB cache peaked at 600 MB resident with
/// the default, 486 MB with four arenas, 385 MB with two and 299 MB with
/// one; but one arena halved the warm throughput of 8 clients (threads
/// queue for its lock), two kept it (docs/benchmarks.md, "Reader
/// memory"). Called by [`crate::runtime`] before the runtime's threads
/// start: arenas a thread already opened stay.
pub(crate) fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = i32::try_from(cores.max(2)).unwrap_or(i32::MAX);
        // SAFETY: mallopt only sets an allocator parameter; called
        // before other threads exist, nothing races it.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

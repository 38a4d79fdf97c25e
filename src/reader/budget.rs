//! How much memory this process may plan its caches with.

/// The memory this process may plan caches with: the container's cgroup
/// memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`), else the
/// Lambda function's memory size, else the host's memory, times
/// `SHOAL_MEMORY_FRACTION` (default 0.5). Inside a container the host's
/// memory is never used: it is not ours.
pub fn memory_budget_bytes() -> u64 {
    let fraction = std::env::var("SHOAL_MEMORY_FRACTION")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| *f > 0.0 && *f <= 1.0)
        .unwrap_or(0.5);
    let limit = cgroup_memory_limit()
        .or_else(|| {
            std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|mb| mb * 1024 * 1024)
        })
        .unwrap_or_else(host_memory);
    (limit as f64 * fraction) as u64
}

/// The reader's cache budget: `SHOAL_CACHE_BYTES` (e.g. `256MiB`) when
/// set, else `fraction` of [`memory_budget_bytes`].
pub fn cache_budget_bytes(fraction: f64) -> u64 {
    if let Ok(v) = std::env::var("SHOAL_CACHE_BYTES") {
        match crate::vocab::parse_bytes(&v) {
            Ok(b) => return b,
            Err(e) => tracing::warn!("ignoring SHOAL_CACHE_BYTES: {e}"),
        }
    }
    (memory_budget_bytes() as f64 * fraction) as u64
}

/// The cgroup memory limit, if this process runs under one that is set.
fn cgroup_memory_limit() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let limit = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))?
        .trim()
        .parse::<u64>()
        .ok()?;
    // v1 reports "no limit" as a huge number; v2 as "max" (not a number).
    (limit < host_memory()).then_some(limit)
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(2 << 30)
}

//! `/metrics`: what the HTTP server counts (requests and latency by
//! endpoint, store requests per search) and the Prometheus text of those
//! counters and of the served index's reader, writer and store figures.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::api::{ReaderStats, WriterStatsSnapshot};
use crate::db::Db;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Upper bounds of the buckets of store requests per search.
const QUERY_REQUEST_BUCKETS: [u64; 10] = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500];

#[derive(Default)]
pub(super) struct HttpMetrics {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    /// Store requests each served search made (`stats.requests`).
    query_requests: [u64; QUERY_REQUEST_BUCKETS.len()],
    query_requests_count: u64,
    query_requests_sum: u64,
}

impl HttpMetrics {
    /// One answered request: its endpoint, status and latency.
    pub(super) fn observe_request(&mut self, endpoint: &'static str, status: u16, secs: f64) {
        *self.requests.entry((endpoint, status)).or_default() += 1;
        let h = self.latency.entry(endpoint).or_default();
        h.count += 1;
        h.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
    }

    pub(super) fn observe_query_requests(&mut self, n: u64) {
        for (i, b) in QUERY_REQUEST_BUCKETS.iter().enumerate() {
            if n <= *b {
                self.query_requests[i] += 1;
            }
        }
        self.query_requests_count += 1;
        self.query_requests_sum += n;
    }
}

/// One gauge or counter of the served index, read from its reader's and
/// writer's statistics.
struct Gauge {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&ReaderStats, &WriterStatsSnapshot) -> f64,
}

/// The index's figures, in the order `/metrics` lists them.
const GAUGES: [Gauge; 17] = [
    Gauge {
        name: "shoal_unindexed_segments",
        kind: "gauge",
        help: "Segments above their partition's watermark (not yet in index shards), in the partitions this instance has loaded.",
        value: |rs, _| rs.unindexed_segments as f64,
    },
    Gauge {
        name: "shoal_unindexed_records",
        kind: "gauge",
        help: "Records in those segments (searched exactly until the indexer moves them).",
        value: |rs, _| rs.unindexed_records as f64,
    },
    Gauge {
        name: "shoal_index_lag_seconds",
        kind: "gauge",
        help: "Age of the oldest segment not yet in index shards (0: none).",
        value: |rs, _| rs.index_lag_seconds,
    },
    Gauge {
        name: "shoal_cache_hits_total",
        kind: "counter",
        help: "Cache lookups (segments and shard parts) answered from memory.",
        value: |rs, _| rs.cache_hits as f64,
    },
    Gauge {
        name: "shoal_cache_misses_total",
        kind: "counter",
        help: "Cache lookups that had to fetch.",
        value: |rs, _| rs.cache_misses as f64,
    },
    Gauge {
        name: "shoal_cache_hit_rate",
        kind: "gauge",
        help: "Hits over lookups (0 before any lookup).",
        value: |rs, _| hit_rate(rs),
    },
    Gauge {
        name: "shoal_cache_bytes",
        kind: "gauge",
        help: "Bytes the caches hold (segments and shard parts).",
        value: |rs, _| rs.cache_bytes as f64,
    },
    Gauge {
        name: "shoal_pinned_bytes",
        kind: "gauge",
        help: "Bytes of the index view held outside the cache (shard heads, ids).",
        value: |rs, _| rs.pinned_bytes as f64,
    },
    Gauge {
        name: "shoal_queries_total",
        kind: "counter",
        help: "Searches served.",
        value: |rs, _| rs.queries as f64,
    },
    Gauge {
        name: "shoal_records",
        kind: "gauge",
        help: "Live records in the partitions this reader has loaded.",
        value: |rs, _| rs.live_records as f64,
    },
    Gauge {
        name: "shoal_segments",
        kind: "gauge",
        help: "Segments in the partitions this reader has loaded.",
        value: |rs, _| rs.segments as f64,
    },
    Gauge {
        name: "shoal_write_records_total",
        kind: "counter",
        help: "Records written (upserts and deletes) by this instance.",
        value: |_, ws| ws.records as f64,
    },
    Gauge {
        name: "shoal_write_segments_total",
        kind: "counter",
        help: "Segments this instance committed.",
        value: |_, ws| ws.segments as f64,
    },
    Gauge {
        name: "shoal_write_bytes_total",
        kind: "counter",
        help: "Segment bytes this instance committed.",
        value: |_, ws| ws.bytes as f64,
    },
    Gauge {
        name: "shoal_cas_conflicts_total",
        kind: "counter",
        help: "Manifest commits that lost a compare-and-swap race (then retried).",
        value: |_, ws| ws.conflicts as f64,
    },
    Gauge {
        name: "shoal_unreadable_objects",
        kind: "gauge",
        help: "Objects (manifests, segments, shards) the last background GC or index round could not read and worked around; `shoal verify` names them.",
        value: |_, ws| ws.unreadable_objects as f64,
    },
    Gauge {
        name: "shoal_cas_retries_total",
        kind: "counter",
        help: "Commits retried after a transient store error.",
        value: |_, ws| ws.retries as f64,
    },
];

/// Cache hits over lookups (0 before any lookup).
fn hit_rate(rs: &ReaderStats) -> f64 {
    if rs.cache_hits + rs.cache_misses == 0 {
        0.0
    } else {
        rs.cache_hits as f64 / (rs.cache_hits + rs.cache_misses) as f64
    }
}

/// The Prometheus text of `/metrics`: the server's own counters, then,
/// with an index served, its figures and its store's requests.
pub(super) fn render(metrics: &std::sync::Mutex<HttpMetrics>, db: Option<&Db>) -> String {
    let mut out = String::new();
    write_http(&mut out, &metrics.lock().unwrap());
    let Some(db) = db else {
        return out;
    };
    write_index(&mut out, db);
    out
}

/// Requests and latency by endpoint, and store requests per search.
fn write_http(out: &mut String, m: &HttpMetrics) {
    out.push_str("# HELP shoal_http_requests_total HTTP requests by endpoint and status.\n");
    out.push_str("# TYPE shoal_http_requests_total counter\n");
    for ((ep, status), n) in &m.requests {
        let _ = writeln!(
            out,
            "shoal_http_requests_total{{endpoint=\"{ep}\",status=\"{status}\"}} {n}"
        );
    }
    out.push_str("# HELP shoal_http_request_duration_seconds Request latency by endpoint.\n");
    out.push_str("# TYPE shoal_http_request_duration_seconds histogram\n");
    for (ep, h) in &m.latency {
        let bounds = BUCKETS.iter().map(f64::to_string);
        let labels = format!("endpoint=\"{ep}\"");
        let name = "shoal_http_request_duration_seconds";
        write_histogram(out, name, &labels, bounds, &h.counts, h.count, h.sum);
    }
    out.push_str(
        "# HELP shoal_query_store_requests Object-store requests each search made.\n\
         # TYPE shoal_query_store_requests histogram\n",
    );
    write_histogram(
        out,
        "shoal_query_store_requests",
        "",
        QUERY_REQUEST_BUCKETS.iter().map(u64::to_string),
        &m.query_requests,
        m.query_requests_count,
        m.query_requests_sum as f64,
    );
}

/// The served index's reader and writer figures and store requests.
fn write_index(out: &mut String, db: &Db) {
    let rs = db.reader_stats();
    let ws = db.writer_stats();
    for g in &GAUGES {
        let (name, kind, help, value) = (g.name, g.kind, g.help, (g.value)(&rs, &ws));
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let r = db.store_counts();
    out.push_str("# HELP shoal_store_requests_total Object-store requests by kind.\n# TYPE shoal_store_requests_total counter\n");
    for (kind, n) in [
        ("get", r.get),
        ("put", r.put),
        ("list", r.list),
        ("head", r.head),
        ("delete", r.delete),
    ] {
        let _ = writeln!(out, "shoal_store_requests_total{{kind=\"{kind}\"}} {n}");
    }
    out.push_str("# HELP shoal_store_outcomes_total Conditional outcomes: 304, 404, 412.\n# TYPE shoal_store_outcomes_total counter\n");
    for (code, n) in [
        ("304", r.not_modified),
        ("404", r.not_found),
        ("412", r.precondition_failed),
    ] {
        let _ = writeln!(out, "shoal_store_outcomes_total{{code=\"{code}\"}} {n}");
    }
}

/// One Prometheus histogram's lines: the cumulative count at each bound,
/// `+Inf`, the sum and the count; `labels` (may be empty) go on each.
fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: impl Iterator<Item = String>,
    counts: &[u64],
    count: u64,
    sum: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (b, n) in bounds.zip(counts) {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let braces = |l: &str| {
        if l.is_empty() {
            String::new()
        } else {
            format!("{{{l}}}")
        }
    };
    let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
    let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
}

//! `Handle`: one open [`shoal::Db`], one method per call.
//!
//! Every method copies what it needs out of Python objects first (ids,
//! the rows of a numpy array, JSON text), then releases the GIL
//! (`Python::detach`) for the whole engine call, so the caller's other
//! threads run while shoal does I/O and searches. Metadata and filters
//! cross as JSON text (one `json.dumps`/`json.loads` on the Python side
//! per call, never per row); vectors cross as numpy arrays.

use std::sync::Mutex;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use serde_json::Value;
use shoal::api::CompactRequest;
use shoal::api::{
    Consistency, JoinOptions, Metric, QueryText, Record, RequestedSettings, Role, SearchRequest,
    SearchResponse, StoredRecord, TextField,
};
use shoal::{Db, OpenOptions};

use crate::{error, invalid, raise, runtime};

/// Searches `search_many` runs at once.
const SEARCH_CONCURRENCY: usize = 8;

/// A record as Python receives it: id, vector, metadata as JSON text.
type RecordTuple<'py> = (String, Bound<'py, PyArray1<f32>>, String);
/// Search hits: ids, distances, scores, a JSON array of metadata, and a
/// JSON array of each hit's text scores (`null` without text).
type HitsTuple<'py> = (
    Vec<String>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<f32>>,
    String,
    String,
);

/// Runs `f` on the process's runtime with the GIL released.
fn engine<T: Send>(
    py: Python<'_>,
    f: impl std::future::Future<Output = Result<T, shoal::Error>> + Send,
) -> PyResult<T> {
    let rt = runtime()?;
    py.detach(|| rt.block_on(f)).map_err(|e| raise(py, e))
}

fn parse_json(py: Python<'_>, what: &str, text: &str) -> PyResult<Value> {
    serde_json::from_str(text).map_err(|e| invalid(py, format!("{what} is not valid JSON: {e}")))
}

fn consistency(py: Python<'_>, name: Option<&str>) -> PyResult<Consistency> {
    match name {
        None => Ok(Consistency::default()),
        Some(s) => serde_json::from_value(Value::String(s.to_string())).map_err(|_| {
            invalid(
                py,
                format!("consistency {s:?} is not one of eventual, bounded, strong"),
            )
        }),
    }
}

/// Options of `shoal.open`, as `JoinOptions` and `OpenOptions` say them.
#[allow(clippy::too_many_arguments)]
fn open_options(
    py: Python<'_>,
    dimensions: Option<u32>,
    metric: Option<&str>,
    partitions: Option<u32>,
    model: Option<String>,
    role: Option<&str>,
    create: bool,
    compact_every: Option<f64>,
    text_fields: Option<Vec<(String, String)>>,
) -> PyResult<OpenOptions> {
    let metric = metric
        .map(|m| m.parse::<Metric>().map_err(|e| invalid(py, e.to_string())))
        .transpose()?;
    let role = match role.unwrap_or("both") {
        "both" => Role::Both,
        "writer" => Role::Writer,
        "reader" => Role::Reader,
        other => {
            return Err(invalid(
                py,
                format!("role {other:?} is not one of both, writer, reader"),
            ))
        }
    };
    let compact_every = match compact_every {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            return Err(invalid(
                py,
                format!("compact_every must be a positive number of seconds, not {s}"),
            ))
        }
        s => s.map(Duration::from_secs_f64),
    };
    Ok(OpenOptions {
        cluster: JoinOptions {
            settings: RequestedSettings {
                partition_count: partitions,
                dimensions,
                distance_metric: metric,
                embedding_model: model,
                instance_timeout_seconds: None,
                text_fields: text_fields.map(|f| {
                    f.into_iter()
                        .map(|(key, analyzer)| (key, TextField { analyzer }))
                        .collect()
                }),
            },
            role: Some(role),
            create,
            ..Default::default()
        },
        compact_every,
        ..Default::default()
    })
}

/// Opens (or creates) the index at `url`; see `shoal.open`.
#[pyfunction]
#[pyo3(signature = (url, *, dimensions=None, metric=None, partitions=None, model=None, role=None, create=true, compact_every=None, text_fields=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn open(
    py: Python<'_>,
    url: String,
    dimensions: Option<u32>,
    metric: Option<&str>,
    partitions: Option<u32>,
    model: Option<String>,
    role: Option<&str>,
    create: bool,
    compact_every: Option<f64>,
    text_fields: Option<Vec<(String, String)>>,
) -> PyResult<Handle> {
    let opts = open_options(
        py,
        dimensions,
        metric,
        partitions,
        model,
        role,
        create,
        compact_every,
        text_fields,
    )?;
    let db = engine(py, Db::open(&url, opts))?;
    Ok(Handle {
        db: Mutex::new(Some(db)),
        pid: std::process::id(),
    })
}

/// An open index (the native half of `shoal.Db`).
#[pyclass(frozen, module = "shoal._shoal")]
pub(crate) struct Handle {
    /// `None` once closed.
    db: Mutex<Option<Db>>,
    /// The process that opened it: a handle does not survive `fork` (its
    /// background tasks ran on the parent's runtime).
    pid: u32,
}

impl Handle {
    /// The `Db` (a cheap clone), or why it cannot be used here.
    fn db(&self, py: Python<'_>) -> PyResult<Db> {
        if std::process::id() != self.pid {
            return Err(error(
                py,
                "ShoalError",
                format!(
                    "this handle was opened in process {} and cannot be used after fork; \
                     open a new one in this process",
                    self.pid
                ),
            ));
        }
        let db = self.db.lock().unwrap_or_else(|e| e.into_inner()).clone();
        db.ok_or_else(|| error(py, "ShoalError", "the handle is closed".into()))
    }

    /// Records from ids, a 2-D array and optional JSON metadata, checked
    /// for shape here; the engine checks the values.
    fn records(
        py: Python<'_>,
        ids: Vec<String>,
        vectors: PyReadonlyArray2<'_, f32>,
        metadata: Option<&str>,
    ) -> PyResult<Vec<Record>> {
        let rows = vectors.as_array();
        if rows.nrows() != ids.len() {
            return Err(invalid(
                py,
                format!("{} ids but {} vectors", ids.len(), rows.nrows()),
            ));
        }
        let mut metadata = match metadata {
            None => vec![None; ids.len()],
            Some(text) => match parse_json(py, "metadata", text)? {
                Value::Array(items) if items.len() == ids.len() => items
                    .into_iter()
                    .map(|m| (!m.is_null()).then_some(m))
                    .collect(),
                Value::Array(items) => {
                    return Err(invalid(
                        py,
                        format!("{} ids but {} metadata entries", ids.len(), items.len()),
                    ))
                }
                _ => return Err(invalid(py, "metadata must be a list (one entry per id)")),
            },
        }
        .into_iter();
        Ok(ids
            .into_iter()
            .zip(rows.rows())
            .map(|(id, row)| Record {
                metadata: metadata.next().flatten(),
                ..Record::new(id, row.to_vec())
            })
            .collect())
    }

    fn request(
        py: Python<'_>,
        vector: Vec<f32>,
        k: usize,
        filter: Option<&str>,
        consistency_name: Option<&str>,
        exact: bool,
        nprobe: Option<usize>,
    ) -> PyResult<SearchRequest> {
        let mut req = SearchRequest::new(vector, k);
        req.filter = filter.map(|f| parse_json(py, "filter", f)).transpose()?;
        req.consistency = consistency(py, consistency_name)?;
        req.exact = exact;
        req.nprobe = nprobe;
        Ok(req)
    }
}

impl Drop for Handle {
    /// A handle dropped unclosed (garbage-collected) deregisters in the
    /// background, so its instance record does not linger until it
    /// expires; nobody waits for it (a process exiting meanwhile leaves
    /// the record to expire, as a crash would).
    fn drop(&mut self) {
        let db = self.db.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let (Some(db), true) = (db, std::process::id() == self.pid) {
            if let Ok(rt) = runtime() {
                rt.spawn(async move {
                    let _ = db.close().await;
                });
            }
        }
    }
}

fn record_tuple<'py>(py: Python<'py>, r: StoredRecord) -> RecordTuple<'py> {
    let metadata = Value::Object(r.metadata).to_string();
    (r.id, PyArray1::from_vec(py, r.vector), metadata)
}

fn hits_tuple(py: Python<'_>, resp: SearchResponse) -> HitsTuple<'_> {
    let n = resp.results.len();
    let (mut ids, mut distances, mut scores) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut metadata, mut text) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for h in resp.results {
        ids.push(h.id);
        // NaN for a hit found by text alone (no vector distance).
        distances.push(h.distance.unwrap_or(f32::NAN));
        scores.push(h.score);
        metadata.push(h.metadata.map(Value::Object).unwrap_or(Value::Null));
        text.push(h.scores.map_or(Value::Null, |s| {
            let bm25: serde_json::Map<String, Value> = s
                .bm25
                .into_iter()
                .map(|k| (k.key, Value::from(k.score)))
                .collect();
            serde_json::json!({"fused": s.fused, "bm25": bm25})
        }));
    }
    (
        ids,
        PyArray1::from_vec(py, distances),
        PyArray1::from_vec(py, scores),
        Value::Array(metadata).to_string(),
        Value::Array(text).to_string(),
    )
}

fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()))
}

#[pymethods]
impl Handle {
    /// Inserts or replaces records; returns once they are committed
    /// (durable). Returns how many were written.
    #[pyo3(signature = (ids, vectors, metadata=None))]
    fn upsert(
        &self,
        py: Python<'_>,
        ids: Vec<String>,
        vectors: PyReadonlyArray2<'_, f32>,
        metadata: Option<&str>,
    ) -> PyResult<usize> {
        let db = self.db(py)?;
        let records = Self::records(py, ids, vectors, metadata)?;
        let receipt = engine(py, async move { db.upsert(&records).await })?;
        Ok(receipt.records)
    }

    /// Buffers records for bulk ingest; durable only after `flush`.
    #[pyo3(signature = (ids, vectors, metadata=None))]
    fn add(
        &self,
        py: Python<'_>,
        ids: Vec<String>,
        vectors: PyReadonlyArray2<'_, f32>,
        metadata: Option<&str>,
    ) -> PyResult<usize> {
        let db = self.db(py)?;
        let records = Self::records(py, ids, vectors, metadata)?;
        let report = engine(py, async move { db.add(&records).await })?;
        Ok(report.records)
    }

    /// Commits what `add` buffered; returns how many records it committed.
    fn flush(&self, py: Python<'_>) -> PyResult<usize> {
        let db = self.db(py)?;
        Ok(engine(py, async move { db.flush().await })?.records)
    }

    fn delete(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<usize> {
        let db = self.db(py)?;
        Ok(engine(py, async move { db.delete(&ids).await })?.records)
    }

    #[pyo3(signature = (id, consistency=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        id: String,
        consistency: Option<&str>,
    ) -> PyResult<Option<RecordTuple<'py>>> {
        let db = self.db(py)?;
        let c = self::consistency(py, consistency)?;
        let found = engine(py, async move { db.get(&id, c).await })?;
        Ok(found.map(|r| record_tuple(py, r)))
    }

    #[pyo3(signature = (ids, consistency=None))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<String>,
        consistency: Option<&str>,
    ) -> PyResult<Vec<Option<RecordTuple<'py>>>> {
        let db = self.db(py)?;
        let c = self::consistency(py, consistency)?;
        let found = engine(py, async move {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            db.get_many(&refs, c).await
        })?;
        Ok(found
            .into_iter()
            .map(|r| r.map(|r| record_tuple(py, r)))
            .collect())
    }

    /// A vector search, a text search (`texts`: each a searchable key,
    /// `None` for the index's only one, and its text), or both (hybrid).
    #[pyo3(signature = (vector, k, filter=None, consistency=None, exact=false, nprobe=None, texts=None))]
    #[allow(clippy::too_many_arguments)]
    fn search<'py>(
        &self,
        py: Python<'py>,
        vector: Option<PyReadonlyArray1<'_, f32>>,
        k: usize,
        filter: Option<&str>,
        consistency: Option<&str>,
        exact: bool,
        nprobe: Option<usize>,
        texts: Option<Vec<(Option<String>, String)>>,
    ) -> PyResult<HitsTuple<'py>> {
        let db = self.db(py)?;
        let v = vector.map(|v| v.as_array().to_vec()).unwrap_or_default();
        let mut req = Self::request(py, v, k, filter, consistency, exact, nprobe)?;
        req.text = texts
            .unwrap_or_default()
            .into_iter()
            .map(|(key, text)| QueryText { key, text })
            .collect();
        let resp = engine(py, async move { db.search(&req).await })?;
        Ok(hits_tuple(py, resp))
    }

    /// One search per row of `queries`, several at a time.
    #[pyo3(signature = (queries, k, filter=None, consistency=None, exact=false, nprobe=None))]
    #[allow(clippy::too_many_arguments)]
    fn search_many<'py>(
        &self,
        py: Python<'py>,
        queries: PyReadonlyArray2<'_, f32>,
        k: usize,
        filter: Option<&str>,
        consistency: Option<&str>,
        exact: bool,
        nprobe: Option<usize>,
    ) -> PyResult<Vec<HitsTuple<'py>>> {
        let db = self.db(py)?;
        let reqs = queries
            .as_array()
            .rows()
            .into_iter()
            .map(|row| Self::request(py, row.to_vec(), k, filter, consistency, exact, nprobe))
            .collect::<PyResult<Vec<_>>>()?;
        let resps = engine(py, async move {
            let searches = reqs.into_iter().map(|r| {
                let db = db.clone();
                async move { db.search(&r).await }
            });
            futures::stream::iter(searches)
                .buffered(SEARCH_CONCURRENCY)
                .try_collect::<Vec<_>>()
                .await
        })?;
        Ok(resps.into_iter().map(|r| hits_tuple(py, r)).collect())
    }

    /// Compacts partitions (by policy, or all with `force`) and runs the
    /// indexer, as `shoal compact` does; returns its report as JSON.
    #[pyo3(signature = (force=false))]
    fn compact(&self, py: Python<'_>, force: bool) -> PyResult<String> {
        let db = self.db(py)?;
        let (partitions, index) = engine(py, async move {
            let req = CompactRequest {
                force,
                partition: None,
            };
            let outcomes = db.compact(req).await?;
            Ok((outcomes, db.index(force).await?))
        })?;
        Ok(json_text(
            &serde_json::json!({"partitions": partitions, "index": index}),
        ))
    }

    /// `shoal status` as JSON; with `live`, counts live records (reads
    /// every segment).
    #[pyo3(signature = (live=false))]
    fn status(&self, py: Python<'_>, live: bool) -> PyResult<String> {
        let db = self.db(py)?;
        let st = engine(py, async move { db.status(live).await })?;
        Ok(json_text(&st))
    }

    /// `Db::warm_up` (what a query plans with, fetched now) as JSON; with
    /// `seconds`, `Db::warm_up_within` that long.
    #[pyo3(signature = (seconds=None))]
    fn warm(&self, py: Python<'_>, seconds: Option<f64>) -> PyResult<String> {
        let limit = match seconds {
            None => None,
            Some(s) if s.is_finite() && s >= 0.0 => Some(std::time::Duration::from_secs_f64(s)),
            Some(s) => {
                return Err(invalid(
                    py,
                    format!("seconds must be a finite number of seconds, at least 0, not {s}"),
                ))
            }
        };
        let db = self.db(py)?;
        let report = engine(py, async move {
            match limit {
                Some(l) => db.warm_up_within(l).await,
                None => db.warm_up().await,
            }
        })?;
        Ok(json_text(&report))
    }

    /// The bucket's config as JSON.
    fn config(&self, py: Python<'_>) -> PyResult<String> {
        Ok(json_text(&*self.db(py)?.config()))
    }

    /// Where the index lives, e.g. `s3://bucket/prefix`.
    fn describe(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.db(py)?.describe())
    }

    /// Commits what `add` buffered, stops background work and deregisters
    /// this instance. Closing twice is fine.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if std::process::id() != self.pid {
            // Forked: the parent's handle is the parent's to close.
            return Ok(());
        }
        let db = self.db.lock().unwrap_or_else(|e| e.into_inner()).take();
        match db {
            Some(db) => engine(py, async move { db.close().await }),
            None => Ok(()),
        }
    }

    fn closed(&self) -> bool {
        self.db.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }
}

//! Records from files, streamed: JSONL (`{"id", "vector", "metadata"}`
//! per line), and `.npy` / `.fvecs` vectors paired line by line with
//! optional id and metadata files. Each item says where it came from
//! (`file:line` or `file:row N`) so a bad record can be named.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{DatasetError, FvecsReader, NpyRows};
use crate::record::Record;

/// One record read from a file, or what is wrong with it; and where.
pub type RecordItem = (String, Result<Record, String>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    id: String,
    vector: Vec<f32>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    domain: Option<String>,
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn open(path: &Path) -> Result<File, DatasetError> {
    File::open(path).map_err(|source| DatasetError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Streams the records of one file: `.jsonl`/`.ndjson`/`.json` (one
/// record per line), `.npy` (float32, 2-D) or `.fvecs`. For vector files,
/// `ids` holds one id per line (plain or a JSON string; default: row
/// numbers) and `meta` one JSON object per line.
pub fn open_records(
    path: &Path,
    ids: Option<&Path>,
    meta: Option<&Path>,
) -> Result<Box<dyn Iterator<Item = RecordItem>>, DatasetError> {
    let name = path.display().to_string();
    let ext = extension(path);
    let file = open(path)?;
    match ext.as_str() {
        "jsonl" | "ndjson" | "json" => {
            let lines = BufReader::with_capacity(1 << 20, file).lines();
            Ok(Box::new(lines.enumerate().filter_map(move |(i, line)| {
                let loc = format!("{name}:{}", i + 1);
                match line {
                    Err(e) => Some((loc, Err(format!("cannot read line: {e}")))),
                    Ok(l) if l.trim().is_empty() => None,
                    Ok(l) => Some((
                        loc,
                        serde_json::from_str::<JsonRecord>(&l)
                            .map(|r| Record {
                                id: r.id,
                                vector: r.vector,
                                metadata: r.metadata,
                                domain: r.domain,
                            })
                            .map_err(|e| format!("bad JSON record: {e}")),
                    )),
                }
            })))
        }
        "fvecs" => {
            let rows = FvecsReader::open(path)?.map(|r| r.map_err(|e| e.to_string()));
            with_ids_and_metadata(name, rows, ids, meta)
        }
        "npy" => with_ids_and_metadata(name.clone(), NpyRows::open(file, &name)?, ids, meta),
        other => Err(DatasetError::format(
            &name,
            format!("unsupported file type `.{other}`; use .jsonl, .ndjson, .json, .npy or .fvecs"),
        )),
    }
}

/// Pairs vector rows with optional id and metadata files, line by line.
fn with_ids_and_metadata(
    name: String,
    rows: impl Iterator<Item = Result<Vec<f32>, String>> + 'static,
    ids: Option<&Path>,
    meta: Option<&Path>,
) -> Result<Box<dyn Iterator<Item = RecordItem>>, DatasetError> {
    let open_lines = |p: &Path| Ok::<_, DatasetError>(BufReader::new(open(p)?).lines());
    let mut ids = ids.map(open_lines).transpose()?;
    let mut metas = meta.map(open_lines).transpose()?;
    Ok(Box::new(rows.enumerate().map(move |(i, row)| {
        let loc = format!("{name}:row {i}");
        let record = (|| {
            let vector = row?;
            let id = match ids.as_mut() {
                None => i.to_string(),
                Some(lines) => {
                    let line = lines
                        .next()
                        .ok_or("the ids file has fewer lines than rows")?
                        .map_err(|e| e.to_string())?;
                    serde_json::from_str::<String>(&line)
                        .unwrap_or_else(|_| line.trim().to_string())
                }
            };
            let metadata = match metas.as_mut() {
                None => None,
                Some(lines) => {
                    let line = lines
                        .next()
                        .ok_or("the metadata file has fewer lines than rows")?
                        .map_err(|e| e.to_string())?;
                    Some(
                        serde_json::from_str(&line)
                            .map_err(|e| format!("bad metadata JSON: {e}"))?,
                    )
                }
            };
            Ok(Record {
                id,
                vector,
                metadata,
                domain: None,
            })
        })();
        (loc, record)
    })))
}

/// Row `index` (0-based) of a vector file: a `.fvecs` or `.npy` row, the
/// `"vector"` of a JSONL line, or (any other file) the whole file as one
/// JSON array of numbers.
pub fn row_of(path: &Path, index: usize) -> Result<Vec<f32>, DatasetError> {
    let name = path.display().to_string();
    let no_row = || DatasetError::format(&name, format!("has no row {index}"));
    let read_text = || {
        let bytes = std::fs::read(path).map_err(|source| DatasetError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        String::from_utf8(bytes).map_err(|_| DatasetError::format(&name, "not UTF-8"))
    };
    match extension(path).as_str() {
        "fvecs" => FvecsReader::open(path)?.nth(index).ok_or_else(no_row)?,
        "npy" => NpyRows::open(open(path)?, &name)?
            .nth(index)
            .ok_or_else(no_row)?
            .map_err(|e| DatasetError::format(&name, e)),
        "jsonl" | "ndjson" => {
            let text = read_text()?;
            let line = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .nth(index)
                .ok_or_else(no_row)?;
            let at =
                |reason: String| DatasetError::format(&format!("{name}:{}", index + 1), reason);
            let v: Value = serde_json::from_str(line).map_err(|e| at(format!("bad JSON: {e}")))?;
            serde_json::from_value(v.get("vector").cloned().unwrap_or(Value::Null))
                .map_err(|e| at(format!("no \"vector\" array: {e}")))
        }
        _ => serde_json::from_str(read_text()?.trim()).map_err(|e| {
            DatasetError::format(&name, format!("expected a JSON array of numbers: {e}"))
        }),
    }
}

//! Reading vectors and records from files: TEXMEX `.fvecs` / `.ivecs`
//! (as used by ANN benchmarks: each row is a little-endian i32 `d`
//! followed by `d` f32 or i32 values), NumPy `.npy` ([`NpyRows`]), and
//! JSONL records ([`open_records`], which also pairs vector files with id and
//! metadata files).
//!
//! Every reader streams, so files larger than memory are fine. Malformed
//! files give an error naming the file and row.

mod npy;
mod records;

pub use npy::NpyRows;
pub use records::{open_records, row_of, RecordItem};

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: row {row}: {reason}")]
    Malformed {
        path: PathBuf,
        row: usize,
        reason: String,
    },
    /// The file is not in the format its name says, or not one shoal reads.
    #[error("{name}: {reason}")]
    Format { name: String, reason: String },
}

impl DatasetError {
    fn format(name: &str, reason: impl Into<String>) -> Self {
        DatasetError::Format {
            name: name.to_string(),
            reason: reason.into(),
        }
    }
}

/// Streams the rows of a `.fvecs` file.
pub(crate) struct FvecsReader {
    path: PathBuf,
    reader: BufReader<File>,
    row: usize,
    dims: Option<usize>,
}

impl FvecsReader {
    pub(crate) fn open(path: impl AsRef<Path>) -> Result<Self, DatasetError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| DatasetError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(FvecsReader {
            path,
            reader: BufReader::with_capacity(1 << 20, file),
            row: 0,
            dims: None,
        })
    }

    fn malformed(&self, reason: impl Into<String>) -> DatasetError {
        DatasetError::Malformed {
            path: self.path.clone(),
            row: self.row,
            reason: reason.into(),
        }
    }

    /// The next row's 4-byte values, or None at a clean end of file.
    fn next_raw(&mut self) -> Option<Result<Vec<[u8; 4]>, DatasetError>> {
        let mut head = [0u8; 4];
        match self.reader.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return None,
            Err(e) => return Some(Err(self.malformed(e.to_string()))),
        }
        let d = i32::from_le_bytes(head);
        if !(1..=65536).contains(&d) {
            return Some(Err(
                self.malformed(format!("dimension {d} is not in 1..=65536"))
            ));
        }
        let d = d as usize;
        if let Some(first) = self.dims {
            if first != d {
                return Some(Err(self.malformed(format!(
                    "has {d} dimensions, earlier rows have {first}"
                ))));
            }
        }
        self.dims = Some(d);
        let mut buf = vec![0u8; d * 4];
        if let Err(e) = self.reader.read_exact(&mut buf) {
            return Some(Err(self.malformed(format!("truncated row: {e}"))));
        }
        self.row += 1;
        Some(Ok(buf
            .chunks_exact(4)
            .map(|c| c.try_into().expect("4 bytes"))
            .collect()))
    }
}

impl Iterator for FvecsReader {
    type Item = Result<Vec<f32>, DatasetError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_raw()
            .map(|r| r.map(|v| v.into_iter().map(f32::from_le_bytes).collect()))
    }
}

/// Reads a whole `.fvecs` file.
pub fn read_fvecs(path: impl AsRef<Path>) -> Result<Vec<Vec<f32>>, DatasetError> {
    FvecsReader::open(path)?.collect()
}

/// Reads a whole `.ivecs` file (e.g. ground-truth neighbour ids).
pub fn read_ivecs(path: impl AsRef<Path>) -> Result<Vec<Vec<i32>>, DatasetError> {
    let mut r = FvecsReader::open(path)?;
    let mut out = Vec::new();
    while let Some(row) = r.next_raw() {
        out.push(row?.into_iter().map(i32::from_le_bytes).collect());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, rows: &[(i32, Vec<u8>)]) {
        let mut b = Vec::new();
        for (d, body) in rows {
            b.extend_from_slice(&d.to_le_bytes());
            b.extend_from_slice(body);
        }
        std::fs::write(path, b).unwrap();
    }

    fn f(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_rows_and_reports_malformed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.fvecs");
        write(&p, &[(2, f(&[1.0, 2.0])), (2, f(&[3.0, 4.0]))]);
        assert_eq!(
            read_fvecs(&p).unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
        write(&p, &[(2, f(&[1.0, 2.0])), (3, f(&[3.0, 4.0, 5.0]))]);
        let e = read_fvecs(&p).unwrap_err().to_string();
        assert!(
            e.contains("a.fvecs") && e.contains("row 1") && e.contains("earlier rows have 2"),
            "{e}"
        );
        write(&p, &[(2, f(&[1.0]))]);
        let e = read_fvecs(&p).unwrap_err().to_string();
        assert!(e.contains("truncated row"), "{e}");
        write(&p, &[(-5, vec![])]);
        assert!(read_fvecs(&p)
            .unwrap_err()
            .to_string()
            .contains("dimension -5"));
        let e = read_fvecs(dir.path().join("missing.fvecs"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot open") && e.contains("missing.fvecs"),
            "{e}"
        );
        let q = dir.path().join("g.ivecs");
        write(
            &q,
            &[(2, [7i32, 9].iter().flat_map(|x| x.to_le_bytes()).collect())],
        );
        assert_eq!(read_ivecs(&q).unwrap(), vec![vec![7, 9]]);
    }
}

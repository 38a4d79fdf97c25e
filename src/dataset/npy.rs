//! Streams rows of a little-endian float32, 2-D, C-order `.npy` file.

use std::fs::File;
use std::io::{BufReader, Read};

use super::DatasetError;

/// The rows of a `.npy` file, one `Vec<f32>` each.
pub struct NpyRows {
    reader: BufReader<File>,
    rows: usize,
    cols: usize,
    at: usize,
}

impl NpyRows {
    /// Reads and checks the header of `file` (`name` is for errors).
    pub fn open(file: File, name: &str) -> Result<Self, DatasetError> {
        let bad = |reason: String| DatasetError::format(name, reason);
        let io = |e: std::io::Error| bad(format!("cannot read the .npy header: {e}"));
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        reader
            .read_exact(&mut magic)
            .map_err(|_| bad("not a .npy file (too short)".into()))?;
        if &magic[..6] != b"\x93NUMPY" {
            return Err(bad("not a .npy file (bad magic)".into()));
        }
        let header_len = if magic[6] == 1 {
            let mut b = [0u8; 2];
            reader.read_exact(&mut b).map_err(io)?;
            u16::from_le_bytes(b) as usize
        } else {
            let mut b = [0u8; 4];
            reader.read_exact(&mut b).map_err(io)?;
            u32::from_le_bytes(b) as usize
        };
        if header_len > 1 << 20 {
            return Err(bad(format!(
                ".npy header of {header_len} bytes is implausible"
            )));
        }
        let mut header = vec![0u8; header_len];
        reader.read_exact(&mut header).map_err(io)?;
        let header = String::from_utf8_lossy(&header);
        if !header.contains("'descr': '<f4'") {
            return Err(bad(format!(
                ".npy must hold little-endian float32 ('<f4'); header is {}",
                header.trim()
            )));
        }
        if header.contains("'fortran_order': True") {
            return Err(bad(
                ".npy in Fortran order is not supported; save it with C order".into(),
            ));
        }
        let shape = header
            .split("'shape': (")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .ok_or_else(|| bad(".npy header has no shape".into()))?;
        let dims: Vec<usize> = shape
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| bad(format!("bad .npy shape ({shape})")))?;
        let [rows, cols] = dims[..] else {
            return Err(bad(format!(
                ".npy must be 2-D (rows x dimensions), shape is ({shape})"
            )));
        };
        Ok(NpyRows {
            reader,
            rows,
            cols,
            at: 0,
        })
    }
}

impl Iterator for NpyRows {
    type Item = Result<Vec<f32>, String>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.rows {
            return None;
        }
        self.at += 1;
        let mut buf = vec![0u8; self.cols * 4];
        Some(
            self.reader
                .read_exact(&mut buf)
                .map(|_| {
                    buf.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("chunks of 4")))
                        .collect()
                })
                .map_err(|e| format!("truncated .npy data: {e}")),
        )
    }
}

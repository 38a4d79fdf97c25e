//! `shoal._shoal`: the native half of the `shoal` Python package, a thin
//! front end over [`shoal::Db`] like the CLI and `shoal serve` (it reaches
//! shoal only through `Db`, `OpenOptions`, `api` and the error kind;
//! `scripts/check-structure.py` checks it).
//!
//! # Layout
//!
//! - this file: the module, the process's tokio runtime, and the errors
//!   (each [`shoal::ErrorKind`] raised as the exception class of that name
//!   that `shoal/errors.py` defines, with the library's message);
//! - `handle`: the `Handle` class every `shoal.Db` wraps: one method per
//!   `Db` call, each releasing the GIL while the engine works.
//!
//! The Python half (`shoal/__init__.py`) turns array-likes into C-ordered
//! `float32` arrays and metadata into JSON before calling in, and builds
//! the result objects; this half never loops over rows in Python.

mod handle;

use std::sync::Mutex;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;
use shoal::ErrorKind;

/// The process's tokio runtime, created on first use and again in a child
/// after `fork` (its worker threads exist only in the parent). The
/// parent's runtime is leaked in the child, never dropped: dropping it
/// would wait for threads that are not there.
static RUNTIME: Mutex<Option<(u32, &'static tokio::runtime::Runtime)>> = Mutex::new(None);

pub(crate) fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if let Some((owner, rt)) = *slot {
        if owner == pid {
            return Ok(rt);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shoal")
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start shoal's runtime: {e}")))?;
    let rt: &'static _ = Box::leak(Box::new(rt));
    *slot = Some((pid, rt));
    Ok(rt)
}

/// The exception class (defined in `shoal/errors.py`) for a kind.
fn class_of(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidInput => "InvalidInput",
        ErrorKind::NotFound => "NotFound",
        ErrorKind::Conflict => "Conflict",
        ErrorKind::Unavailable => "Unavailable",
        ErrorKind::Corrupt => "CorruptData",
        _ => "ShoalError",
    }
}

/// Raises `shoal.errors.<class>(message)`.
pub(crate) fn error(py: Python<'_>, class: &str, message: String) -> PyErr {
    let ty = py
        .import("shoal.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| Ok(c.cast_into::<PyType>()?));
    match ty {
        Ok(ty) => PyErr::from_type(ty, message),
        Err(e) => e,
    }
}

/// A library error as its Python exception, with the library's message.
pub(crate) fn raise(py: Python<'_>, e: shoal::Error) -> PyErr {
    error(py, class_of(e.kind()), e.to_string())
}

/// Bad input found on this side, before the engine is called.
pub(crate) fn invalid(py: Python<'_>, message: impl Into<String>) -> PyErr {
    error(py, "InvalidInput", message.into())
}

#[pymodule]
fn _shoal(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<handle::Handle>()?;
    m.add_function(wrap_pyfunction!(handle::open, m)?)?;
    Ok(())
}

//! Names that are never content: comfystore's own marker files and the caches Python and
//! editors leave behind. Every layer that walks a folder (adding, placing, checking, locking)
//! asks here, so they all agree on what a tree holds.

/// The marker `materialize` writes in DEST: the tree placed there, and how.
pub const MARKER_NAME: &str = ".comfystore-materialized.json";

/// Byte-code caches and editor droppings: never part of a locked tree, never worth a warning.
pub fn is_cache_path(p: &str) -> bool {
    p.trim_end_matches('/')
        .split('/')
        .any(|c| CACHE_NAMES.contains(&c) || CACHE_SUFFIXES.iter().any(|s| c.ends_with(s)))
}

/// File name endings left out of source trees (not of the venv: sourceless packages ship .pyc).
pub const CACHE_SUFFIXES: &[&str] = &[".pyc", ".pyo"];

/// Names left out of every source tree wherever they occur.
pub const CACHE_NAMES: &[&str] = &["__pycache__", ".DS_Store", ".pytest_cache", ".mypy_cache"];

//! `file://` sources (an offline mirror): stored like a download and checked the same way,
//! without the network.

use super::download::Downloaded;
use super::fetcher::{Fetcher, Job, SourceFailed};
use super::FILE_SCHEME;
use crate::report::ProgressRead;
use std::path::{Component, Path, PathBuf};

/// Whether `path` is beneath one of `roots`: first by its words (absolute, no `..`), before
/// touching the file system, then with symlinks resolved. `Err` says why not, without telling
/// whether the file exists or how large it is.
fn allowed(path: &Path, roots: &[PathBuf]) -> std::result::Result<PathBuf, String> {
    let refused = || {
        format!(
            "{} is outside the folders local files may be read from (--mirror DIR, \
             --allow-file DIR or COMFYSTORE_ALLOW_FILE); not read",
            path.display()
        )
    };
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    let roots: Vec<PathBuf> = roots
        .iter()
        .filter_map(|r| std::path::absolute(r).ok())
        .collect();
    if !plain || !roots.iter().any(|r| path.starts_with(r)) {
        return Err(refused());
    }
    let real = path.canonicalize().map_err(|e| e.to_string())?;
    let real_roots: Vec<PathBuf> = roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
    if !real_roots.iter().any(|r| real.starts_with(r)) {
        return Err(refused());
    }
    Ok(real)
}

impl Fetcher {
    /// A local file. A missing file is a failed source, so the next one is tried.
    pub(super) fn try_file(
        &self,
        job: &Job,
        path: &Path,
    ) -> std::result::Result<Downloaded, SourceFailed> {
        let Job { store, d, bar } = *job;
        let fail = |e: String| (e, 1);
        let real;
        let path = match &self.opts.file_roots {
            None => path,
            Some(roots) => {
                real = allowed(path, roots).map_err(fail)?;
                real.as_path()
            }
        };
        let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        let put = store
            .put_reader_checked(
                &mut ProgressRead::new(file, bar),
                false,
                true,
                path,
                &|dg| d.expect.check(dg, &path.display().to_string()),
            )
            .map_err(|e| fail(e.to_string()))?;
        store.record_object(&put).map_err(|e| fail(e.to_string()))?;
        Ok(Downloaded::of(
            d,
            &put,
            format!("{FILE_SCHEME}{}", path.display()),
            1,
            0,
        ))
    }
}

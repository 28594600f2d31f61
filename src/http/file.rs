//! `file://` sources (an offline mirror): stored like a download and checked the same way,
//! without the network.

use super::download::Downloaded;
use super::fetcher::{Fetcher, Job, SourceFailed};
use super::FILE_SCHEME;
use crate::report::ProgressRead;
use std::path::Path;

impl Fetcher {
    /// A local file. A missing file is a failed source, so the next one is tried.
    pub(super) fn try_file(
        &self,
        job: &Job,
        path: &Path,
    ) -> std::result::Result<Downloaded, SourceFailed> {
        let Job { store, d, bar } = *job;
        let fail = |e: String| (e, 1);
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

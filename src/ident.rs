//! The forms of identifiers that several layers check: git commit ids and Python package
//! names. They are rules of git and of PEP 503, not of any one module, so they live here once.

/// A git commit id: 40 (SHA-1) or 64 (SHA-256 repos) lowercase hex digits.
pub fn is_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Normalise a distribution name (PEP 503: lowercase, runs of `-_.` become one `-`).
pub fn normalize_package_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

//! The python engine's own description of an environment. It is serialized in the engine's
//! files (the pins file `comfystore.pins/1` and an environment's `.comfystore-env.json`) in
//! the same form as a lockfile's `python` section.

use crate::store::{ObjectId, Sha256};
use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

/// An environment for one interpreter and platform: the interpreter facts wheels are chosen
/// by, the packages, and (when known) the stored tree. What the engine pins, installs and
/// finds. The lockfile's `python` section has the same shape but is the format's own type,
/// so the format and the engine can change apart; `pipeline` converts between them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    /// Interpreter version, e.g. `3.11.7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `cpython`, `pypy`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation: Option<String>,
    /// Wheel ABI tag of the interpreter, e.g. `cp311`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abi: Option<String>,
    /// Wheel platform tag, e.g. `linux_x86_64` or `macosx_14_0_arm64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// C library, e.g. `glibc 2.36` (manylinux wheels depend on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libc: Option<String>,
    /// Store tree of the installed environment (the venv folder) for this platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<ObjectId>,
    /// `uv` or `pip` when `tree` is comfystore's own install of `packages` with that
    /// installer: then a rebuild from the wheels must hash to `tree`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_with: Option<String>,
    #[serde(default)]
    pub packages: Vec<Package>,
}

/// One installed distribution.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// Normalised name (PEP 503: lowercase, runs of `-_.` become `-`).
    pub name: String,
    /// Empty only for a direct-URL package whose version is not known (imported snapshots).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The wheel's file name, when pinned to a wheel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wheel: Option<String>,
    /// Where it came from: a wheel URL, or the PEP 508 direct reference
    /// (`git+https://…@<commit>`, `file:///…`) that installed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::store::hex64::opt"
    )]
    pub sha256: Option<Sha256>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub editable: bool,
}

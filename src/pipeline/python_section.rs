//! The lock's `python` section and the python engine's [`EnvSpec`] are two types of one shape:
//! the format's and the engine's, so either can change without the other. This is where a
//! lock's section becomes what the engine pins, installs and finds, and back.

use crate::lockfile::{Package, Python};
use crate::python::{self, EnvSpec};

impl From<&Python> for EnvSpec {
    fn from(p: &Python) -> EnvSpec {
        EnvSpec {
            version: p.version.clone(),
            implementation: p.implementation.clone(),
            abi: p.abi.clone(),
            platform: p.platform.clone(),
            libc: p.libc.clone(),
            tree: p.tree,
            built_with: p.built_with.clone(),
            packages: p.packages.iter().map(python::Package::from).collect(),
        }
    }
}

impl From<EnvSpec> for Python {
    fn from(e: EnvSpec) -> Python {
        Python {
            version: e.version,
            implementation: e.implementation,
            abi: e.abi,
            platform: e.platform,
            libc: e.libc,
            tree: e.tree,
            built_with: e.built_with,
            // Where the packages were pinned from is the lock's, not the environment's: it
            // changes no installed byte.
            index_url: None,
            extra_index_urls: Vec::new(),
            packages: e.packages.into_iter().map(Package::from).collect(),
        }
    }
}

impl From<&Package> for python::Package {
    fn from(p: &Package) -> python::Package {
        python::Package {
            name: p.name.clone(),
            version: p.version.clone(),
            wheel: p.wheel.clone(),
            url: p.url.clone(),
            sha256: p.sha256,
            editable: p.editable,
        }
    }
}

impl From<python::Package> for Package {
    fn from(p: python::Package) -> Package {
        Package {
            name: p.name,
            version: p.version,
            wheel: p.wheel,
            url: p.url,
            sha256: p.sha256,
            editable: p.editable,
        }
    }
}

/// Give the packages that name no wheel and no URL (installed from an index) the wheel, URL
/// and sha256 of the same name and version in `from`. Returns how many were filled.
pub fn fill_wheels(packages: &mut [Package], from: &[python::Package]) -> usize {
    let mut n = 0;
    for p in packages
        .iter_mut()
        .filter(|p| p.wheel.is_none() && p.url.is_none())
    {
        if let Some(w) = from
            .iter()
            .find(|w| w.name == p.name && w.version == p.version)
        {
            p.wheel = w.wheel.clone();
            p.url = w.url.clone();
            p.sha256 = w.sha256;
            n += 1;
        }
    }
    n
}

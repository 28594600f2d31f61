//! `diff A B`: what changed between two lockfiles, part by part.

use super::{CustomNode, Lockfile, Model, Package};
use serde::Serialize;
use std::collections::BTreeMap;
use std::str::FromStr;

/// One difference. `from`/`to` are short human values (a commit, a version, a hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `comfyui`, `node`, `python`, `package` or `model`.
    pub part: &'static str,
    pub name: String,
    /// `added`, `removed`, `moved` (another commit), `upgraded`, `downgraded`, `changed`,
    /// `enabled`, `disabled`.
    pub change: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

impl Change {
    fn new(part: &'static str, name: &str, change: &'static str) -> Change {
        Change {
            part,
            name: name.to_string(),
            change,
            from: None,
            to: None,
        }
    }

    fn values(mut self, from: impl ToString, to: impl ToString) -> Change {
        self.from = Some(from.to_string());
        self.to = Some(to.to_string());
        self
    }

    /// The sign a human reads first: `+`, `-` or `~`.
    pub fn sign(&self) -> char {
        match self.change {
            "added" => '+',
            "removed" => '-',
            _ => '~',
        }
    }
}

fn short(s: &Option<String>) -> String {
    match s {
        Some(c) if c.len() >= 12 => c[..12].to_string(),
        Some(c) => c.clone(),
        None => "-".into(),
    }
}

fn opt_str<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), |v| v.to_string())
}

/// Every difference from `a` to `b`, in lock order (ComfyUI, nodes, Python, models).
pub fn diff(a: &Lockfile, b: &Lockfile) -> Vec<Change> {
    let mut out = Vec::new();
    let (ca, cb) = (&a.comfyui, &b.comfyui);
    if ca.commit != cb.commit {
        out.push(
            Change::new("comfyui", "comfyui", "moved").values(short(&ca.commit), short(&cb.commit)),
        );
    } else if ca.tree != cb.tree || ca.dirty != cb.dirty {
        out.push(
            Change::new("comfyui", "comfyui", "changed")
                .values(opt_str(&ca.tree), opt_str(&cb.tree)),
        );
    }
    if ca.repo != cb.repo {
        out.push(
            Change::new("comfyui", "repo", "changed").values(opt_str(&ca.repo), opt_str(&cb.repo)),
        );
    }

    keyed(
        &a.custom_nodes,
        &b.custom_nodes,
        |n| n.name.clone(),
        "node",
        &mut out,
        diff_node,
    );

    let empty = super::Python::default();
    let (pa, pb) = (
        a.python.as_ref().unwrap_or(&empty),
        b.python.as_ref().unwrap_or(&empty),
    );
    for (field, x, y) in [
        ("version", &pa.version, &pb.version),
        ("implementation", &pa.implementation, &pb.implementation),
        ("abi", &pa.abi, &pb.abi),
        ("platform", &pa.platform, &pb.platform),
        ("libc", &pa.libc, &pb.libc),
    ] {
        if x != y {
            out.push(Change::new("python", field, "changed").values(opt_str(x), opt_str(y)));
        }
    }
    let before = out.len();
    keyed(
        &pa.packages,
        &pb.packages,
        |p| p.name.clone(),
        "package",
        &mut out,
        diff_package,
    );
    if pa.tree != pb.tree && out.len() == before {
        // Same packages, other bytes (a file edited in site-packages, another build).
        out.push(
            Change::new("python", "environment", "changed")
                .values(opt_str(&pa.tree), opt_str(&pb.tree)),
        );
    }

    keyed(
        &a.models,
        &b.models,
        |m| m.path.clone(),
        "model",
        &mut out,
        diff_model,
    );
    out
}

/// Pair items by key; report added, removed, and what `changed` says of pairs.
fn keyed<T>(
    a: &[T],
    b: &[T],
    key: impl Fn(&T) -> String,
    part: &'static str,
    out: &mut Vec<Change>,
    changed: impl Fn(&str, &T, &T, &mut Vec<Change>),
) {
    let ma: BTreeMap<String, &T> = a.iter().map(|x| (key(x), x)).collect();
    let mb: BTreeMap<String, &T> = b.iter().map(|x| (key(x), x)).collect();
    let mut names: Vec<&String> = ma.keys().chain(mb.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        match (ma.get(name), mb.get(name)) {
            (Some(x), Some(y)) => changed(name, x, y, out),
            (Some(_), None) => out.push(Change::new(part, name, "removed")),
            (None, Some(_)) => out.push(Change::new(part, name, "added")),
            (None, None) => {}
        }
    }
}

fn diff_node(name: &str, a: &CustomNode, b: &CustomNode, out: &mut Vec<Change>) {
    if a.repo != b.repo {
        out.push(Change::new("node", name, "changed").values(
            format!("repo {}", opt_str(&a.repo)),
            format!("repo {}", opt_str(&b.repo)),
        ));
    }
    if a.commit != b.commit {
        out.push(Change::new("node", name, "moved").values(short(&a.commit), short(&b.commit)));
    } else if a.registry != b.registry {
        let v = |n: &CustomNode| {
            n.registry
                .as_ref()
                .map_or("-".into(), |r| r.version.clone())
        };
        out.push(Change::new("node", name, "changed").values(v(a), v(b)));
    } else if a.tree != b.tree || a.file != b.file || a.dirty != b.dirty {
        let id = |n: &CustomNode| opt_str(&n.tree.or(n.file));
        out.push(Change::new("node", name, "changed").values(id(a), id(b)));
    }
    if a.disabled != b.disabled {
        out.push(Change::new(
            "node",
            name,
            if b.disabled { "disabled" } else { "enabled" },
        ));
    }
}

fn diff_package(name: &str, a: &Package, b: &Package, out: &mut Vec<Change>) {
    if a.version != b.version {
        let change = match (
            pep440_rs::Version::from_str(&a.version),
            pep440_rs::Version::from_str(&b.version),
        ) {
            (Ok(x), Ok(y)) if y > x => "upgraded",
            (Ok(x), Ok(y)) if y < x => "downgraded",
            _ => "changed",
        };
        out.push(Change::new("package", name, change).values(&a.version, &b.version));
    } else if a.url != b.url
        || a.sha256 != b.sha256
        || a.editable != b.editable
        || a.wheel != b.wheel
    {
        let src = |p: &Package| {
            p.url
                .clone()
                .or(p.sha256.map(|s| s.hex()))
                .unwrap_or("index".into())
        };
        out.push(Change::new("package", name, "changed").values(src(a), src(b)));
    }
}

fn diff_model(name: &str, a: &Model, b: &Model, out: &mut Vec<Change>) {
    if a.sha256 != b.sha256 || a.size != b.size {
        out.push(
            Change::new("model", name, "changed")
                .values(&a.sha256.hex()[..12], &b.sha256.hex()[..12]),
        );
    } else if a.sources != b.sources {
        out.push(Change::new("model", name, "changed").values(
            format!("{} source(s)", a.sources.len()),
            format!("{} source(s)", b.sources.len()),
        ));
    }
}

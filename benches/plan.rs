//! Planning a 30,000-entry materialization, with no disk in the timed part: the planner is
//! pure, so the tree, DEST's scan and each entry's check are built in memory.
//!
//! `fresh`: an empty DEST, everything to create. `switch`: DEST holds version A (as placed,
//! plus some user files) and becomes version B, which differs from A in about 5% of its
//! entries (changed files, a package and a node dropped, a package and a node added).

use comfystore::place::{
    self, Dropped, EntryState, Kind, LinkMode, LinkPolicy, Marker, PlanInput, PrefixRule, Scan,
    Seen,
};
use comfystore::store::{Entry, Manifest, Node, ObjectId, StatKey};
use criterion::{criterion_group, criterion_main, Criterion};
use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

const DEST: &str = "/workspace/comfyui";
const STORE: &str = "/workspace/store";

fn id(n: u64, salt: u8) -> ObjectId {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[8] = salt;
    ObjectId(b)
}

fn file(path: String, n: u64, exec: bool) -> Entry {
    Entry {
        path,
        node: Node::File {
            exec,
            size: 1000 + n % 50_000,
            id: id(n, 0),
        },
    }
}

/// A package's (or a node's) files: `files` entries in folders of 20.
fn package(out: &mut Vec<Entry>, base: &str, files: u64, n0: u64) {
    for f in 0..files {
        out.push(file(
            format!("{base}/m{:02}/f{f:03}.py", f / 20),
            n0 + f,
            false,
        ));
    }
}

/// Version A: 20,000 venv entries (files, executables, symlinks), 8,000 ComfyUI and
/// custom_nodes entries (with some empty folders), 2,000 models.
fn version_a() -> Manifest {
    let mut e = Vec::with_capacity(30_000);
    let sp = "venv/lib/python3.11/site-packages";
    for p in 0..198 {
        package(
            &mut e,
            &format!("{sp}/pkg{p:03}"),
            100,
            1_000_000 + p * 1000,
        );
    }
    for b in 0..150 {
        e.push(file(format!("venv/bin/tool{b:03}"), 2_000_000 + b, true));
    }
    for s in 0..50 {
        e.push(Entry {
            path: format!("venv/bin/python3.{s:02}"),
            node: Node::Symlink {
                target: "python3".into(),
            },
        });
    }
    package(&mut e, "comfy", 1_996, 3_000_000);
    for d in ["input", "output", "user/default"] {
        e.push(Entry {
            path: d.into(),
            node: Node::Dir,
        });
    }
    for n in 0..60 {
        package(
            &mut e,
            &format!("custom_nodes/node{n:02}"),
            99,
            4_000_000 + n * 1000,
        );
        e.push(Entry {
            path: format!("custom_nodes/node{n:02}/web"),
            node: Node::Dir,
        });
    }
    e.push(file("main.py".into(), 5_000_000, false));
    for m in 0..2_000 {
        e.push(file(
            format!("models/loras/l{m:04}.safetensors"),
            6_000_000 + m,
            false,
        ));
    }
    let mut m = Manifest { entries: e };
    m.sort();
    m.validate().expect("a valid tree");
    assert_eq!(m.entries.len(), 30_000);
    m
}

/// Version B: A with every 40th file changed, a package and a node dropped, a package and a
/// node added.
fn version_b(a: &Manifest) -> Manifest {
    let dropped = [
        "venv/lib/python3.11/site-packages/pkg007/",
        "custom_nodes/node03/",
    ];
    let mut e: Vec<Entry> = a
        .entries
        .iter()
        .filter(|e| !dropped.iter().any(|d| e.path.starts_with(d)))
        .cloned()
        .collect();
    for (i, x) in e.iter_mut().enumerate() {
        if let Node::File { id: fid, .. } = &mut x.node {
            if i % 40 == 7 {
                fid.0[8] = 1;
            }
        }
    }
    package(
        &mut e,
        "venv/lib/python3.11/site-packages/newpkg",
        300,
        7_000_000,
    );
    package(&mut e, "custom_nodes/newnode", 100, 8_000_000);
    let mut m = Manifest { entries: e };
    m.sort();
    m.validate().expect("a valid tree");
    m
}

fn seen(kind: Kind, mode: u32, n: u64) -> Seen {
    Seen {
        kind,
        mode,
        stat: StatKey {
            dev: 1,
            ino: n,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
        },
    }
}

/// DEST holding `m` as placed, plus 200 user files under output/.
fn scan_of(m: &Manifest) -> Scan {
    let mut s = Scan::default();
    for (n, d) in place::tree_dirs(m).into_iter().enumerate() {
        s.insert(d.to_string(), seen(Kind::Dir, 0o40755, n as u64));
    }
    for (n, e) in m.entries.iter().enumerate() {
        let (kind, mode) = match &e.node {
            Node::File { exec: true, .. } => (Kind::File, 0o100755),
            Node::File { .. } => (Kind::File, 0o100644),
            Node::Symlink { .. } => (Kind::Symlink, 0o120777),
            Node::Dir => (Kind::Dir, 0o40755),
        };
        s.insert(e.path.clone(), seen(kind, mode, 100_000 + n as u64));
    }
    for u in 0..200 {
        s.insert(
            format!("output/img{u:03}.png"),
            seen(Kind::File, 0o100644, u),
        );
    }
    s
}

/// What the Checker would say of each entry of `m` in a DEST that holds `old`.
fn states(m: &Manifest, old: &Manifest) -> Vec<EntryState> {
    let before: HashMap<&str, &Node> = old
        .entries
        .iter()
        .map(|e| (e.path.as_str(), &e.node))
        .collect();
    m.entries
        .iter()
        .map(|e| match before.get(e.path.as_str()) {
            None => EntryState::Missing,
            Some(n) if **n == e.node => EntryState::Ok,
            Some(_) => EntryState::Modified {
                reason: "content differs".into(),
            },
        })
        .collect()
}

/// A switch: `input` with the previous version's tree and what the new one drops.
fn with_dropped<'a>(
    input: PlanInput<'a>,
    old: &'a Manifest,
    entries: &'a Manifest,
    states: &'a [EntryState],
) -> PlanInput<'a> {
    PlanInput {
        dropped: Some(Dropped {
            old,
            entries,
            states,
        }),
        ..input
    }
}

fn policy() -> LinkPolicy {
    LinkPolicy {
        default: LinkMode::Reflink,
        rules: vec![
            PrefixRule {
                prefix: "venv".into(),
                mode: LinkMode::Auto,
            },
            PrefixRule {
                prefix: "models".into(),
                mode: LinkMode::Share,
            },
        ],
    }
}

fn bench_plan(c: &mut Criterion) {
    let a = version_a();
    let b = version_b(&a);
    let (tree_a, tree_b) = (id(1, 9), id(2, 9));
    let policy = policy();
    let (dest, store) = (Path::new(DEST), Path::new(STORE));
    let input = |tree, manifest, scan, states, previous| PlanInput {
        tree,
        manifest,
        dest,
        store_root: store,
        policy: &policy,
        scan,
        states,
        dropped: None,
        marked: true,
        previous,
        layout: None,
        edited: &[],
        force: false,
    };

    let empty = Scan::default();
    let missing = vec![EntryState::Missing; a.entries.len()];
    let fresh = input(&tree_a, &a, &empty, &missing, None);
    let p = place::plan(&fresh).expect("a plan");
    assert_eq!(
        p.write.len(),
        a.entries.len() - 63,
        "every file and symlink"
    );

    let mut previous = Marker::new(tree_a, store, "materialized/bench".into(), policy.clone());
    previous.complete = true;
    let scan_a = scan_of(&a);
    let states_b = states(&b, &a);
    let gone = place::dropped(&a, &b);
    let gone_states = vec![EntryState::Ok; gone.entries.len()];
    let switch = || input(&tree_b, &b, &scan_a, &states_b, Some(&previous));
    let p = place::plan(&with_dropped(switch(), &a, &gone, &gone_states)).expect("a plan");
    let changed = p.write.len() + p.remove.len();
    assert!(
        (1_000..2_000).contains(&changed),
        "about 5% differs: {changed}"
    );
    eprintln!(
        "switch A -> B: {} written ({} replaced), {} removed, {} unchanged, {} extra",
        p.write.len(),
        p.write.iter().filter(|w| w.replace).count(),
        p.remove.len(),
        p.unchanged,
        p.extra
    );

    let mut g = c.benchmark_group("plan_30k");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("fresh", |bench| {
        bench.iter(|| black_box(place::plan(black_box(&fresh)).map(|p| p.write.len())))
    });
    g.bench_function("switch_5pct", |bench| {
        bench.iter(|| {
            let gone = place::dropped(black_box(&a), black_box(&b));
            let p = place::plan(&with_dropped(switch(), &a, &gone, &gone_states));
            black_box(p.map(|p| p.write.len()))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);

//! Tree manifests: canonical bytes, tree id, parsing back (with validation), validation alone
//! and sorting, on a ComfyUI-shaped manifest of 30,000 entries built in memory.
//!
//! `cargo bench --bench tree`. The manifest models one materialised install: ComfyUI's own
//! sources, custom nodes, a venv (site-packages with `__pycache__`, `.dist-info`, extension
//! modules, `bin/` scripts and the `python` symlinks), models, and a few empty directories.

use comfystore::store::{hash_bytes, Entry, Manifest, Node, ObjectId};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

const ENTRIES: usize = 30_000;

/// A small deterministic generator (xorshift64*), so every run builds the same manifest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Builder {
    rng: Rng,
    entries: Vec<Entry>,
}

impl Builder {
    fn file(&mut self, path: String, exec: bool) {
        // Sizes spread over 0 B .. 1 MiB, log-uniform-ish; about 3 % empty (__init__.py and
        // the like), which all share the empty object's id as in a real tree.
        let size = match self.rng.below(100) {
            0..=2 => 0,
            b => (1u64 << (6 + b % 15)) + self.rng.below(1 << (6 + b % 15)),
        };
        let id = if size == 0 {
            ObjectId::empty()
        } else {
            hash_bytes(&self.rng.next().to_le_bytes(), false).b3
        };
        self.entries.push(Entry {
            path,
            node: Node::File { exec, size, id },
        });
    }
    fn symlink(&mut self, path: String, target: &str) {
        self.entries.push(Entry {
            path,
            node: Node::Symlink {
                target: target.to_string(),
            },
        });
    }
    fn dir(&mut self, path: String) {
        self.entries.push(Entry {
            path,
            node: Node::Dir,
        });
    }
    fn full(&self) -> bool {
        self.entries.len() >= ENTRIES
    }
}

fn comfyui_manifest() -> Manifest {
    let mut b = Builder {
        rng: Rng(0x5EED_C0FF_EE15_600D),
        entries: Vec::with_capacity(ENTRIES),
    };
    // ComfyUI itself: about 900 files.
    for (dir, n, ext) in [
        ("comfy", 180, "py"),
        ("comfy/ldm/modules", 120, "py"),
        ("comfy/text_encoders", 90, "py"),
        ("comfy_extras", 110, "py"),
        ("comfy_api_nodes/apis", 80, "py"),
        ("app", 40, "py"),
        ("web/assets", 260, "js"),
        ("tests-unit", 60, "py"),
    ] {
        for i in 0..n {
            b.file(format!("ComfyUI/{dir}/mod_{i:03}.{ext}"), false);
        }
    }
    for f in [
        "main.py",
        "server.py",
        "nodes.py",
        "execution.py",
        "requirements.txt",
    ] {
        b.file(format!("ComfyUI/{f}"), false);
    }
    for d in ["input", "output", "temp", "user/default/workflows"] {
        b.dir(format!("ComfyUI/{d}"));
    }
    // Models: few entries, large files.
    for (dir, n, ext) in [
        ("checkpoints", 6, "safetensors"),
        ("loras", 24, "safetensors"),
        ("vae", 3, "safetensors"),
        ("controlnet", 8, "pth"),
        ("upscale_models", 4, "pth"),
        ("clip_vision", 2, "safetensors"),
    ] {
        for i in 0..n {
            b.file(format!("ComfyUI/models/{dir}/model_{i:02}.{ext}"), false);
        }
    }
    b.dir("ComfyUI/models/vae_approx".into());
    // Custom nodes: 40 packs of about 120 files each.
    for pack in 0..40 {
        let root = format!("ComfyUI/custom_nodes/ComfyUI-pack-{pack:02}");
        for f in [
            "__init__.py",
            "README.md",
            "requirements.txt",
            "pyproject.toml",
        ] {
            b.file(format!("{root}/{f}"), false);
        }
        for i in 0..60 {
            b.file(format!("{root}/nodes/node_{i:02}.py"), false);
            b.file(
                format!("{root}/nodes/__pycache__/node_{i:02}.cpython-312.pyc"),
                false,
            );
        }
        b.symlink(format!("{root}/js"), "web/js");
    }
    // The venv: bin/, the python symlinks, then site-packages until the manifest is full.
    b.symlink("venv/bin/python".into(), "python3.12");
    b.symlink("venv/bin/python3".into(), "python3.12");
    b.symlink("venv/bin/python3.12".into(), "/usr/bin/python3.12");
    b.symlink("venv/lib64".into(), "lib");
    for i in 0..60 {
        b.file(format!("venv/bin/script-{i:02}"), true);
    }
    b.file("venv/pyvenv.cfg".into(), false);
    let site = "venv/lib/python3.12/site-packages";
    let mut pkg = 0;
    while !b.full() {
        let name = format!("package_{pkg:03}");
        let dist = format!("{site}/{name}-1.{}.0.dist-info", pkg % 7);
        for f in ["INSTALLER", "METADATA", "RECORD", "WHEEL", "top_level.txt"] {
            b.file(format!("{dist}/{f}"), false);
        }
        // A few big packages (torch-, transformers-like), many small ones.
        let modules = if pkg % 25 == 0 {
            1500
        } else {
            10 + b.rng.below(150)
        };
        for m in 0..modules {
            if b.full() {
                break;
            }
            let sub = m / 40;
            let dir = format!("{site}/{name}/sub_{sub:02}");
            b.file(format!("{dir}/m_{m:04}.py"), false);
            b.file(format!("{dir}/__pycache__/m_{m:04}.cpython-312.pyc"), false);
            if m % 97 == 0 {
                b.file(
                    format!("{dir}/_ext_{m:04}.cpython-312-x86_64-linux-gnu.so"),
                    true,
                );
            }
        }
        pkg += 1;
    }
    b.entries.truncate(ENTRIES);
    let mut m = Manifest { entries: b.entries };
    m.sort();
    m.validate().expect("the generated manifest is valid");
    m
}

fn tree(c: &mut Criterion) {
    let m = comfyui_manifest();
    let bytes = m.to_canonical();
    let id = m.id();
    let back = Manifest::parse(&bytes, &id.to_string()).expect("parse");
    assert_eq!(back, m);
    eprintln!(
        "tree bench: {} entries, {} canonical bytes, {id}",
        m.entries.len(),
        bytes.len()
    );
    let mut shuffled = m.clone();
    let mut rng = Rng(42);
    for i in (1..shuffled.entries.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        shuffled.entries.swap(i, j);
    }

    let mut g = c.benchmark_group("tree_30k");
    g.throughput(Throughput::Elements(m.entries.len() as u64));
    g.sample_size(20);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("to_canonical", |b| b.iter(|| black_box(&m).to_canonical()));
    g.bench_function("id", |b| b.iter(|| black_box(&m).id()));
    g.bench_function("parse", |b| {
        b.iter(|| Manifest::parse(black_box(&bytes), "bench").expect("parse"))
    });
    g.bench_function("validate", |b| {
        b.iter(|| black_box(&m).validate().expect("valid"))
    });
    g.bench_function("sort_shuffled", |b| {
        b.iter_batched(
            || shuffled.clone(),
            |mut s| {
                s.sort();
                s
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, tree);
criterion_main!(benches);

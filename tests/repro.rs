//! `comfystore repro env A B` on the ComfyUI-shaped fixture of `tests/common/comfy.rs`,
//! through the real binary: a lock against itself, against the install it was made from, and
//! against that install after a node commit, another package version and a changed model.
//!
//! Every run has HOME inside the test's temp dir and no HF_HOME, HF_HUB_CACHE or VIRTUAL_ENV,
//! so nothing from the machine leaks into a scan.

mod common;

use common::comfy::{pseudo_random, ComfyFixture};
use common::{code, describe, parse, run_env, s, write};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The fixture and the store, in one temp dir.
struct Env {
    _tmp: tempfile::TempDir,
    f: ComfyFixture,
    store: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let f = ComfyFixture::build(&tmp.path().join("fx"));
        let store = f.root.with_file_name("store");
        Env {
            _tmp: tmp,
            f,
            store,
        }
    }

    /// `comfystore --store S ARGS`; HOME is the fixture's folder and no Hugging Face cache
    /// or venv is named, so no cache of the machine is read.
    fn run(&self, args: &[&str]) -> Output {
        let home = Some(self.f.root.as_os_str());
        let unset = ["HF_HOME", "HF_HUB_CACHE", "VIRTUAL_ENV"].map(|k| (k, None));
        run_env(&self.store, args, &[&[("HOME", home)], &unset[..]].concat())
    }

    /// Lock the fixture's install as `tag`; the lockfile's path.
    fn lock(&self, tag: &str) -> PathBuf {
        let out = self.store.with_file_name(format!("{tag}.lock.json"));
        let o = self.run(&["lock", s(&self.f.comfy), "--tag", tag, "-o", s(&out)]);
        assert_eq!(code(&o), 0, "lock: {}", describe(&o));
        out
    }

    /// `repro env A B` in JSON and in text: (exit code, changes, text lines); both agree on
    /// the exit code.
    fn repro(&self, a: &Path, b: &Path) -> (i32, Vec<Value>, String) {
        let j = self.run(&["--json", "repro", "env", s(a), s(b)]);
        let t = self.run(&["repro", "env", s(a), s(b)]);
        assert_eq!(code(&j), code(&t), "{}\n{}", describe(&j), describe(&t));
        let v = parse(&j);
        let changes = v["changes"].as_array().expect("changes").clone();
        assert_eq!(v["equal"], changes.is_empty(), "{v:#}");
        (code(&j), changes, String::from_utf8(t.stdout).unwrap())
    }
}

/// The change of `part` named `name` whose kind is `change`, if any.
fn find<'a>(changes: &'a [Value], part: &str, name: &str, change: &str) -> Option<&'a Value> {
    changes
        .iter()
        .find(|c| c["part"] == part && c["name"] == name && c["change"] == change)
}

#[test]
fn repro_env_names_a_moved_node_another_package_and_a_changed_model() {
    let e = Env::new();
    let v1 = e.lock("v1");

    // The same lock, and the install it was made from, are the same version.
    let (rc, changes, _) = e.repro(&v1, &v1);
    assert_eq!((rc, changes.len()), (0, 0), "{changes:#?}");
    let (rc, changes, _) = e.repro(&v1, &e.f.comfy);
    assert_eq!((rc, changes.len()), (0, 0), "{changes:#?}");

    // A new commit in a node, another version of a package, other bytes in a model.
    let node_a = e.f.comfy.join("custom_nodes/ComfyUI-NodeA");
    let commit = ComfyFixture::commit_file(&node_a, "nodes.py", "# v3\n");
    ComfyFixture::build_wheel(
        &e.f.wheels,
        "tinyfoo",
        "1.1.0",
        &[("tinyfoo/__init__.py", "__version__ = \"1.1.0\"\n")],
    );
    e.f.pip_install(&["tinyfoo==1.1.0"]);
    let model = e.f.comfy.join("models/checkpoints/a.safetensors");
    fs::remove_file(&model).unwrap(); // adopted: may be a read-only hardlink into the store
    write(&model, &pseudo_random(99, 4096));

    let (rc, changes, text) = e.repro(&v1, &e.f.comfy);
    assert_eq!(rc, 1, "{changes:#?}");
    let moved = find(&changes, "node", "ComfyUI-NodeA", "moved").expect("node moved");
    assert_eq!(moved["to"], commit[..12], "{moved:#}");
    let tree = find(&changes, "node", "ComfyUI-NodeA", "tree").expect("node tree");
    assert!(tree["to"].as_str().unwrap().starts_with("b3:"), "{tree:#}");
    let pkg = find(&changes, "package", "tinyfoo", "upgraded").expect("package upgraded");
    assert_eq!(
        (&pkg["from"], &pkg["to"]),
        (&"1.0.0".into(), &"1.1.0".into())
    );
    find(&changes, "python", "environment", "changed").expect("environment id");
    find(
        &changes,
        "model",
        "models/checkpoints/a.safetensors",
        "changed",
    )
    .expect("model");
    assert_eq!(changes.len(), 5, "nothing else changed: {changes:#?}");
    for word in [
        "~ node ComfyUI-NodeA moved",
        "~ package tinyfoo upgraded: 1.0.0 -> 1.1.0",
        "~ model models/checkpoints/a.safetensors changed",
    ] {
        assert!(text.contains(word), "{word:?} not in\n{text}");
    }

    // Two locks give the same answer as a lock and the install.
    let v2 = e.lock("v2");
    let (rc, lock_changes, _) = e.repro(&v1, &v2);
    assert_eq!((rc, &lock_changes), (1, &changes));
}

#[test]
fn a_materialized_install_is_the_same_version_as_its_lock() {
    let e = Env::new();
    let v1 = e.lock("v1");
    let lock = parse_file(&v1);
    let dest = e.f.root.with_file_name("dest");
    let o = e.run(&["materialize", s(&v1), s(&dest)]);
    assert_eq!(code(&o), 0, "materialize: {}", describe(&o));
    // DEST has no git: ComfyUI's own files in the data folders
    // (custom_nodes/websocket_image_save.py, …) are known from DEST's marker.
    assert!(dest.join("custom_nodes/websocket_image_save.py").is_file());
    let (rc, changes, _) = e.repro(&v1, &dest);
    assert_eq!((rc, changes.len()), (0, 0), "{changes:#?}");

    // `lock DEST` gives the same comfyui tree, and takes none of them for a node or model.
    let relock = e.store.with_file_name("relock.lock.json");
    let o = e.run(&["lock", s(&dest), "--tag", "re", "-o", s(&relock)]);
    assert_eq!(code(&o), 0, "lock DEST: {}", describe(&o));
    let again = parse_file(&relock);
    assert_eq!(again["comfyui"]["tree"], lock["comfyui"]["tree"]);
    let names = |l: &Value, k: &str, f: &str| -> Vec<Value> {
        l[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x[f].clone())
            .collect()
    };
    assert_eq!(
        names(&again, "custom_nodes", "name"),
        names(&lock, "custom_nodes", "name")
    );
    assert_eq!(
        names(&again, "models", "path"),
        names(&lock, "models", "path")
    );

    // A marker that names a path outside DEST is refused, naming the marker.
    let marker = dest.join(".comfystore-materialized.json");
    let mut m = parse_file(&marker);
    m["layout"]["source_data_files"] = serde_json::json!(["../../etc/passwd"]);
    fs::remove_file(&marker).unwrap();
    fs::write(&marker, serde_json::to_vec(&m).unwrap()).unwrap();
    let o = e.run(&["lock", s(&dest), "--tag", "re", "-o", s(&relock)]);
    assert_ne!(code(&o), 0, "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(".comfystore-materialized.json"),
        "{}",
        describe(&o)
    );
}

fn parse_file(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

#[test]
fn repro_env_exits_2_on_what_it_cannot_read() {
    let tmp = tempfile::tempdir().unwrap();
    let lock = tmp.path().join("min.lock.json");
    let commit = "a".repeat(40);
    let text = format!(
        r#"{{"schema":"comfystore.lock/1","tag":"x","comfyui":{{"repo":"https://x/c","commit":"{commit}"}}}}"#
    );
    fs::write(&lock, text).unwrap();
    let store = tmp.path().join("store");
    let o = run_env(&store, &["repro", "env", s(&lock), s(&lock)], &[]);
    assert_eq!(code(&o), 0, "{}", describe(&o));
    let missing = tmp.path().join("no-such.lock.json");
    for (a, b) in [(&lock, &missing), (&missing, &lock)] {
        let o = run_env(&store, &["--json", "repro", "env", s(a), s(b)], &[]);
        assert_eq!(code(&o), 2, "{}", describe(&o));
        assert!(parse(&o)["error"].is_string(), "{}", describe(&o));
    }
}

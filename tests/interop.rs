//! `import-snapshot` / `import-from` on the other tools' formats: comfy-pack packages
//! (`.cpack.zip`, both generations of its `snapshot.json`), comfy-cli's `comfy.lock.yaml` and
//! comfy-cli's build definition. Every fixture is written here after the tools' own writers
//! (docs/interop.md); nothing is downloaded.

mod common;

use common::{run, s};
use serde_json::Value;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

const COMFY: &str = "ca457f7ba1ff33bd0d724cd7324131509efcf3ec";
const NODE_A: &str = "145410eb9332e620133d61324f6c9f87034ae393";
const NODE_B: &str = "4bfd08cead1a98bacb93ed5b0defb896c20cee57";
const HF_COMMIT: &str = "11e721aed56491605270aae3c4d65316d59fcb54";
const SHA: &str = "7adffa28d4003a773c2d4e5f10ae1ba63c33573967864a7f9a4a3be9c9f04a93";

/// Import `file` with `--json`; the output, the lock (when written) and the warnings.
fn import(dir: &Path, file: &Path, extra: &[&str]) -> (Output, Option<Value>, Vec<String>) {
    let out = dir.join(format!(
        "{}.lock.json",
        file.file_name().unwrap().to_string_lossy()
    ));
    let mut args = vec![
        "--json",
        "import-from",
        s(file),
        "--tag",
        "imp",
        "-o",
        s(&out),
    ];
    args.extend_from_slice(extra);
    let o = run(&dir.join("store"), &args);
    if !o.status.success() {
        return (o, None, Vec::new());
    }
    let report: Value = serde_json::from_slice(&o.stdout).expect("--json report");
    assert!(report["format"].is_string(), "{report:#}");
    let warnings = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    let lock = serde_json::from_slice(&fs::read(&out).unwrap()).unwrap();
    (o, Some(lock), warnings)
}

/// docs/lockfile.schema.json, which every imported lock must meet.
fn schema() -> jsonschema::Validator {
    let text =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/lockfile.schema.json"))
            .unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).expect("a valid schema")
}

fn imported(dir: &Path, file: &Path, extra: &[&str]) -> (Value, Vec<String>) {
    let (o, lock, w) = import(dir, file, extra);
    assert!(
        o.status.success(),
        "import of {} failed: {}",
        file.display(),
        common::stderr(&o)
    );
    let lock = lock.unwrap();
    let errors: Vec<String> = schema().iter_errors(&lock).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}\n{lock:#}");
    (lock, w)
}

/// The import fails, naming `needle`, and writes nothing.
fn refused(dir: &Path, file: &Path, needle: &str) {
    let (o, lock, _) = import(dir, file, &[]);
    assert!(lock.is_none(), "{} was imported", file.display());
    assert_eq!(o.status.code(), Some(1), "{}", common::stderr(&o));
    let err = common::stderr(&o) + &String::from_utf8_lossy(&o.stdout);
    assert!(err.contains(needle), "error names {needle:?}: {err}");
    assert!(
        err.contains(&*file.to_string_lossy()),
        "error names the file: {err}"
    );
}

fn node<'a>(lock: &'a Value, name: &str) -> &'a Value {
    lock["custom_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("node {name} in {lock:#}"))
}

fn package<'a>(lock: &'a Value, name: &str) -> &'a Value {
    lock["python"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("package {name} in {lock:#}"))
}

fn warned<'a>(warnings: &'a [String], needles: &[&str]) -> &'a String {
    warnings
        .iter()
        .find(|w| needles.iter().all(|n| w.contains(n)))
        .unwrap_or_else(|| panic!("a warning with {needles:?} in {warnings:#?}"))
}

/// A zip with these members, as Python's zipfile writes them (deflated).
fn zip(path: &Path, members: &[(&str, &str)]) {
    let mut z = zip::ZipWriter::new(fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in members {
        z.start_file(*name, opts).unwrap();
        z.write_all(data.as_bytes()).unwrap();
    }
    z.finish().unwrap();
}

/// comfy-pack before 0.4: its own `custom_nodes` list, `requirements.txt` from `pip freeze`.
fn cpack_snapshot_old() -> String {
    format!(
        r#"{{
  "python": "3.11",
  "comfyui": "{COMFY}",
  "models": [
    {{
      "filename": "models/checkpoints/pixel (1).safetensors",
      "size": 6938040682,
      "atime": 1734504149.6992304,
      "ctime": 1734502753.6664784,
      "disabled": false,
      "sha256": "{SHA}",
      "source": {{
        "download_url": "https://huggingface.co/org/models/resolve/{HF_COMMIT}/pixel (1).safetensors?download=true",
        "url": "https://huggingface.co/org/models/blob/{HF_COMMIT}/pixel (1).safetensors",
        "repo": "org/models",
        "commit": "{HF_COMMIT}",
        "path": "pixel (1).safetensors",
        "source": "huggingface"
      }}
    }},
    {{
      "filename": "models/loras/unknown.safetensors",
      "size": 12,
      "atime": 1.0,
      "ctime": 1.0,
      "disabled": true,
      "sha256": "{}",
      "source": {{}}
    }}
  ],
  "custom_nodes": [
    {{"url": "https://github.com/ltdrdata/ComfyUI-Manager.git", "commit_hash": "{NODE_A}", "disabled": false}},
    {{"url": "https://github.com/example/old-node", "commit_hash": "{NODE_B}", "disabled": true, "path": "old-node.disabled"}},
    {{"url": "https://github.com/example/branchy", "commit_hash": "main", "disabled": false}}
  ]
}}"#,
        "b".repeat(64)
    )
}

#[test]
fn cpack_zip_imports_nodes_packages_and_names_every_model_and_file() {
    let t = tempfile::tempdir().unwrap();
    let pack = t.path().join("pixel.cpack.zip");
    zip(
        &pack,
        &[
            (
                "requirements.txt",
                "aiohttp==3.11.10\nGitPython==3.1.43\ncomfy-cli\ntorch @ https://download.example/torch-2.5.1-cp311-cp311-linux_x86_64.whl\n",
            ),
            ("snapshot.json", &cpack_snapshot_old()),
            ("workflow_api.json", "{}"),
            ("workflow.json", "{}"),
            ("input/example.png", "png"),
            ("service.py", "# comfy-pack's service"),
        ],
    );
    let (o, _, _) = import(t.path(), &pack, &[]);
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["format"], "comfy-pack package (.cpack.zip)");
    let (lock, w) = imported(t.path(), &pack, &[]);
    assert_eq!(lock["comfyui"]["commit"], COMFY);
    assert_eq!(
        node(&lock, "ComfyUI-Manager")["repo"],
        "https://github.com/ltdrdata/ComfyUI-Manager.git"
    );
    assert_eq!(node(&lock, "ComfyUI-Manager")["commit"], NODE_A);
    let old = node(&lock, "old-node");
    assert_eq!(old["disabled"], true);
    assert_eq!(old["commit"], NODE_B);
    assert_eq!(lock["custom_nodes"].as_array().unwrap().len(), 2);
    warned(&w, &["branchy", "\"main\"", "not imported"]);

    assert_eq!(lock["python"]["version"], "3.11");
    assert_eq!(package(&lock, "aiohttp")["version"], "3.11.10");
    assert_eq!(package(&lock, "gitpython")["version"], "3.1.43");
    assert_eq!(
        package(&lock, "torch")["url"],
        "https://download.example/torch-2.5.1-cp311-cp311-linux_x86_64.whl"
    );
    warned(&w, &["requirements.txt", "\"comfy-cli\"", "not imported"]);

    // The Hugging Face source pinned to a commit becomes its resolve URL; the model is held
    // by sha256 until `fetch --update-lock`.
    let models = lock["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{models:#?}");
    let m = &models[0];
    assert_eq!(m["path"], "models/checkpoints/pixel (1).safetensors");
    assert_eq!(m["size"], 6938040682u64);
    assert_eq!(m["sha256"], SHA);
    assert!(m.get("blake3").is_none());
    assert_eq!(
        m["sources"][0],
        format!(
            "https://huggingface.co/org/models/resolve/{HF_COMMIT}/pixel%20%281%29.safetensors"
        )
    );
    warned(&w, &["1 model(s) named by sha256", "fetch --update-lock"]);
    warned(
        &w,
        &[
            "models/loras/unknown.safetensors",
            "disabled",
            "not imported",
        ],
    );
    warned(&w, &["workflow.json", "not imported"]);
    warned(&w, &["workflow_api.json", "not imported"]);
    warned(&w, &["input/example.png", "not imported"]);
    warned(&w, &["1 other file"]);
}

#[test]
fn cpack_snapshot_json_of_the_manager_generation_imports() {
    let t = tempfile::tempdir().unwrap();
    let snap = t.path().join("snapshot.json");
    fs::write(
        &snap,
        format!(
            r#"{{
  "comfyui": "{COMFY}",
  "git_custom_nodes": {{
    "https://github.com/example/NodeA": {{"hash": "{NODE_A}", "disabled": false}}
  }},
  "cnr_custom_nodes": {{"comfyui-impact-pack": "8.8.1"}},
  "file_custom_nodes": [{{"filename": "single.py", "disabled": false}}],
  "pips": {{"numpy==1.26.4": "", "Pillow==10.4.0": ""}},
  "python": "3.12",
  "models": [
    {{
      "filename": "models/loras/style.safetensors",
      "size": 1000,
      "atime": 1.5,
      "ctime": 1.5,
      "disabled": false,
      "sha256": "{SHA}",
      "source": {{
        "download_url": "https://civitai.com/api/download/models/4242",
        "url": "https://civitai.com/models/99?modelVersionId=4242",
        "repo": 99,
        "commit": 4242,
        "source": "civitai",
        "repo_name": "Style",
        "version_name": "v1"
      }},
      "refered": true
    }}
  ]
}}"#
        ),
    )
    .unwrap();
    let (lock, w) = imported(t.path(), &snap, &[]);
    assert_eq!(node(&lock, "NodeA")["commit"], NODE_A);
    assert_eq!(
        node(&lock, "comfyui-impact-pack")["registry"]["version"],
        "8.8.1"
    );
    assert_eq!(lock["python"]["version"], "3.12");
    assert_eq!(package(&lock, "numpy")["version"], "1.26.4");
    assert_eq!(package(&lock, "pillow")["version"], "10.4.0");
    warned(&w, &["single.py", "not imported"]);
    let m = &lock["models"][0];
    assert_eq!(m["path"], "models/loras/style.safetensors");
    assert_eq!(
        m["sources"][0],
        "https://civitai.com/api/download/models/4242"
    );
    assert!(m.get("blake3").is_none());
}

#[test]
fn comfy_cli_lock_yaml_imports_its_manager_snapshot_and_names_models() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("comfy.lock.yaml");
    fs::write(
        &f,
        format!(
            "basics:
  name: my workspace
  updated_at: '2026-11-30T12:00:00'
models:
- model: sd15
  url: https://huggingface.co/org/sd15/resolve/main/sd15.safetensors
  paths:
  - path: models/checkpoints/sd15.safetensors
  hashes:
  - hash: {}
    type: SHA256
  - hash: ABCDEF12
    type: AutoV1
  type: checkpoint
custom_nodes:
  comfyui: {COMFY}
  git_custom_nodes:
    https://github.com/example/NodeA:
      disabled: false
      hash: {NODE_A}
  file_custom_nodes:
  - disabled: false
    filename: tool.py
",
            SHA.to_uppercase()
        ),
    )
    .unwrap();
    let (lock, w) = imported(t.path(), &f, &[]);
    assert_eq!(lock["comfyui"]["commit"], COMFY);
    assert_eq!(node(&lock, "NodeA")["commit"], NODE_A);
    warned(&w, &["tool.py", "not imported"]);
    // comfy-cli records no size: the model comes in by sha256 and URL, with neither size nor
    // blake3 (`fetch --update-lock` writes both).
    let m = &lock["models"][0];
    assert_eq!(m["path"], "models/checkpoints/sd15.safetensors", "{lock:#}");
    assert_eq!(m["sha256"], SHA);
    assert!(m.get("size").is_none() && m.get("blake3").is_none(), "{m}");
    assert_eq!(
        m["sources"][0],
        "https://huggingface.co/org/sd15/resolve/main/sd15.safetensors"
    );

    // What comfy-cli's save_yaml writes today: `hash`, and `custom_nodes: []`.
    let f2 = t.path().join("comfy2.lock.yaml");
    fs::write(
        &f2,
        "basics:\n  name: w\n  updated_at: '2026-11-30T12:00:00'\ncustom_nodes: []\nmodels:\n- hash: null\n  model: x\n  paths:\n  - path: models/vae/x.safetensors\n  type: vae\n  url: https://example.invalid/x\n",
    )
    .unwrap();
    let (lock, w) = imported(t.path(), &f2, &[]);
    assert!(lock["custom_nodes"].as_array().unwrap().is_empty());
    warned(&w, &["models/vae/x.safetensors", "sha256 unknown"]);
    warned(&w, &["names no ComfyUI commit"]);
}

#[test]
fn comfy_build_definition_imports_nodes_pips_and_names_what_it_cannot() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("comfy-build.yaml");
    let def = format!(
        "schema: distribution-definition/0
baseComfyVersion: {COMFY}
customNodes:
- name: ComfyUI-Foo
  repository: https://github.com/example/ComfyUI-Foo
  gitRef: {NODE_A}
  source: git
- name: comfyui-bar
  id: comfyui-bar
  registryVersion: 1.2.0
  source: registry
- name: my-local-node
  source: local
- name: on-a-branch
  repository: https://github.com/example/on-a-branch
  gitRef: main
  source: local
models:
- type: checkpoints
  filename: sd15.safetensors
  sha256: {SHA}
  sizeBytes: 2000
  source: local
  sourceUri: https://huggingface.co/org/sd15/resolve/{HF_COMMIT}/sd15.safetensors
- type: loras
  filename: private.safetensors
  sha256: {SHA}
  blobId: blob-123
pipDependencies: |
  # Captured by comfy-cli from the source environment: Linux/x86_64, Python 3.11.9, torch 2.5.1.
  # Resolved pins from where the workflow ran locally — a build for a different OS/GPU must retarget them.
  torch==2.5.1
  safetensors==0.4.5
environment:
  os: Linux
  arch: x86_64
  pythonVersion: 3.11.9
  torch: 2.5.1
"
    );
    fs::write(&f, &def).unwrap();
    let fork = "https://github.com/me/ComfyUI-fork";
    let (lock, w) = imported(t.path(), &f, &["--comfyui-repo", fork]);
    assert_eq!(lock["comfyui"]["commit"], COMFY);
    assert_eq!(lock["comfyui"]["repo"], fork);
    assert_eq!(node(&lock, "ComfyUI-Foo")["commit"], NODE_A);
    assert_eq!(node(&lock, "comfyui-bar")["registry"]["id"], "comfyui-bar");
    assert_eq!(lock["custom_nodes"].as_array().unwrap().len(), 2);
    warned(&w, &["my-local-node", "not imported"]);
    warned(&w, &["on-a-branch", "\"main\"", "not imported"]);
    assert_eq!(package(&lock, "torch")["version"], "2.5.1");
    assert_eq!(package(&lock, "safetensors")["version"], "0.4.5");
    assert_eq!(lock["python"]["version"], "3.11.9");
    warned(&w, &["Linux/x86_64"]);
    let m = &lock["models"][0];
    assert_eq!(m["path"], "models/checkpoints/sd15.safetensors");
    assert_eq!(m["size"], 2000);
    assert_eq!(
        m["sources"][0],
        format!("https://huggingface.co/org/sd15/resolve/{HF_COMMIT}/sd15.safetensors")
    );
    assert_eq!(lock["models"].as_array().unwrap().len(), 1);
    warned(&w, &["models/loras/private.safetensors", "blobId"]);

    // The same definition as JSON (what `comfy build scan -o` writes), with a tag for ComfyUI.
    let json_def: Value = serde_json::from_str(
        &serde_json::to_string(&serde_json::json!({
            "schema": "distribution-definition/0",
            "baseComfyVersion": "v0.3.43",
            "customNodes": [],
            "models": [],
        }))
        .unwrap(),
    )
    .unwrap();
    let f2 = t.path().join("definition.json");
    fs::write(&f2, serde_json::to_vec_pretty(&json_def).unwrap()).unwrap();
    let (lock, w) = imported(t.path(), &f2, &[]);
    assert!(lock["comfyui"].get("commit").is_none());
    warned(&w, &["baseComfyVersion", "v0.3.43", "not a commit"]);
}

#[test]
fn a_misspelled_key_is_named_in_every_format() {
    let t = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| -> PathBuf {
        let p = t.path().join(name);
        fs::write(&p, text).unwrap();
        p
    };
    // comfy-pack: a node's field.
    let f = write(
        "snapshot.json",
        &cpack_snapshot_old().replacen("\"commit_hash\"", "\"commit_hsh\"", 1),
    );
    refused(t.path(), &f, "commit_hsh");
    // comfy-pack zip: the member's name and the field.
    let pack = t.path().join("bad.cpack.zip");
    zip(
        &pack,
        &[(
            "snapshot.json",
            &cpack_snapshot_old().replacen("\"python\"", "\"pyhton\"", 1),
        )],
    );
    refused(t.path(), &pack, "pyhton");
    // comfy-cli lock: a top-level key and a model's key.
    let f = write("c.lock.yaml", "basics:\n  name: w\nmodles: []\n");
    refused(t.path(), &f, "modles");
    let f = write(
        "c2.lock.yaml",
        "basics:\n  name: w\nmodels:\n- model: x\n  pahts: []\n",
    );
    refused(t.path(), &f, "pahts");
    // Its Manager snapshot.
    let f = write(
        "c3.lock.yaml",
        &format!("basics: {{}}\ncustom_nodes:\n  comfyui: {COMFY}\n  git_custom_node: {{}}\n"),
    );
    refused(t.path(), &f, "git_custom_node");
    // Build definition.
    let f = write(
        "b.yaml",
        "schema: distribution-definition/0\ncustomNodes:\n- name: x\n  gitref: abc\n",
    );
    refused(t.path(), &f, "gitref");
    let f = write("b2.yaml", "schema: distribution-definition/9\n");
    refused(t.path(), &f, "distribution-definition/9");
}

#[test]
fn what_is_no_known_format_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("other.yaml");
    fs::write(&f, "hello: world\n").unwrap();
    refused(t.path(), &f, "hello");
    let f = t.path().join("lock.json");
    fs::write(
        &f,
        r#"{"schema": "comfystore.lock/1", "tag": "x", "comfyui": {}}"#,
    )
    .unwrap();
    refused(t.path(), &f, "already a comfystore lock");
    let pack = t.path().join("empty.cpack.zip");
    zip(&pack, &[("requirements.txt", "x==1\n")]);
    refused(t.path(), &pack, "snapshot.json");
}

#[test]
fn the_command_has_its_alias_and_keeps_its_name() {
    let t = tempfile::tempdir().unwrap();
    let help = run(&t.path().join("store"), &["--help"]);
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(help.contains("import-snapshot"), "{help}");
    assert!(help.contains("import-from"), "{help}");
}

/// An imported model is held by sha256: `show` counts it missing, `materialize` offline says to
/// fetch, `fetch` downloads it by sha256, `fetch --update-lock` writes its blake3 in (once,
/// canonically), and `materialize` and `verify` place and check it.
#[test]
fn an_imported_model_is_fetched_completed_and_materialized() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let body = b"model weights, as a hub serves them".repeat(1000);
    let sha = common::sha256_hex(&body);
    let server = common::http::TestServer::start();
    server.add(
        "/org/sd15/resolve/x/sd15.safetensors",
        body.clone(),
        common::http::Behavior::Normal,
    );
    let def = t.path().join("comfy-build.yaml");
    fs::write(
        &def,
        format!(
            "schema: distribution-definition/0\nmodels:\n- type: checkpoints\n  filename: sd15.safetensors\n  sha256: {sha}\n  sizeBytes: {}\n  source: local\n  sourceUri: {}\ncustomNodes: []\n",
            body.len(),
            server.url("/org/sd15/resolve/x/sd15.safetensors")
        ),
    )
    .unwrap();
    let lock = t.path().join("imported.lock.json");
    common::ok(
        &store,
        &["import-from", s(&def), "--tag", "imp", "-o", s(&lock)],
    );
    let before = fs::read_to_string(&lock).unwrap();
    assert!(!before.contains("blake3"), "{before}");

    // Before any fetch: show counts it missing; an offline materialize names what to run.
    let shown = common::ok(&store, &["show", s(&lock)]);
    assert!(
        shown.contains("sd15.safetensors") || shown.contains("1 model"),
        "{shown}"
    );
    let dest = t.path().join("dest");
    let o = run(
        &store,
        &[
            "materialize",
            s(&lock),
            s(&dest),
            "--offline",
            "--only",
            "models",
        ],
    );
    assert_ne!(o.status.code(), Some(0), "{}", common::describe(&o));
    let err = common::stderr(&o);
    assert!(err.contains("sd15.safetensors"), "{err}");

    // fetch downloads it by sha256; without --update-lock the lock is left as it is.
    let fetched = common::json(&store, &["fetch", s(&lock), "--only", "models"]);
    assert_eq!(fetched["failed"], serde_json::json!([]), "{fetched:#}");
    assert_eq!(fetched["downloaded"].as_array().unwrap().len(), 1);
    assert_eq!(fs::read_to_string(&lock).unwrap(), before);

    // --update-lock writes the blake3 in; running it again changes nothing.
    let updated = common::json(
        &store,
        &["fetch", s(&lock), "--only", "models", "--update-lock"],
    );
    assert_eq!(updated["lock_updated"]["blake3_filled"], 1, "{updated:#}");
    assert_eq!(updated["downloaded"], serde_json::json!([]), "{updated:#}");
    let after: Value = serde_json::from_str(&fs::read_to_string(&lock).unwrap()).unwrap();
    assert_eq!(
        after["models"][0]["blake3"],
        blake3::hash(&body).to_hex().as_str()
    );
    let bytes = fs::read(&lock).unwrap();
    let again = common::json(
        &store,
        &["fetch", s(&lock), "--only", "models", "--update-lock"],
    );
    assert_eq!(again["lock_updated"]["blake3_filled"], 0, "{again:#}");
    assert_eq!(fs::read(&lock).unwrap(), bytes);
    let leftovers: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    common::ok(
        &store,
        &["materialize", s(&lock), s(&dest), "--only", "models"],
    );
    assert_eq!(
        fs::read(dest.join("models/checkpoints/sd15.safetensors")).unwrap(),
        body
    );
    let v = run(
        &store,
        &["verify", s(&lock), s(&dest), "--full", "--only", "models"],
    );
    assert_eq!(v.status.code(), Some(0), "{}", common::describe(&v));
}

/// A bare repo at `dir/<name>.git` holding `files` in one commit; its commit id.
fn bare_repo(dir: &Path, name: &str, files: &[(&str, &str)]) -> String {
    use common::comfy::ComfyFixture;
    let work = dir.join(name);
    for (path, data) in files {
        common::write(&work.join(path), data.as_bytes());
    }
    ComfyFixture::git(&work, &["init", "-q"]);
    ComfyFixture::git(&work, &["add", "-A"]);
    ComfyFixture::git(&work, &["commit", "-q", "-m", name]);
    let bare = dir.join(format!("{name}.git"));
    ComfyFixture::git(dir, &["clone", "-q", "--bare", s(&work), s(&bare)]);
    ComfyFixture::git(&work, &["rev-parse", "HEAD"])
}

/// A build definition end to end: imported, fetched (ComfyUI and a node from local bare
/// repos, the model from an HTTP server), the lock completed, materialized and verified.
#[test]
fn a_build_definition_imports_fetches_and_materializes() {
    let test = "a_build_definition_imports_fetches_and_materializes";
    let git_runs = std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !git_runs {
        common::cannot_run(test, "git is not on PATH");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let comfy = bare_repo(
        t.path(),
        "ComfyUI",
        &[
            ("main.py", "print('comfy')\n"),
            ("models/checkpoints/put_checkpoints_here", ""),
        ],
    );
    let node = bare_repo(t.path(), "NodeA", &[("__init__.py", "NODE = 1\n")]);
    let body = b"checkpoint bytes ".repeat(4096);
    let server = common::http::TestServer::start();
    server.add(
        "/m/sd.safetensors",
        body.clone(),
        common::http::Behavior::Normal,
    );
    let def = t.path().join("comfy-build.yaml");
    fs::write(
        &def,
        format!(
            "schema: distribution-definition/0
baseComfyVersion: {comfy}
customNodes:
- name: NodeA
  repository: file://{}
  gitRef: {node}
  source: git
models:
- type: checkpoints
  filename: sd.safetensors
  sha256: {}
  sizeBytes: {}
  source: local
  sourceUri: {}
",
            s(&t.path().join("NodeA.git")),
            common::sha256_hex(&body),
            body.len(),
            server.url("/m/sd.safetensors"),
        ),
    )
    .unwrap();
    let lock = t.path().join("build.lock.json");
    let comfy_repo = format!("file://{}", s(&t.path().join("ComfyUI.git")));
    common::ok(
        &store,
        &[
            "import-from",
            s(&def),
            "--tag",
            "build",
            "-o",
            s(&lock),
            "--comfyui-repo",
            &comfy_repo,
        ],
    );
    let fetched = common::json(&store, &["fetch", s(&lock), "--update-lock"]);
    assert_eq!(fetched["failed"], serde_json::json!([]), "{fetched:#}");
    assert_eq!(fetched["trees"].as_array().unwrap().len(), 2, "{fetched:#}");
    assert_eq!(fetched["lock_updated"]["blake3_filled"], 1, "{fetched:#}");
    let l: Value = serde_json::from_slice(&fs::read(&lock).unwrap()).unwrap();
    assert_eq!(l["comfyui"]["commit"], comfy.as_str());
    assert_eq!(crate::node(&l, "NodeA")["commit"], node.as_str());
    assert_eq!(
        l["models"][0]["blake3"],
        blake3::hash(&body).to_hex().as_str()
    );

    let dest = t.path().join("dest");
    common::ok(&store, &["materialize", s(&lock), s(&dest)]);
    assert_eq!(
        fs::read_to_string(dest.join("main.py")).unwrap(),
        "print('comfy')\n"
    );
    assert_eq!(
        fs::read_to_string(dest.join("custom_nodes/NodeA/__init__.py")).unwrap(),
        "NODE = 1\n"
    );
    assert_eq!(
        fs::read(dest.join("models/checkpoints/sd.safetensors")).unwrap(),
        body
    );
    let v = run(&store, &["verify", s(&lock), s(&dest), "--full"]);
    assert_eq!(v.status.code(), Some(0), "{}", common::describe(&v));
}

/// A hostile package: members named outside the folder are never written anywhere, and a
/// snapshot.json that inflates past the cap is refused before it is held in memory.
#[test]
fn a_hostile_package_writes_nothing_but_the_lock() {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    fs::create_dir(&work).unwrap();
    let pack = work.join("evil.cpack.zip");
    let snap =
        format!(r#"{{"comfyui": "{COMFY}", "python": "3.11", "models": [], "custom_nodes": []}}"#);
    zip(
        &pack,
        &[
            ("snapshot.json", &snap),
            ("../../escaped.txt", "x"),
            ("/abs/escaped.txt", "x"),
            ("input/../../../escaped.txt", "x"),
        ],
    );
    let (lock, w) = imported(&work, &pack, &[]);
    assert_eq!(lock["comfyui"]["commit"], COMFY);
    warned(&w, &["other file"]);
    let mut found: Vec<String> = walkdir::WalkDir::new(t.path())
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(t.path())
                .unwrap()
                .display()
                .to_string()
        })
        .filter(|p| !p.starts_with("work/store"))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            "",
            "work",
            "work/evil.cpack.zip",
            "work/evil.cpack.zip.lock.json"
        ],
        "nothing else is written"
    );

    // 17 MiB of whitespace deflates to a few KiB.
    let bomb = work.join("bomb.cpack.zip");
    let big = format!("{}{snap}", " ".repeat(17 << 20));
    zip(&bomb, &[("snapshot.json", &big)]);
    refused(&work, &bomb, "larger than");
}

/// A build definition's tag and branch are warnings, and `--resolve-refs` pins them to the
/// commits their remotes give (an annotated tag's commit, not the tag object).
#[test]
fn resolve_refs_pins_tags_and_branches_from_their_remotes() {
    let test = "resolve_refs_pins_tags_and_branches_from_their_remotes";
    let git_runs = std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !git_runs {
        common::cannot_run(test, "git is not on PATH");
        return;
    }
    use common::comfy::ComfyFixture;
    let t = tempfile::tempdir().unwrap();
    // The tag and branch are made before the bare clones, which copy them.
    let work = t.path().join("ComfyUI");
    common::write(&work.join("main.py"), b"print('comfy')\n");
    ComfyFixture::git(&work, &["init", "-q"]);
    ComfyFixture::git(&work, &["add", "-A"]);
    ComfyFixture::git(&work, &["commit", "-q", "-m", "c"]);
    ComfyFixture::git(&work, &["tag", "-a", "v1.0", "-m", "release"]);
    let comfy = ComfyFixture::git(&work, &["rev-parse", "HEAD"]);
    let node_work = t.path().join("NodeA");
    common::write(&node_work.join("__init__.py"), b"NODE = 1\n");
    ComfyFixture::git(&node_work, &["init", "-q"]);
    ComfyFixture::git(&node_work, &["add", "-A"]);
    ComfyFixture::git(&node_work, &["commit", "-q", "-m", "n"]);
    ComfyFixture::git(&node_work, &["branch", "stable"]);
    let node = ComfyFixture::git(&node_work, &["rev-parse", "HEAD"]);
    for name in ["ComfyUI", "NodeA"] {
        let bare = t.path().join(format!("{name}.git"));
        ComfyFixture::git(
            t.path(),
            &["clone", "-q", "--bare", s(&t.path().join(name)), s(&bare)],
        );
    }
    let node_repo = format!("file://{}", s(&t.path().join("NodeA.git")));
    let def = t.path().join("comfy-build.yaml");
    fs::write(
        &def,
        format!(
            "schema: distribution-definition/0
baseComfyVersion: v1.0
customNodes:
- name: NodeA
  repository: {node_repo}
  gitRef: stable
  source: git
- name: NodeGone
  repository: {node_repo}
  gitRef: no-such-branch
  source: git
models: []
"
        ),
    )
    .unwrap();
    let comfy_repo = format!("file://{}", s(&t.path().join("ComfyUI.git")));
    let args = ["--comfyui-repo", comfy_repo.as_str()];
    let (lock, w) = imported(t.path(), &def, &args);
    assert!(lock["comfyui"].get("commit").is_none(), "{lock:#}");
    assert!(lock["custom_nodes"].as_array().unwrap().is_empty());
    warned(&w, &["baseComfyVersion", "v1.0", "--resolve-refs"]);
    warned(&w, &["NodeA", "\"stable\"", "--resolve-refs"]);

    let args = ["--comfyui-repo", comfy_repo.as_str(), "--resolve-refs"];
    let (lock, w) = imported(t.path(), &def, &args);
    assert_eq!(lock["comfyui"]["commit"], comfy.as_str(), "{lock:#}");
    assert_eq!(lock["comfyui"]["repo"], comfy_repo.as_str());
    assert_eq!(crate::node(&lock, "NodeA")["commit"], node.as_str());
    assert_eq!(lock["custom_nodes"].as_array().unwrap().len(), 1);
    warned(&w, &["ComfyUI", "\"v1.0\" pinned to", &comfy]);
    warned(&w, &["custom node NodeA", "\"stable\" pinned to", &node]);
    warned(&w, &["NodeGone", "has no tag or branch \"no-such-branch\""]);
}

/// A Hugging Face hub cache the way `huggingface_hub` lays it out: an LFS blob named by its
/// SHA-256, a small file under its git id, and the snapshot links of one revision.
fn hf_cache(hub: &Path, model: &[u8]) -> String {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(model));
    let repo = hub.join("models--org--tiny-model");
    fs::create_dir_all(repo.join("blobs")).unwrap();
    fs::write(repo.join("blobs").join(&sha), model).unwrap();
    let git_id = "0123456789abcdef0123456789abcdef01234567";
    fs::write(repo.join("blobs").join(git_id), b"{\"a\": 1}\n").unwrap();
    let snap = repo.join("snapshots").join(HF_COMMIT);
    fs::create_dir_all(snap.join("unet")).unwrap();
    std::os::unix::fs::symlink(
        format!("../../../blobs/{sha}"),
        snap.join("unet/model.safetensors"),
    )
    .unwrap();
    std::os::unix::fs::symlink(format!("../../blobs/{git_id}"), snap.join("config.json")).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), HF_COMMIT).unwrap();
    sha
}

#[test]
fn an_hf_cache_is_adopted_once_with_its_sources_and_a_later_lock_names_them() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let hub = dir.join("hub");
    let model: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha = hf_cache(&hub, &model);
    let blob = hub.join("models--org--tiny-model/blobs").join(&sha);
    let before = fs::metadata(&blob).unwrap();
    let store = dir.join("store");
    let o = run(&store, &["--json", "import-hf-cache", s(&hub)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (&r[0]["added"], &r[0]["present"], &r[0]["without_source"]),
        (&1.into(), &0.into(), &0.into()),
        "{r:#}"
    );
    // The cache's file is only read: same inode, mode and link count.
    let after = fs::metadata(&blob).unwrap();
    assert_eq!(
        (before.ino(), before.mode(), before.nlink()),
        (after.ino(), after.mode(), after.nlink())
    );
    let cat = run(&store, &["cat", &format!("sha256:{sha}")]);
    assert!(cat.status.success() && cat.stdout == model);
    // Twice is once.
    let o = run(&store, &["--json", "import-hf-cache", s(&hub)]);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (&r[0]["added"], &r[0]["present"]),
        (&0.into(), &1.into()),
        "{r:#}"
    );

    // A later lock of an install holding those bytes names the pinned URL, with no cache in
    // sight (HOME and the HF variables point elsewhere).
    let comfy = dir.join("ComfyUI");
    fs::create_dir_all(comfy.join("models/unet")).unwrap();
    fs::write(comfy.join("main.py"), "print('hi')\n").unwrap();
    fs::write(comfy.join("models/unet/tiny.safetensors"), &model).unwrap();
    let out = dir.join("v1.lock.json");
    let nowhere = dir.join("nowhere");
    let o = common::run_env(
        &store,
        &[
            "lock",
            s(&comfy),
            "--tag",
            "v1",
            "--no-python",
            "-o",
            s(&out),
        ],
        &[
            ("HOME", Some(nowhere.as_os_str())),
            ("HF_HOME", Some(nowhere.as_os_str())),
            ("HF_HUB_CACHE", Some(nowhere.as_os_str())),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lock: Value = serde_json::from_slice(&fs::read(&out).unwrap()).unwrap();
    assert_eq!(
        lock["models"][0]["sources"],
        serde_json::json!([format!(
            "https://huggingface.co/org/tiny-model/resolve/{HF_COMMIT}/unet/model.safetensors"
        )]),
        "{lock:#}"
    );

    // A blob whose bytes are not what its name says is named, not stored.
    let bad = hub
        .join("models--org--tiny-model/blobs")
        .join("ab".repeat(32));
    fs::write(&bad, b"not those bytes").unwrap();
    let o = run(&store, &["import-hf-cache", s(&hub)]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains(&"ab".repeat(32)));
}

#[test]
fn a_lock_goes_out_as_a_build_definition_and_comes_back_the_same() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let lock = serde_json::json!({
        "schema": "comfystore.lock/1",
        "tag": "v1",
        "comfyui": {"repo": "https://github.com/comfyanonymous/ComfyUI", "commit": COMFY},
        "custom_nodes": [
            {"name": "ComfyUI-NodeA", "repo": "https://github.com/example/ComfyUI-NodeA", "commit": NODE_A},
            {"name": "comfyui-bar", "registry": {"id": "comfyui-bar", "version": "1.2.0"}}
        ],
        "python": {"version": "3.11.7", "packages": [
            {"name": "tinyfoo", "version": "1.0"},
            {"name": "torch", "version": "2.8.0"}
        ]},
        "models": [{
            "path": "models/checkpoints/x.safetensors",
            "size": 123,
            "sha256": SHA,
            "sources": [format!("https://huggingface.co/org/m/resolve/{HF_COMMIT}/x.safetensors")]
        }]
    });
    let path = dir.join("v1.lock.json");
    fs::write(&path, serde_json::to_vec_pretty(&lock).unwrap()).unwrap();
    let out = dir.join("comfy-build.yaml");
    let o = run(
        &dir.join("store"),
        &["export-snapshot", s(&path), "-o", s(&out)],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = fs::read_to_string(&out).unwrap();
    assert!(text.contains("distribution-definition/0"), "{text}");
    assert!(text.contains(SHA) && text.contains("sourceUri"), "{text}");

    let (back, _) = imported(
        dir,
        &out,
        &[
            "--comfyui-repo",
            "https://github.com/comfyanonymous/ComfyUI",
        ],
    );
    assert_eq!(back["comfyui"]["commit"], COMFY);
    assert_eq!(back["custom_nodes"], lock["custom_nodes"], "{back:#}");
    assert_eq!(
        back["python"]["packages"], lock["python"]["packages"],
        "{back:#}"
    );
    assert_eq!(back["models"], lock["models"], "{back:#}");
}

/// comfy-pack and comfy-cli end to end, as the build definition above: imported, fetched
/// (ComfyUI and a node from local bare repos, the model from an HTTP server), completed,
/// materialized, verified, and run (ComfyUI's entry point imports the node and reads the
/// model).
#[test]
fn cpack_and_comfy_cli_files_import_fetch_materialize_and_run() {
    let test = "cpack_and_comfy_cli_files_import_fetch_materialize_and_run";
    for tool in ["git", "python3"] {
        let runs = std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !runs {
            common::cannot_run(test, &format!("{tool} is not on PATH"));
            return;
        }
    }
    let t = tempfile::tempdir().unwrap();
    let main_py = "import sys\nsys.path.insert(0, 'custom_nodes')\nimport NodeA\n\
                   data = open('models/checkpoints/sd.safetensors', 'rb').read()\n\
                   print('comfy', NodeA.NODE, len(data))\n";
    let comfy = bare_repo(t.path(), "ComfyUI", &[("main.py", main_py)]);
    let node = bare_repo(t.path(), "NodeA", &[("__init__.py", "NODE = 7\n")]);
    let body = b"checkpoint bytes ".repeat(4096);
    let sha = common::sha256_hex(&body);
    let server = common::http::TestServer::start();
    server.add(
        "/m/sd.safetensors",
        body.clone(),
        common::http::Behavior::Normal,
    );
    let url = server.url("/m/sd.safetensors");
    let node_url = format!("file://{}", s(&t.path().join("NodeA.git")));
    let comfy_repo = format!("file://{}", s(&t.path().join("ComfyUI.git")));

    let cpack_snapshot = format!(
        r#"{{"python": "3.11", "comfyui": "{comfy}",
  "models": [{{"filename": "models/checkpoints/sd.safetensors", "size": {}, "atime": 1.0,
    "ctime": 1.0, "disabled": false, "sha256": "{sha}", "source": {{"download_url": "{url}"}}}}],
  "custom_nodes": [{{"url": "{node_url}", "commit_hash": "{node}", "disabled": false}}]}}"#,
        body.len()
    );
    let cpack = t.path().join("pack.cpack.zip");
    zip(
        &cpack,
        &[("snapshot.json", &cpack_snapshot), ("requirements.txt", "")],
    );
    let cli = t.path().join("comfy.lock.yaml");
    fs::write(
        &cli,
        format!(
            "basics:\n  name: w\n  updated_at: '2026-11-30T12:00:00'\nmodels:\n- model: sd\n  url: {url}\n  paths:\n  - path: models/checkpoints/sd.safetensors\n  hashes:\n  - hash: {sha}\n    type: SHA256\n  type: checkpoint\ncustom_nodes:\n  comfyui: {comfy}\n  git_custom_nodes:\n    {node_url}:\n      disabled: false\n      hash: {node}\n"
        ),
    )
    .unwrap();

    for (name, file) in [("cpack", &cpack), ("comfy-cli", &cli)] {
        let store = t.path().join(format!("store-{name}"));
        let lock = t.path().join(format!("{name}.lock.json"));
        common::ok(
            &store,
            &[
                "import-from",
                s(file),
                "--tag",
                "imp",
                "-o",
                s(&lock),
                "--comfyui-repo",
                &comfy_repo,
            ],
        );
        let fetched = common::json(&store, &["fetch", s(&lock), "--update-lock"]);
        assert_eq!(
            fetched["failed"],
            serde_json::json!([]),
            "{name}: {fetched:#}"
        );
        // The size too, for comfy-cli, which records none: written in from the stored file.
        let done: Value = serde_json::from_slice(&fs::read(&lock).unwrap()).unwrap();
        assert_eq!(
            done["models"][0]["size"],
            body.len() as u64,
            "{name}: {done:#}"
        );
        assert_eq!(
            done["models"][0]["blake3"],
            blake3::hash(&body).to_hex().as_str(),
            "{name}"
        );
        let dest = t.path().join(format!("dest-{name}"));
        common::ok(&store, &["materialize", s(&lock), s(&dest)]);
        let v = run(&store, &["verify", s(&lock), s(&dest), "--full"]);
        assert_eq!(v.status.code(), Some(0), "{name}: {}", common::describe(&v));
        let ran = std::process::Command::new("python3")
            .arg("main.py")
            .current_dir(&dest)
            .output()
            .unwrap();
        assert!(ran.status.success(), "{name}: {}", common::describe(&ran));
        assert_eq!(
            String::from_utf8_lossy(&ran.stdout),
            format!("comfy 7 {}\n", body.len()),
            "{name}"
        );
    }
}

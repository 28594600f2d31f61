//! The JSON Schema in docs/lockfile.schema.json agrees with what `lock` writes and with what
//! comfystore refuses.

mod common;

use common::comfy::ComfyFixture;
use serde_json::Value;
use std::path::Path;

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/lockfile.schema.json"),
    )
    .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&v).expect("the schema itself is valid")
}

fn lock_fixture(root: &Path) -> Value {
    let f = ComfyFixture::build(root);
    let store = root.join("store");
    let out = root.join("v1.lock.json");
    let (hf, hub) = (root.join("hf"), root.join("hf/hub"));
    let res = common::run_env(
        &store,
        &[
            "lock",
            f.comfy.to_str().unwrap(),
            "--tag",
            "v1",
            "-o",
            out.to_str().unwrap(),
        ],
        &[
            ("HF_HOME", Some(hf.as_os_str())),
            ("HF_HUB_CACHE", Some(hub.as_os_str())),
            ("VIRTUAL_ENV", None),
        ],
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

#[test]
fn schema_accepts_what_lock_writes_and_refuses_what_comfystore_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let lock = lock_fixture(tmp.path());
    let v = schema();
    let errors: Vec<String> = v.iter_errors(&lock).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "schema rejects a lock comfystore wrote: {errors:?}"
    );

    type Edit = fn(&mut Value);
    let bad: Vec<(&str, Edit)> = vec![
        ("schema 2", |l| l["schema"] = "comfystore.lock/2".into()),
        ("unknown field", |l| l["extra"] = true.into()),
        ("dotdot path", |l| {
            l["models"][0]["path"] = "../evil.bin".into()
        }),
        ("absolute path", |l| l["models"][0]["path"] = "/abs".into()),
        ("short sha", |l| {
            l["models"][0]["sha256"] = "0123456789".into()
        }),
        ("bad commit", |l| l["comfyui"]["commit"] = "main".into()),
        ("bad tree id", |l| l["comfyui"]["tree"] = "b3:1234".into()),
        ("credentials", |l| {
            l["models"][0]["sources"] = serde_json::json!(["https://u:p@host/x"])
        }),
        ("unnormalised package", |l| {
            l["python"]["packages"][0]["name"] = "Tiny_Bar".into()
        }),
        ("node with tree and file", |l| {
            l["custom_nodes"][0]["file"] = l["custom_nodes"][0]["tree"].clone()
        }),
    ];
    for (what, edit) in bad {
        let mut l = lock.clone();
        edit(&mut l);
        assert!(!v.is_valid(&l), "schema accepts a lock with {what}");
        let path = tmp.path().join("bad.lock.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&l).unwrap()).unwrap();
        let out = common::run(&tmp.path().join("store"), &["show", path.to_str().unwrap()]);
        assert!(
            !out.status.success(),
            "comfystore accepts a lock with {what}"
        );
    }
}

//! The ComfyUI-shaped fixture used by the lock tests is complete, clean and deterministic.

mod common;

use common::comfy::{
    pseudo_random, ComfyFixture, COMFY_ORIGIN, NODE_A_ORIGIN, NODE_B_ORIGIN, OLD_NODE_ORIGIN,
};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> String {
    ComfyFixture::git(dir, args)
}

#[test]
fn comfy_fixture_is_complete_clean_and_deterministic() {
    let t1 = tempfile::tempdir().unwrap();
    let t2 = tempfile::tempdir().unwrap();
    let (f, f2) = std::thread::scope(|s| {
        let a = s.spawn(|| ComfyFixture::build(t1.path()));
        let b = s.spawn(|| ComfyFixture::build(t2.path()));
        (a.join().unwrap(), b.join().unwrap())
    });

    let root = t1.path().canonicalize().unwrap();
    assert_eq!(f.root, root);
    assert_eq!(f.comfy, root.join("ComfyUI"));
    assert_eq!(f.venv, root.join("ComfyUI/venv"));
    assert_eq!(f.shared_models, root.join("shared-models"));
    assert_eq!(f.wheels, root.join("wheels"));

    // The repos: clean, on main, with the expected history and origin.
    let cn = f.comfy.join("custom_nodes");
    let repos = [
        (f.comfy.clone(), COMFY_ORIGIN, "3"),
        (cn.join("ComfyUI-NodeA"), NODE_A_ORIGIN, "2"),
        (cn.join("ComfyUI-NodeB"), NODE_B_ORIGIN, "1"),
        (cn.join(".disabled/OldNode"), OLD_NODE_ORIGIN, "1"),
    ];
    for (dir, origin, commits) in &repos {
        assert_eq!(
            git(dir, &["status", "--porcelain"]),
            "",
            "{} is not clean",
            dir.display()
        );
        assert_eq!(git(dir, &["rev-parse", "--abbrev-ref", "HEAD"]), "main");
        assert_eq!(
            git(dir, &["rev-list", "--count", "HEAD"]),
            *commits,
            "{}",
            dir.display()
        );
        assert_eq!(git(dir, &["remote", "get-url", "origin"]), *origin);
    }

    // ComfyUI: modes, symlink, force-added files in ignored dirs; what is ignored.
    let ls = git(&f.comfy, &["ls-files", "-s"]);
    let mode_of = |p: &str| {
        ls.lines()
            .find(|l| l.ends_with(&format!("\t{p}")))
            .unwrap_or_else(|| panic!("{p} not tracked:\n{ls}"))
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(mode_of("latest.py"), "120000");
    assert_eq!(
        fs::read_link(f.comfy.join("latest.py")).unwrap(),
        Path::new("main.py")
    );
    assert_eq!(mode_of("script_examples/run.sh"), "100755");
    assert_eq!(mode_of("main.py"), "100644");
    for p in [
        "folder_paths.py",
        "nodes.py",
        "comfy/__init__.py",
        "comfy/sd.py",
        ".gitignore",
        "extra_model_paths.yaml.example",
        "models/checkpoints/put_checkpoints_here",
        "custom_nodes/example_node.py.example",
        "custom_nodes/websocket_image_save.py",
        "input/example.png",
        "output/_output_images_will_be_put_here",
    ] {
        mode_of(p);
    }
    assert_eq!(ls.lines().count(), 14, "{ls}");
    let ignored = git(&f.comfy, &["status", "--porcelain", "--ignored"]);
    for p in [
        "!! extra_model_paths.yaml",
        "!! venv/",
        "!! models/checkpoints/a.safetensors",
        "!! custom_nodes/ComfyUI-NodeA/",
    ] {
        assert!(ignored.lines().any(|l| l == p), "{p:?} not in:\n{ignored}");
    }
    let ignored_a = git(
        &cn.join("ComfyUI-NodeA"),
        &["status", "--porcelain", "--ignored"],
    );
    assert_eq!(ignored_a, "!! __pycache__/\n!! config.local.json");
    assert!(cn
        .join("ComfyUI-NodeA/__pycache__/nodes.cpython-311.pyc")
        .is_file());
    assert!(cn.join("ComfyUI-NodeA/requirements.txt").is_file());
    assert!(cn.join("ComfyUI-NodeB/web/js/b.js").is_file());
    assert!(cn.join("PlainNode/__init__.py").is_file());
    assert!(cn.join("PlainNode/data/x.json").is_file());
    assert!(!cn.join("PlainNode/.git").exists());
    assert!(cn.join("__pycache__/junk.pyc").is_file());

    // Models.
    let len = |p: &Path| {
        fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .len()
    };
    let m = f.comfy.join("models");
    assert_eq!(len(&m.join("checkpoints/a.safetensors")), (1 << 20) + 7);
    assert_eq!(len(&m.join("checkpoints/put_checkpoints_here")), 0);
    let b = fs::read(m.join("loras/b.safetensors")).unwrap();
    assert_eq!(b.len(), 300 << 10);
    assert_eq!(b, fs::read(m.join("loras/b_copy.safetensors")).unwrap());
    assert_eq!(len(&m.join("vae/sub/c.pt")), 5 << 20);
    assert_eq!(
        len(&f.shared_models.join("loras/extra.safetensors")),
        200 << 10
    );
    assert_eq!(
        len(&f.shared_models.join("upscale_models/x4.pth")),
        100 << 10
    );
    let yaml = fs::read_to_string(f.comfy.join("extra_model_paths.yaml")).unwrap();
    assert_eq!(
        yaml,
        format!(
            "comfyui:\n    base_path: {}\n    loras: loras/\n    upscale_models: |\n        upscale_models/\n",
            f.shared_models.display()
        )
    );
    assert_eq!(pseudo_random(7, 1000), pseudo_random(7, 1000));
    assert_ne!(pseudo_random(7, 64), pseudo_random(8, 64));
    assert_eq!(pseudo_random(0, 13)[..8], pseudo_random(0, 8)[..]);
    assert!(pseudo_random(0, 64).iter().any(|&x| x != 0));

    // Venv: the three packages import; only directpkg was a direct-URL install.
    let site = f.site_packages();
    let tiny_bar = ["Tiny_Bar-2.1.dist-info", "tiny_bar-2.1.dist-info"].map(|d| site.join(d));
    assert!(
        tiny_bar.iter().any(|d| d.is_dir()),
        "no Tiny_Bar dist-info in {}",
        site.display()
    );
    for d in ["tinyfoo-1.0.0.dist-info", "directpkg-0.3.dist-info"] {
        assert!(site.join(d).join("METADATA").is_file(), "{d}");
    }
    assert!(!site
        .join("tinyfoo-1.0.0.dist-info/direct_url.json")
        .exists());
    assert!(!tiny_bar.iter().any(|d| d.join("direct_url.json").exists()));
    let direct: serde_json::Value = serde_json::from_slice(
        &fs::read(site.join("directpkg-0.3.dist-info/direct_url.json")).unwrap(),
    )
    .unwrap();
    let url = direct["url"].as_str().unwrap();
    assert_eq!(
        url,
        format!(
            "file://{}",
            f.wheels.join("directpkg-0.3-py3-none-any.whl").display()
        )
    );
    assert!(direct["archive_info"].is_object(), "{direct}");
    let out = Command::new(f.venv.join("bin/python"))
        .args([
            "-c",
            "import tinyfoo, tiny_bar, directpkg; print(tinyfoo.__version__, tiny_bar.__version__, directpkg.VALUE)",
        ])
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1.0.0 2.1 3");
    for w in ["tinyfoo-1.0.0", "Tiny_Bar-2.1", "directpkg-0.3"] {
        assert!(
            f.wheels.join(format!("{w}-py3-none-any.whl")).is_file(),
            "{w}"
        );
    }
    let run_sh = fs::metadata(f.comfy.join("script_examples/run.sh")).unwrap();
    assert_eq!(run_sh.permissions().mode() & 0o777, 0o755);

    // Determinism: same commits and same wheel bytes in the second build.
    for (dir, _, _) in &repos {
        let rel = dir.strip_prefix(&f.root).unwrap();
        assert_eq!(
            git(dir, &["rev-parse", "HEAD"]),
            git(&f2.root.join(rel), &["rev-parse", "HEAD"]),
            "{}",
            rel.display()
        );
    }
    for w in fs::read_dir(&f.wheels).unwrap() {
        let w = w.unwrap();
        assert_eq!(
            fs::read(w.path()).unwrap(),
            fs::read(f2.wheels.join(w.file_name())).unwrap()
        );
    }
    let a1 = fs::read(f.comfy.join("models/vae/sub/c.pt")).unwrap();
    assert_eq!(a1, fs::read(f2.comfy.join("models/vae/sub/c.pt")).unwrap());
}

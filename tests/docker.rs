//! The Docker image (docker/Dockerfile, docker/entrypoint.sh), built and run for real by
//! docker/test.sh in its CI mode: the fake ComfyUI as the version, a slim image with this
//! build's `comfystore` binary, the store on a volume folder, the local API, a restart, two
//! containers fetching one model, and a job whose output goes to fake-gcs-server. The script
//! starts its own dockerd and stops it; see its header for what it keeps (a cache under
//! /var/tmp/comfystore-docker) and what it restores on the host.
//!
//! Where Docker cannot be installed or started (not root, no apt-get, dockerd fails), the
//! script exits 77 and the test is reported NOT RUN (a failure under CI, which installs it).

mod common;

use std::process::Command;

#[test]
fn image_builds_and_serves() {
    let test = "docker::image_builds_and_serves";
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/test.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("COMFYSTORE_BIN", env!("CARGO_BIN_EXE_comfystore"))
        .env_remove("COMFYSTORE_DOCKER_REAL")
        .env_remove("KEEP_WORK")
        .output()
        .expect("run docker/test.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(77) {
        let why = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("cannot run: "))
            .unwrap_or("docker/test.sh could not run Docker");
        common::cannot_run(test, why);
        return;
    }
    assert!(
        out.status.success(),
        "docker/test.sh failed ({}):\n{stderr}",
        out.status
    );
    eprintln!("{stderr}");
    assert!(stderr.contains("CI mode: all checks passed"), "{stderr}");
}

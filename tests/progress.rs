//! Progress as a user sees it (issue 19): bars that move with the bytes, an eta that is right
//! on a real terminal, nothing drawn off a terminal, and `--json` left clean.

mod common;

use common::{json, write};

/// An 80 MiB file of pseudo-random bytes (no filesystem can compress or dedupe it away).
fn big_model() -> Vec<u8> {
    let block = common::comfy::pseudo_random(19, 1 << 20);
    block.iter().copied().cycle().take(80 << 20).collect()
}

/// A copy-class materialize counts the bytes it copies as they move (16 MiB a
/// `copy_file_range` call), not one entry per file: the 80 MiB model's bar is seen in its
/// middle half. With the old count (entries only) there was no byte bar at all.
#[test]
fn materialize_with_copies_counts_a_big_models_bytes_as_they_move() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("version");
    write(
        &src.join("models/checkpoints/big.safetensors"),
        &big_model(),
    );
    write(&src.join("main.py"), b"print('hi')\n");
    let id = json(&store, &["add", src.to_str().unwrap()])[0]["report"]["id"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| panic!("no tree id"));
    let dest = t.path().join("dest");
    common::moves_with_the_bytes(
        &store,
        &[
            "--json",
            "materialize",
            &id,
            dest.to_str().unwrap(),
            "--link",
            "copy",
        ],
        &[],
        "copying",
    );
    assert_eq!(
        std::fs::metadata(dest.join("models/checkpoints/big.safetensors"))
            .unwrap()
            .len(),
        80 << 20
    );
}

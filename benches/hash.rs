//! The hash pipeline: BLAKE3 alone and BLAKE3 + SHA-256 over 64 MiB in memory
//! (`store::hash_bytes`), and BLAKE3 of a 64 MiB file in the page cache (`store::b3_file`).
//!
//! `cargo bench --bench hash`. The data is 64 MiB of pseudo-random bytes in a temp file, or the
//! file named by `COMFYSTORE_BENCH_FILE` (scripts/bench/hash_peers.sh passes the file it also
//! gives b3sum and `openssl dgst -sha256`, so the figures compare on the same bytes).

use comfystore::store::{b3_file, hash_bytes};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

const LEN: usize = 64 << 20;

/// Deterministic, incompressible-looking bytes (xorshift64*).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The file to hash and its bytes; the temp dir (if one was made) lives as long as the bench.
fn data() -> (PathBuf, Vec<u8>, Option<tempfile::TempDir>) {
    if let Some(p) = std::env::var_os("COMFYSTORE_BENCH_FILE") {
        let path = PathBuf::from(p);
        let bytes = std::fs::read(&path).expect("read COMFYSTORE_BENCH_FILE");
        return (path, bytes, None);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("data.bin");
    let bytes = pseudo_random(LEN);
    std::fs::write(&path, &bytes).expect("write bench file");
    (path, bytes, Some(dir))
}

fn hash(c: &mut Criterion) {
    let (path, bytes, _dir) = data();
    // The two paths must agree before either is timed.
    let (file_id, file_len) = b3_file(&path).expect("b3_file");
    let mem = hash_bytes(&bytes, true);
    assert_eq!((mem.b3, mem.size), (file_id, file_len));
    eprintln!(
        "hash bench: {} bytes from {}, {} {}",
        bytes.len(),
        path.display(),
        mem.b3,
        mem.sha256.expect("sha256 asked for")
    );

    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("hash_bytes/blake3", |b| {
        b.iter(|| hash_bytes(black_box(&bytes), false))
    });
    g.bench_function("hash_bytes/blake3+sha256", |b| {
        b.iter(|| hash_bytes(black_box(&bytes), true))
    });
    g.bench_function("b3_file/warm", |b| {
        b.iter(|| b3_file(black_box(&path)).expect("b3_file"))
    });
    g.finish();
}

criterion_group!(benches, hash);
criterion_main!(benches);

//! Hashing in one read pass. BLAKE3 names objects; SHA-256 runs on a second thread when asked
//! for, so a large file is read once and costs about max(BLAKE3 + write, SHA-256), not the sum.

use super::id::{ObjectId, Sha256};
use sha2::Digest;
use std::io::{self, Read, Write};
use std::sync::mpsc::sync_channel;

/// Read size of the streaming paths. 1 MiB keeps BLAKE3's SIMD busy and the pool small.
pub const CHUNK: usize = 1 << 20;

/// The digests and length of a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digests {
    pub b3: ObjectId,
    pub sha256: Option<Sha256>,
    pub size: u64,
}

/// Hash bytes already in memory.
pub fn hash_bytes(data: &[u8], want_sha256: bool) -> Digests {
    Digests {
        b3: ObjectId(*blake3::hash(data).as_bytes()),
        sha256: want_sha256.then(|| Sha256(sha2::Sha256::digest(data).into())),
        size: data.len() as u64,
    }
}

/// Read `src` to the end once, hashing it and copying every chunk to `sink` (if any).
///
/// With `want_sha256`, SHA-256 runs on its own thread fed through a small pool of buffers, so
/// it overlaps with the read, BLAKE3 and the write on this thread.
pub fn stream(
    src: &mut dyn Read,
    mut sink: Option<&mut dyn Write>,
    want_sha256: bool,
) -> io::Result<Digests> {
    let mut b3 = blake3::Hasher::new();
    let mut size = 0u64;
    if !want_sha256 {
        // One buffer per thread: a fresh zeroed MiB per call would cost more than hashing a
        // small file (an environment is 25k of them).
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|cell| -> io::Result<()> {
            let mut own = Vec::new();
            let mut held = cell.try_borrow_mut();
            let buf = match held.as_deref_mut() {
                Ok(b) => b,
                Err(_) => &mut own,
            };
            if buf.len() < CHUNK {
                buf.resize(CHUNK, 0);
            }
            while absorb(src, buf, &mut b3, &mut sink, &mut size)? > 0 {}
            Ok(())
        })?;
        return Ok(Digests {
            b3: ObjectId(*b3.finalize().as_bytes()),
            sha256: None,
            size,
        });
    }

    const POOL: usize = 4;
    let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(POOL);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(POOL);
    for _ in 0..POOL {
        // The channel has room for POOL buffers, so these sends cannot block or fail.
        let _ = free_tx.send(vec![0u8; CHUNK]);
    }
    std::thread::scope(|scope| {
        let sha_thread = scope.spawn(move || {
            let mut sha = sha2::Sha256::new();
            while let Ok((buf, n)) = full_rx.recv() {
                sha.update(&buf[..n]);
                // The reader may have finished and dropped its receiver: nothing to return to.
                let _ = free_tx.send(buf);
            }
            Sha256(sha.finalize().into())
        });
        let result = (|| -> io::Result<()> {
            while let Ok(mut buf) = free_rx.recv() {
                let n = absorb(src, &mut buf, &mut b3, &mut sink, &mut size)?;
                if n == 0 {
                    break;
                }
                if full_tx.send((buf, n)).is_err() {
                    return Err(io::Error::other("sha256 thread stopped"));
                }
            }
            Ok(())
        })();
        drop(full_tx);
        let sha = sha_thread
            .join()
            .map_err(|_| io::Error::other("sha256 thread panicked"))?;
        result?;
        Ok(Digests {
            b3: ObjectId(*b3.finalize().as_bytes()),
            sha256: Some(sha),
            size,
        })
    })
}

/// Read one chunk into `buf`, feed it to BLAKE3 and the sink, count it; returns its length
/// (0 at end of input).
fn absorb(
    src: &mut dyn Read,
    buf: &mut [u8],
    b3: &mut blake3::Hasher,
    sink: &mut Option<&mut dyn Write>,
    size: &mut u64,
) -> io::Result<usize> {
    let n = read_full(src, buf)?;
    b3.update(&buf[..n]);
    if let Some(w) = sink.as_mut() {
        w.write_all(&buf[..n])?;
    }
    *size += n as u64;
    Ok(n)
}

/// Fill `buf` as far as the source allows; returns 0 only at end of input.
fn read_full(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// BLAKE3 of a whole file, for verification (fsck, status). Reads with `read()` rather than
/// mmap, so a file truncated meanwhile gives an error, not SIGBUS; large buffers are hashed on
/// both cores.
pub fn b3_file(path: &std::path::Path) -> io::Result<(ObjectId, u64)> {
    use crate::report::Reporter;
    let quiet = crate::report::Silent.start("", None, crate::report::Unit::Bytes);
    b3_file_counted(path, quiet.as_ref())
}

/// [`b3_file`], counting the bytes on `progress` as they are read (a bar that moves while
/// one big object is hashed).
pub fn b3_file_counted(
    path: &std::path::Path,
    progress: &dyn crate::report::Progress,
) -> io::Result<(ObjectId, u64)> {
    b3_open_counted(&mut std::fs::File::open(path)?, progress)
}

/// [`b3_file`] of a file already open (one the caller opened without following a symlink).
pub fn b3_reader(f: &mut std::fs::File) -> io::Result<(ObjectId, u64)> {
    use crate::report::Reporter;
    let quiet = crate::report::Silent.start("", None, crate::report::Unit::Bytes);
    b3_open_counted(f, quiet.as_ref())
}

fn b3_open_counted(
    f: &mut std::fs::File,
    progress: &dyn crate::report::Progress,
) -> io::Result<(ObjectId, u64)> {
    const BIG: usize = 8 << 20;
    let len = f.metadata()?.len();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; (len as usize).clamp(1, BIG)];
    loop {
        let n = read_full(f, &mut buf)?;
        if n == 0 {
            break;
        }
        if n >= 1 << 20 {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
        progress.inc(n as u64);
    }
    Ok((ObjectId(*hasher.finalize().as_bytes()), hasher.count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_matches_one_shot_hashing_across_chunk_boundaries() {
        for len in [0usize, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let want = hash_bytes(&data, true);
            let mut copy = Vec::new();
            let got = stream(&mut &data[..], Some(&mut copy), true).unwrap();
            assert_eq!(got, want, "len {len}");
            assert_eq!(copy, data);
            let plain = stream(&mut &data[..], None, false).unwrap();
            assert_eq!(plain.b3, want.b3);
            assert_eq!(plain.sha256, None);
        }
    }
}

//! Prototype of `comfystore add`'s single-file pipeline (one read; BLAKE3 on the reading
//! thread, SHA-256 on a second thread, as in src/store/hash.rs) with different ways of writing
//! the copy, to measure what the write strategy costs. Not used by comfystore.
//!
//!   write-proto MODE SRC DST        (DST must not exist)
//!
//! MODE:
//!   nowrite   hash only: the floor for any strategy
//!   buffered  what comfystore does today: write(2) every 1 MiB chunk, one syncfs at the end
//!   sfr       buffered, but every 8 MiB start writeback with sync_file_range(WRITE), wait for
//!             the previous 8 MiB and drop it from the page cache (POSIX_FADV_DONTNEED);
//!             fdatasync at the end
//!   direct    a writer thread writes 1 MiB chunks with O_DIRECT; fdatasync at the end
//!
//! Prints both digests (check them against b3sum / openssl), total and final-sync seconds.
use sha2::Digest;
use std::alloc::{alloc, Layout};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

const CHUNK: usize = 1 << 20;
const POOL: usize = 8;
const SFR_STEP: usize = 8 * CHUNK;

/// A 4 KiB-aligned 1 MiB buffer (O_DIRECT needs aligned memory). Leaked at exit.
struct Buf(*mut u8);
unsafe impl Send for Buf {}
impl Buf {
    fn new() -> Buf {
        Buf(unsafe { alloc(Layout::from_size_align(CHUNK, 4096).unwrap()) })
    }
    fn s(&mut self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.0, CHUNK) }
    }
}

fn read_full(f: &mut File, b: &mut [u8]) -> usize {
    let mut n = 0;
    while n < b.len() {
        let r = f.read(&mut b[n..]).expect("read");
        if r == 0 {
            break;
        }
        n += r;
    }
    n
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 4 || !["nowrite", "buffered", "sfr", "direct"].contains(&a[1].as_str()) {
        eprintln!("usage: write-proto nowrite|buffered|sfr|direct SRC DST");
        std::process::exit(2);
    }
    let (mode, src, dst) = (a[1].as_str(), &a[2], &a[3]);
    let t0 = Instant::now();
    let mut f = File::open(src).expect("open src");
    let direct = mode == "direct";
    let mut out = (mode != "nowrite").then(|| {
        let mut o = OpenOptions::new();
        o.write(true).create_new(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(dst).expect("create dst")
    });
    // Buffers for the SHA-256 thread, and for the O_DIRECT writer thread.
    let (full_tx, full_rx) = sync_channel::<(Buf, usize)>(POOL);
    let (free_tx, free_rx) = sync_channel::<Buf>(POOL);
    let (w_tx, w_rx) = sync_channel::<(Buf, usize)>(POOL);
    let (wfree_tx, wfree_rx) = sync_channel::<Buf>(POOL);
    for _ in 0..POOL {
        free_tx.send(Buf::new()).unwrap();
        wfree_tx.send(Buf::new()).unwrap();
    }
    std::thread::scope(|s| {
        let sha = s.spawn(move || {
            let mut h = sha2::Sha256::new();
            while let Ok((mut b, n)) = full_rx.recv() {
                h.update(&b.s()[..n]);
                let _ = free_tx.send(b);
            }
            h.finalize()
        });
        let writer = direct.then(|| {
            let mut o = out.take().unwrap();
            s.spawn(move || {
                let mut total = 0u64;
                while let Ok((mut b, n)) = w_rx.recv() {
                    // O_DIRECT writes whole blocks: pad the last chunk, truncate afterwards.
                    let padded = (n + 4095) & !4095;
                    b.s()[n..padded].fill(0);
                    o.write_all(&b.s()[..padded]).expect("write");
                    total += n as u64;
                    let _ = wfree_tx.send(b);
                }
                o.set_len(total).expect("truncate");
                o.sync_data().expect("fdatasync");
            })
        });
        let mut b3 = blake3::Hasher::new();
        let mut off = 0usize;
        let mut flushed = 0usize; // writeback started up to here
        while let Ok(mut b) = free_rx.recv() {
            let n = read_full(&mut f, b.s());
            if n == 0 {
                break;
            }
            b3.update(&b.s()[..n]);
            if direct {
                let mut wb = wfree_rx.recv().unwrap();
                wb.s()[..n].copy_from_slice(&b.s()[..n]);
                w_tx.send((wb, n)).unwrap();
            } else if let Some(o) = out.as_mut() {
                o.write_all(&b.s()[..n]).expect("write");
                if mode == "sfr" && off + n - flushed >= SFR_STEP {
                    let fd = o.as_raw_fd();
                    unsafe {
                        libc::sync_file_range(
                            fd,
                            flushed as i64,
                            (off + n - flushed) as i64,
                            libc::SYNC_FILE_RANGE_WRITE,
                        );
                        if flushed >= SFR_STEP {
                            let prev = (flushed - SFR_STEP) as i64;
                            libc::sync_file_range(
                                fd,
                                prev,
                                SFR_STEP as i64,
                                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                                    | libc::SYNC_FILE_RANGE_WRITE
                                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                            );
                            libc::posix_fadvise(fd, prev, SFR_STEP as i64, libc::POSIX_FADV_DONTNEED);
                        }
                    }
                    flushed = off + n;
                }
            }
            off += n;
            full_tx.send((b, n)).unwrap();
        }
        drop(full_tx);
        drop(w_tx);
        let sha = sha.join().unwrap();
        if let Some(w) = writer {
            w.join().unwrap();
        }
        let t_sync = Instant::now();
        if let Some(o) = out.as_ref() {
            if mode == "sfr" {
                o.sync_data().expect("fdatasync");
            } else {
                unsafe { libc::syncfs(o.as_raw_fd()) };
            }
        }
        let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!(
            "{mode}: {off} bytes b3 {} sha256 {hex} total {:.3} s final sync {:.3} s",
            b3.finalize().to_hex(),
            t0.elapsed().as_secs_f64(),
            t_sync.elapsed().as_secs_f64()
        );
    });
}

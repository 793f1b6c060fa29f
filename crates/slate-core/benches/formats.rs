//! Micro-benchmarks of slate-core's hot formats, with criterion:
//!
//! - `chunking`: FastCDC cut points (`ChunkerParams::default().cut`) and BLAKE3
//!   chunk ids over 64 MiB of pseudo-random data, separately and together
//!   (what `slate commit` does to every byte of a new file);
//! - `manifest`: `manifest::encode` and `manifest::decode` (with all of its
//!   checks) of a synthetic 20,000-entry manifest shaped like a Debian tree;
//! - `zstd_frame`: `pack::compress_frame` at the repository's default level (6)
//!   and `pack::decompress_frame` of 1 MiB of text-like data.
//!
//! Run with `cargo bench -p slate-core --bench formats` (add `-- --quick` for
//! a fast check). The inputs are deterministic, so runs are comparable.

use std::hint::black_box;

use criterion::{criterion_main, Criterion, Throughput};
use slate_core::chunker::ChunkerParams;
use slate_core::manifest::{self, ChunkRef, Entry, FileData, Kind, Manifest, Meta, Timestamp, Xattr};
use slate_core::pack::{compress_frame, decompress_frame};
use slate_core::{ChunkId, PackId};

/// zstd level a new repository uses (`slate init` default).
const DEFAULT_LEVEL: i32 = 6;
const CHUNK_INPUT_LEN: usize = 64 << 20;
const MANIFEST_ENTRIES: usize = 20_000;
const FRAME_INPUT_LEN: usize = 1 << 20;

/// A small deterministic PRNG (xorshift64*), so inputs are the same every run.
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

fn random_bytes(len: usize) -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text shaped like what an OS tree holds a lot of (man pages, docs, config):
/// lines of words from a small vocabulary, some numbers and punctuation.
fn text_like(len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "of",
        "and",
        "to",
        "a",
        "in",
        "is",
        "file",
        "for",
        "that",
        "with",
        "be",
        "on",
        "as",
        "by",
        "this",
        "system",
        "package",
        "option",
        "default",
        "configuration",
        "directory",
        "user",
        "set",
        "value",
        "if",
        "not",
        "or",
        "are",
        "from",
        "can",
        "will",
        "it",
        "an",
        "use",
        "see",
        "also",
        "debian",
        "linux",
        "kernel",
        "service",
        "network",
        "path",
        "usr",
        "lib",
        "share",
        "etc",
        "var",
        "log",
        "when",
        "which",
        "must",
        "may",
        "command",
        "return",
        "error",
        "string",
        "list",
        "name",
        "version",
        "license",
        "copyright",
        "free",
        "software",
    ];
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut out = Vec::with_capacity(len + 128);
    while out.len() < len {
        let words = 4 + rng.below(10);
        for i in 0..words {
            if i > 0 {
                out.push(b' ');
            }
            match rng.below(20) {
                0 => out.extend_from_slice(rng.below(100_000).to_string().as_bytes()),
                1 => out.extend_from_slice(b"/usr/share/doc"),
                _ => out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes()),
            }
        }
        out.extend_from_slice(if rng.below(4) == 0 { b".\n" } else { b"\n" });
    }
    out.truncate(len);
    out
}

/// A valid manifest of exactly `n` entries in tree order, shaped like a
/// Debian tree: `usr/share/pkgNNNNN/` directories of regular files (1-4
/// chunks each), with some symlinks, hard links, xattrs and nanosecond mtimes.
fn synthetic_manifest(n: usize) -> Manifest {
    let mut rng = Rng(0x0123_4567_89AB_CDEF);
    let meta = |mode: u32, rng: &mut Rng| Meta {
        mode,
        uid: 0,
        gid: 0,
        mtime: Timestamp {
            sec: 1_700_000_000 + rng.below(10_000_000) as i64,
            nsec: rng.below(1_000_000_000) as u32,
        },
        xattrs: Vec::new(),
    };
    let dir = |path: &[u8], m: Meta| Entry {
        path: path.to_vec(),
        meta: m,
        kind: Kind::Dir,
    };
    let mut entries = vec![
        dir(b"", meta(0o755, &mut rng)),
        dir(b"usr", meta(0o755, &mut rng)),
        dir(b"usr/share", meta(0o755, &mut rng)),
    ];
    let mut serial: u64 = 0;
    'dirs: for d in 0.. {
        if entries.len() >= n {
            break;
        }
        let dpath = format!("usr/share/pkg{d:05}");
        entries.push(dir(dpath.as_bytes(), meta(0o755, &mut rng)));
        let files = 5 + rng.below(40);
        let mut last_file: Option<usize> = None;
        for f in 0..files {
            if entries.len() >= n {
                break 'dirs;
            }
            let path = format!("{dpath}/file-{f:03}").into_bytes();
            let roll = rng.below(100);
            let entry = if roll < 8 {
                Entry {
                    path,
                    meta: meta(0o777, &mut rng),
                    kind: Kind::Symlink(format!("../pkg{:05}/file-000", rng.below(d + 1)).into_bytes()),
                }
            } else if let Some(leader) = last_file.filter(|_| roll < 10) {
                Entry {
                    path,
                    meta: entries[leader].meta.clone(),
                    kind: Kind::HardLink(leader as u32),
                }
            } else {
                let mut m = meta(if roll < 20 { 0o755 } else { 0o644 }, &mut rng);
                if roll < 12 {
                    m.xattrs.push(Xattr {
                        name: b"security.capability".to_vec(),
                        value: vec![1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    });
                }
                let nchunks = 1 + rng.below(4) as usize;
                let chunks: Vec<ChunkRef> = (0..nchunks)
                    .map(|_| {
                        serial += 1;
                        ChunkRef {
                            id: ChunkId::of(&serial.to_le_bytes()),
                            len: 1 + rng.below(128 << 10) as u32,
                        }
                    })
                    .collect();
                last_file = Some(entries.len());
                Entry {
                    path,
                    meta: m,
                    kind: Kind::File(FileData {
                        size: chunks.iter().map(|c| c.len as u64).sum(),
                        extents: None,
                        chunks,
                    }),
                }
            };
            entries.push(entry);
        }
    }
    assert_eq!(entries.len(), n);
    Manifest { entries }
}

fn chunking(c: &mut Criterion) {
    let data = random_bytes(CHUNK_INPUT_LEN);
    let params = ChunkerParams::default();
    let cuts = params.cut(&data);
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("fastcdc_cut_64MiB", |b| b.iter(|| params.cut(black_box(&data))));
    g.bench_function("blake3_chunk_ids_64MiB", |b| {
        b.iter(|| {
            cuts.iter()
                .map(|&(off, len)| ChunkId::of(black_box(&data[off..off + len])))
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("fastcdc_cut_and_blake3_64MiB", |b| {
        b.iter(|| {
            params
                .cut(black_box(&data))
                .into_iter()
                .map(|(off, len)| ChunkId::of(&data[off..off + len]))
                .collect::<Vec<_>>()
        })
    });
    g.finish();
}

fn manifest_codec(c: &mut Criterion) {
    let m = synthetic_manifest(MANIFEST_ENTRIES);
    let bytes = manifest::encode(&m);
    assert_eq!(manifest::decode(&bytes).expect("synthetic manifest decodes"), m);
    let mut g = c.benchmark_group("manifest");
    g.throughput(Throughput::Elements(MANIFEST_ENTRIES as u64));
    g.bench_function("encode_20000_entries", |b| b.iter(|| manifest::encode(black_box(&m))));
    g.bench_function("decode_20000_entries", |b| {
        b.iter(|| manifest::decode(black_box(&bytes)).expect("decodes"))
    });
    g.finish();
}

fn zstd_frame(c: &mut Criterion) {
    let raw = text_like(FRAME_INPUT_LEN);
    let compressed = compress_frame(&raw, DEFAULT_LEVEL).expect("compress");
    let pack = PackId::default();
    let mut g = c.benchmark_group("zstd_frame");
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.bench_function("compress_1MiB_text_level6", |b| {
        b.iter(|| compress_frame(black_box(&raw), DEFAULT_LEVEL).expect("compress"))
    });
    g.bench_function("decompress_1MiB_text_level6", |b| {
        b.iter(|| decompress_frame(black_box(&compressed), raw.len() as u32, &pack, 9).expect("decompress"))
    });
    g.finish();
}

/// `criterion_group!` defines an undocumented public function, hence the module.
#[allow(missing_docs)]
mod group {
    use criterion::criterion_group;
    criterion_group!(benches, super::chunking, super::manifest_codec, super::zstd_frame);
}
criterion_main!(group::benches);

//! `slate-fuzz --make-seeds REPO OUT`: write the seed corpus, one directory
//! per target under OUT. Real objects come from REPO, a small repository
//! that `fuzz/make-seeds.sh` builds with the slate binary (manifest, pack
//! index and frame, snapshot record, signature file, delta, channel); the
//! rest is made here with the project's own encoders, plus hand-made edge
//! cases. Seeds are kept small: AFL++ starts from them, it does not need
//! big ones.

use std::path::Path;

use slate_core::delta::{DeltaHeader, DeltaItem};
use slate_core::id::SnapshotId;
use slate_core::manifest::ChunkRef;
use slate_repo::repo::Repo;

use crate::reference_chunks;

/// Largest seed file kept.
const MAX_SEED: usize = 16 << 10;

fn put(out: &Path, target: &str, name: &str, data: &[u8]) {
    if data.len() > MAX_SEED {
        return;
    }
    let dir = out.join(target);
    std::fs::create_dir_all(&dir).expect("create a corpus directory");
    std::fs::write(dir.join(name), data).expect("write a seed");
}

/// Write every target's seeds.
pub fn make(repo_dir: &Path, out: &Path) -> Result<(), String> {
    let repo = Repo::open(repo_dir).map_err(|e| format!("{}: {e}", repo_dir.display()))?;
    let index = repo.load_index().map_err(|e| e.to_string())?;
    let storage = repo_dir;
    let mut snaps = repo.list_snapshots().map_err(|e| e.to_string())?;
    snaps.sort();
    for (i, id) in snaps.iter().enumerate() {
        let hex = id.to_hex();
        let rec =
            std::fs::read(storage.join(format!("snapshots/{}/{hex}.snap", &hex[..2]))).map_err(|e| e.to_string())?;
        put(out, "snapshot", &format!("real-{i}"), &rec);
        if let Ok(sig) = std::fs::read(storage.join(format!("snapshots/{}/{hex}.sig", &hex[..2]))) {
            put(out, "signatures", &format!("real-{i}"), &sig);
        }
        let snap = repo.read_snapshot(id).map_err(|e| e.to_string())?;
        let m = repo.read_manifest(&snap, &index).map_err(|e| e.to_string())?;
        put(out, "manifest", &format!("real-{i}"), &slate_core::manifest::encode(&m));
    }
    // Packs: the index (body only; the target appends the checksum) and the
    // first frame of each with the entry that points into it.
    let mut n = 0;
    for shard in std::fs::read_dir(repo_dir.join("packs")).map_err(|e| e.to_string())? {
        let shard = shard.map_err(|e| e.to_string())?.path();
        for f in std::fs::read_dir(&shard).map_err(|e| e.to_string())? {
            let p = f.map_err(|e| e.to_string())?.path();
            if p.extension().is_some_and(|e| e == "idx") {
                let bytes = std::fs::read(&p).map_err(|e| e.to_string())?;
                put(out, "pack_index", &format!("real-{n}"), &bytes[..bytes.len() - 32]);
                let idx = slate_core::pack::PackIndex::decode(&bytes).map_err(|e| e.to_string())?;
                let pack = std::fs::read(p.with_extension("pack")).map_err(|e| e.to_string())?;
                if let Some(e) = idx.entries.first() {
                    let start = e.frame_offset as usize;
                    let mut seed = Vec::new();
                    seed.extend_from_slice(&e.frame_raw_len.to_le_bytes());
                    seed.extend_from_slice(&e.offset.to_le_bytes());
                    seed.extend_from_slice(&e.len.to_le_bytes());
                    seed.extend_from_slice(&pack[start..start + e.frame_len as usize]);
                    put(out, "pack_frame", &format!("real-{n}"), &seed);
                }
                put(out, "pack_frame", "header", &pack[..9]);
                n += 1;
            }
        }
    }
    for c in repo.channels().map_err(|e| e.to_string())? {
        let h = repo.channel_history(&c).map_err(|e| e.to_string())?;
        put(
            out,
            "channel",
            &c.replace('/', "_"),
            slate_repo::channel::encode(&h).as_bytes(),
        );
    }
    if let Ok(rd) = std::fs::read_dir(repo_dir.join("deltas")) {
        let mut i = 0;
        for d in rd.flatten() {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                let bytes = std::fs::read(f.path()).map_err(|e| e.to_string())?;
                put(out, "delta", &format!("real-{i}"), &bytes);
                i += 1;
            }
        }
    }
    made_here(out);
    Ok(())
}

/// Seeds made with the encoders, and edge cases.
fn made_here(out: &Path) {
    // A delta whose items rebuild real chunks from the fake machine's
    // reference chunks, so `apply` runs to the end.
    let refs = reference_chunks();
    let mut ids: Vec<_> = refs.keys().copied().collect();
    ids.sort();
    let reference: Vec<u8> = refs[&ids[0]].clone();
    let mut new = reference.clone();
    new[100..140].copy_from_slice(b"a line changed in the new version of it!");
    let payload = slate_repo::delta::compress_item(&reference, &new, 19).expect("compress an item");
    let fresh: Vec<u8> = b"a file that is new in this snapshot\n".repeat(20);
    let payload2 = slate_repo::delta::compress_item(&[], &fresh, 19).expect("compress an item");
    let header = DeltaHeader {
        from: SnapshotId::of(b"from"),
        to: SnapshotId::of(b"to"),
        items: vec![
            DeltaItem {
                reference: vec![ChunkRef {
                    id: ids[0],
                    len: reference.len() as u32,
                }],
                output: vec![ChunkRef {
                    id: slate_core::ChunkId::of(&new),
                    len: new.len() as u32,
                }],
                payload_len: payload.len() as u64,
            },
            DeltaItem {
                reference: vec![],
                output: vec![ChunkRef {
                    id: slate_core::ChunkId::of(&fresh),
                    len: fresh.len() as u32,
                }],
                payload_len: payload2.len() as u64,
            },
        ],
    };
    let mut file = header.encode();
    file.extend_from_slice(&payload);
    file.extend_from_slice(&payload2);
    put(out, "delta", "made-apply", &file);
    // A header that claims 2^60 items.
    let mut huge = b"SLATEDL\0\x01".to_vec();
    huge.extend_from_slice(&[0u8; 64]);
    huge.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]);
    put(out, "delta", "claims-2-60-items", &huge);

    // Home objects: the kind byte, then the plaintext.
    use slate_home::format;
    let with_kind = |kind: u8, name: &str, body: &[u8]| {
        let mut v = vec![kind];
        v.extend_from_slice(body);
        put(out, "home_objects", name, &v);
    };
    let config = serde_json::to_vec(&format::RepoConfig::new(1_700_000_000)).expect("json");
    with_kind(0, "config", &config);
    let snap = format::Snapshot {
        version: format::FORMAT_VERSION,
        time_ns: 1_700_000_000_000_000_000,
        host: "lab-07".into(),
        user: "ada".into(),
        roots: vec![format::SnapshotRoot {
            path: "/home/ada".into(),
            manifest: vec![(ids[0].to_hex(), 3000)],
        }],
        files: 3,
        bytes: 4096,
        entries: 5,
        added_bytes: 2048,
    };
    with_kind(1, "snapshot", &serde_json::to_vec(&snap).expect("json"));
    let lock = slate_home::lock::LockInfo {
        time_ns: 1_700_000_000_000_000_000,
        host: "lab-07".into(),
        pid: 4242,
        exclusive: false,
    };
    with_kind(2, "lock", &serde_json::to_vec(&lock).expect("json"));
    let data = b"home directory file contents, compressible ".repeat(40);
    let mut stored = (data.len() as u32).to_le_bytes().to_vec();
    stored.push(0);
    stored.extend_from_slice(&data);
    with_kind(3, "blob-stored", &stored);
    let mut zstd = (data.len() as u32).to_le_bytes().to_vec();
    zstd.push(1);
    zstd.extend_from_slice(&slate_core::pack::compress_frame(&data, 3).expect("compress"));
    with_kind(3, "blob-zstd", &zstd);
    with_kind(4, "forged", &[0u8; 60]);

    let keys = slate_home::crypto::Keys::from_master(&[7; 32]);
    let idx = format::PackIndex {
        pack: "ab".repeat(32),
        blobs: (0..3u32)
            .map(|i| format::BlobEntry {
                id: keys.chunk_id(&i.to_le_bytes()),
                offset: i as u64 * 100,
                len: 100,
                raw_len: 60,
            })
            .collect(),
    };
    put(out, "home_index", "three-blobs", &idx.encode());

    // Request paths and names.
    let h = ids[0].to_hex();
    for (name, p) in [
        ("pack", format!("packs/{}/{h}.pack", &h[..2])),
        ("idx", format!("packs/{}/{h}.idx", &h[..2])),
        ("snap", format!("snapshots/{}/{h}.snap", &h[..2])),
        ("sig", format!("snapshots/{}/{h}.sig", &h[..2])),
        ("delta", format!("deltas/{h}/{h}.delta")),
        ("dotdot", "../../etc/passwd".into()),
        ("machine", "dmi:4c4c4544-0042-3510-8051-b4c04f4d4e31".into()),
        ("token", format!("slate1-{h}")),
        ("size", "64MiB".into()),
        ("channel", "debian/bookworm/lab".into()),
    ] {
        put(out, "request_path", name, p.as_bytes());
    }

    // Range headers: 8 bytes of length, then Range, If-Range, If-None-Match.
    for (name, len, rest) in [
        ("simple", 1000u64, "bytes=0-99\n\n"),
        ("suffix", 1000, "bytes=-10\n\"0123abcd\"\n"),
        ("open", 1000, "bytes=990-\n\n"),
        ("notmod", 1000, "\n\nW/\"0123abcd\", \"x\""),
        ("empty-object", 0, "bytes=-5\n\n"),
        ("several", 1000, "bytes=0-1,5-6\n\n"),
        ("max", u64::MAX, "bytes=18446744073709551614-\n\n"),
    ] {
        let mut v = len.to_le_bytes().to_vec();
        v[0] &= 0xc0; // no shift of the length by the target
        v.extend_from_slice(rest.as_bytes());
        put(out, "range", name, &v);
    }

    // Fleet JSON: kind byte 0 report, 1 assignment request.
    let report = serde_json::json!({
        "machine": {"id": "dmi:4c4c4544", "dmi_uuid": "4C4C4544", "macs": ["52-54-00-12-34-56"],
                    "hostname": "lab-07", "labels": {"room": "b12"}},
        "current": h, "target": null, "active_slot": "a",
        "slots": {"a": h, "b": null}, "pending": null,
        "last_update": {"result": "ok", "message": "updated", "bytes_fetched": 12345, "at": 1700000000,
                        "shadowed": ["/etc/hosts"]},
        "boot": {"result": "good", "slot": "a", "snapshot": h}
    });
    let mut v = vec![0u8];
    v.extend_from_slice(report.to_string().as_bytes());
    put(out, "fleet_json", "report", &v);
    let req =
        serde_json::json!({"machine": {"id": "mac:52:54:00:12:34:56", "macs": ["52:54:00:12:34:56"], "hostname": ""}});
    let mut v = vec![1u8];
    v.extend_from_slice(req.to_string().as_bytes());
    put(out, "fleet_json", "assignment", &v);

    // Key files.
    put(
        out,
        "key_file",
        "public",
        format!("slate-public-key-v1 {}\n", "5a".repeat(32)).as_bytes(),
    );
    put(
        out,
        "key_file",
        "secret",
        format!("slate-secret-key-v1 {}\n", "11".repeat(32)).as_bytes(),
    );
    put(
        out,
        "key_file",
        "home",
        format!("slate-home-key-v1:{}\n", "c3".repeat(32)).as_bytes(),
    );

    // Signed documents: kind byte 0 trust document, 1 channel head, 2
    // assignment, 3 live image record.
    let key = slate_core::keys::SecretKey::from_text(&format!("slate-secret-key-v1 {}\n", "11".repeat(32)))
        .expect("a fixed key");
    let doc = slate_core::trust::TrustDoc {
        version: 2,
        expires: 1_900_000_000,
        threshold: 1,
        snapshots: 1,
        release: vec![key.public()],
        fleet: vec![key.public()],
    };
    let mut v = vec![0u8];
    v.extend_from_slice(doc.to_text(&[&key]).as_bytes());
    put(out, "trust", "document", &v);
    let head = slate_core::trust::ChannelHead {
        channel: "debian/bookworm/lab".into(),
        snapshot: slate_core::SnapshotId::of(b"seed"),
        length: 3,
        issued_at: 1_800_000_000,
        expires_at: 1_800_086_400,
    };
    let mut v = vec![1u8];
    v.extend_from_slice(head.to_text(&key).as_bytes());
    put(out, "trust", "head", &v);
    let a = slate_core::trust::Assignment {
        machine: "lab-07".into(),
        channel: "debian/bookworm/lab".into(),
        snapshot: slate_core::SnapshotId::of(b"seed"),
        pinned: false,
        rule: "lab".into(),
        state_policy: Some("[[path]]\npath = \"/var/log\"\nstate = \"ram\"\n".into()),
        issued_at: 1_800_000_000,
        expires_at: 1_800_086_400,
    };
    let mut v = vec![2u8];
    v.extend_from_slice(&a.encode());
    put(out, "trust", "assignment", &v);
    let rec = slate_core::trust::LiveRecord {
        snapshot: slate_core::SnapshotId::of(b"seed"),
        filesystem: "squashfs".into(),
        data_bytes: 4096 * 1000,
        hash_offset: 4096 * 1000,
        salt: [7; 32],
        root_hash: [9; 32],
        policy: Some([3; 32]),
        made_at: 1_800_000_000,
    };
    let mut v = vec![3u8];
    v.extend_from_slice(rec.to_text(&[&key]).as_bytes());
    put(out, "trust", "live-record", &v);

    // Boot profiles: one of a small tree, one naming paths it lacks.
    let prof = |lines: &[(&str, u64, u64)]| slate_mount::record::Profile {
        snapshot: slate_core::SnapshotId::of(b"seed"),
        lines: lines.iter().map(|(p, a, b)| (p.as_bytes().to_vec(), *a, *b)).collect(),
    };
    put(
        out,
        "profile",
        "small",
        prof(&[
            ("etc/os-release", 0, 65536),
            ("usr/bin/ls", 0, 131072),
            ("usr/bin/ls", 131072, 196608),
        ])
        .encode()
        .as_bytes(),
    );
    put(
        out,
        "profile",
        "strangers",
        prof(&[("nope", 0, 1), ("usr/bin/ls", 1 << 40, 1 << 41)])
            .encode()
            .as_bytes(),
    );

    // A state bundle of a small tree.
    let t = tempfile::tempdir().expect("a temporary directory");
    std::fs::create_dir(t.path().join("d")).expect("mkdir");
    std::fs::write(t.path().join("d/key"), b"ssh host key\n").expect("write");
    std::fs::write(t.path().join("d/conf"), b"a = 1\n").expect("write");
    std::os::unix::fs::symlink("key", t.path().join("d/link")).expect("symlink");
    let c = slate_state::copy::capture(&t.path().join("d")).expect("capture");
    put(out, "state_bundle", "small-tree", &slate_state::bundle::encode(&c));
}

//! The target functions. Each documents where its bytes come from in a
//! real deployment and what it checks beyond "does not crash".

use std::collections::HashMap;
use std::path::Path;

use slate_core::delta::{needs_more, DeltaHeader};
use slate_core::id::{ChunkId, Id32, SnapshotId};
use slate_core::keys::{PublicKey, SecretKey};
use slate_core::pack::{self, IndexEntry, PackIndex};
use slate_core::snapshot::{self, Snapshot};

use crate::{fixed_pack, fixed_snapshot, reference_chunks, scratch_path};

/// `s` as UTF-8 text, or nothing (the decoders below take `&str`; the HTTP
/// and file layers before them refuse other bytes).
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A manifest, as fetched from a server or mirror (its chunks are checked
/// against the snapshot record, but the decoder runs on whatever they hold
/// when the record itself is forged or the hash is of a hostile manifest).
pub fn manifest(data: &[u8]) {
    if let Ok(m) = slate_core::manifest::decode(data) {
        let again =
            slate_core::manifest::decode(&slate_core::manifest::encode(&m)).expect("a decoded manifest re-encodes");
        assert_eq!(again, m, "manifest encode/decode round trip");
        // What `slate update` and `checkout` do with an accepted manifest.
        let _ = m.total_file_bytes();
        for i in 0..m.entries.len() {
            if let Some(f) = m.file_data(i) {
                let _ = f.data_extents();
            }
        }
        let _ = slate_core::manifest::diff::diff(&m, &m);
    }
}

/// A pack index from a server or mirror. Its trailing checksum would stop a
/// fuzzer at the first byte it changes, so each input is tried twice: as it
/// is, and with a correct checksum appended (what an attacker who writes
/// the index can always do).
pub fn pack_index(data: &[u8]) {
    let _ = PackIndex::decode(data);
    let mut fixed = data.to_vec();
    let sum = Id32::hash(&fixed);
    fixed.extend_from_slice(&sum.0);
    if let Ok(idx) = PackIndex::decode(&fixed) {
        for e in &idx.entries {
            assert!(
                e.frame_offset + e.frame_len as u64 <= idx.pack_len,
                "frame inside the pack"
            );
            assert!(
                e.offset as u64 + e.len as u64 <= e.frame_raw_len as u64,
                "chunk inside its frame"
            );
        }
        assert_eq!(PackIndex::decode(&idx.encode()).expect("re-encodes"), idx);
    }
}

/// One frame of a pack as a ranged GET returns it, with the index entry
/// that points at it: 4 bytes raw length, 4 bytes chunk offset, 4 bytes
/// chunk length (little-endian), then the compressed frame. The chunk id is
/// the hash of the bytes it names when they exist, so the fuzzer reaches
/// the success path too.
pub fn pack_frame(data: &[u8]) {
    let _ = pack::check_pack_header(data);
    if data.len() < 12 {
        return;
    }
    let word = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().expect("4 bytes"));
    let (raw_len, offset, len) = (word(0), word(4), word(8));
    let frame = &data[12..];
    let Ok(raw) = pack::decompress_frame(frame, raw_len, &fixed_pack(), 9) else {
        return;
    };
    assert_eq!(raw.len(), raw_len as usize, "a frame holds what its index says");
    let named = raw.get(offset as usize..(offset as usize).saturating_add(len as usize));
    let entry = IndexEntry {
        id: named.map(ChunkId::of).unwrap_or_default(),
        frame_offset: 9,
        frame_len: frame.len() as u32,
        frame_raw_len: raw_len,
        offset,
        len,
    };
    match pack::chunk_from_frame(&raw, &entry) {
        Ok(c) => assert_eq!(Some(c), named),
        Err(_) => assert!(named.is_none() || ChunkId::of(named.unwrap_or_default()) != entry.id),
    }
}

/// A snapshot record from a server or mirror (fetched by id: the id check
/// comes first, then the decoder).
pub fn snapshot(data: &[u8]) {
    let id = SnapshotId::of(data);
    let checked = Snapshot::decode(data, &id);
    let unchecked = Snapshot::decode_unchecked(data);
    assert_eq!(
        checked.is_ok(),
        unchecked.is_ok(),
        "the id check is the only difference"
    );
    assert!(Snapshot::decode(data, &fixed_snapshot()).is_err() || id == fixed_snapshot());
    if let Ok(s) = unchecked {
        let again = Snapshot::decode_unchecked(&s.encode()).expect("a decoded record re-encodes");
        assert_eq!(again, s, "snapshot record encode/decode round trip");
        let _ = s.meta("kernel");
    }
}

/// A signature file (`.sig`), which a server or mirror can rewrite at will:
/// decoded, then checked against a trusted key that signed none of it.
pub fn signatures(data: &[u8]) {
    let Ok(sigs) = snapshot::decode_signatures(data) else {
        return;
    };
    let again = snapshot::decode_signatures(&snapshot::encode_signatures(&sigs)).expect("re-encodes");
    assert_eq!(again, sigs, "signature file encode/decode round trip");
    let trusted = SecretKey::from_text(&format!("slate-secret-key-v1 {}", "11".repeat(32)))
        .expect("a fixed secret key")
        .public();
    let id = fixed_snapshot();
    // Only the holder of the secret key can make a signature that verifies.
    assert!(snapshot::check_trusted(&id, &sigs, &[trusted]).is_err());
    for s in &sigs {
        let _ = s.verify(&id);
    }
}

/// A machine's own copy of the reference chunks (see [`reference_chunks`]).
struct Machine(HashMap<ChunkId, Vec<u8>>);

impl slate_repo::checkout::ChunkSource for Machine {
    fn with_chunk(
        &mut self,
        id: &ChunkId,
        f: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> slate_repo::error::Result<()> {
        match self.0.get(id) {
            Some(d) => f(d).map_err(slate_repo::error::Error::Io),
            None => Err(slate_repo::error::Error::Invalid(format!("no chunk {id}"))),
        }
    }
}

/// A delta file as downloaded from a server or mirror: the header and item
/// table first, then (when they decode) its items rebuilt by the agent's
/// own `apply`, against a machine that holds [`reference_chunks`].
pub fn delta(data: &[u8]) {
    let header = match DeltaHeader::decode(data) {
        Ok((h, off)) => {
            assert!(off <= data.len());
            h
        }
        Err(e) => {
            let _ = needs_more(&e);
            return;
        }
    };
    let (again, _) = DeltaHeader::decode(&header.encode()).expect("a decoded header re-encodes");
    assert_eq!(again, header, "delta header encode/decode round trip");
    let file = scratch_path("input.delta");
    let store = scratch_path("store");
    std::fs::write(&file, data).expect("write the delta to scratch");
    let _ = std::fs::remove_dir_all(&store);
    let mut machine = Machine(reference_chunks());
    let result = slate_agent::delta::apply(&file, &header.from, &header.to, &store, &mut machine, &HashMap::new());
    if let Ok(index) = result {
        // Every chunk the store holds was checked against its id.
        for item in &header.items {
            for c in &item.output {
                assert!(index.contains(&c.id), "a rebuilt chunk is in the store");
            }
        }
    }
}

/// A channel file (`channels/NAME`) from a server or mirror.
pub fn channel(data: &[u8]) {
    if let Ok(history) = slate_repo::channel::decode("fuzz", data) {
        let text = slate_repo::channel::encode(&history);
        assert_eq!(
            slate_repo::channel::decode("fuzz", text.as_bytes()).expect("re-encodes"),
            history
        );
    }
}

/// A home repository's index object after opening (the server stores it
/// sealed, but a holder of the key, or a bug in sealing, is not trusted by
/// the decoder either).
pub fn home_index(data: &[u8]) {
    if let Ok(idx) = slate_home::format::PackIndex::decode(data) {
        let again = slate_home::format::PackIndex::decode(&idx.encode()).expect("re-encodes");
        assert_eq!(again, idx, "home index encode/decode round trip");
    }
}

/// The other home objects as a server returns them: the first byte picks
/// the kind, the rest is sealed here with a fixed key (so the fuzzer
/// reaches the decoders behind the authentication) and opened by the
/// project's own code. Kind 4 opens the input as it is (a forged object).
pub fn home_objects(data: &[u8]) {
    use slate_home::format::{self, RepoConfig, Snapshot as HomeSnapshot};
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let keys = slate_home::crypto::Keys::from_master(&[7; 32]);
    match kind % 5 {
        0 => {
            let sealed = keys.seal(&format::object_ad("config", "config"), rest);
            if let Ok(c) = format::open_json::<RepoConfig>(&keys, "config", "config", &sealed) {
                // What `HomeRepo::open` checks, and what `slate home backup`
                // then does with the config.
                if c.version == format::FORMAT_VERSION && c.check().is_ok() {
                    let _ = c.chunker().cut(&[0x5a; 1 << 17]);
                }
            }
        }
        1 => {
            let sealed = keys.seal(&format::object_ad("snapshots", "s"), rest);
            if let Ok(s) = format::open_json::<HomeSnapshot>(&keys, "snapshots", "s", &sealed) {
                for r in &s.roots {
                    let _ = r.manifest_chunks();
                }
            }
        }
        2 => {
            let sealed = keys.seal(&format::object_ad("locks", "l"), rest);
            let _ = format::open_json::<slate_home::lock::LockInfo>(&keys, "locks", "l", &sealed);
        }
        3 => {
            // A blob: flag byte (0 stored, 1 zstd) and bytes. Its id is the
            // keyed hash of the stored bytes, so stored blobs open.
            if rest.len() < 4 {
                return;
            }
            let raw_len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) % (2 << 20);
            let plain = &rest[4..];
            let id = keys.chunk_id(plain.get(1..).unwrap_or_default());
            let sealed = keys.seal(&format::blob_ad(&id), plain);
            if let Ok(d) = format::open_blob(&keys, &id, raw_len, &sealed, "p") {
                assert_eq!(keys.chunk_id(&d), id);
                assert_eq!(d.len(), raw_len as usize);
            }
        }
        _ => {
            assert!(format::open_json::<RepoConfig>(&keys, "config", "config", rest).is_err());
            let id = keys.chunk_id(rest);
            assert!(format::open_blob(&keys, &id, rest.len() as u32, rest, "p").is_err());
        }
    }
}

/// The path of a request below `/v1/repo/`, and the other names a client
/// puts in a URL or a request (machine names, tokens, state blob names,
/// channel names, sizes).
pub fn request_path(data: &[u8]) {
    use slate_server::objects::Object;
    let Some(s) = text(data) else {
        return;
    };
    if let Some(o) = Object::parse(s) {
        // One object, one URL: the storage key is the path it came from.
        assert_eq!(o.key(), s, "the storage key is the request path");
        assert_eq!(Object::parse(&o.key()), Some(o));
    }
    if slate_server::auth::check_machine(s).is_ok() {
        // A machine's storage directory is one safe segment whatever its name.
        let space = slate_server::private::state_space(s);
        assert!(
            slate_server::blobs::check_segment(&space).is_ok(),
            "state space {space:?}"
        );
    }
    if slate_server::auth::is_token(s) {
        assert_eq!(slate_server::auth::hash(s).len(), 64);
    }
    if slate_server::blobs::check_segment(s).is_ok() {
        assert!(
            !s.contains('/') && s != "." && s != "..",
            "a segment never leaves its directory"
        );
    }
    let _ = slate_server::blobs::parse_size(s);
    if slate_repo::channel::check_name(s).is_ok() {
        assert!(
            !s.split('/').any(|p| p == ".." || p == "." || p.is_empty()),
            "a channel name stays in channels/"
        );
    }
    let _ = slate_agent::serverstate::check_name(s);
}

/// The conditional and range headers of a GET of an object: 8 bytes of
/// object length, then `Range`, `If-Range` and `If-None-Match` values
/// separated by newlines.
pub fn range(data: &[u8]) {
    use axum::http::{header, HeaderMap, HeaderValue};
    use slate_server::range::{answer, reply, RangeAnswer, Reply};
    if data.len() < 8 {
        return;
    }
    let len = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) >> (data[0] % 64);
    let mut fields = data[8..].split(|&b| b == b'\n');
    let mut h = HeaderMap::new();
    for name in [header::RANGE, header::IF_RANGE, header::IF_NONE_MATCH] {
        if let Some(v) = fields.next().and_then(|f| HeaderValue::from_bytes(f).ok()) {
            h.insert(name, v);
        }
    }
    let etag = "\"0123abcd\"";
    if let RangeAnswer::Partial { start, end } = answer(slate_server::range::header_str(&h, header::RANGE), len) {
        assert!(start <= end && end < len, "a partial answer lies inside the object");
    }
    match reply(&h, etag, "public, max-age=31536000, immutable", len) {
        Reply::Send { start, count, .. } => {
            assert!(
                start.checked_add(count).is_some_and(|e| e <= len),
                "bytes sent lie inside the object"
            );
        }
        Reply::NotModified(_) | Reply::Unsatisfiable(_) => {}
    }
}

/// The JSON bodies of the fleet API: the first byte picks a report (`POST
/// /v1/fleet/report`) or an assignment request (`POST /v1/fleet/assignment`,
/// its machine identity); the rest is the body.
pub fn fleet_json(data: &[u8]) {
    use slate_server::fleet::api::{AssignmentRequest, ReportRequest};
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    if kind % 2 == 0 {
        let Ok(req) = serde_json::from_slice::<ReportRequest>(body) else {
            return;
        };
        let raw = String::from_utf8_lossy(body).into_owned();
        if let Ok(rec) = req.validate(raw) {
            assert!(slate_server::fleet::machine::check_token("id", &rec.machine, 256).is_ok());
        }
    } else {
        let Ok(req) = serde_json::from_slice::<AssignmentRequest>(body) else {
            return;
        };
        if let Ok(m) = req.machine.validate() {
            // Validation normalises: doing it again changes nothing.
            assert_eq!(m.clone().validate().as_ref(), Ok(&m));
            let _ = m.describe();
        }
    }
}

/// A state policy (TOML) as the image or the fleet gives it.
pub fn state_policy(data: &[u8]) {
    let Some(s) = text(data) else {
        return;
    };
    if let Ok(p) = slate_state::policy::Policy::parse(s, Path::new("fuzz.toml")) {
        for e in &p.entries {
            assert!(
                slate_state::policy::check_path(&e.path).is_ok(),
                "an accepted path is checked"
            );
            let _ = p.covering(e.rel());
        }
        let _ = p.backup_paths();
    }
}

/// A state bundle (`server` paths) as the server returns it.
pub fn state_bundle(data: &[u8]) {
    if let Ok(c) = slate_state::bundle::decode(data, "fuzz") {
        let again = slate_state::bundle::decode(&slate_state::bundle::encode(&c), "fuzz").expect("re-encodes");
        assert_eq!(again.manifest, c.manifest, "bundle encode/decode round trip");
    }
}

/// Key files: the release keys an administrator copies to machines, and a
/// home repository's key file.
pub fn key_file(data: &[u8]) {
    if let Some(s) = text(data) {
        if let Ok(k) = PublicKey::from_text(s) {
            assert_eq!(PublicKey::from_text(&k.to_text()).expect("re-encodes"), k);
        }
        if let Ok(k) = SecretKey::from_text(s) {
            assert_eq!(
                SecretKey::from_text(&k.to_text()).expect("re-encodes").public(),
                k.public()
            );
        }
    }
    let path = scratch_path("home.key");
    std::fs::write(&path, data).expect("write the key file to scratch");
    let _ = slate_home::crypto::Keys::from_key_file(&path);
}

/// The fleet's and the release keys' signed documents other than
/// snapshots: a trust document (`/v1/trust`), a signed channel head
/// (`/v1/heads/NAME`, kept and passed on by mirrors), and an assignment's
/// canonical bytes, and a live image's record (read from a CD or stick).
/// The first byte picks the decoder.
pub fn trust(data: &[u8]) {
    use slate_core::trust::{Assignment, ChannelHead, LiveRecord, TrustDoc, LIVE_BLOCK};
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Some(Ok((doc, _))) = text(rest).map(TrustDoc::parse) {
                // Canonical: what parses is exactly what would be signed.
                assert!(text(rest).unwrap_or_default().starts_with(&doc.body()));
                assert!(doc.threshold >= 1 && doc.threshold as usize <= doc.release.len());
                assert!(doc.snapshots >= 1 && doc.snapshots as usize <= doc.release.len());
            }
        }
        1 => {
            if let Some(Ok((head, _))) = text(rest).map(ChannelHead::parse) {
                assert!(text(rest).unwrap_or_default().starts_with(&head.body()));
                assert!(head.length >= 1);
            }
        }
        3 => {
            if let Some(Ok((rec, _))) = text(rest).map(LiveRecord::parse) {
                assert!(text(rest).unwrap_or_default().starts_with(&rec.body()));
                assert!(rec.data_bytes > 0 && rec.data_bytes % LIVE_BLOCK == 0 && rec.hash_offset >= rec.data_bytes);
                let _ = rec.verity_table("/dev/loop0");
            }
        }
        _ => {
            if let Ok(a) = Assignment::decode(rest) {
                assert_eq!(a.encode(), rest, "an assignment decodes only from its canonical bytes");
            }
        }
    }
}

/// A snapshot's boot profile (`/v1/repo/snapshots/../ID.profile`, a hint
/// any server may send) and what a mount makes of it: decoded, encoded
/// again to the same value, and mapped onto a small tree (paths it lacks,
/// ranges past a file's end).
pub fn profile(data: &[u8]) {
    use slate_core::manifest::{ChunkRef, Entry, FileData, Kind, Manifest, Meta};
    let Some(t) = text(data) else {
        return;
    };
    let Ok(p) = slate_mount::record::Profile::decode(t) else {
        return;
    };
    let again = slate_mount::record::Profile::decode(&p.encode()).expect("an encoded profile decodes");
    assert_eq!(again, p);
    let file = |size: u64| {
        Kind::File(FileData {
            size,
            extents: None,
            chunks: vec![ChunkRef {
                id: slate_core::ChunkId::of(b"c"),
                len: size as u32,
            }],
        })
    };
    let entry = |path: &str, kind| Entry {
        path: path.as_bytes().to_vec(),
        meta: Meta::default(),
        kind,
    };
    let tree = slate_mount::tree::Tree::new(Manifest {
        entries: vec![
            entry("", Kind::Dir),
            entry("etc", Kind::Dir),
            entry("etc/os-release", file(300)),
            entry("usr", Kind::Dir),
            entry("usr/bin", Kind::Dir),
            entry("usr/bin/ls", file(140_000)),
        ],
    });
    for (id, len) in p.chunks(&tree) {
        assert_eq!(id, slate_core::ChunkId::of(b"c"));
        assert!(len == 300 || len == 140_000);
    }
}

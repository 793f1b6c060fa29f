//! Snapshot records and their signatures (`docs/format/snapshot.md`).
//!
//! A snapshot names its manifest by the manifest's BLAKE3 hash, size and the
//! chunks that hold its encoding, so the manifest travels and deduplicates
//! like file content. The snapshot id is the BLAKE3 of the encoded record.
//! Signatures live beside the record, not in it, so a snapshot can gain a
//! signature without changing its id.

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::id::{ChunkId, Id32, SnapshotId};
use crate::keys::{PublicKey, SecretKey};
use crate::manifest::{ChunkRef, MAX_CHUNK_LEN};

const MAGIC: &[u8; 8] = b"SLATESN\0";
const SIG_MAGIC: &[u8; 8] = b"SLATESG\0";
const VERSION: u32 = 1;
/// What a snapshot signature signs: this domain, then the snapshot id.
pub const SIGN_DOMAIN: &[u8] = b"slate snapshot signature v1";
/// Largest manifest accepted (a tree of tens of millions of entries).
pub const MAX_MANIFEST_LEN: u64 = 4 << 30;

/// Where a snapshot's manifest is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestRef {
    /// BLAKE3 of the encoded manifest.
    pub hash: Id32,
    /// Its length.
    pub size: u64,
    /// The chunks holding it, in order.
    pub chunks: Vec<ChunkRef>,
}

/// An immutable snapshot record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The tree's manifest.
    pub manifest: ManifestRef,
    /// The channel head this snapshot was committed on top of.
    pub parent: Option<SnapshotId>,
    /// Creation time, nanoseconds since the epoch.
    pub time_ns: i64,
    /// The channel it was committed to.
    pub channel: String,
    /// The commit message.
    pub message: String,
    /// Free-form metadata (os-release's PRETTY_NAME, VERSION_ID, ...), sorted by key.
    pub metadata: Vec<(String, String)>,
    /// Number of entries in the tree.
    pub entries: u64,
    /// Sum of regular file sizes.
    pub file_bytes: u64,
}

impl Snapshot {
    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(MAGIC);
        w.varint(VERSION as u64);
        w.id(&self.manifest.hash);
        w.varint(self.manifest.size);
        w.varint(self.manifest.chunks.len() as u64);
        for c in &self.manifest.chunks {
            w.id(&c.id.0);
            w.varint(c.len as u64);
        }
        match &self.parent {
            Some(p) => {
                w.u8(1);
                w.id(&p.0);
            }
            None => w.u8(0),
        }
        w.svarint(self.time_ns);
        w.bytes(self.channel.as_bytes());
        w.bytes(self.message.as_bytes());
        w.varint(self.metadata.len() as u64);
        for (k, v) in &self.metadata {
            w.bytes(k.as_bytes());
            w.bytes(v.as_bytes());
        }
        w.varint(self.entries);
        w.varint(self.file_bytes);
        w.buf
    }

    /// The id of this record.
    pub fn id(&self) -> SnapshotId {
        SnapshotId::of(&self.encode())
    }

    /// Decode an untrusted record, checking that it is the record `id` names.
    pub fn decode(data: &[u8], id: &SnapshotId) -> Result<Self> {
        if SnapshotId::of(data) != *id {
            return Err(Error::HashMismatch {
                what: "snapshot",
                id: id.to_hex(),
            });
        }
        Self::decode_unchecked(data)
    }

    /// Decode without checking the id (for records just written).
    pub fn decode_unchecked(data: &[u8]) -> Result<Self> {
        let mut r = Reader::new(data, "snapshot");
        r.header(MAGIC, VERSION)?;
        let hash = r.id()?;
        let size = r.varint_max(MAX_MANIFEST_LEN, "manifest size")?;
        let n = r.count(33, "manifest chunk")?;
        let mut chunks = Vec::with_capacity(n);
        let mut total = 0u64;
        for _ in 0..n {
            let id = ChunkId(r.id()?);
            let len = r.varint_max(MAX_CHUNK_LEN as u64, "chunk length")? as u32;
            if len == 0 {
                return Err(r.corrupt("a manifest chunk is empty"));
            }
            total += len as u64;
            chunks.push(ChunkRef { id, len });
        }
        if total != size {
            return Err(r.corrupt("manifest chunks do not add up to its size"));
        }
        let parent = match r.u8()? {
            0 => None,
            1 => Some(SnapshotId(r.id()?)),
            _ => return Err(r.corrupt("bad parent flag")),
        };
        let time_ns = r.svarint()?;
        let channel = r.string(1024, "channel")?;
        let message = r.string(1 << 20, "message")?;
        let nm = r.count(2, "metadata")?;
        let mut metadata = Vec::with_capacity(nm);
        for _ in 0..nm {
            metadata.push((r.string(1024, "metadata key")?, r.string(1 << 16, "metadata value")?));
        }
        let entries = r.varint()?;
        let file_bytes = r.varint()?;
        r.finish()?;
        Ok(Snapshot {
            manifest: ManifestRef { hash, size, chunks },
            parent,
            time_ns,
            channel,
            message,
            metadata,
            entries,
            file_bytes,
        })
    }

    /// A metadata value by key.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// One signature over a snapshot id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSignature {
    /// The signer's public key.
    pub key: PublicKey,
    /// Ed25519 signature of [`SIGN_DOMAIN`], a zero byte, then the snapshot id.
    pub sig: [u8; 64],
}

impl SnapshotSignature {
    /// Sign `id` with `key`.
    pub fn sign(id: &SnapshotId, key: &SecretKey) -> Self {
        SnapshotSignature {
            key: key.public(),
            sig: key.sign(SIGN_DOMAIN, id.as_bytes()),
        }
    }
    /// Check this signature over `id`.
    pub fn verify(&self, id: &SnapshotId) -> Result<()> {
        self.key.verify(SIGN_DOMAIN, id.as_bytes(), &self.sig)
    }
}

/// Encode a signature file.
pub fn encode_signatures(sigs: &[SnapshotSignature]) -> Vec<u8> {
    let mut w = Writer::new();
    w.raw(SIG_MAGIC);
    w.varint(VERSION as u64);
    w.varint(sigs.len() as u64);
    for s in sigs {
        w.raw(&s.key.0);
        w.raw(&s.sig);
    }
    w.buf
}

/// Decode an untrusted signature file (signatures are not checked here).
pub fn decode_signatures(data: &[u8]) -> Result<Vec<SnapshotSignature>> {
    let mut r = Reader::new(data, "signature file");
    r.header(SIG_MAGIC, VERSION)?;
    let n = r.count(96, "signature")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let key = PublicKey(r.raw(32)?.try_into().unwrap());
        let sig: [u8; 64] = r.raw(64)?.try_into().unwrap();
        out.push(SnapshotSignature { key, sig });
    }
    r.finish()?;
    Ok(out)
}

/// Check that at least one signature in `sigs` over `id` is by a key in
/// `trusted` and verifies. Signatures by other keys are ignored.
pub fn check_trusted(id: &SnapshotId, sigs: &[SnapshotSignature], trusted: &[PublicKey]) -> Result<PublicKey> {
    check_threshold(id, sigs, trusted, 1).map(|signers| signers[0])
}

/// Check that at least `threshold` distinct keys of `trusted` made a valid
/// signature of snapshot `id`; returns those signers. A signature that
/// claims a trusted key but does not verify, or a key that signed twice,
/// counts once at most: several lines cannot stand in for several keys.
pub fn check_threshold(
    id: &SnapshotId,
    sigs: &[SnapshotSignature],
    trusted: &[PublicKey],
    threshold: usize,
) -> Result<Vec<PublicKey>> {
    let threshold = threshold.max(1);
    let mut signers: Vec<PublicKey> = Vec::new();
    let mut failed = None;
    for s in sigs.iter().filter(|s| trusted.contains(&s.key)) {
        if signers.contains(&s.key) {
            continue;
        }
        match s.verify(id) {
            Ok(()) => signers.push(s.key),
            Err(e) => failed = Some(e),
        }
    }
    if signers.len() >= threshold {
        return Ok(signers);
    }
    Err(match failed {
        _ if !signers.is_empty() => Error::Signature(format!(
            "snapshot {id} carries valid signatures by {} trusted release key(s) ({}); the trust document requires {threshold}",
            signers.len(),
            signers.iter().map(|k| k.fingerprint()).collect::<Vec<_>>().join(", ")
        )),
        Some(e) => e,
        None if sigs.is_empty() => Error::Signature(format!("snapshot {id} is not signed")),
        None => Error::Signature(format!(
            "snapshot {id} is signed only by untrusted keys ({})",
            sigs.iter().map(|s| s.key.fingerprint()).collect::<Vec<_>>().join(", ")
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            manifest: ManifestRef {
                hash: Id32::hash(b"m"),
                size: 3,
                chunks: vec![ChunkRef {
                    id: ChunkId::of(b"abc"),
                    len: 3,
                }],
            },
            parent: Some(SnapshotId::of(b"p")),
            time_ns: 1_700_000_000_123_456_789,
            channel: "debian/bookworm/lab".into(),
            message: "first".into(),
            metadata: vec![("PRETTY_NAME".into(), "Debian GNU/Linux 12 (bookworm)".into())],
            entries: 10,
            file_bytes: 1000,
        }
    }

    #[test]
    fn round_trip_and_id_check() {
        let s = sample();
        let bytes = s.encode();
        assert_eq!(Snapshot::decode(&bytes, &s.id()).unwrap(), s);
        assert!(Snapshot::decode(&bytes, &SnapshotId::of(b"x")).is_err());
        for n in 0..bytes.len() {
            assert!(Snapshot::decode_unchecked(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn forged_counts_are_clean_errors() {
        // A record whose manifest claims 2^60 chunks, and a signature file
        // claiming 2^60 signatures: errors, nothing reserved for them.
        let mut w = Writer::new();
        w.raw(MAGIC);
        w.varint(VERSION as u64);
        w.id(&Id32::hash(b"m"));
        w.varint(3);
        w.varint(1 << 60);
        w.raw(&[0u8; 256]);
        let e = Snapshot::decode_unchecked(&w.buf).unwrap_err();
        assert!(e.to_string().contains("count"), "{e}");
        let mut w = Writer::new();
        w.raw(SIG_MAGIC);
        w.varint(VERSION as u64);
        w.varint(1 << 60);
        w.raw(&[0u8; 96]);
        assert!(decode_signatures(&w.buf).is_err());
        // Truncated anywhere: an error, never a panic.
        let bytes = encode_signatures(&[SnapshotSignature {
            key: PublicKey([1; 32]),
            sig: [2; 64],
        }]);
        for n in 0..bytes.len() {
            assert!(decode_signatures(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn trust_rules() {
        let s = sample();
        let id = s.id();
        let good = SecretKey::generate().unwrap();
        let evil = SecretKey::generate().unwrap();
        let sigs = decode_signatures(&encode_signatures(&[SnapshotSignature::sign(&id, &good)])).unwrap();
        assert_eq!(check_trusted(&id, &sigs, &[good.public()]).unwrap(), good.public());
        assert!(check_trusted(&id, &sigs, &[evil.public()]).is_err());
        assert!(check_trusted(&SnapshotId::of(b"other"), &sigs, &[good.public()]).is_err());
        assert!(check_trusted(&id, &[], &[good.public()]).is_err());
        let forged = SnapshotSignature {
            key: good.public(),
            sig: evil.sign(SIGN_DOMAIN, id.as_bytes()),
        };
        assert!(check_trusted(&id, &[forged], &[good.public()]).is_err());
        // A threshold counts distinct keys with valid signatures.
        let second = SecretKey::generate().unwrap();
        let both = [good.public(), second.public()];
        let one = [SnapshotSignature::sign(&id, &good)];
        assert!(check_threshold(&id, &one, &both, 2)
            .unwrap_err()
            .to_string()
            .contains("requires 2"));
        // The same key twice is still one key.
        let twice = [one[0].clone(), one[0].clone()];
        assert!(check_threshold(&id, &twice, &both, 2).is_err());
        let two = [one[0].clone(), SnapshotSignature::sign(&id, &second)];
        assert_eq!(check_threshold(&id, &two, &both, 2).unwrap().len(), 2);
        // A forged second line claiming the other key does not count.
        let forged_second = SnapshotSignature {
            key: second.public(),
            sig: one[0].sig,
        };
        assert!(check_threshold(&id, &[one[0].clone(), forged_second], &both, 2).is_err());
    }
}

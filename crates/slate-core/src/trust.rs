//! Key roles and the signed documents that are not snapshots
//! (`docs/format/trust.md`): fleet assignments, signed channel heads,
//! detached signatures of state policies, the trust document that
//! rotates and revokes keys, and the record that binds a live image's root
//! to its snapshot.
//!
//! Two roles sign: offline **release** keys (snapshots, state policies that
//! run commands at boot, trust documents) and the online **fleet** key of
//! `slate serve` (assignments and channel heads). Every kind of signed message has its own
//! domain string, so a signature made for one kind never verifies as
//! another, whoever holds the key: a snapshot signature is not an
//! assignment signature, an assignment signature is not a trust document's.
//! What is signed is always a canonical byte string defined here, never a
//! re-serialisation of JSON or TOML that could differ between encoders.

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::keys::{PublicKey, SecretKey};

/// Domain of an assignment signature (fleet role).
pub const ASSIGNMENT_DOMAIN: &[u8] = b"slate fleet assignment v1";
/// Domain of a state policy signature (release role).
pub const POLICY_DOMAIN: &[u8] = b"slate state policy v1";
/// Domain of a trust document signature (release role).
pub const TRUST_DOMAIN: &[u8] = b"slate trust document v1";
/// Domain of a channel head signature (fleet role).
pub const HEAD_DOMAIN: &[u8] = b"slate channel head v1";
/// Domain of a live image record signature (release role).
pub const LIVE_DOMAIN: &[u8] = b"slate live image v1";
/// Domain of the objects URLs that go with an assignment (fleet role).
pub const OBJECTS_DOMAIN: &[u8] = b"slate fleet objects v1";

const ASSIGNMENT_MAGIC: &[u8; 8] = b"SLATEAS\0";
const ASSIGNMENT_VERSION: u32 = 1;
const OBJECTS_MAGIC: &[u8; 8] = b"SLATEOB\0";
const OBJECTS_VERSION: u32 = 1;
/// Most objects URLs an assignment may name.
pub const MAX_OBJECTS_URLS: usize = 16;
/// Longest objects URL.
pub const MAX_OBJECTS_URL_LEN: usize = 512;
/// Longest state policy an assignment may carry.
pub const MAX_POLICY_LEN: usize = 1 << 20;

/// What the fleet tells one machine to run, as signed by the fleet key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The machine it is for.
    pub machine: String,
    /// The channel it runs.
    pub channel: String,
    /// The snapshot to run.
    pub snapshot: SnapshotId,
    /// Whether the snapshot is an explicit pin (which may go back in time).
    pub pinned: bool,
    /// The fleet rule that decided.
    pub rule: String,
    /// The fleet's state policy for the machine (TOML text), if any.
    pub state_policy: Option<String>,
    /// When it was issued, Unix seconds; never decreases for one machine.
    pub issued_at: u64,
    /// After this (Unix seconds) the assignment is stale.
    pub expires_at: u64,
}

impl Assignment {
    /// The canonical bytes the fleet key signs.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(ASSIGNMENT_MAGIC);
        w.varint(ASSIGNMENT_VERSION as u64);
        w.bytes(self.machine.as_bytes());
        w.bytes(self.channel.as_bytes());
        w.id(&self.snapshot.0);
        w.u8(self.pinned as u8);
        w.bytes(self.rule.as_bytes());
        match &self.state_policy {
            Some(p) => {
                w.u8(1);
                w.bytes(p.as_bytes());
            }
            None => w.u8(0),
        }
        w.varint(self.issued_at);
        w.varint(self.expires_at);
        w.buf
    }

    /// Decode canonical bytes (untrusted).
    pub fn decode(data: &[u8]) -> Result<Self> {
        let mut r = Reader::new(data, "assignment");
        r.header(ASSIGNMENT_MAGIC, ASSIGNMENT_VERSION)?;
        let machine = r.string(1024, "machine")?;
        let channel = r.string(1024, "channel")?;
        let snapshot = SnapshotId(r.id()?);
        let pinned = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(r.corrupt("bad pinned flag")),
        };
        let rule = r.string(4096, "rule")?;
        let state_policy = match r.u8()? {
            0 => None,
            1 => Some(r.string(MAX_POLICY_LEN, "state policy")?),
            _ => return Err(r.corrupt("bad state policy flag")),
        };
        let issued_at = r.varint()?;
        let expires_at = r.varint()?;
        r.finish()?;
        Ok(Assignment {
            machine,
            channel,
            snapshot,
            pinned,
            rule,
            state_policy,
            issued_at,
            expires_at,
        })
    }

    /// Sign with the fleet key.
    pub fn sign(&self, key: &SecretKey) -> Signature {
        Signature {
            key: key.public(),
            sig: key.sign(ASSIGNMENT_DOMAIN, &self.encode()),
        }
    }

    /// Check that `sig` is a valid signature of this assignment by one of
    /// the `fleet` keys; returns the signer.
    pub fn verify(&self, sig: &Signature, fleet: &[PublicKey]) -> Result<PublicKey> {
        if !fleet.contains(&sig.key) {
            return Err(Error::Signature(format!(
                "the assignment is signed by key {}, which this machine does not trust as a fleet key",
                sig.key.fingerprint()
            )));
        }
        sig.key
            .verify(ASSIGNMENT_DOMAIN, &self.encode(), &sig.sig)
            .map_err(|_| Error::Signature("the assignment's signature does not verify (tampered?)".into()))?;
        Ok(sig.key)
    }
}

impl Assignment {
    /// The canonical bytes of the statement "machines holding this very
    /// assignment may fetch immutable objects from `urls`", signed apart
    /// from the assignment (domain [`OBJECTS_DOMAIN`]) so that the
    /// assignment's own signature, and every agent that checks only that,
    /// stay as they were; the whole assignment encoding is inside, so the
    /// URLs cannot be moved onto another machine's or an older assignment.
    pub fn objects_statement(&self, urls: &[String]) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(OBJECTS_MAGIC);
        w.varint(OBJECTS_VERSION as u64);
        w.bytes(&self.encode());
        w.varint(urls.len() as u64);
        for u in urls {
            w.bytes(u.as_bytes());
        }
        w.buf
    }

    /// Sign the objects URLs of this assignment with the fleet key.
    pub fn sign_objects(&self, urls: &[String], key: &SecretKey) -> Signature {
        Signature {
            key: key.public(),
            sig: key.sign(OBJECTS_DOMAIN, &self.objects_statement(urls)),
        }
    }

    /// Check that `sig` is `signer`'s signature of `urls` for this
    /// assignment, and that the URLs are well formed ([`check_objects_url`]).
    pub fn verify_objects(&self, urls: &[String], sig: &Signature, signer: &PublicKey) -> Result<()> {
        if sig.key != *signer {
            return Err(Error::Signature(format!(
                "the objects URLs are signed by key {}, not by the key of the assignment ({})",
                sig.key.fingerprint(),
                signer.fingerprint()
            )));
        }
        if urls.is_empty() || urls.len() > MAX_OBJECTS_URLS {
            return Err(Error::Signature(format!(
                "an assignment names 1 to {MAX_OBJECTS_URLS} objects URLs, not {}",
                urls.len()
            )));
        }
        for u in urls {
            check_objects_url(u).map_err(Error::Signature)?;
        }
        sig.key
            .verify(OBJECTS_DOMAIN, &self.objects_statement(urls), &sig.sig)
            .map_err(|_| Error::Signature("the signature of the objects URLs does not verify (tampered?)".into()))
    }
}

/// Whether `url` may be an objects URL: `http://` or `https://` with a
/// host, at most [`MAX_OBJECTS_URL_LEN`] printable ASCII characters, no
/// spaces, no query or fragment (object paths are appended to it), no
/// trailing `/`. `Err` says what is wrong.
pub fn check_objects_url(url: &str) -> std::result::Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("objects URL {url:?} must start with http:// or https://"))?;
    if url.len() > MAX_OBJECTS_URL_LEN {
        return Err(format!(
            "objects URL {url:.40}... is longer than {MAX_OBJECTS_URL_LEN} characters"
        ));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "objects URL {url:?} holds spaces or characters that are not printable ASCII"
        ));
    }
    if url.contains(['?', '#']) {
        return Err(format!(
            "objects URL {url:?} has a query or fragment; object paths are appended to it"
        ));
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("objects URL {url:?} names no host"));
    }
    if url.ends_with('/') {
        return Err(format!("objects URL {url:?} ends with '/'"));
    }
    Ok(())
}

/// One signature: who and what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    /// The signer's public key.
    pub key: PublicKey,
    /// The Ed25519 signature.
    pub sig: [u8; 64],
}

const SIG_WORD: &str = "signature";

impl Signature {
    /// The text line `signature <key hex> <signature hex>` (no newline).
    pub fn to_line(&self) -> String {
        format!("{SIG_WORD} {} {}", hex::encode(self.key.0), hex::encode(self.sig))
    }

    /// Parse one `signature` line.
    pub fn from_line(line: &str) -> Result<Self> {
        let bad = || Error::Signature(format!("not a signature line: {:.80}", line));
        let mut it = line.split(' ');
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(SIG_WORD), Some(k), Some(s), None) => {
                let mut key = [0u8; 32];
                let mut sig = [0u8; 64];
                hex::decode_to_slice(k, &mut key).map_err(|_| bad())?;
                hex::decode_to_slice(s, &mut sig).map_err(|_| bad())?;
                Ok(Signature {
                    key: PublicKey(key),
                    sig,
                })
            }
            _ => Err(bad()),
        }
    }

    /// The key as hex.
    pub fn key_hex(&self) -> String {
        hex::encode(self.key.0)
    }

    /// The signature as hex.
    pub fn sig_hex(&self) -> String {
        hex::encode(self.sig)
    }

    /// From the two hex strings of a JSON answer.
    pub fn from_hex(key: &str, sig: &str) -> Result<Self> {
        Self::from_line(&format!("{SIG_WORD} {key} {sig}"))
    }
}

/// Parse a detached signature file: `signature` lines, blank lines and `#`
/// comments. At most 64 signatures.
pub fn parse_signatures(text: &str) -> Result<Vec<Signature>> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if out.len() == 64 {
            return Err(Error::Signature("more than 64 signatures".into()));
        }
        out.push(Signature::from_line(line)?);
    }
    Ok(out)
}

/// Count the distinct keys of `trusted` that made a valid signature of
/// `message` under `domain`.
pub fn count_valid(domain: &[u8], message: &[u8], sigs: &[Signature], trusted: &[PublicKey]) -> usize {
    let mut seen: Vec<PublicKey> = Vec::new();
    for s in sigs {
        if trusted.contains(&s.key) && !seen.contains(&s.key) && s.key.verify(domain, message, &s.sig).is_ok() {
            seen.push(s.key);
        }
    }
    seen.len()
}

/// Sign a state policy's exact bytes with a release key.
pub fn sign_policy(text: &[u8], key: &SecretKey) -> Signature {
    Signature {
        key: key.public(),
        sig: key.sign(POLICY_DOMAIN, text),
    }
}

/// Check that a release key in `release` signed the policy `text`.
pub fn verify_policy(text: &[u8], sigs: &[Signature], release: &[PublicKey]) -> Result<()> {
    if count_valid(POLICY_DOMAIN, text, sigs, release) >= 1 {
        return Ok(());
    }
    Err(Error::Signature(if sigs.is_empty() {
        "the state policy carries no release-key signature".into()
    } else {
        format!(
            "no signature of the state policy is by a trusted release key and valid (signers: {})",
            sigs.iter().map(|s| s.key.fingerprint()).collect::<Vec<_>>().join(", ")
        )
    }))
}

const TRUST_MAGIC: &str = "slate-trust-v1";
const TRUST_END: &str = "end";

/// The keys a machine trusts, per role, as a trust document states them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustDoc {
    /// Higher than every earlier document's.
    pub version: u64,
    /// Not accepted after this (Unix seconds).
    pub expires: u64,
    /// How many release keys must sign the next trust document.
    pub threshold: u32,
    /// How many distinct release keys must sign a snapshot (1 unless the
    /// document says `snapshots N`).
    pub snapshots: u32,
    /// Keys that sign snapshots, state policies with commands and trust documents.
    pub release: Vec<PublicKey>,
    /// Keys that sign assignments.
    pub fleet: Vec<PublicKey>,
}

impl TrustDoc {
    /// The canonical text that is signed: one field a line, ending in `end`.
    pub fn body(&self) -> String {
        let mut s = format!(
            "{TRUST_MAGIC}\nversion {}\nexpires {}\nthreshold {}\n",
            self.version, self.expires, self.threshold
        );
        // Written only when it is not the default, so that documents from
        // before the line existed keep their canonical form (and signatures).
        if self.snapshots != 1 {
            s.push_str(&format!("snapshots {}\n", self.snapshots));
        }
        for k in &self.release {
            s.push_str(&format!("release {}\n", hex::encode(k.0)));
        }
        for k in &self.fleet {
            s.push_str(&format!("fleet {}\n", hex::encode(k.0)));
        }
        s.push_str(TRUST_END);
        s.push('\n');
        s
    }

    /// The whole file: the body, then one signature line per key.
    pub fn to_text(&self, keys: &[&SecretKey]) -> String {
        let body = self.body();
        let mut s = body.clone();
        for k in keys {
            let sig = Signature {
                key: k.public(),
                sig: k.sign(TRUST_DOMAIN, body.as_bytes()),
            };
            s.push_str(&sig.to_line());
            s.push('\n');
        }
        s
    }

    /// Parse an untrusted trust file; its signatures are returned unchecked
    /// (see [`TrustDoc::verify`]). The body must be exactly the canonical
    /// form, so the bytes signed are the bytes read.
    pub fn parse(text: &str) -> Result<(TrustDoc, Vec<Signature>)> {
        let bad = |d: &str| Error::corrupt("trust document", d.to_string());
        let (body, rest) = split_signed(text, TRUST_MAGIC, "trust document")?;
        let mut lines = body.lines().skip(1).peekable();
        let mut field = |name: &str| -> Result<u64> { number_line(lines.next(), name, "trust document") };
        let version = field("version")?;
        let expires = field("expires")?;
        let threshold = field("threshold")?;
        let snapshots = match lines.peek() {
            Some(l) if l.starts_with("snapshots ") => number_line(lines.next(), "snapshots", "trust document")?,
            _ => 1,
        };
        let mut release = Vec::new();
        let mut fleet = Vec::new();
        for l in lines {
            let (role, hexkey) = l.split_once(' ').unwrap_or((l, ""));
            if role == TRUST_END {
                break;
            }
            let mut k = [0u8; 32];
            hex::decode_to_slice(hexkey, &mut k).map_err(|_| bad(&format!("bad key line {l:.80}")))?;
            match role {
                "release" => release.push(PublicKey(k)),
                "fleet" => fleet.push(PublicKey(k)),
                _ => return Err(bad(&format!("unknown line {l:.80}"))),
            }
        }
        if threshold == 0 || threshold > release.len() as u64 {
            return Err(bad("threshold must be between 1 and the number of release keys"));
        }
        if snapshots == 0 || snapshots > release.len() as u64 {
            return Err(bad("snapshots must be between 1 and the number of release keys"));
        }
        let doc = TrustDoc {
            version,
            expires,
            threshold: threshold as u32,
            snapshots: snapshots as u32,
            release,
            fleet,
        };
        if doc.body() != body {
            return Err(bad("not in canonical form"));
        }
        Ok((doc, rest))
    }

    /// Whether this document, with `sigs`, may replace `current` at time
    /// `now`: a higher version, not expired, signed by `current.threshold`
    /// of the current release keys and by its own threshold of its own.
    pub fn verify(&self, sigs: &[Signature], current: &TrustDoc, now: u64) -> Result<()> {
        if self.version <= current.version {
            return Err(Error::Signature(format!(
                "trust document version {} is not newer than the trusted version {}",
                self.version, current.version
            )));
        }
        if self.expires <= now {
            return Err(Error::Signature(format!(
                "trust document version {} expired (at {})",
                self.version, self.expires
            )));
        }
        let body = self.body();
        let by_current = count_valid(TRUST_DOMAIN, body.as_bytes(), sigs, &current.release);
        if by_current < current.threshold as usize {
            return Err(Error::Signature(format!(
                "trust document version {} is signed by {by_current} of the currently trusted release keys; {} needed",
                self.version, current.threshold
            )));
        }
        let by_own = count_valid(TRUST_DOMAIN, body.as_bytes(), sigs, &self.release);
        if by_own < self.threshold as usize {
            return Err(Error::Signature(format!(
                "trust document version {} is signed by {by_own} of its own release keys; {} needed",
                self.version, self.threshold
            )));
        }
        Ok(())
    }
}

/// Split an untrusted signed text document into its body (from the `magic`
/// line through the `end` line) and its signatures. At most 64 KiB.
fn split_signed<'a>(text: &'a str, magic: &str, what: &'static str) -> Result<(&'a str, Vec<Signature>)> {
    let bad = |d: &str| Error::corrupt(what, d.to_string());
    if text.len() > 64 << 10 {
        return Err(bad("larger than 64 KiB"));
    }
    if !text.starts_with(magic) || text.as_bytes().get(magic.len()) != Some(&b'\n') {
        return Err(bad(&format!("does not start with {magic}")));
    }
    let end = text
        .find(&format!("\n{TRUST_END}\n"))
        .ok_or_else(|| bad("no `end` line"))?
        + TRUST_END.len()
        + 2;
    let (body, rest) = text.split_at(end);
    Ok((body, parse_signatures(rest)?))
}

/// The number of a `NAME N` line, in canonical decimal.
fn number_line(line: Option<&str>, name: &str, what: &'static str) -> Result<u64> {
    line.and_then(|l| l.strip_prefix(name))
        .and_then(|v| v.strip_prefix(' '))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && (v.len() == 1 || !v.starts_with('0')))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| Error::corrupt(what, format!("expected a `{name} N` line")))
}

const HEAD_MAGIC: &str = "slate-head-v1";

/// A channel's head as the fleet key vouches for it at one moment: which
/// snapshot ends the channel's history, how long that history is, and until
/// when the statement holds. A mirror keeps it verbatim and passes it on,
/// so a mirror that stops following its source (frozen) is seen once the
/// head it serves expires, and one that goes back in time is seen by the
/// issue time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelHead {
    /// The channel.
    pub channel: String,
    /// The snapshot at its head.
    pub snapshot: SnapshotId,
    /// The number of snapshots in its history (the head is the last).
    pub length: u64,
    /// When it was signed, Unix seconds; never decreases for one server.
    pub issued_at: u64,
    /// After this (Unix seconds) it is stale.
    pub expires_at: u64,
}

impl ChannelHead {
    /// The canonical text that is signed.
    pub fn body(&self) -> String {
        format!(
            "{HEAD_MAGIC}\nchannel {}\nsnapshot {}\nlength {}\nissued {}\nexpires {}\n{TRUST_END}\n",
            self.channel,
            self.snapshot.to_hex(),
            self.length,
            self.issued_at,
            self.expires_at
        )
    }

    /// The whole file: the body and one signature line by the fleet key.
    pub fn to_text(&self, key: &SecretKey) -> String {
        let body = self.body();
        let sig = Signature {
            key: key.public(),
            sig: key.sign(HEAD_DOMAIN, body.as_bytes()),
        };
        format!("{body}{}\n", sig.to_line())
    }

    /// Parse an untrusted head file; signatures unchecked (see
    /// [`ChannelHead::verify`]).
    pub fn parse(text: &str) -> Result<(ChannelHead, Vec<Signature>)> {
        let bad = |d: &str| Error::corrupt("channel head", d.to_string());
        let (body, sigs) = split_signed(text, HEAD_MAGIC, "channel head")?;
        let mut lines = body.lines().skip(1);
        let channel = lines
            .next()
            .and_then(|l| l.strip_prefix("channel "))
            .filter(|c| !c.is_empty() && c.len() <= 1024)
            .ok_or_else(|| bad("expected a `channel NAME` line"))?
            .to_string();
        let snapshot = lines
            .next()
            .and_then(|l| l.strip_prefix("snapshot "))
            .and_then(SnapshotId::from_hex)
            .ok_or_else(|| bad("expected a `snapshot ID` line"))?;
        let length = number_line(lines.next(), "length", "channel head")?;
        let issued_at = number_line(lines.next(), "issued", "channel head")?;
        let expires_at = number_line(lines.next(), "expires", "channel head")?;
        let head = ChannelHead {
            channel,
            snapshot,
            length,
            issued_at,
            expires_at,
        };
        if length == 0 {
            return Err(bad("a head of an empty history"));
        }
        if head.body() != body {
            return Err(bad("not in canonical form"));
        }
        Ok((head, sigs))
    }

    /// Check that one of the `fleet` keys signed this head; returns the signer.
    pub fn verify(&self, sigs: &[Signature], fleet: &[PublicKey]) -> Result<PublicKey> {
        let body = self.body();
        for s in sigs {
            if fleet.contains(&s.key) && s.key.verify(HEAD_DOMAIN, body.as_bytes(), &s.sig).is_ok() {
                return Ok(s.key);
            }
        }
        Err(Error::Signature(if sigs.is_empty() {
            format!("the head of channel {} is not signed", self.channel)
        } else {
            format!(
                "the head of channel {} carries no valid signature by a trusted fleet key (signers: {})",
                self.channel,
                sigs.iter().map(|s| s.key.fingerprint()).collect::<Vec<_>>().join(", ")
            )
        }))
    }
}

const LIVE_MAGIC: &str = "slate-live-v1";

/// What a live image's root is, as a release key vouches for it: the
/// snapshot it was made from and the dm-verity parameters of its root
/// image, whose root hash pins every block of that image. The initramfs
/// checks the signature with the keys built into the image and hands the
/// kernel nothing but these parameters, so a block of the root image that
/// differs from what was signed fails its read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveRecord {
    /// The snapshot whose tree the root image holds.
    pub snapshot: SnapshotId,
    /// The root image's filesystem (`squashfs`).
    pub filesystem: String,
    /// Bytes of filesystem data (a multiple of 4096), from the image's start.
    pub data_bytes: u64,
    /// Where the hash tree starts in the image file (bytes, a multiple of 4096).
    pub hash_offset: u64,
    /// dm-verity's salt.
    pub salt: [u8; 32],
    /// dm-verity's root hash (sha256, 4096-byte blocks, format 1).
    pub root_hash: [u8; 32],
    /// The BLAKE3 hash of the state policy the image boots with, when it
    /// brings its own (`slate image iso --policy`); else the tree's.
    pub policy: Option<[u8; 32]>,
    /// When the image was made, Unix seconds.
    pub made_at: u64,
}

/// Block size of the live root image's hash tree, both data and hash blocks.
pub const LIVE_BLOCK: u64 = 4096;

impl LiveRecord {
    /// The canonical text that is signed.
    pub fn body(&self) -> String {
        format!(
            "{LIVE_MAGIC}\nsnapshot {}\nfilesystem {}\ndata {}\nhash-offset {}\nsalt {}\nroot-hash {}\npolicy {}\nmade {}\n{TRUST_END}\n",
            self.snapshot.to_hex(),
            self.filesystem,
            self.data_bytes,
            self.hash_offset,
            hex::encode(self.salt),
            hex::encode(self.root_hash),
            self.policy.map(hex::encode).unwrap_or_else(|| "none".into()),
            self.made_at
        )
    }

    /// The whole file: the body and a signature line per key.
    pub fn to_text(&self, keys: &[&SecretKey]) -> String {
        let body = self.body();
        let mut out = body.clone();
        for k in keys {
            let sig = Signature {
                key: k.public(),
                sig: k.sign(LIVE_DOMAIN, body.as_bytes()),
            };
            out.push_str(&sig.to_line());
            out.push('\n');
        }
        out
    }

    /// Parse an untrusted record; signatures unchecked (see [`LiveRecord::verify`]).
    pub fn parse(text: &str) -> Result<(LiveRecord, Vec<Signature>)> {
        let bad = |d: &str| Error::corrupt("live image record", d.to_string());
        let (body, sigs) = split_signed(text, LIVE_MAGIC, "live image record")?;
        let mut lines = body.lines().skip(1);
        let snapshot = lines
            .next()
            .and_then(|l| l.strip_prefix("snapshot "))
            .and_then(SnapshotId::from_hex)
            .ok_or_else(|| bad("expected a `snapshot ID` line"))?;
        let filesystem = lines
            .next()
            .and_then(|l| l.strip_prefix("filesystem "))
            .filter(|f| *f == "squashfs")
            .ok_or_else(|| bad("expected `filesystem squashfs`"))?
            .to_string();
        let data_bytes = number_line(lines.next(), "data", "live image record")?;
        let hash_offset = number_line(lines.next(), "hash-offset", "live image record")?;
        let hash32 = |line: Option<&str>, name: &str| -> Result<[u8; 32]> {
            let mut out = [0u8; 32];
            line.and_then(|l| l.strip_prefix(name))
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| hex::decode_to_slice(v, &mut out).ok())
                .ok_or_else(|| bad(&format!("expected a `{name} HEX` line of 32 bytes")))?;
            Ok(out)
        };
        let salt = hash32(lines.next(), "salt")?;
        let root_hash = hash32(lines.next(), "root-hash")?;
        let policy_line = lines.next();
        let policy = if policy_line == Some("policy none") {
            None
        } else {
            Some(hash32(policy_line, "policy")?)
        };
        let made_at = number_line(lines.next(), "made", "live image record")?;
        let rec = LiveRecord {
            snapshot,
            filesystem,
            data_bytes,
            hash_offset,
            salt,
            root_hash,
            policy,
            made_at,
        };
        if data_bytes == 0 || data_bytes % LIVE_BLOCK != 0 || hash_offset % LIVE_BLOCK != 0 || hash_offset < data_bytes
        {
            return Err(bad(
                "the data size and hash offset must be whole 4096-byte blocks, the hashes after the data",
            ));
        }
        if rec.body() != body {
            return Err(bad("not in canonical form"));
        }
        Ok((rec, sigs))
    }

    /// Check that one of `keys` signed this record; returns the signer.
    pub fn verify(&self, sigs: &[Signature], keys: &[PublicKey]) -> Result<PublicKey> {
        let body = self.body();
        for s in sigs {
            if keys.contains(&s.key) && s.key.verify(LIVE_DOMAIN, body.as_bytes(), &s.sig).is_ok() {
                return Ok(s.key);
            }
        }
        Err(Error::Signature(if sigs.is_empty() {
            "the live image record is not signed".into()
        } else {
            format!(
                "the live image record carries no valid signature by a key built into this image (signers: {})",
                sigs.iter().map(|s| s.key.fingerprint()).collect::<Vec<_>>().join(", ")
            )
        }))
    }

    /// The dm-verity table line for this root, its data and hashes both on
    /// `device` (a loop device over the image file): 512-byte sectors of
    /// data, the data and hash block size, the number of data blocks, the
    /// first hash block, the hash, the root hash and the salt.
    pub fn verity_table(&self, device: &str) -> String {
        format!(
            "0 {} verity 1 {device} {device} {LIVE_BLOCK} {LIVE_BLOCK} {} {} sha256 {} {}",
            self.data_bytes / 512,
            self.data_bytes / LIVE_BLOCK,
            self.hash_offset / LIVE_BLOCK,
            hex::encode(self.root_hash),
            hex::encode(self.salt)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{SnapshotSignature, SIGN_DOMAIN};

    fn sample() -> Assignment {
        Assignment {
            machine: "lab-07".into(),
            channel: "debian/bookworm/lab".into(),
            snapshot: SnapshotId::of(b"s"),
            pinned: false,
            rule: "lab".into(),
            state_policy: Some("version = 1\n".into()),
            issued_at: 1_800_000_000,
            expires_at: 1_800_086_400,
        }
    }

    #[test]
    fn objects_urls_are_bound_to_their_assignment_and_key() {
        let key = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let a = sample();
        let urls = vec!["https://cdn.example.org/os".to_string()];
        let sig = a.sign_objects(&urls, &key);
        a.verify_objects(&urls, &sig, &key.public()).unwrap();
        // Another URL, another assignment, another signer: refused.
        let moved = vec!["https://evil.example.org/os".to_string()];
        assert!(a.verify_objects(&moved, &sig, &key.public()).is_err());
        let mut later = a.clone();
        later.issued_at += 1;
        assert!(later.verify_objects(&urls, &sig, &key.public()).is_err());
        assert!(a.verify_objects(&urls, &sig, &other.public()).is_err());
        let by_other = a.sign_objects(&urls, &other);
        assert!(a.verify_objects(&urls, &by_other, &key.public()).is_err());
        // An assignment signature is not an objects signature.
        let asig = a.sign(&key);
        assert!(a.verify_objects(&urls, &asig, &key.public()).is_err());
        assert!(a
            .verify_objects(&[], &a.sign_objects(&[], &key), &key.public())
            .is_err());
    }

    #[test]
    fn objects_urls_are_checked() {
        for ok in ["http://127.0.0.1:8080", "https://b.s3.example.org/prefix/os"] {
            check_objects_url(ok).unwrap();
        }
        for bad in [
            "ftp://x",
            "http://",
            "https:///x",
            "http://x/",
            "http://x/a b",
            "http://x/?a=1",
            "http://x/#f",
            "s3://b/p",
        ] {
            assert!(check_objects_url(bad).is_err(), "{bad}");
        }
        assert!(check_objects_url(&format!("http://x/{}", "a".repeat(600))).is_err());
    }

    #[test]
    fn assignment_round_trip_and_truncation() {
        let a = sample();
        let b = a.encode();
        assert_eq!(Assignment::decode(&b).unwrap(), a);
        for n in 0..b.len() {
            assert!(Assignment::decode(&b[..n]).is_err(), "truncated at {n}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(Assignment::decode(&longer).is_err());
    }

    #[test]
    fn assignment_signature_rules() {
        let fleet = SecretKey::generate().unwrap();
        let release = SecretKey::generate().unwrap();
        let a = sample();
        let sig = a.sign(&fleet);
        assert_eq!(a.verify(&sig, &[fleet.public()]).unwrap(), fleet.public());
        // Wrong key set: the release key is not a fleet key.
        assert!(a.verify(&sig, &[release.public()]).is_err());
        // Every field is covered.
        let mut t = a.clone();
        t.pinned = true;
        assert!(t.verify(&sig, &[fleet.public()]).is_err());
        let mut t = a.clone();
        t.snapshot = SnapshotId::of(b"other");
        assert!(t.verify(&sig, &[fleet.public()]).is_err());
        let mut t = a.clone();
        t.state_policy = None;
        assert!(t.verify(&sig, &[fleet.public()]).is_err());
        let mut t = a.clone();
        t.expires_at += 1;
        assert!(t.verify(&sig, &[fleet.public()]).is_err());
        let mut t = a.clone();
        t.machine = "lab-08".into();
        assert!(t.verify(&sig, &[fleet.public()]).is_err());
        // A signature claiming the fleet key but made by another key.
        let forged = Signature {
            key: fleet.public(),
            sig: release.sign(ASSIGNMENT_DOMAIN, &a.encode()),
        };
        assert!(a.verify(&forged, &[fleet.public()]).is_err());
    }

    #[test]
    fn roles_do_not_cross() {
        let k = SecretKey::generate().unwrap();
        let id = SnapshotId::of(b"x");
        // A snapshot signature over bytes never verifies as another role's.
        let snap = SnapshotSignature::sign(&id, &k);
        let as_sig = Signature {
            key: k.public(),
            sig: snap.sig,
        };
        assert_eq!(count_valid(SIGN_DOMAIN, id.as_bytes(), &[as_sig], &[k.public()]), 1);
        for d in [ASSIGNMENT_DOMAIN, POLICY_DOMAIN, TRUST_DOMAIN] {
            assert_eq!(count_valid(d, id.as_bytes(), &[as_sig], &[k.public()]), 0);
        }
        // A policy signature is not an assignment signature of the same bytes.
        let a = sample();
        let p = sign_policy(&a.encode(), &k);
        assert!(a.verify(&p, &[k.public()]).is_err());
        // And an assignment signature is not a policy signature.
        let s = a.sign(&k);
        assert!(verify_policy(&a.encode(), &[s], &[k.public()]).is_err());
    }

    #[test]
    fn policy_signatures() {
        let k = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let text = b"[[path]]\npath = \"/etc/x\"\nstate = \"dynamic\"\ncommand = [\"/bin/true\"]\n";
        let file = format!("# made by slate policy sign\n{}\n", sign_policy(text, &k).to_line());
        let sigs = parse_signatures(&file).unwrap();
        verify_policy(text, &sigs, &[k.public()]).unwrap();
        assert!(verify_policy(text, &sigs, &[other.public()]).is_err());
        assert!(verify_policy(&text[..text.len() - 1], &sigs, &[k.public()]).is_err());
        assert!(verify_policy(text, &[], &[k.public()]).is_err());
        assert!(parse_signatures("signature 00 11\n").is_err());
        let line = sign_policy(text, &k).to_line();
        assert!(parse_signatures(&line[..line.len() - 2]).is_err());
    }

    #[test]
    fn trust_documents() {
        let old = SecretKey::generate().unwrap();
        let new = SecretKey::generate().unwrap();
        let fleet = SecretKey::generate().unwrap();
        let current = TrustDoc {
            version: 0,
            expires: u64::MAX,
            threshold: 1,
            snapshots: 1,
            release: vec![old.public()],
            fleet: vec![fleet.public()],
        };
        let next = TrustDoc {
            version: 2,
            expires: 2_000_000_000,
            threshold: 1,
            snapshots: 1,
            release: vec![new.public()],
            fleet: vec![fleet.public()],
        };
        let text = next.to_text(&[&old, &new]);
        let (doc, sigs) = TrustDoc::parse(&text).unwrap();
        assert_eq!(doc, next);
        doc.verify(&sigs, &current, 1_900_000_000).unwrap();
        // Expired.
        assert!(doc.verify(&sigs, &current, 2_000_000_000).is_err());
        // Not newer.
        assert!(doc.verify(&sigs, &next, 1_900_000_000).is_err());
        // Signed only by the new key: the current set did not agree.
        let (d, s) = TrustDoc::parse(&next.to_text(&[&new])).unwrap();
        assert!(d.verify(&s, &current, 1_900_000_000).is_err());
        // Signed only by the old key: the new set cannot sign.
        let (d, s) = TrustDoc::parse(&next.to_text(&[&old])).unwrap();
        assert!(d.verify(&s, &current, 1_900_000_000).is_err());
        // Tampered body (a fleet key swapped in) breaks the signatures.
        let evil = SecretKey::generate().unwrap().public();
        let tampered = text.replace(&hex::encode(fleet.public().0), &hex::encode(evil.0));
        let (d, s) = TrustDoc::parse(&tampered).unwrap();
        assert!(d.verify(&s, &current, 1_900_000_000).is_err());
        // Truncations never parse into something that verifies.
        for n in 0..text.len() {
            if let Ok((d, s)) = TrustDoc::parse(&text[..n]) {
                assert!(d.verify(&s, &current, 1_900_000_000).is_err() || d == next);
            }
        }
        // Non-canonical spellings are refused.
        assert!(TrustDoc::parse(&text.replace("version 2", "version 02")).is_err());
        assert!(TrustDoc::parse(&text.replace("threshold 1", "threshold 3")).is_err());
    }

    #[test]
    fn snapshot_thresholds_in_trust_documents() {
        let a = SecretKey::generate().unwrap();
        let b = SecretKey::generate().unwrap();
        let doc = TrustDoc {
            version: 3,
            expires: 2_000_000_000,
            threshold: 1,
            snapshots: 2,
            release: vec![a.public(), b.public()],
            fleet: vec![],
        };
        let text = doc.to_text(&[&a]);
        assert!(text.contains("\nsnapshots 2\n"));
        assert_eq!(TrustDoc::parse(&text).unwrap().0, doc);
        // More than there are release keys, zero, or non-canonical: refused.
        assert!(TrustDoc::parse(&text.replace("snapshots 2", "snapshots 3")).is_err());
        assert!(TrustDoc::parse(&text.replace("snapshots 2", "snapshots 0")).is_err());
        assert!(TrustDoc::parse(&text.replace("snapshots 2", "snapshots 02")).is_err());
        // The default is not written, so older documents keep their bytes.
        let one = TrustDoc { snapshots: 1, ..doc };
        assert!(!one.body().contains("snapshots"));
        assert_eq!(TrustDoc::parse(&one.to_text(&[&a])).unwrap().0, one);
    }

    fn head() -> ChannelHead {
        ChannelHead {
            channel: "debian/bookworm/lab".into(),
            snapshot: SnapshotId::of(b"s"),
            length: 7,
            issued_at: 1_800_000_000,
            expires_at: 1_800_003_600,
        }
    }

    #[test]
    fn channel_heads() {
        let fleet = SecretKey::generate().unwrap();
        let release = SecretKey::generate().unwrap();
        let h = head();
        let text = h.to_text(&fleet);
        let (parsed, sigs) = ChannelHead::parse(&text).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(parsed.verify(&sigs, &[fleet.public()]).unwrap(), fleet.public());
        // The release key is not a fleet key, and signs no heads.
        assert!(parsed.verify(&sigs, &[release.public()]).is_err());
        let (p, s) = ChannelHead::parse(&h.to_text(&release)).unwrap();
        assert!(p.verify(&s, &[fleet.public()]).is_err());
        // Every field is covered by the signature.
        for (from, to) in [
            ("length 7", "length 8"),
            ("issued 1800000000", "issued 1800000001"),
            ("expires 1800003600", "expires 1900003600"),
            ("bookworm/lab", "bookworm/dev"),
        ] {
            let (p, s) = ChannelHead::parse(&text.replace(from, to)).unwrap();
            assert!(p.verify(&s, &[fleet.public()]).is_err(), "{from} -> {to}");
        }
        // Unsigned, truncated, non-canonical, empty: refused.
        let body = h.body();
        let (p, s) = ChannelHead::parse(&body).unwrap();
        assert!(p
            .verify(&s, &[fleet.public()])
            .unwrap_err()
            .to_string()
            .contains("not signed"));
        for n in 0..body.len() {
            assert!(ChannelHead::parse(&text[..n]).is_err(), "truncated at {n}");
        }
        assert!(ChannelHead::parse(&text.replace("length 7", "length 07")).is_err());
        assert!(ChannelHead::parse(&text.replace("length 7", "length 0")).is_err());
        assert!(ChannelHead::parse(&text.replace("slate-head-v1", "slate-head-v2")).is_err());
        // A head signature is no other role's signature, and the reverse.
        let sig = sigs[0];
        assert_eq!(count_valid(HEAD_DOMAIN, body.as_bytes(), &[sig], &[fleet.public()]), 1);
        for d in [ASSIGNMENT_DOMAIN, POLICY_DOMAIN, TRUST_DOMAIN] {
            assert_eq!(count_valid(d, body.as_bytes(), &[sig], &[fleet.public()]), 0);
        }
        let as_policy = sign_policy(body.as_bytes(), &fleet);
        assert!(h.verify(&[as_policy], &[fleet.public()]).is_err());
    }

    #[test]
    fn live_records_are_canonical_signed_and_bound_to_their_keys() {
        let key = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let rec = LiveRecord {
            snapshot: SnapshotId::from_hex(&"ab".repeat(32)).unwrap(),
            filesystem: "squashfs".into(),
            data_bytes: 4096 * 10,
            hash_offset: 4096 * 10,
            salt: [7; 32],
            root_hash: [9; 32],
            policy: None,
            made_at: 1_700_000_000,
        };
        let text = rec.to_text(&[&key]);
        let (back, sigs) = LiveRecord::parse(&text).unwrap();
        assert_eq!(back, rec);
        let with_policy = LiveRecord {
            policy: Some([3; 32]),
            ..rec.clone()
        };
        assert_eq!(LiveRecord::parse(&with_policy.to_text(&[&key])).unwrap().0, with_policy);
        assert_eq!(back.verify(&sigs, &[key.public()]).unwrap(), key.public());
        let e = back.verify(&sigs, &[other.public()]).unwrap_err().to_string();
        assert!(e.contains("no valid signature"), "{e}");
        // Any changed field breaks the signature.
        let changed = text.replace(&hex::encode([9u8; 32]), &hex::encode([8u8; 32]));
        let (c, csigs) = LiveRecord::parse(&changed).unwrap();
        assert!(c.verify(&csigs, &[key.public()]).is_err());
        // A signature made for another kind of document never verifies here.
        let head_sig = Signature {
            key: key.public(),
            sig: key.sign(HEAD_DOMAIN, rec.body().as_bytes()),
        };
        assert!(rec.verify(&[head_sig], &[key.public()]).is_err());
        // Not canonical, not whole blocks, hashes inside the data: refused.
        assert!(LiveRecord::parse(&text.replace("made 1700000000", "made 01700000000")).is_err());
        assert!(LiveRecord::parse(&text.replace("data 40960", "data 40961")).is_err());
        assert!(LiveRecord::parse(&text.replace("hash-offset 40960", "hash-offset 4096")).is_err());
        assert!(LiveRecord::parse(&text.replace("squashfs", "ext4")).is_err());
        assert_eq!(
            rec.verity_table("/dev/loop3"),
            format!(
                "0 80 verity 1 /dev/loop3 /dev/loop3 4096 4096 10 10 sha256 {} {}",
                hex::encode([9u8; 32]),
                hex::encode([7u8; 32])
            )
        );
    }
}

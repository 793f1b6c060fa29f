//! Keys and authenticated encryption.
//!
//! A 32-byte master key comes from a key file or from a passphrase through
//! Argon2id (64 MiB, 3 passes, 1 lane) salted with the user's name, so two
//! users with the same passphrase get unrelated keys. Subkeys are derived
//! from it with BLAKE3's key derivation: the encryption key, the key that
//! makes chunk ids (keyed BLAKE3, so an id reveals nothing about content),
//! and the repository id the storage knows the repository by.
//!
//! Every stored byte is sealed with XChaCha20-Poly1305 under a random
//! 24-byte nonce, with the object's identity as associated data so the
//! storage cannot swap one object for another.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use slate_core::ChunkId;

use crate::error::{local, Error, Result};

/// What a key file starts with.
pub const KEY_FILE_PREFIX: &str = "slate-home-key-v1:";
/// Bytes a sealed value adds: the nonce and the tag.
pub const SEAL_OVERHEAD: usize = 24 + 16;

/// The keys of one repository.
#[derive(Clone)]
pub struct Keys {
    cipher: XChaCha20Poly1305,
    chunk_key: [u8; 32],
    repo_id: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys(repository {})", self.repo_id)
    }
}

/// Random bytes from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the operating system's random source failed");
    b
}

impl Keys {
    /// Derive every key from the master key.
    pub fn from_master(master: &[u8; 32]) -> Keys {
        let enc = blake3::derive_key("slate-home v1 encryption key", master);
        Keys {
            cipher: XChaCha20Poly1305::new(&enc.into()),
            chunk_key: blake3::derive_key("slate-home v1 chunk id key", master),
            repo_id: hex::encode(blake3::derive_key("slate-home v1 repository id", master)),
        }
    }

    /// The master key from a passphrase and a user name (Argon2id, m=64 MiB, t=3, p=1).
    pub fn from_passphrase(passphrase: &str, user: &str) -> Result<Keys> {
        let mut salt_input = b"slate-home-v1 salt".to_vec();
        salt_input.extend_from_slice(user.as_bytes());
        let salt = blake3::hash(&salt_input);
        let params = argon2::Params::new(64 * 1024, 3, 1, Some(32))
            .map_err(|e| Error::Invalid(format!("argon2 parameters: {e}")))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut master = [0u8; 32];
        argon
            .hash_password_into(passphrase.as_bytes(), salt.as_bytes(), &mut master)
            .map_err(|e| Error::Invalid(format!("cannot derive a key from the passphrase: {e}")))?;
        Ok(Keys::from_master(&master))
    }

    /// Read a key file written by [`write_key_file`].
    pub fn from_key_file(path: &Path) -> Result<Keys> {
        let text =
            std::fs::read_to_string(path).map_err(|e| local(format!("cannot read key file {}", path.display()), e))?;
        let hex_part = text.trim().strip_prefix(KEY_FILE_PREFIX).ok_or_else(|| {
            Error::Invalid(format!(
                "{} is not a slate home key file (make one with `slate home keygen FILE`)",
                path.display()
            ))
        })?;
        let mut master = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut master).map_err(|_| {
            Error::Invalid(format!(
                "{} holds a damaged key: expected 64 hex digits",
                path.display()
            ))
        })?;
        Ok(Keys::from_master(&master))
    }

    /// The repository id: 64 hex digits only a key holder can compute.
    pub fn repo_id(&self) -> &str {
        &self.repo_id
    }

    /// The keyed id of a chunk's bytes.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(slate_core::Id32(*blake3::keyed_hash(&self.chunk_key, data).as_bytes()))
    }

    /// A keyed hash for naming things (the file cache) without revealing them.
    pub fn keyed_name(&self, data: &[u8]) -> String {
        hex::encode(blake3::keyed_hash(&self.chunk_key, data).as_bytes())
    }

    /// Seal `plain` with associated data `ad`: nonce, then ciphertext and tag.
    pub fn seal(&self, ad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; 24] = random();
        let ct = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: ad })
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(24 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Open a sealed value; `None` when it fails authentication (a wrong
    /// key, a different `ad`, or a changed byte).
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let (nonce, ct) = sealed.split_at(24);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: ad })
            .ok()
    }
}

/// Write a new random key file (mode 0600), refusing to overwrite one.
pub fn write_key_file(path: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let master: [u8; 32] = random();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| local(format!("cannot create key file {}", path.display()), e))?;
    writeln!(f, "{KEY_FILE_PREFIX}{}", hex::encode(master))
        .and_then(|_| f.sync_all())
        .map_err(|e| local(format!("cannot write key file {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_tamper_detection() {
        let k = Keys::from_master(&[7; 32]);
        let sealed = k.seal(b"snapshot/abc", b"hello world");
        assert_eq!(k.open(b"snapshot/abc", &sealed).as_deref(), Some(&b"hello world"[..]));
        // Another object's identity, a flipped byte, another key: all refused.
        assert!(k.open(b"snapshot/abd", &sealed).is_none());
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(k.open(b"snapshot/abc", &bad).is_none());
        assert!(Keys::from_master(&[8; 32]).open(b"snapshot/abc", &sealed).is_none());
        assert!(k.open(b"x", &sealed[..10]).is_none());
        // Nonces are random: sealing twice differs.
        assert_ne!(sealed, k.seal(b"snapshot/abc", b"hello world"));
    }

    #[test]
    fn ids_are_keyed_and_keys_differ_per_user() {
        let a = Keys::from_master(&[1; 32]);
        let b = Keys::from_master(&[2; 32]);
        assert_ne!(a.chunk_id(b"data"), b.chunk_id(b"data"));
        assert_ne!(a.chunk_id(b"data"), ChunkId::of(b"data"));
        assert_ne!(a.repo_id(), b.repo_id());
        assert_eq!(a.repo_id().len(), 64);
        let alice = Keys::from_passphrase("same", "alice").unwrap();
        let bob = Keys::from_passphrase("same", "bob").unwrap();
        assert_ne!(alice.repo_id(), bob.repo_id());
        assert_eq!(
            alice.repo_id(),
            Keys::from_passphrase("same", "alice").unwrap().repo_id()
        );
    }

    #[test]
    fn key_file_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        write_key_file(&p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let a = Keys::from_key_file(&p).unwrap();
        assert_eq!(a.repo_id(), Keys::from_key_file(&p).unwrap().repo_id());
        assert!(write_key_file(&p).is_err());
        std::fs::write(&p, "nonsense").unwrap();
        assert!(Keys::from_key_file(&p).is_err());
    }
}

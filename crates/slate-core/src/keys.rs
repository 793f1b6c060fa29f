//! Ed25519 signing keys and their text files.
//!
//! A secret key file holds one line `slate-secret-key-v1 <64 hex digits>`
//! (the 32-byte seed); a public key file `slate-public-key-v1 <64 hex>`.
//! Signatures cover a domain-separated message so that a signature made for
//! one purpose can never be replayed as another.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::{Error, Result};

const SECRET_TAG: &str = "slate-secret-key-v1";
const PUBLIC_TAG: &str = "slate-public-key-v1";

/// A secret signing key.
pub struct SecretKey(SigningKey);

/// A public key that verifies signatures.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PublicKey(pub [u8; 32]);

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| Error::BadKey(format!("no randomness: {e}")))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }
    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }
    /// Sign `message` under `domain`.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> [u8; 64] {
        self.0.sign(&domained(domain, message)).to_bytes()
    }
    /// The key file's text.
    pub fn to_text(&self) -> String {
        format!("{SECRET_TAG} {}\n", hex::encode(self.0.to_bytes()))
    }
    /// Parse a key file's text.
    pub fn from_text(text: &str) -> Result<Self> {
        let seed = parse(text, SECRET_TAG)?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }
}

impl PublicKey {
    /// The key file's text.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_TAG} {}\n", hex::encode(self.0))
    }
    /// Parse a key file's text.
    pub fn from_text(text: &str) -> Result<Self> {
        let k = parse(text, PUBLIC_TAG)?;
        VerifyingKey::from_bytes(&k).map_err(|_| Error::BadKey("not a valid ed25519 public key".into()))?;
        Ok(PublicKey(k))
    }
    /// Short fingerprint for people: the first 16 hex digits.
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.0[..8])
    }
    /// Check `sig` over `message` under `domain`.
    pub fn verify(&self, domain: &[u8], message: &[u8], sig: &[u8; 64]) -> Result<()> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| Error::Signature("invalid public key".into()))?;
        key.verify_strict(&domained(domain, message), &Signature::from_bytes(sig))
            .map_err(|_| Error::Signature(format!("signature by key {} does not verify", self.fingerprint())))
    }
}

fn domained(domain: &[u8], message: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 1 + message.len());
    m.extend_from_slice(domain);
    m.push(0);
    m.extend_from_slice(message);
    m
}

fn parse(text: &str, tag: &str) -> Result<[u8; 32]> {
    let mut it = text.split_whitespace();
    match (it.next(), it.next(), it.next()) {
        (Some(t), Some(h), None) if t == tag => {
            let mut out = [0u8; 32];
            hex::decode_to_slice(h, &mut out)
                .map_err(|_| Error::BadKey(format!("the {tag} value is not 64 hex digits")))?;
            Ok(out)
        }
        (Some(t), _, _) if t == SECRET_TAG || t == PUBLIC_TAG => {
            Err(Error::BadKey(format!("expected a {tag} file, found a {t} file")))
        }
        _ => Err(Error::BadKey(format!(
            "not a slate key file (expected a line starting with {tag})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_text_round_trip() {
        let k = SecretKey::generate().unwrap();
        let k2 = SecretKey::from_text(&k.to_text()).unwrap();
        let p = PublicKey::from_text(&k.public().to_text()).unwrap();
        let sig = k2.sign(b"d", b"msg");
        p.verify(b"d", b"msg", &sig).unwrap();
        assert!(p.verify(b"other", b"msg", &sig).is_err());
        assert!(p.verify(b"d", b"msg2", &sig).is_err());
        let other = SecretKey::generate().unwrap().public();
        assert!(other.verify(b"d", b"msg", &sig).is_err());
        assert!(PublicKey::from_text(&k.to_text()).is_err());
    }
}

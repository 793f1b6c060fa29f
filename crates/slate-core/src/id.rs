//! Content ids: 32-byte BLAKE3 hashes, one newtype per kind of object so
//! that a chunk id can never be passed where a snapshot id is meant.

use std::fmt;
use std::str::FromStr;

/// A raw 32-byte BLAKE3 hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id32(pub [u8; 32]);

impl Id32 {
    /// Hash `data` with BLAKE3.
    pub fn hash(data: &[u8]) -> Self {
        Id32(*blake3::hash(data).as_bytes())
    }
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parse 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return None;
        }
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Id32(out))
    }
}

impl fmt::Debug for Id32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub Id32);

        impl $name {
            /// The id of `data`.
            pub fn of(data: &[u8]) -> Self {
                $name(Id32::hash(data))
            }
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0 .0
            }
            /// Lower-case hex.
            pub fn to_hex(&self) -> String {
                self.0.to_hex()
            }
            /// Parse 64 hex digits.
            pub fn from_hex(s: &str) -> Option<Self> {
                Id32::from_hex(s).map($name)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
        impl FromStr for $name {
            type Err = crate::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_hex(s).ok_or_else(|| crate::Error::corrupt(stringify!($name), format!("{s:?} is not 64 hex digits")))
            }
        }
    };
}

id_newtype!(
    /// Names a chunk of file (or manifest) content: BLAKE3 of its bytes.
    ChunkId
);
id_newtype!(
    /// Names a snapshot: BLAKE3 of its encoded record.
    SnapshotId
);
id_newtype!(
    /// Names a pack file: BLAKE3 of the pack's bytes.
    PackId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::of(b"hello");
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ChunkId::from_hex("zz"), None);
        assert!("00".parse::<SnapshotId>().is_err());
    }
}

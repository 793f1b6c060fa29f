//! dm-verity hash trees in user space (format 1, sha256, 4096-byte data
//! and hash blocks, salt first, no superblock): made for a live image's
//! root (`slate image iso`) and checked again by `slate image verify`
//! on a machine that needs neither root nor device-mapper. The kernel
//! checks the same tree block by block at boot.
//!
//! Layout, as the kernel reads it: level 0 holds the hash of every data
//! block, 128 to a hash block (zero-padded); each level above holds the
//! hashes of the blocks below; the top level is one block, and the root
//! hash is the hash of that block. Levels are stored top first.

use std::io::Read;

use sha2::{Digest, Sha256};

/// Bytes per data and hash block.
pub const BLOCK: usize = 4096;

fn hash(salt: &[u8; 32], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// A hash tree: the root hash and the hash area as stored.
pub struct Tree {
    /// The root hash.
    pub root: [u8; 32],
    /// The levels, top first, each a whole number of blocks.
    pub bytes: Vec<u8>,
    /// Where level 0 (the data blocks' hashes) starts in `bytes`.
    pub level0_at: usize,
}

/// The hash tree of `data_blocks` blocks read from `data` (at least two).
pub fn tree(data: &mut impl Read, data_blocks: u64, salt: &[u8; 32]) -> std::io::Result<Tree> {
    if data_blocks < 2 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a verity tree needs at least two data blocks",
        ));
    }
    let mut block = vec![0u8; BLOCK];
    let mut level: Vec<u8> = Vec::with_capacity(data_blocks as usize * 32);
    for _ in 0..data_blocks {
        data.read_exact(&mut block)?;
        level.extend_from_slice(&hash(salt, &block));
    }
    let mut levels: Vec<Vec<u8>> = Vec::new();
    loop {
        let padded = level.len().div_ceil(BLOCK) * BLOCK;
        level.resize(padded, 0);
        if level.len() == BLOCK {
            let root = hash(salt, &level);
            levels.push(level);
            let level0_len = levels[0].len();
            let bytes: Vec<u8> = levels.into_iter().rev().flatten().collect();
            return Ok(Tree {
                root,
                level0_at: bytes.len() - level0_len,
                bytes,
            });
        }
        let next: Vec<u8> = level.chunks(BLOCK).flat_map(|b| hash(salt, b)).collect();
        levels.push(level);
        level = next;
    }
}

/// The first data block whose hash differs between two trees' level 0
/// (the one stored in an image and the one computed from its data).
pub fn first_differing_block(stored: &[u8], computed: &Tree) -> Option<u64> {
    let level0 = &computed.bytes[computed.level0_at..];
    let stored0 = stored.get(computed.level0_at..)?;
    level0
        .chunks(32)
        .zip(stored0.chunks(32))
        .position(|(a, b)| a != b)
        .map(|i| i as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(blocks: usize) -> Vec<u8> {
        (0..blocks * BLOCK).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn levels_are_stored_top_first_and_the_root_hashes_the_top() {
        let salt = [5u8; 32];
        // 300 blocks: level 0 has 3 hash blocks, level 1 one.
        let d = data(300);
        let t = tree(&mut &d[..], 300, &salt).unwrap();
        assert_eq!(t.bytes.len(), 4 * BLOCK);
        assert_eq!(t.level0_at, BLOCK);
        assert_eq!(t.root, hash(&salt, &t.bytes[..BLOCK]));
        assert_eq!(&t.bytes[BLOCK..BLOCK + 32], &hash(&salt, &d[..BLOCK]));
        // Level 1 holds the hashes of level 0's blocks.
        assert_eq!(&t.bytes[32..64], &hash(&salt, &t.bytes[2 * BLOCK..3 * BLOCK]));
        let mut changed = d.clone();
        changed[150 * BLOCK + 9] ^= 1;
        let t2 = tree(&mut &changed[..], 300, &salt).unwrap();
        assert_ne!(t2.root, t.root);
        assert_eq!(first_differing_block(&t.bytes, &t2), Some(150));
    }

    /// The same tree as cryptsetup's veritysetup makes, where it is installed.
    #[test]
    fn matches_veritysetup() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let img = dir.path().join("img");
        let blocks = 20000usize; // three levels
        let d = data(blocks);
        std::fs::write(&img, &d).unwrap();
        let salt = [0xa5u8; 32];
        let out = std::process::Command::new("veritysetup")
            .args(["format", "--no-superblock", "--format=1", "--hash=sha256"])
            .arg(format!("--data-blocks={blocks}"))
            .arg(format!("--hash-offset={}", blocks * BLOCK))
            .arg(format!("--salt={}", hex::encode(salt)))
            .arg(&img)
            .arg(&img)
            .output();
        let Ok(out) = out else {
            // Under `make test` (SLATE_TESTS_MUST_RUN) a missing tool fails
            // the test instead of letting it pass unchecked.
            assert!(
                std::env::var_os("SLATE_TESTS_MUST_RUN").is_none(),
                "veritysetup is not installed and SLATE_TESTS_MUST_RUN is set"
            );
            eprintln!("skipped: veritysetup is not installed");
            return;
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let root = text
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .unwrap()
            .trim()
            .to_string();
        let t = tree(&mut &d[..], blocks as u64, &salt).unwrap();
        assert_eq!(hex::encode(t.root), root);
        let all = std::fs::read(&img).unwrap();
        assert_eq!(&all[blocks * BLOCK..], &t.bytes[..]);
    }
}

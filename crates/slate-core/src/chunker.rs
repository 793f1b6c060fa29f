//! Content-defined chunking parameters.
//!
//! Files are cut with FastCDC (the 2020 variant) so that an edit moves only
//! the chunk boundaries near it, and unchanged parts of a changed file keep
//! their chunk ids. Small files are one chunk each.

/// Chunk size bounds, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    /// No cut before this many bytes.
    pub min: u32,
    /// The average the cut-point test aims at.
    pub avg: u32,
    /// A cut is forced here.
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        // 64 KiB average: small enough that an edited large file shares most
        // of its chunks with the old version, large enough that the index
        // and manifests stay a small fraction of the data.
        ChunkerParams {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        }
    }
}

impl ChunkerParams {
    /// Whether FastCDC accepts these sizes (it panics on others) and every
    /// chunk they make fits the formats' limit
    /// ([`MAX_CHUNK_LEN`](crate::manifest::MAX_CHUNK_LEN)). The error is a
    /// sentence.
    pub fn check(&self) -> Result<(), String> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN};
        let (min, avg, max) = (self.min, self.avg, self.max);
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && max <= crate::manifest::MAX_CHUNK_LEN;
        if !ok {
            return Err(format!(
                "chunk sizes min {min}, average {avg}, max {max} are not ones slate can use"
            ));
        }
        Ok(())
    }

    /// Cut points of an in-memory buffer, as `(offset, len)`.
    pub fn cut(&self, data: &[u8]) -> Vec<(usize, usize)> {
        if data.len() <= self.min as usize {
            return if data.is_empty() { vec![] } else { vec![(0, data.len())] };
        }
        fastcdc::v2020::FastCDC::new(data, self.min, self.avg, self.max)
            .map(|c| (c.offset, c.length))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_cover_the_input_and_resynchronise() {
        let p = ChunkerParams::default();
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let mut data: Vec<u8> = (0..2_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let a = p.cut(&data);
        assert_eq!(a.iter().map(|c| c.1).sum::<usize>(), data.len());
        assert!(a.iter().all(|c| c.1 <= p.max as usize));
        data.insert(1000, 42);
        let b = p.cut(&data);
        let ends_a: std::collections::HashSet<_> = a.iter().map(|c| c.0 + c.1).collect();
        let shared = b.iter().filter(|c| ends_a.contains(&(c.0 + c.1 - 1))).count();
        assert!(shared + 3 >= b.len(), "an insertion should move only nearby cut points");
    }

    #[test]
    fn check_refuses_sizes_fastcdc_or_the_formats_cannot_take() {
        ChunkerParams::default().check().unwrap();
        let with = |min, avg, max| ChunkerParams { min, avg, max }.check();
        for (min, avg, max) in [
            (0, 65536, 262144),
            (16384, 100, 262144),
            (16384, 65536, 100),
            (65536, 16384, 262144),
            (16384, 262144, 65536),
            (16384, 65536, 2 << 20),
            (u32::MAX, u32::MAX, u32::MAX),
        ] {
            assert!(with(min, avg, max).is_err(), "{min} {avg} {max}");
        }
    }
}

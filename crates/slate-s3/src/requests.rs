//! Counting the requests a storage sends, by kind: what a commit or a
//! serve costs against a store that bills per request, and the "requests"
//! column of the object-storage benchmark.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A kind of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// GET of a whole object.
    Get,
    /// GET with a Range.
    RangeGet,
    /// HEAD.
    Head,
    /// PUT of a whole object.
    Put,
    /// A multipart upload's create and complete (its parts: [`Op::Part`]).
    MultipartUpload,
    /// One part of a multipart upload.
    Part,
    /// A listing (one or more pages).
    List,
    /// DELETE.
    Delete,
}

const OPS: [(Op, &str); 8] = [
    (Op::Get, "GET"),
    (Op::RangeGet, "ranged GET"),
    (Op::Head, "HEAD"),
    (Op::Put, "PUT"),
    (Op::MultipartUpload, "multipart upload"),
    (Op::Part, "part"),
    (Op::List, "LIST"),
    (Op::Delete, "DELETE"),
];

/// Requests sent so far, by kind.
#[derive(Debug, Default)]
pub struct Requests {
    counts: [AtomicU64; OPS.len()],
}

impl Requests {
    pub(crate) fn count(&self, op: Op) {
        self.counts[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many requests of kind `op` were sent.
    pub fn get(&self, op: Op) -> u64 {
        self.counts[op as usize].load(Ordering::Relaxed)
    }

    /// All requests, a multipart upload counted as its parts plus two.
    pub fn total(&self) -> u64 {
        OPS.iter()
            .map(|&(op, _)| match op {
                Op::MultipartUpload => 2 * self.get(op),
                _ => self.get(op),
            })
            .sum()
    }
}

impl fmt::Display for Requests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        write!(f, "{total} request{}", if total == 1 { "" } else { "s" })?;
        let mut sep = " (";
        for &(op, name) in &OPS {
            let n = self.get(op);
            if n > 0 {
                write!(f, "{sep}{n} {name}")?;
                sep = ", ";
            }
        }
        if sep == ", " {
            f.write_str(")")?;
        }
        Ok(())
    }
}

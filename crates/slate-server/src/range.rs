//! HTTP conditional and range requests on immutable objects, as pure
//! functions of header values (no I/O, tested on strings).
//!
//! Only one byte range is served (`bytes=A-B`, `bytes=A-`, `bytes=-N`):
//! clients ask for one contiguous run of missing frames at a time, and a
//! multipart/byteranges answer would buy nothing but parsing work. A header
//! this module does not understand (another unit, several ranges, bad
//! syntax) is ignored, as RFC 9110 §14.2 allows, and the whole object is
//! sent.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};

/// A request header as text, if it is ASCII.
pub fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A header value built by the server (hex, digits, fixed strings: ASCII).
pub fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("ASCII header value")
}

/// How to answer a GET or HEAD of an object of `len` bytes whose entity
/// tag is `etag`, given the request's conditional and range headers.
#[derive(Debug)]
pub enum Reply {
    /// 304 Not Modified, with these headers.
    NotModified(HeaderMap),
    /// 200 or 206: `count` bytes from `start`, with these headers.
    Send {
        /// 200 or 206.
        status: StatusCode,
        /// ETag, caching, ranges, type and length.
        headers: HeaderMap,
        /// First byte.
        start: u64,
        /// Bytes to send.
        count: u64,
    },
    /// 416: the range lies past the end; these headers say the length.
    Unsatisfiable(HeaderMap),
}

/// Decide the [`Reply`]; `cache_control` is sent with every answer.
pub fn reply(req: &HeaderMap, etag: &str, cache_control: &'static str, len: u64) -> Reply {
    let mut h = HeaderMap::new();
    h.insert(header::ETAG, hv(etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if header_str(req, header::IF_NONE_MATCH).is_some_and(|v| none_match(v, etag)) {
        return Reply::NotModified(h);
    }
    let requested = header_str(req, header::RANGE).filter(|_| if_range_holds(header_str(req, header::IF_RANGE), etag));
    let (status, start, count) = match answer(requested, len) {
        RangeAnswer::Full => (StatusCode::OK, 0, len),
        RangeAnswer::Partial { start, end } => {
            h.insert(header::CONTENT_RANGE, hv(&format!("bytes {start}-{end}/{len}")));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            h.insert(header::CONTENT_RANGE, hv(&format!("bytes */{len}")));
            return Reply::Unsatisfiable(h);
        }
    };
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, hv(&count.to_string()));
    Reply::Send {
        status,
        headers: h,
        start,
        count,
    }
}

/// What to send for a `Range` header on an object of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole object.
    Full,
    /// 206 with bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416: no byte of the object is in the range.
    Unsatisfiable,
}

/// Decide how to answer `range` (the `Range` header's value, if any) for an
/// object of `len` bytes.
pub fn answer(range: Option<&str>, len: u64) -> RangeAnswer {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        // Digits only: `u64::from_str` would also take a leading `+`.
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    if a.is_empty() {
        // `-N`: the last N bytes.
        return match num(b) {
            None => RangeAnswer::Full,
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Partial {
                start: len - n.min(len),
                end: len - 1,
            },
        };
    }
    let Some(start) = num(a) else {
        return RangeAnswer::Full;
    };
    let end = if b.is_empty() {
        None
    } else {
        match num(b) {
            Some(e) if e >= start => Some(e),
            // `A-B` with B < A, or garbage: an invalid header is ignored.
            _ => return RangeAnswer::Full,
        }
    };
    if start >= len {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial {
        start,
        end: end.map_or(len - 1, |e| e.min(len - 1)),
    }
}

/// Whether an `If-None-Match` value matches the entity tag `etag` (given
/// with its quotes). Weak comparison, as RFC 9110 §13.1.2 requires.
pub fn none_match(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|t| {
        let t = t.strip_prefix("W/").unwrap_or(t);
        t == "*" || t == etag
    })
}

/// Whether an `If-Range` value still allows the `Range` to be honoured:
/// only when it is our strong entity tag (a date or another tag means the
/// client's partial copy is of something else, so it gets the whole object).
pub fn if_range_holds(if_range: Option<&str>, etag: &str) -> bool {
    if_range.is_none_or(|v| v.trim() == etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::*;

    #[test]
    fn ranges() {
        let p = |start, end| Partial { start, end };
        assert_eq!(answer(None, 100), Full);
        assert_eq!(answer(Some("bytes=0-9"), 100), p(0, 9));
        assert_eq!(answer(Some("bytes=90-"), 100), p(90, 99));
        assert_eq!(answer(Some("bytes=90-1000"), 100), p(90, 99));
        assert_eq!(answer(Some("bytes=-10"), 100), p(90, 99));
        assert_eq!(answer(Some("bytes=-1000"), 100), p(0, 99));
        assert_eq!(answer(Some("bytes=99-99"), 100), p(99, 99));
        assert_eq!(answer(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(answer(Some("bytes=100-200"), 100), Unsatisfiable);
        assert_eq!(answer(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(answer(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(answer(Some("bytes=-5"), 0), Unsatisfiable);
        // Ignored: several ranges, other units, nonsense, reversed.
        for h in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=a-b",
            "bytes=5",
            "bytes=9-3",
            "bytes=+1-2",
            "bytes=-",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(answer(Some(h), 100), Full, "{h}");
        }
    }

    #[test]
    fn conditionals() {
        let tag = "\"abc\"";
        assert!(none_match("\"abc\"", tag));
        assert!(none_match("\"x\", W/\"abc\"", tag));
        assert!(none_match("*", tag));
        assert!(!none_match("\"abcd\"", tag));
        assert!(if_range_holds(None, tag));
        assert!(if_range_holds(Some("\"abc\""), tag));
        assert!(!if_range_holds(Some("Wed, 21 Oct 2015 07:28:00 GMT"), tag));
    }
}

//! Repository objects, the pack list and channel files over HTTP
//! (`docs/format/http.md`, "Repository objects").
//!
//! Request paths are never joined onto the repository directory: a path
//! below `/v1/repo/` is parsed into an [`Object`] (strict shapes, 64
//! lower-case hex digits, the fan-out directory equal to the id's first two
//! digits), and only an `Object` names a storage key. Anything else is 404,
//! so `..`, percent-encoding tricks or upper-case hex cannot reach a file
//! the protocol does not name.
//!
//! Immutable objects (packs, indexes, snapshot records, deltas) are
//! streamed from disk with conditional and single-range support; they are
//! what an HTTP cache or CDN in front of the server keeps forever.

use std::io::{self, SeekFrom};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use slate_core::{PackId, SnapshotId};
use slate_repo::Repo;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::{ApiError, ApiResult};
use crate::range::{self, header_str, hv, Reply};
use crate::AppState;

/// `Cache-Control` of content-addressed objects: a name always means the
/// same bytes, so any cache may keep them for good.
pub(crate) const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of signature files: they gain entries when someone signs
/// again, so caches keep them only briefly.
const SHORT: &str = "public, max-age=60";
/// `Cache-Control` of the pack list and channels: they move; caches must
/// revalidate every time (the ETag makes that cheap).
const NO_CACHE: &str = "no-cache";
/// Bytes per read when streaming from a storage without local files.
const STREAM_PIECE: u64 = 1 << 20;

/// An object the protocol lets a client fetch below `/v1/repo/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    /// `packs/{ab}/{id}.pack`
    Pack(PackId),
    /// `packs/{ab}/{id}.idx`
    PackIndex(PackId),
    /// `snapshots/{ab}/{id}.snap`
    Snapshot(SnapshotId),
    /// `snapshots/{ab}/{id}.sig`
    Signatures(SnapshotId),
    /// `deltas/{from}/{to}.delta`
    Delta(SnapshotId, SnapshotId),
    /// `snapshots/{ab}/{id}.profile`: the snapshot's boot profile (docs/mount.md)
    Profile(SnapshotId),
    /// `snapshots/{ab}/{id}.profile-sig`: its signatures
    ProfileSignatures(SnapshotId),
}

/// `s` if it is exactly 64 lower-case hex digits. Stricter than
/// `from_hex`, which would also take upper case: one object, one URL, so
/// caches never hold two copies.
pub(crate) fn hex64(s: &str) -> Option<&str> {
    (s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(s)
}

impl Object {
    /// Parse the part of a request path after `/v1/repo/`; `None` for any
    /// shape the protocol does not define.
    pub fn parse(path: &str) -> Option<Object> {
        let mut parts = path.split('/');
        let (a, b, c) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let (stem, ext) = c.split_once('.')?;
        let id = hex64(stem)?;
        if a == "deltas" {
            let from = SnapshotId::from_hex(hex64(b)?)?;
            let to = SnapshotId::from_hex(id)?;
            return (ext == "delta").then_some(Object::Delta(from, to));
        }
        if b != &id[..2] {
            return None;
        }
        match (a, ext) {
            ("packs", "pack") => Some(Object::Pack(PackId::from_hex(id)?)),
            ("packs", "idx") => Some(Object::PackIndex(PackId::from_hex(id)?)),
            ("snapshots", "snap") => Some(Object::Snapshot(SnapshotId::from_hex(id)?)),
            ("snapshots", "sig") => Some(Object::Signatures(SnapshotId::from_hex(id)?)),
            ("snapshots", "profile") => Some(Object::Profile(SnapshotId::from_hex(id)?)),
            ("snapshots", "profile-sig") => Some(Object::ProfileSignatures(SnapshotId::from_hex(id)?)),
            _ => None,
        }
    }

    /// The storage key: the same relative name as the URL, by construction
    /// from parsed ids rather than from the request's text.
    pub fn key(&self) -> String {
        let fan = |h: String, dir: &str, ext: &str| format!("{dir}/{}/{h}.{ext}", &h[..2]);
        match self {
            Object::Pack(id) => fan(id.to_hex(), "packs", "pack"),
            Object::PackIndex(id) => fan(id.to_hex(), "packs", "idx"),
            Object::Snapshot(id) => fan(id.to_hex(), "snapshots", "snap"),
            Object::Signatures(id) => fan(id.to_hex(), "snapshots", "sig"),
            Object::Profile(id) => fan(id.to_hex(), "snapshots", "profile"),
            Object::ProfileSignatures(id) => fan(id.to_hex(), "snapshots", "profile-sig"),
            Object::Delta(from, to) => slate_repo::delta::delta_key(from, to),
        }
    }

    /// The strong entity tag of an immutable object, `None` for the mutable
    /// signature file (whose tag is a hash of its current content).
    fn etag(&self) -> Option<String> {
        match self {
            Object::Pack(id) | Object::PackIndex(id) => Some(format!("\"{}\"", id.to_hex())),
            Object::Snapshot(id) => Some(format!("\"{}\"", id.to_hex())),
            Object::Delta(from, to) => Some(format!("\"{}-{}\"", from.to_hex(), to.to_hex())),
            // Re-signing or re-recording replaces these: tagged by content.
            Object::Signatures(_) | Object::Profile(_) | Object::ProfileSignatures(_) => None,
        }
    }
}

fn no_such_object() -> ApiError {
    ApiError::NotFound("no such object in this repository".into())
}

/// An object opened for reading: a local file, or a key in a storage that
/// has no local files (memory in tests; an object store later).
enum Opened {
    File(tokio::fs::File),
    Storage(Arc<Repo>, String),
}

impl Opened {
    /// The body for `len` bytes from `start`, streamed: a 64 MiB pack is
    /// never held in memory.
    async fn body(self, start: u64, len: u64) -> io::Result<Body> {
        match self {
            Opened::File(mut f) => {
                f.seek(SeekFrom::Start(start)).await?;
                let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), 64 << 10);
                Ok(Body::from_stream(stream))
            }
            Opened::Storage(repo, key) => {
                let stream = futures_util::stream::try_unfold((start, len), move |(pos, left)| {
                    let (repo, key) = (repo.clone(), key.clone());
                    async move {
                        if left == 0 {
                            return Ok(None);
                        }
                        let n = left.min(STREAM_PIECE);
                        // Storage reads block (disk or network behind a sync trait).
                        let piece = tokio::task::spawn_blocking(move || {
                            let mut buf = vec![0u8; n as usize];
                            repo.storage.read_at(&key, pos, &mut buf).map(|_| buf)
                        })
                        .await
                        .map_err(io::Error::other)??;
                        Ok::<_, io::Error>(Some((Bytes::from(piece), (pos + n, left - n))))
                    }
                });
                Ok(Body::from_stream(stream))
            }
        }
    }
}

/// Open `key` and return it with its length; `None` when it does not exist.
async fn open(repo: &Arc<Repo>, key: &str) -> ApiResult<Option<(Opened, u64)>> {
    if let Some(path) = repo.storage.local_path(key) {
        let f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ApiError::internal(anyhow::anyhow!("{}: {e}", path.display()))),
        };
        let meta = f
            .metadata()
            .await
            .map_err(|e| ApiError::internal(anyhow::anyhow!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Ok(None);
        }
        return Ok(Some((Opened::File(f), meta.len())));
    }
    let (r, k) = (repo.clone(), key.to_string());
    // `Storage::len` may block (a remote store); keep it off the runtime.
    match tokio::task::spawn_blocking(move || r.storage.len(&k)).await? {
        Ok(len) => Ok(Some((Opened::Storage(repo.clone(), key.to_string()), len))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// Read a whole small object; `None` when it does not exist.
async fn read_small(repo: &Arc<Repo>, key: &str) -> ApiResult<Option<Vec<u8>>> {
    let (r, k) = (repo.clone(), key.to_string());
    // Reading a file blocks; the repository API is synchronous.
    tokio::task::spawn_blocking(move || match r.storage.read(&k) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // A directory, or a path through a file (a channel name that is a
        // prefix of another, or extends one): there is no such object.
        Err(_) if r.storage.local_path(&k).is_some_and(|p| !p.is_file()) => Ok(None),
        Err(e) => Err(ApiError::internal(e)),
    })
    .await?
}

/// A small mutable document (signature file, channel, pack list) with an
/// entity tag derived from its content, so `no-cache` revalidation costs a
/// 304 instead of the body.
fn small_response(
    method: &Method,
    headers: &HeaderMap,
    data: Vec<u8>,
    content_type: &'static str,
    cache: &'static str,
) -> Response {
    let etag = format!("\"{}\"", blake3::hash(&data).to_hex());
    let mut h = HeaderMap::new();
    h.insert(header::ETAG, hv(&etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if header_str(headers, header::IF_NONE_MATCH).is_some_and(|v| range::none_match(v, &etag)) {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, hv(&data.len().to_string()));
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(data)
    };
    (StatusCode::OK, h, body).into_response()
}

/// `GET|HEAD /v1/repo/...`: one object, by the shapes of [`Object::parse`].
pub async fn object(State(st): State<AppState>, method: Method, uri: Uri, headers: HeaderMap) -> ApiResult<Response> {
    // The raw path, not a percent-decoded capture: the shapes allow no `%`.
    let rest = uri.path().strip_prefix("/v1/repo/").ok_or_else(no_such_object)?;
    let obj = Object::parse(rest).ok_or_else(no_such_object)?;
    let key = obj.key();
    let Some(etag) = obj.etag() else {
        // The signature file: small, and rewritten when a signature is added.
        let data = read_small(&st.repo, &key).await?.ok_or_else(no_such_object)?;
        return Ok(small_response(
            &method,
            &headers,
            data,
            "application/octet-stream",
            SHORT,
        ));
    };
    let (opened, len) = open(&st.repo, &key).await?.ok_or_else(no_such_object)?;

    let (status, h, start, count) = match range::reply(&headers, &etag, IMMUTABLE, len) {
        Reply::NotModified(h) => return Ok((StatusCode::NOT_MODIFIED, h).into_response()),
        Reply::Unsatisfiable(h) => {
            let msg = format!("range not satisfiable: the object has {len} bytes");
            let body = axum::Json(serde_json::json!({ "error": msg }));
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, h, body).into_response());
        }
        Reply::Send {
            status,
            headers,
            start,
            count,
        } => (status, headers, start, count),
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        opened
            .body(start, count)
            .await
            .map_err(|e| ApiError::internal(anyhow::anyhow!("{key}: {e}")))?
    };
    Ok((status, h, body).into_response())
}

/// `GET /v1/packs`: every pack id, one per line.
///
/// A pack is listed only when its index exists too: readers know packs by
/// their indexes, and a `.pack` without one is a leftover of an interrupted
/// write that no snapshot can depend on.
pub async fn packs(State(st): State<AppState>, method: Method, headers: HeaderMap) -> ApiResult<Response> {
    let repo = st.repo.clone();
    // Listing walks directories: blocking I/O.
    let keys = tokio::task::spawn_blocking(move || repo.storage.list("packs"))
        .await?
        .map_err(ApiError::internal)?;
    let indexed: std::collections::HashSet<PackId> = keys
        .iter()
        .filter_map(|k| match Object::parse(k) {
            Some(Object::PackIndex(id)) => Some(id),
            _ => None,
        })
        .collect();
    let mut text = String::new();
    for k in &keys {
        if let Some(Object::Pack(id)) = Object::parse(k) {
            if indexed.contains(&id) {
                text.push_str(&id.to_hex());
                text.push('\n');
            }
        }
    }
    Ok(small_response(
        &method,
        &headers,
        text.into_bytes(),
        "text/plain; charset=utf-8",
        NO_CACHE,
    ))
}

/// `GET /v1/channels/{name...}`: the channel file, checked before it is sent.
pub async fn channel(State(st): State<AppState>, method: Method, uri: Uri, headers: HeaderMap) -> ApiResult<Response> {
    let name = uri.path().strip_prefix("/v1/channels/").unwrap_or_default();
    if slate_repo::channel::check_name(name).is_err() {
        return Err(ApiError::NotFound(format!("{name:?} is not a valid channel name")));
    }
    let data = read_small(&st.repo, &format!("channels/{name}"))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no channel named {name} in this repository")))?;
    // Serving a corrupt channel would only move the failure to every
    // client; say it once, here, in the server's log.
    slate_repo::channel::decode(name, &data).map_err(ApiError::internal)?;
    Ok(small_response(
        &method,
        &headers,
        data,
        "text/plain; charset=utf-8",
        NO_CACHE,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let id = "ab".to_string() + &"0".repeat(62);
        let other = "cd".to_string() + &"1".repeat(62);
        for (path, ok) in [
            (format!("packs/ab/{id}.pack"), true),
            (format!("packs/ab/{id}.idx"), true),
            (format!("snapshots/ab/{id}.snap"), true),
            (format!("snapshots/ab/{id}.sig"), true),
            (format!("deltas/{other}/{id}.delta"), true),
            (format!("packs/cd/{id}.pack"), false),
            (format!("packs/ab/{id}.snap"), false),
            (format!("snapshots/ab/{id}.pack"), false),
            (format!("packs/ab/{}.pack", id.to_uppercase()), false),
            (format!("packs/AB/{id}.pack"), false),
            (format!("packs/ab/{}.pack", &id[..63]), false),
            (format!("packs/ab/{id}0.pack"), false),
            (format!("packs/ab/{id}.pack.tmp"), false),
            (format!("packs/ab/{id}.pack/x"), false),
            (format!("packs//{id}.pack"), false),
            (format!("deltas/{other}/{id}.pack"), false),
            (format!("deltas/ab/{id}.delta"), false),
            ("packs/ab/../../config".into(), false),
            ("../config".into(), false),
            ("config".into(), false),
            ("".into(), false),
        ] {
            let got = Object::parse(&path);
            assert_eq!(got.is_some(), ok, "{path}");
            if let Some(o) = got {
                assert_eq!(o.key(), path, "key of {path}");
            }
        }
    }
}

//! Private data over HTTP (`docs/format/http.md`, "Machine state" and
//! "Home repositories"): per-machine state blobs, readable and writable
//! only with that machine's token, and the opaque objects of encrypted home
//! repositories, for any enrolled machine.
//!
//! Every answer carries `Cache-Control: no-store`: this is private data
//! and must never sit in a shared cache. Request bodies are read with an
//! idle timeout instead of the router's overall one (an upload of 128 MiB
//! takes its time, a client that stops sending does not hold a worker), and
//! with limits of their own instead of the router's 64 KiB.

use std::io::{self, Read, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::auth;
use crate::blobs::{check_segment, BlobError, BlobStore, PrivateStorage, Written};
use crate::error::{ApiError, ApiResult};
use crate::range::{self, header_str, hv, Reply};
use crate::AppState;

/// Longest pause between two pieces of a request body.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest home repository kind (`data`, `index`, `snapshots`, ...).
pub const MAX_KIND_LEN: usize = 16;
/// Bytes per piece when streaming a blob out.
const PIECE: usize = 64 << 10;

const NO_STORE: &str = "no-store";

/// One blob in `GET /v1/state/{machine}/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateBlob {
    /// Its name.
    pub name: String,
    /// Its length, bytes.
    pub size: u64,
    /// BLAKE3 of its content, hex (the `ETag` of a GET, unquoted).
    pub blake3: String,
    /// Last write, Unix seconds.
    pub modified: u64,
}

/// `GET /v1/state/{machine}/` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateList {
    /// The machine.
    pub machine: String,
    /// Its blobs, ordered by name.
    pub blobs: Vec<StateBlob>,
}

/// One object in `GET /v1/home/{repo}/{kind}/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeObject {
    /// Its name.
    pub name: String,
    /// Its length, bytes.
    pub size: u64,
}

/// `GET /v1/home/{repo}/{kind}/` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeList {
    /// The objects, ordered by name (empty when there are none).
    pub objects: Vec<HomeObject>,
}

/// The storage directory of a machine's state: the lower-case hex of its
/// name, or for names over 64 bytes (whose hex would be longer than a
/// segment may be) `b3-` and the BLAKE3 hex of the name. Hex never holds a
/// `-`, so the two forms cannot collide; neither can name a path outside.
pub fn state_space(machine: &str) -> String {
    if machine.len() <= 64 {
        machine.bytes().map(|b| format!("{b:02x}")).collect()
    } else {
        format!("b3-{}", blake3::hash(machine.as_bytes()).to_hex())
    }
}

fn storage(st: &AppState) -> ApiResult<Arc<PrivateStorage>> {
    st.private.clone().ok_or_else(|| {
        ApiError::NotFound("this server keeps no machine state or home repositories (a test setup)".into())
    })
}

fn bad_path(_: PathRejection) -> ApiError {
    ApiError::NotFound("no such resource (see docs/format/http.md for the paths served)".into())
}

fn check_name(name: &str) -> ApiResult<()> {
    check_segment(name).map_err(|e| ApiError::BadRequest(format!("blob name: {e}")))
}

fn check_repo(repo: &str) -> ApiResult<()> {
    if repo.len() != 64 || !repo.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ApiError::BadRequest(format!(
            "{repo:?} is not a home repository id (64 lower-case hex digits)"
        )));
    }
    Ok(())
}

fn check_kind(kind: &str) -> ApiResult<()> {
    if kind.is_empty() || kind.len() > MAX_KIND_LEN || !kind.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(ApiError::BadRequest(format!(
            "{kind:?} is not a home object kind (1 to {MAX_KIND_LEN} of a-z)"
        )));
    }
    Ok(())
}

/// Check the machine in the path, then that the token is that machine's.
async fn state_access(st: &AppState, headers: &HeaderMap, machine: &str) -> ApiResult<Arc<PrivateStorage>> {
    // The token first: without one, a client learns nothing, not even
    // whether a name is well formed.
    let caller = auth::authenticate(st, headers).await?;
    auth::check_machine(machine).map_err(ApiError::BadRequest)?;
    if caller != machine {
        return Err(ApiError::Forbidden(format!(
            "the token presented belongs to machine {caller}, not to {machine}; \
             a machine can only read and write its own state"
        )));
    }
    storage(st)
}

/// Any enrolled machine may read home repositories; returns the storage
/// and the machine.
async fn home_access(
    st: &AppState,
    headers: &HeaderMap,
    repo: &str,
    kind: &str,
) -> ApiResult<(Arc<PrivateStorage>, String)> {
    let machine = auth::authenticate(st, headers).await?;
    check_repo(repo)?;
    check_kind(kind)?;
    Ok((storage(st)?, machine))
}

/// `If-None-Match: *` on a PUT: create, never replace.
fn create_only(headers: &HeaderMap) -> bool {
    header_str(headers, header::IF_NONE_MATCH).is_some_and(|v| v.split(',').any(|t| t.trim() == "*"))
}

/// 413 before reading a body whose announced length is over `limit`.
fn check_length(headers: &HeaderMap, limit: u64, what: &str) -> ApiResult<()> {
    let len = header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
    match len {
        Some(n) if n > limit => Err(too_large(what, limit)),
        _ => Ok(()),
    }
}

fn too_large(what: &str, limit: u64) -> ApiError {
    ApiError::PayloadTooLarge(format!("{what} is larger than the limit of {limit} bytes"))
}

/// An answer for a storage failure on `what` (a phrase for the client).
fn blob_error(e: BlobError, what: &str) -> ApiError {
    match e {
        BlobError::NoSpace { .. } => {
            // The path is the server's business: log it, send a sentence.
            tracing::warn!("{e}");
            ApiError::InsufficientStorage(format!(
                "the server's disk is full: {what} was not stored and the previous version is unchanged; \
                 try again after the server's administrator frees space"
            ))
        }
        BlobError::TooLarge { limit } => too_large(what, limit),
        BlobError::Exists { .. } => {
            ApiError::PreconditionFailed(format!("{what} already exists (the request said If-None-Match: *)"))
        }
        BlobError::Body(e) => ApiError::BadRequest(format!("reading the request body failed: {e}")),
        BlobError::Invalid(m) => ApiError::BadRequest(m),
        e @ BlobError::Io { .. } => ApiError::internal(e),
    }
}

/// The next piece of a request body, or an error after
/// [`BODY_IDLE_TIMEOUT`] without one.
async fn next_piece(stream: &mut axum::body::BodyDataStream) -> Option<io::Result<Bytes>> {
    match tokio::time::timeout(BODY_IDLE_TIMEOUT, stream.next()).await {
        Err(_) => Some(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client sent nothing for {}s", BODY_IDLE_TIMEOUT.as_secs()),
        ))),
        Ok(piece) => piece.map(|r| r.map_err(io::Error::other)),
    }
}

/// Read a whole body of at most `limit` bytes.
async fn collect(body: Body, limit: u64, what: &str) -> ApiResult<Vec<u8>> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(piece) = next_piece(&mut stream).await {
        let piece = piece.map_err(|e| ApiError::BadRequest(format!("reading the request body failed: {e}")))?;
        if (out.len() + piece.len()) as u64 > limit {
            return Err(too_large(what, limit));
        }
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

/// A blocking reader over body pieces sent from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(piece) => self.current = piece?,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Run `write` on a blocking thread, reading `body` as it arrives: the
/// body is never held in memory whole.
async fn stream_into<T: Send + 'static>(
    body: Body,
    write: impl FnOnce(&mut dyn Read) -> T + Send + 'static,
) -> ApiResult<T> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let task = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        write(&mut reader)
    });
    let mut stream = body.into_data_stream();
    while let Some(piece) = next_piece(&mut stream).await {
        let failed = piece.is_err();
        // A closed channel: the writer stopped early (limit, full disk).
        if tx.send(piece).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    Ok(task.await?)
}

/// Stream `count` bytes from `start` of an opened blob as a response body.
fn stream_out(mut reader: Box<dyn crate::blobs::BlobRead>, start: u64, count: u64) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    // Reads block (a disk, or a remote store behind a sync trait).
    tokio::task::spawn_blocking(move || {
        if let Err(e) = reader.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut left = count;
        while left > 0 {
            let mut buf = vec![0u8; left.min(PIECE as u64) as usize];
            let piece = match reader.read(&mut buf) {
                // Truncated under us: end short, and the client sees the
                // length mismatch rather than made-up bytes.
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the blob shrank while being sent",
                )),
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            let failed = piece.is_err();
            if tx.blocking_send(piece).is_err() || failed {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) });
    Body::from_stream(stream)
}

fn written(w: Written) -> StatusCode {
    match w {
        Written::Created => StatusCode::CREATED,
        Written::Replaced => StatusCode::NO_CONTENT,
    }
}

fn no_store(status: StatusCode) -> Response {
    (status, [(header::CACHE_CONTROL, NO_STORE)]).into_response()
}

// ---- machine state ----

/// `PUT /v1/state/{machine}/{name}`: 201 created, 204 replaced.
pub async fn state_put(
    State(st): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let Path((machine, name)) = path.map_err(bad_path)?;
    let store = state_access(&st, &headers, &machine).await?;
    check_name(&name)?;
    let what = format!("state blob {name} of machine {machine}");
    check_length(&headers, store.state_limit, &what)?;
    let data = collect(body, store.state_limit, &what).await?;
    let create_only = create_only(&headers);
    let space = state_space(&machine);
    let (n, w) = (name.clone(), what.clone());
    let result = tokio::task::spawn_blocking(move || -> ApiResult<Written> {
        // Quota check and write under one lock: two writes cannot both
        // squeeze under the quota.
        let _guard = store.state_writes.lock().unwrap_or_else(|p| p.into_inner());
        // Create-only on an existing blob is 412 whatever the quota says.
        if create_only && store.state.exists(&space, &n).map_err(|e| blob_error(e, &w))? {
            return Err(blob_error(BlobError::Exists { what: n.clone() }, &w));
        }
        let others: u64 = store
            .state
            .list(&space)
            .map_err(|e| blob_error(e, &w))?
            .iter()
            .filter(|(blob, _)| *blob != n)
            .map(|(_, m)| m.size)
            .sum();
        let total = others + data.len() as u64;
        if total > store.state_quota {
            return Err(ApiError::InsufficientStorage(format!(
                "machine {machine}'s state would take {total} bytes, over its quota of {} bytes; \
                 delete blobs it no longer needs, or raise slate serve --state-quota",
                store.state_quota
            )));
        }
        store
            .state
            .put(&space, &n, &mut data.as_slice(), store.state_limit, create_only)
            .map_err(|e| blob_error(e, &w))
    })
    .await??;
    Ok(no_store(written(result)))
}

/// Read a whole state blob; `None` when absent.
fn read_all(store: &dyn BlobStore, space: &str, name: &str, what: &str) -> ApiResult<Option<(Vec<u8>, u64)>> {
    let Some((mut reader, meta)) = store.open(space, name).map_err(|e| blob_error(e, what))? else {
        return Ok(None);
    };
    let mut data = Vec::with_capacity(meta.size as usize);
    reader
        .read_to_end(&mut data)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("reading {what}: {e}")))?;
    Ok(Some((data, meta.modified)))
}

/// `GET|HEAD /v1/state/{machine}/{name}`: the bytes, `ETag` the BLAKE3.
pub async fn state_get(
    State(st): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Path((machine, name)) = path.map_err(bad_path)?;
    let store = state_access(&st, &headers, &machine).await?;
    check_name(&name)?;
    let what = format!("state blob {name} of machine {machine}");
    let space = state_space(&machine);
    let w = what.clone();
    // State blobs are small (under --state-limit): read whole, hash, send.
    let data = tokio::task::spawn_blocking(move || read_all(store.state.as_ref(), &space, &name, &w))
        .await??
        .ok_or_else(|| ApiError::NotFound(format!("there is no {what}")))?
        .0;
    let etag = format!("\"{}\"", blake3::hash(&data).to_hex());
    let mut h = HeaderMap::new();
    h.insert(header::ETAG, hv(&etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    if header_str(&headers, header::IF_NONE_MATCH).is_some_and(|v| range::none_match(v, &etag)) {
        return Ok((StatusCode::NOT_MODIFIED, h).into_response());
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok((StatusCode::OK, h, data).into_response())
}

/// `DELETE /v1/state/{machine}/{name}`: 204, or 404 when absent.
pub async fn state_delete(
    State(st): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Path((machine, name)) = path.map_err(bad_path)?;
    let store = state_access(&st, &headers, &machine).await?;
    check_name(&name)?;
    let what = format!("state blob {name} of machine {machine}");
    let space = state_space(&machine);
    let (n, w) = (name.clone(), what.clone());
    let deleted = tokio::task::spawn_blocking(move || {
        let _guard = store.state_writes.lock().unwrap_or_else(|p| p.into_inner());
        store.state.delete(&space, &n).map_err(|e| blob_error(e, &w))
    })
    .await??;
    if !deleted {
        return Err(ApiError::NotFound(format!("there is no {what}")));
    }
    Ok(no_store(StatusCode::NO_CONTENT))
}

/// `GET /v1/state/{machine}/`: the machine's blobs with sizes and hashes.
pub async fn state_list(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Path(machine) = path.map_err(bad_path)?;
    let store = state_access(&st, &headers, &machine).await?;
    let space = state_space(&machine);
    let m = machine.clone();
    let blobs = tokio::task::spawn_blocking(move || -> ApiResult<Vec<StateBlob>> {
        let what = format!("the state of machine {m}");
        let mut out = Vec::new();
        for (name, _) in store.state.list(&space).map_err(|e| blob_error(e, &what))? {
            // Deleted since the listing: not a blob any more.
            let Some((data, modified)) = read_all(store.state.as_ref(), &space, &name, &what)? else {
                continue;
            };
            out.push(StateBlob {
                name,
                size: data.len() as u64,
                blake3: blake3::hash(&data).to_hex().to_string(),
                modified,
            });
        }
        Ok(out)
    })
    .await??;
    let mut resp = Json(StateList { machine, blobs }).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    Ok(resp)
}

// ---- home repositories ----

// Ownership and quotas of home repositories. A repository belongs to the
// machine that first wrote to it: its name is the blob `_owner` in the
// repository's space (no kind is spelled with `_`, no object lives there),
// and each machine's repositories are listed as empty blobs in
// `_owners/<state_space(machine)>/` (no repository id starts with `_`), so
// that its quota is the size of those repositories. Only the owner adds,
// replaces or deletes objects; any enrolled machine may read (the id is a
// capability only a key holder can derive). When the owner is no longer
// enrolled (revoked after a theft, say), the next machine that writes takes
// the repository over: that is how a replacement laptop continues backups.

/// The blob naming a home repository's owner, in the repository's space.
const OWNER_BLOB: &str = "_owner";
/// The space below which each machine's repositories are listed.
const OWNERS_SPACE: &str = "_owners";
/// The kind of lock objects, which a backup creates and deletes even in
/// append-only mode.
const LOCK_KIND: &str = "lock";

fn owner_of(home: &dyn BlobStore, repo: &str) -> Result<Option<String>, BlobError> {
    let Some((r, _)) = home.open(repo, OWNER_BLOB)? else {
        return Ok(None);
    };
    let mut text = String::new();
    r.take(1024).read_to_string(&mut text).map_err(|e| BlobError::Io {
        what: format!("reading the owner of home repository {repo}"),
        source: e,
    })?;
    Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty()))
}

fn owned_space(machine: &str) -> String {
    format!("{OWNERS_SPACE}/{}", state_space(machine))
}

/// Bytes of every home repository `machine` owns.
fn owned_usage(home: &dyn BlobStore, machine: &str) -> Result<u64, BlobError> {
    let mut total = 0;
    for (repo, _) in home.list(&owned_space(machine))? {
        total += home.usage(&repo)?;
    }
    Ok(total)
}

/// Make `machine` the owner of `repo`, in place of `previous`.
fn set_owner(home: &dyn BlobStore, repo: &str, machine: &str, previous: Option<&str>) -> Result<(), BlobError> {
    home.put(&owned_space(machine), repo, &mut io::empty(), 0, false)?;
    home.put(repo, OWNER_BLOB, &mut machine.as_bytes(), 1024, false)?;
    if let Some(p) = previous {
        home.delete(&owned_space(p), repo)?;
    }
    Ok(())
}

/// Make `machine` the owner of `repo`, which had none when it was checked:
/// `Some(other)` when another machine claimed it meanwhile. The owner blob
/// is written create-only because the check and the write are atomic only
/// within this process (`home_owners`): replicas of `slate serve` on one
/// shared `--home-dir` can each see no owner, and the second write must
/// fail rather than take the repository from the first.
fn claim_new(home: &dyn BlobStore, repo: &str, machine: &str) -> Result<Option<String>, BlobError> {
    // The listing first, as set_owner does, so that a crash between the
    // two writes never leaves an owner whose quota misses the repository.
    home.put(&owned_space(machine), repo, &mut io::empty(), 0, false)?;
    match home.put(repo, OWNER_BLOB, &mut machine.as_bytes(), 1024, true) {
        Ok(_) => Ok(None),
        Err(BlobError::Exists { .. }) => match owner_of(home, repo)? {
            Some(o) if o == machine => Ok(None),
            other => {
                home.delete(&owned_space(machine), repo)?;
                Ok(Some(other.unwrap_or_else(|| "(unknown)".into())))
            }
        },
        Err(e) => Err(e),
    }
}

/// What a write by a machine does to a repository's ownership.
enum Claim {
    /// The machine owns it already.
    Owned,
    /// Nobody does: the machine becomes its owner.
    New,
    /// Its owner is no longer enrolled: the machine takes it over.
    TakeOver(String),
}

/// Whether `machine` may change `repo`: 403 when another enrolled machine
/// owns it. Nothing is written until [`take`]. Blocking; the caller holds
/// `home_owners` until it has taken the claim.
fn check_owner(st: &AppState, home: &dyn BlobStore, repo: &str, machine: &str) -> ApiResult<Claim> {
    let what = format!("the owner of home repository {repo}");
    let owner = owner_of(home, repo).map_err(|e| blob_error(e, &what))?;
    match owner {
        Some(o) if o == machine => Ok(Claim::Owned),
        Some(o) => {
            let enrolled = st
                .tokens
                .tokens()
                .map_err(ApiError::internal)?
                .iter()
                .any(|t| t.machine == o);
            if enrolled {
                return Err(ApiError::Forbidden(format!(
                    "home repository {}… belongs to machine {o}; only its owner may add, replace or delete \
                     its objects (other machines may read it). To hand it to this machine, revoke {o} \
                     (`slate fleet revoke {o}`) on the server",
                    &repo[..16]
                )));
            }
            Ok(Claim::TakeOver(o))
        }
        None => Ok(Claim::New),
    }
}

/// Record what [`check_owner`] decided.
fn take(home: &dyn BlobStore, repo: &str, machine: &str, claim: Claim) -> ApiResult<()> {
    let what = format!("the owner of home repository {repo}");
    match claim {
        Claim::Owned => Ok(()),
        Claim::New => claim_new(home, repo, machine)
            .map_err(|e| blob_error(e, &what))?
            .map_or(Ok(()), |o| {
                Err(ApiError::Forbidden(format!(
                    "home repository {}… was just claimed by machine {o}; only its owner may add, replace or \
                 delete its objects (other machines may read it)",
                    &repo[..16.min(repo.len())]
                )))
            }),
        Claim::TakeOver(o) => {
            tracing::info!("home repository {repo}: machine {machine} takes it over from {o}, no longer enrolled");
            set_owner(home, repo, machine, Some(&o)).map_err(|e| blob_error(e, &what))
        }
    }
}

/// Bytes reserved by a machine's upload in flight, given back on drop.
struct Reservation {
    store: Arc<PrivateStorage>,
    machine: String,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = self.store.home_owners.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = r.get_mut(&self.machine) {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                r.remove(&self.machine);
            }
        }
    }
}

fn over_quota(machine: &str, quota: u64) -> ApiError {
    ApiError::InsufficientStorage(format!(
        "machine {machine}'s home repositories would take more than its quota of {quota} bytes; \
         nothing was stored: forget and prune old snapshots, or raise slate serve --home-quota"
    ))
}

/// `PUT /v1/home/{repo}/{kind}/{name}`: streamed to disk; 201 or 204.
/// Only the repository's owner writes; the machine's home quota and the
/// append-only mode are checked before a byte is stored.
pub async fn home_put(
    State(st): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let Path((repo, kind, name)) = path.map_err(bad_path)?;
    let (store, machine) = home_access(&st, &headers, &repo, &kind).await?;
    check_name(&name)?;
    let what = format!("home object {kind}/{name}");
    check_length(&headers, store.home_limit, &what)?;
    let announced = header_str(&headers, header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
    let asked_create_only = create_only(&headers);
    // Append-only: an object is written once; only locks come and go.
    let append_only = store.home_append_only && kind != LOCK_KIND;
    let create_only = asked_create_only || append_only;
    let space = format!("{repo}/{kind}");
    let (st2, s2, r2, sp2, n2, m2, w2) = (
        st.clone(),
        store.clone(),
        repo.clone(),
        space.clone(),
        name.clone(),
        machine.clone(),
        what.clone(),
    );
    // Claim, then reserve the bytes under the lock: two uploads of one
    // machine cannot both fit "under" its quota.
    let (reservation, limit) = tokio::task::spawn_blocking(move || -> ApiResult<(Reservation, u64)> {
        let home = s2.home.as_ref();
        let mut reserved = s2.home_owners.lock().unwrap_or_else(|p| p.into_inner());
        let claim = check_owner(&st2, home, &r2, &m2)?;
        let existing = home
            .open(&sp2, &n2)
            .map_err(|e| blob_error(e, &w2))?
            .map(|(_, meta)| meta.size);
        if append_only && !asked_create_only && existing.is_some() {
            return Err(ApiError::Forbidden(format!(
                "{w2} exists and this server keeps home repositories append-only: nothing is replaced or \
                 deleted except locks (prune runs on the server; see docs/home.md)"
            )));
        }
        if create_only && existing.is_some() {
            return Err(blob_error(BlobError::Exists { what: n2.clone() }, &w2));
        }
        let used = owned_usage(home, &m2).map_err(|e| blob_error(e, &w2))? + reserved.get(&m2).copied().unwrap_or(0);
        // A replaced object gives its bytes back.
        let room = s2.home_quota.saturating_sub(used.saturating_sub(existing.unwrap_or(0)));
        if announced.is_some_and(|n| n > room) {
            return Err(over_quota(&m2, s2.home_quota));
        }
        let bytes = announced.unwrap_or(room).min(room).min(s2.home_limit);
        // Only a write that may go ahead claims the repository.
        take(home, &r2, &m2, claim)?;
        *reserved.entry(m2.clone()).or_insert(0) += bytes;
        Ok((
            Reservation {
                store: s2.clone(),
                machine: m2,
                bytes,
            },
            bytes,
        ))
    })
    .await??;
    let quota_bound = limit < store.home_limit;
    let s3 = store.clone();
    let result = stream_into(body, move |reader| {
        s3.home.put(&space, &name, reader, limit, create_only)
    })
    .await?
    .map_err(|e| match e {
        BlobError::TooLarge { .. } if quota_bound => over_quota(&machine, store.home_quota),
        e => blob_error(e, &what),
    });
    drop(reservation);
    Ok(no_store(written(result?)))
}

/// `GET|HEAD /v1/home/{repo}/{kind}/{name}`: streamed, with single ranges.
pub async fn home_get(
    State(st): State<AppState>,
    method: Method,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Path((repo, kind, name)) = path.map_err(bad_path)?;
    let (store, _) = home_access(&st, &headers, &repo, &kind).await?;
    check_name(&name)?;
    let what = format!("home object {kind}/{name}");
    let space = format!("{repo}/{kind}");
    let w = what.clone();
    let (reader, meta) = tokio::task::spawn_blocking(move || store.home.open(&space, &name))
        .await?
        .map_err(|e| blob_error(e, &w))?
        .ok_or_else(|| ApiError::NotFound(format!("there is no {what}")))?;
    let etag = format!("\"{}\"", meta.version);
    let len = meta.size;
    let (status, h, start, count) = match range::reply(&headers, &etag, NO_STORE, len) {
        Reply::NotModified(h) => return Ok((StatusCode::NOT_MODIFIED, h).into_response()),
        Reply::Unsatisfiable(h) => {
            let msg = format!("range not satisfiable: {what} has {len} bytes");
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                h,
                Json(serde_json::json!({ "error": msg })),
            )
                .into_response());
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
        stream_out(reader, start, count)
    };
    Ok((status, h, body).into_response())
}

/// `DELETE /v1/home/{repo}/{kind}/{name}`: 204, or 404 when absent. Only
/// the repository's owner deletes; in append-only mode, only locks.
pub async fn home_delete(
    State(st): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Path((repo, kind, name)) = path.map_err(bad_path)?;
    let (store, machine) = home_access(&st, &headers, &repo, &kind).await?;
    check_name(&name)?;
    let what = format!("home object {kind}/{name}");
    if store.home_append_only && kind != LOCK_KIND {
        return Err(ApiError::Forbidden(format!(
            "this server keeps home repositories append-only: {what} is not deleted \
             (prune runs on the server; see docs/home.md)"
        )));
    }
    let space = format!("{repo}/{kind}");
    let w = what.clone();
    let deleted = tokio::task::spawn_blocking(move || {
        let _owners = store.home_owners.lock().unwrap_or_else(|p| p.into_inner());
        let claim = check_owner(&st, store.home.as_ref(), &repo, &machine)?;
        take(store.home.as_ref(), &repo, &machine, claim)?;
        store.home.delete(&space, &name).map_err(|e| blob_error(e, &w))
    })
    .await??;
    if !deleted {
        return Err(ApiError::NotFound(format!("there is no {what}")));
    }
    Ok(no_store(StatusCode::NO_CONTENT))
}

/// `GET /v1/home/{repo}/{kind}/`: the objects of one kind.
pub async fn home_list(
    State(st): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Path((repo, kind)) = path.map_err(bad_path)?;
    let (store, _) = home_access(&st, &headers, &repo, &kind).await?;
    let space = format!("{repo}/{kind}");
    let what = format!("home objects of kind {kind}");
    let listed = tokio::task::spawn_blocking(move || store.home.list(&space))
        .await?
        .map_err(|e| blob_error(e, &what))?;
    let objects = listed
        .into_iter()
        .map(|(name, m)| HomeObject { name, size: m.size })
        .collect();
    let mut resp = Json(HomeList { objects }).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    Ok(resp)
}

#[cfg(test)]
mod claim_tests {
    use super::*;
    use crate::blobs::LocalBlobs;

    #[test]
    fn a_second_replica_cannot_take_a_home_repository_claimed_by_the_first() {
        // Two replicas of `slate serve` on one shared --home-dir: two
        // stores over one directory, each with its own process lock.
        let dir = tempfile::Builder::new()
            .prefix("slate-claim-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let (one, two) = (LocalBlobs::new(dir.path()), LocalBlobs::new(dir.path()));
        let repo = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        // Both checked and saw no owner; `one` writes first.
        assert_eq!(claim_new(&one, repo, "lab-07").unwrap(), None);
        assert_eq!(claim_new(&two, repo, "lab-08").unwrap().as_deref(), Some("lab-07"));
        assert_eq!(owner_of(&two, repo).unwrap().as_deref(), Some("lab-07"));
        let listed = |m: &str| {
            one.list(&owned_space(m))
                .unwrap()
                .into_iter()
                .map(|(r, _)| r)
                .collect::<Vec<_>>()
        };
        assert_eq!(listed("lab-07"), [repo]);
        assert!(listed("lab-08").is_empty(), "the loser's listing is taken back");
        // The owner claiming again (through either replica) is no conflict.
        assert_eq!(claim_new(&two, repo, "lab-07").unwrap(), None);
    }
}

//! Network boot of diskless machines (`docs/format/http.md`, "Network
//! boot"): the iPXE scripts that send a machine to its assigned snapshot,
//! and that snapshot's kernel and initramfs.
//!
//! 1. `GET /v1/boot/ipxe` answers a script that fetches the same URL again
//!    with the machine's MAC, SMBIOS UUID and DHCP host name.
//! 2. With them, the fleet rules decide as for `POST /v1/fleet/assignment`
//!    ([`crate::fleet::api::resolve`]), and the answer is a script that
//!    boots `/v1/boot/{id}/kernel` with `/v1/boot/{id}/initrd` and a
//!    command line for the initramfs's `slate-net` boot script.
//! 3. Kernel and initramfs are read from the snapshot's chunks, checked,
//!    and streamed ([`files`]).
//!
//! These endpoints take no token: firmware has none. They reveal only
//! which snapshot a MAC, UUID or host name is assigned and files of
//! snapshots (which `/v1/repo/` serves to anyone anyway), and they write
//! nothing: recording machines here would let anyone fill the machines
//! table. The agent records the machine when it runs.
//!
//! [`script`] and [`tree`] are pure (strings and manifests); this module
//! holds the handlers.

pub mod files;
pub mod script;
pub mod tree;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use slate_core::SnapshotId;

use self::files::{BootFile, Cursor};
use crate::error::{ApiError, ApiResult};
use crate::objects::{hex64, IMMUTABLE};
use crate::range::{self, Reply};
use crate::AppState;

/// An iPXE script: plain text, never cached (assignments move).
fn script_response(text: String) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        text,
    )
        .into_response()
}

/// `GET /v1/boot/ipxe[?mac=..&uuid=..&hostname=..]`: the chain script
/// without a query, the machine's boot script with one.
///
/// A machine the fleet does not boot (no rule, a channel without
/// snapshots, a missing pin) is answered 200 with a script that shows why
/// on its console and fails, since iPXE shows nothing of a 404's body. A
/// malformed query is 400: iPXE itself never sends one.
pub async fn ipxe(State(st): State<AppState>, uri: Uri, headers: HeaderMap) -> ApiResult<Response> {
    // HTTP/1.1 sends Host; HTTP/2 the authority of the request's URI.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let fleet = st.fleet();
    // Where iPXE fetches from: how the machine reached this server, else
    // the first server FLEET.toml names.
    let base = match script::request_base(host) {
        Ok(b) => b,
        Err(why) => fleet
            .netboot
            .servers
            .first()
            .cloned()
            .ok_or(ApiError::BadRequest(why))?,
    };
    let Some(query) = uri.query().filter(|q| !q.is_empty()) else {
        return Ok(script_response(script::chain_script(&base)));
    };
    if query.len() > script::MAX_QUERY {
        return Err(ApiError::BadRequest(format!(
            "the query is longer than {} bytes",
            script::MAX_QUERY
        )));
    }
    let pairs: Vec<(String, String)> = Query::try_from_uri(&uri)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?
        .0;
    let machine = script::machine_from_query(&pairs).map_err(ApiError::BadRequest)?;
    let servers = script::server_urls(&fleet.netboot, host).map_err(ApiError::BadRequest)?;
    let (st2, f, m) = (st.clone(), fleet.clone(), machine.clone());
    // Channel files are read from disk; a rollout decides between heads.
    let answer = tokio::task::spawn_blocking(move || crate::fleet::api::resolve_with_rollout(&st2, &f, &m)).await?;
    let text = match answer {
        Ok(a) => {
            tracing::info!(
                "network boot of machine {} ({}): rule {}, snapshot {}",
                a.machine,
                machine.describe(),
                a.rule,
                a.snapshot
            );
            script::boot_script(&a, &base, &servers, &fleet.netboot.kernel_cmdline)
        }
        Err(ApiError::NotFound(why)) => {
            tracing::warn!("no network boot for machine {}: {why}", machine.id);
            script::refusal_script(&machine.id, &why)
        }
        Err(e) => return Err(e),
    };
    Ok(script_response(text))
}

/// `GET|HEAD /v1/boot/{id}/kernel` and `/v1/boot/{id}/initrd`: a file of
/// snapshot `id`, streamed from its checked chunks, with the caching and
/// range support of the repository's immutable objects.
pub async fn file(State(st): State<AppState>, method: Method, uri: Uri, headers: HeaderMap) -> ApiResult<Response> {
    let no_such =
        || ApiError::NotFound("no such file: network boot serves /v1/boot/ID/kernel and /v1/boot/ID/initrd".into());
    // The raw path: an id is 64 lower-case hex digits, exactly, so that
    // one file has one URL in every cache.
    let rest = uri.path().strip_prefix("/v1/boot/").ok_or_else(no_such)?;
    let (id, name) = rest.split_once('/').ok_or_else(no_such)?;
    let which = BootFile::parse(name).ok_or_else(no_such)?;
    let id = hex64(id)
        .and_then(SnapshotId::from_hex)
        .ok_or_else(|| ApiError::NotFound("no such snapshot: the id must be 64 lower-case hex digits".into()))?;
    let mut retried = false;
    loop {
        let files = st.boot.files(&st.repo, id).await?;
        let plan = files.get(which).cloned().ok_or_else(|| {
            ApiError::NotFound(match which {
                BootFile::Kernel => {
                    format!("snapshot {id} has no kernel (no /vmlinuz link and no /boot/vmlinuz-VERSION)")
                }
                BootFile::Initrd => format!(
                    "snapshot {id} has no initramfs for its kernel \
                     (/boot/slate-netboot.img-VERSION or /boot/initrd.img-VERSION)"
                ),
            })
        })?;
        // The URL never changes meaning: the id and the file name suffice.
        let etag = format!("\"{id}-{}\"", which.name());
        let (status, h, start, count) = match range::reply(&headers, &etag, IMMUTABLE, plan.size) {
            Reply::NotModified(h) => return Ok((StatusCode::NOT_MODIFIED, h).into_response()),
            Reply::Unsatisfiable(h) => {
                let msg = format!("range not satisfiable: the file has {} bytes", plan.size);
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
        if method == Method::HEAD || count == 0 {
            return Ok((status, h, Body::empty()).into_response());
        }
        // Read the first step before answering: a pack that went away
        // since the snapshot was resolved (`slate gc` rewrites packs) or a
        // chunk that no longer checks is still a clean error, or a retry.
        let cursor = Cursor::new(st.repo.clone(), plan.clone(), start, count);
        let (first, cursor) = tokio::task::spawn_blocking(move || {
            let mut cursor = cursor;
            (cursor.step(), cursor)
        })
        .await?;
        match first {
            Ok(first) => return Ok((status, h, cursor.into_body(first, st.boot.clone(), id)).into_response()),
            Err(e) => {
                st.boot.forget(&id);
                if retried {
                    return Err(ApiError::internal(
                        e.context(format!("network boot of snapshot {id}: {}", plan.path)),
                    ));
                }
                // Resolving again reads and checks every chunk: if the
                // repository is damaged, that failure is the one logged.
                tracing::debug!(
                    "network boot of snapshot {id}: {}: {e:#}; resolving it again",
                    plan.path
                );
                retried = true;
            }
        }
    }
}

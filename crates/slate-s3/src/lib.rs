//! slate-s3: a repository on S3-compatible object storage.
//!
//! [`S3Storage`] implements `slate_repo::storage::Storage` over the
//! `object_store` crate (request signing, retries, multipart uploads), so
//! commit, checkout, verify, gc and `slate serve` work on `s3://BUCKET/PREFIX`
//! exactly as on a directory: the repository's keys (`config`,
//! `packs/ab/<id>.pack`, `channels/<name>`, ...) become object names under
//! `PREFIX/`. See docs/scale.md, "Object storage".
//!
//! The trait is synchronous (rayon workers and `spawn_blocking` call it), and
//! `object_store` is async: each storage owns a small tokio runtime and every
//! call runs there while the calling thread waits. The calling thread never
//! enters that runtime, so a call works from any thread, even from inside
//! another runtime (where it only blocks, as a local disk read would).
//!
//! What S3 gives and slate relies on: a PUT is atomic (a reader sees the
//! whole object or none) and durable once it returns, so there is no `tmp/`
//! and [`Storage::sync`] has nothing to do; the commit's order (objects
//! first, channel last) is the crash-safety argument, unchanged.

pub mod requests;
mod writer;

#[cfg(feature = "test-server")]
pub mod test_server;

use std::future::Future;
use std::io;
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
use slate_repo::storage::{Conflict, Expected, ObjectWriter, Storage};

use crate::requests::{Op, Requests};

/// Where a repository lives in an object store: bucket and key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl S3Location {
    /// Parse `s3://BUCKET[/PREFIX]`; `None` for anything else.
    pub fn parse(url: &str) -> Option<S3Location> {
        let rest = url.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket rules, loosely: enough to catch a typo before any request.
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        let prefix = prefix.trim_matches('/');
        // Empty segments and `.`/`..` would name other keys than they seem to.
        let prefix_ok = prefix.is_empty() || prefix.split('/').all(|s| !s.is_empty() && s != "." && s != "..");
        (bucket_ok && prefix_ok).then(|| S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// Whether `s` names an object-store repository rather than a directory.
    pub fn is_url(s: &str) -> bool {
        s.starts_with("s3://")
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// A repository in a bucket of an S3-compatible store.
pub struct S3Storage {
    store: Arc<dyn ObjectStore>,
    location: S3Location,
    /// `Option` only so that `Drop` can shut it down without waiting: a
    /// runtime dropped normally from async code panics.
    rt: Option<tokio::runtime::Runtime>,
    /// Requests sent, by kind (logged when the storage is dropped).
    requests: Arc<Requests>,
}

impl S3Storage {
    /// Open `s3://BUCKET/PREFIX` with the settings of the environment, as
    /// the AWS tools read them: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`),
    /// `AWS_ENDPOINT_URL` for a server other than AWS, `AWS_ALLOW_HTTP=true`
    /// for one without TLS (a test server). Nothing is requested yet.
    pub fn from_env(url: &str) -> io::Result<S3Storage> {
        let location = S3Location::parse(url).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{url}: not an object-store repository; write s3://BUCKET/PREFIX"),
            )
        })?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            // Channels are replaced with `If-Match` on the ETag read (AWS,
            // MinIO, Ceph and moto support it): the writers' only guard.
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            // Retries with backoff for a minute at most (object_store's
            // default is three): an unreachable endpoint fails in bounded time.
            .with_retry(object_store::RetryConfig {
                retry_timeout: std::time::Duration::from_secs(60),
                ..Default::default()
            });
        // A store at an explicit endpoint (not AWS) is almost always
        // addressed by path (`ENDPOINT/BUCKET/KEY`), which object_store
        // does by default; AWS itself takes the same requests.
        if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            b = b.with_region("us-east-1");
        }
        let store = b
            .build()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{location}: {e}")))?;
        Self::new(Arc::new(store), location)
    }

    /// A storage over an already configured store (tests, other clouds).
    pub fn new(store: Arc<dyn ObjectStore>, location: S3Location) -> io::Result<S3Storage> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            // The work is waiting on the network: two threads drive many
            // requests, and the caller's own threads do the computing.
            .worker_threads(2)
            .thread_name("slate-s3")
            .enable_all()
            .build()?;
        Ok(S3Storage {
            store,
            location,
            rt: Some(rt),
            requests: Arc::default(),
        })
    }

    /// The requests sent so far, by kind.
    pub fn requests(&self) -> &Requests {
        &self.requests
    }

    /// Where this storage is.
    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// The object name of a repository key.
    fn path(&self, key: &str) -> ObjPath {
        let key = key.trim_matches('/');
        if self.location.prefix.is_empty() {
            ObjPath::from(key)
        } else if key.is_empty() {
            ObjPath::from(self.location.prefix.as_str())
        } else {
            ObjPath::from(format!("{}/{key}", self.location.prefix))
        }
    }

    /// Run `fut` on this storage's runtime and wait for it.
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        run_on(&self.handle(), fut).expect("the runtime lives as long as the storage")
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.rt.as_ref().expect("the runtime lives until drop").handle().clone()
    }

    /// An `io::Error` that names the object and keeps "not found" matchable.
    /// The three ways a whole store fails (no such bucket, credentials
    /// refused, endpoint unreachable) become one sentence saying what to
    /// check, instead of the HTTP exchange.
    fn err(&self, key: &str, e: object_store::Error) -> io::Error {
        if let Some(msg) = self.store_failure(&e) {
            return io::Error::other(msg);
        }
        let kind = match e {
            object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                io::ErrorKind::PermissionDenied
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, format!("{}/{key}: {e}", self.location))
    }
}

impl S3Storage {
    /// What is wrong with the whole store, when `e` says so.
    fn store_failure(&self, e: &object_store::Error) -> Option<String> {
        let text = format!("{e:?} {e}");
        let loc = &self.location;
        let at = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "AWS S3".into());
        if text.contains("NoSuchBucket") {
            return Some(format!(
                "{loc}: bucket {} does not exist at {at} (create it, or check the URL and AWS_ENDPOINT_URL)",
                loc.bucket
            ));
        }
        let denied = matches!(
            e,
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
        ) || [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "ExpiredToken",
        ]
        .iter()
        .any(|c| text.contains(c));
        if denied {
            return Some(format!(
                "{loc}: {at} refused the credentials (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
                 AWS_SESSION_TOKEN and that they may use bucket {})",
                loc.bucket
            ));
        }
        let unreachable = [
            "error sending request",
            "Connection refused",
            "dns error",
            "timed out",
            "connect",
        ]
        .iter()
        .any(|c| text.contains(c))
            && !text.contains("status");
        if unreachable {
            return Some(format!(
                "{loc}: cannot reach the object store at {at} (check AWS_ENDPOINT_URL, AWS_ALLOW_HTTP and the network)"
            ));
        }
        None
    }
}

/// Run `fut` on the runtime of `handle` and wait for it; an error when that
/// runtime has been shut down (a writer that outlived its storage).
fn run_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| io::Error::other("the object store's runtime is shut down"))
}

impl Drop for S3Storage {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        // What a run cost in requests, for benchmarks and bills:
        // `SLATE_LOG=slate_s3=info slate commit ...`.
        tracing::info!("{}: {}", self.location, self.requests);
    }
}

impl Storage for S3Storage {
    fn read(&self, key: &str) -> io::Result<Vec<u8>> {
        let (store, path) = (self.store.clone(), self.path(key));
        self.requests.count(Op::Get);
        self.run(async move { store.get(&path).await?.bytes().await })
            .map(|b| b.to_vec())
            .map_err(|e| self.err(key, e))
    }

    fn read_at(&self, key: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let (store, path) = (self.store.clone(), self.path(key));
        let range = offset..offset + buf.len() as u64;
        self.requests.count(Op::RangeGet);
        let got = self
            .run(async move { store.get_range(&path, range).await })
            .map_err(|e| self.err(key, e))?;
        if got.len() != buf.len() {
            // A short answer (past the end): what read_exact_at reports.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}/{key}: reading {} bytes at {offset}: got {}",
                    self.location,
                    buf.len(),
                    got.len()
                ),
            ));
        }
        buf.copy_from_slice(&got);
        Ok(())
    }

    fn len(&self, key: &str) -> io::Result<u64> {
        let (store, path) = (self.store.clone(), self.path(key));
        self.requests.count(Op::Head);
        self.run(async move { store.head(&path).await })
            .map(|m| m.size)
            .map_err(|e| self.err(key, e))
    }

    fn write(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let (store, path) = (self.store.clone(), self.path(key));
        let payload = PutPayload::from(data.to_vec());
        self.requests.count(Op::Put);
        self.run(async move { store.put(&path, payload).await })
            .map(drop)
            .map_err(|e| self.err(key, e))
    }

    fn read_expecting(&self, key: &str) -> io::Result<(Option<Vec<u8>>, Expected)> {
        let (store, path) = (self.store.clone(), self.path(key));
        self.requests.count(Op::Get);
        let got = self.run(async move {
            let r = store.get(&path).await?;
            let tag = r.meta.e_tag.clone();
            Ok::<_, object_store::Error>((r.bytes().await?, tag))
        });
        match got {
            Ok((b, Some(tag))) => Ok((Some(b.to_vec()), Expected::Tag(tag))),
            Ok((_, None)) => Err(io::Error::other(format!(
                "{}/{key}: the object store gave no ETag, which replacing it safely needs",
                self.location
            ))),
            Err(e @ object_store::Error::NotFound { .. }) if self.store_failure(&e).is_none() => {
                Ok((None, Expected::Absent))
            }
            Err(e) => Err(self.err(key, e)),
        }
    }

    fn write_expecting(&self, key: &str, data: &[u8], expected: &Expected) -> io::Result<()> {
        let mode = match expected {
            Expected::Absent => PutMode::Create,
            Expected::Tag(t) => PutMode::Update(UpdateVersion {
                e_tag: Some(t.clone()),
                version: None,
            }),
            Expected::Unchecked => PutMode::Overwrite,
        };
        let (store, path) = (self.store.clone(), self.path(key));
        let payload = PutPayload::from(data.to_vec());
        self.requests.count(Op::Put);
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self.run(async move { store.put_opts(&path, payload, opts).await }) {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Err(io::Error::other(Conflict { key: key.to_string() }))
            }
            Err(e) => Err(self.err(key, e)),
        }
    }

    fn create(&self) -> io::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(writer::SpoolWriter::new(self)?))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let (store, path) = (self.store.clone(), self.path(prefix));
        let root = self.path("");
        // One request per page of 1000 keys; counted as one listing.
        self.requests.count(Op::List);
        let all = self
            .run(async move { store.list(Some(&path)).try_collect::<Vec<_>>().await })
            .map_err(|e| self.err(prefix, e))?;
        let mut keys: Vec<String> = all
            .into_iter()
            .filter_map(|m| {
                let name = m.location.as_ref();
                if root.as_ref().is_empty() {
                    Some(name.to_string())
                } else {
                    name.strip_prefix(root.as_ref())?.strip_prefix('/').map(str::to_string)
                }
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let (store, path) = (self.store.clone(), self.path(key));
        self.requests.count(Op::Delete);
        match self.run(async move { store.delete(&path).await }) {
            Ok(()) => Ok(()),
            Err(e @ object_store::Error::NotFound { .. }) if self.store_failure(&e).is_none() => Ok(()),
            Err(e) => Err(self.err(key, e)),
        }
    }

    fn sync(&self) -> io::Result<()> {
        // A PUT that returned is durable: nothing is pending.
        Ok(())
    }

    fn sync_key(&self, _key: &str) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        let l = S3Location::parse("s3://bucket/a/b/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("bucket", "a/b"));
        assert_eq!(l.to_string(), "s3://bucket/a/b");
        assert_eq!(S3Location::parse("s3://bucket").unwrap().prefix, "");
        for bad in [
            "/srv/repo",
            "s3://",
            "s3://B",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "s3://x",
        ] {
            assert!(S3Location::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn prefixes_keys() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let s = S3Storage::new(store.clone(), S3Location::parse("s3://bucket/repo").unwrap()).unwrap();
        s.write("channels/a/b", b"x").unwrap();
        s.write("config", b"y").unwrap();
        assert_eq!(s.list("channels").unwrap(), ["channels/a/b"]);
        assert_eq!(s.list("").unwrap(), ["channels/a/b", "config"]);
        assert_eq!(s.read("config").unwrap(), b"y");
        assert_eq!(s.len("channels/a/b").unwrap(), 1);
        assert_eq!(s.read("nope").unwrap_err().kind(), io::ErrorKind::NotFound);
        s.delete("nope").unwrap();
        let mut w = s.create().unwrap();
        w.write_all(&[7u8; 100_000]).unwrap();
        w.finish("packs/ab/x.pack").unwrap();
        let mut buf = [0u8; 10];
        s.read_at("packs/ab/x.pack", 99_990, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 10]);
        assert!(s.read_at("packs/ab/x.pack", 99_995, &mut buf).is_err());
    }

    use std::io::Write;
}

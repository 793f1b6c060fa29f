//! A throwaway S3 server for tests (this crate's, and other crates' through
//! the `test-server` feature): moto's server mode, from PyPI, which
//! scripts/setup.sh installs into a venv at /var/tmp/slate-moto.
//!
//! Why moto: it speaks S3's REST protocol over HTTP (path-style addressing,
//! ranged GETs, multipart uploads, conditional PUTs, ListObjectsV2), so the
//! requests object_store sends are the ones a real store gets; it installs
//! in seconds from a registry and keeps everything in memory, so a test
//! leaves nothing behind. It does not check request signatures, which the
//! object_store crate, not slate, computes.
//!
//! Each [`TestS3`] is its own server on 127.0.0.1 at a free port, killed
//! by its pid when dropped (a failing test included). Where moto is not
//! installed, [`TestS3::start`] says `skipped:` on stderr and returns
//! `None`, as the repository's other tests do for a missing tool.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;

use crate::{S3Location, S3Storage};

/// Credentials moto accepts (it accepts any).
const ACCESS_KEY: &str = "slate-test";
const SECRET_KEY: &str = "slate-test-secret";

/// A running moto server, killed on drop.
pub struct TestS3 {
    child: Child,
    port: u16,
}

fn moto_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLATE_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from("/var/tmp/slate-moto/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    })
}

impl TestS3 {
    /// Start a server, or `None` (with a `skipped:` line) where moto is not
    /// installed. Panics if an installed moto fails to start.
    pub fn start() -> Option<TestS3> {
        let Some(bin) = moto_server() else {
            // Under `make test` (SLATE_TESTS_MUST_RUN) a missing tool fails
            // the test instead of letting it pass unchecked.
            assert!(
                std::env::var_os("SLATE_TESTS_MUST_RUN").is_none(),
                "moto_server is not installed (scripts/setup.sh installs it) and SLATE_TESTS_MUST_RUN is set"
            );
            eprintln!("skipped: moto_server is not installed (scripts/setup.sh installs it)");
            return None;
        };
        // A free port, released just before moto binds it; another process
        // taking it in between makes the start fail loudly, not silently.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.0.0.1")
            .port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut s = TestS3 { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("{} exited at start: {status}", bin.display());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on port {port}",
                bin.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The first request also waits for the application to be loaded.
        s.request("GET", "/");
        Some(s)
    }

    /// The server's URL, for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a `slate` process needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Create a bucket (moto takes an unsigned request).
    pub fn create_bucket(&self, name: &str) {
        let answer = self.request("PUT", &format!("/{name}"));
        assert!(answer.starts_with("HTTP/1.1 200"), "creating bucket {name}: {answer}");
    }

    /// A storage for `url` (`s3://BUCKET/PREFIX`) on this server.
    pub fn storage(&self, url: &str) -> S3Storage {
        let location = S3Location::parse(url).expect("an s3:// URL");
        let store = AmazonS3Builder::new()
            .with_bucket_name(&location.bucket)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region("us-east-1")
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            .build()
            .expect("an S3 client for the test server");
        S3Storage::new(Arc::new(store), location).expect("a runtime")
    }

    /// One HTTP/1.1 request without a body; the whole answer as text.
    fn request(&self, method: &str, path: &str) -> String {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to moto");
        c.set_read_timeout(Some(Duration::from_secs(30))).ok();
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("writing to moto");
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        answer
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        // Our own child, by its pid: SIGKILL, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

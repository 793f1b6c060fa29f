//! Writing a large object whose name is known only at the end (a pack is
//! named by the hash of its bytes): the bytes are spooled to an anonymous
//! temporary file, then uploaded under their name, in one PUT when small
//! and as a multipart upload when large, so memory stays bounded whatever
//! the pack size.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use object_store::{ObjectStore, PutPayload, WriteMultipart};
use slate_repo::storage::ObjectWriter;

use crate::requests::Op;
use crate::{run_on, S3Storage};

/// Objects up to this size go up in one PUT; S3 allows 5 GiB, but a
/// failed multipart part is retried alone while a failed PUT starts over.
const SINGLE_PUT_MAX: u64 = 16 << 20;
/// The part size of larger objects (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// A new object, spooled locally until [`ObjectWriter::finish`].
pub(crate) struct SpoolWriter {
    store: Arc<dyn ObjectStore>,
    handle: tokio::runtime::Handle,
    /// Maps a key to its object name and errors to messages.
    names: Namer,
    file: BufWriter<File>,
    requests: Arc<crate::requests::Requests>,
}

/// What a writer needs of its storage after the storage may be gone.
struct Namer {
    location: crate::S3Location,
}

impl Namer {
    fn path(&self, key: &str) -> object_store::path::Path {
        let key = key.trim_matches('/');
        if self.location.prefix.is_empty() {
            key.into()
        } else {
            format!("{}/{key}", self.location.prefix).into()
        }
    }
}

impl SpoolWriter {
    pub(crate) fn new(s: &S3Storage) -> io::Result<SpoolWriter> {
        // Anonymous: nothing to clean up after a crash.
        let file = tempfile::tempfile()?;
        Ok(SpoolWriter {
            store: s.store.clone(),
            handle: s.handle(),
            names: Namer {
                location: s.location.clone(),
            },
            file: BufWriter::with_capacity(1 << 20, file),
            requests: s.requests.clone(),
        })
    }
}

impl Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ObjectWriter for SpoolWriter {
    fn finish(self: Box<Self>, key: &str) -> io::Result<()> {
        let SpoolWriter {
            store,
            handle,
            names,
            file,
            requests,
        } = *self;
        let mut file = file.into_inner().map_err(|e| e.into_error())?;
        let len = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(0))?;
        let path = names.path(key);
        let named = |e: object_store::Error| io::Error::other(format!("{}/{key}: {e}", names.location));
        if len <= SINGLE_PUT_MAX {
            requests.count(Op::Put);
            let mut data = Vec::with_capacity(len as usize);
            file.read_to_end(&mut data)?;
            return run_on(&handle, async move { store.put(&path, PutPayload::from(data)).await })?
                .map(drop)
                .map_err(named);
        }
        // Create, the parts, complete.
        requests.count(Op::MultipartUpload);
        for _ in 0..len.div_ceil(PART_SIZE as u64) {
            requests.count(Op::Part);
        }
        // Parts are read from the file on the runtime's blocking pool, while
        // up to PARTS_IN_FLIGHT of them upload.
        let upload = run_on(&handle, {
            let store = store.clone();
            let path = path.clone();
            async move { store.put_multipart(&path).await }
        })?
        .map_err(named)?;
        let result = run_on(&handle, async move {
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; PART_SIZE];
            loop {
                let (f, b, n) = match tokio::task::spawn_blocking(move || {
                    let n = read_full(&mut file, &mut buf);
                    (file, buf, n)
                })
                .await
                {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(io::Error::other(e));
                    }
                };
                (file, buf) = (f, b);
                let n = match n {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(e);
                    }
                };
                if n == 0 {
                    break;
                }
                if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    // The parts already uploaded cost storage until aborted.
                    let _ = w.abort().await;
                    return Err(io::Error::other(e));
                }
                w.write(&buf[..n]);
            }
            // Every part first, so a failed one still aborts the upload
            // (finish aborts only when the completion itself fails).
            if let Err(e) = w.wait_for_capacity(0).await {
                let _ = w.abort().await;
                return Err(io::Error::other(e));
            }
            w.finish().await.map(drop).map_err(io::Error::other)
        })?;
        result.map_err(|e| io::Error::new(e.kind(), format!("{}/{key}: {e}", names.location)))
    }
}

/// Fill `buf` as far as the file allows; the count read (0 at the end).
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

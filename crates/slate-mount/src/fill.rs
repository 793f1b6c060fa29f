//! Cache everything: fetch the rest of a snapshot in the background, in
//! large sequential ranges, below a bandwidth cap, giving way to reads
//! that programs are waiting for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slate_agent::{Error, Result};
use slate_core::ChunkId;

use crate::source::{Chunks, Origin};

/// Largest request of a fill.
pub const FILL_RANGE: u64 = 8 << 20;

/// Fill the cache with every chunk of `want`. Stops when done, when `stop`
/// is set, or on a verification failure; a server that does not answer is
/// retried with a growing pause (up to a minute) unless `give_up_offline`.
pub fn fill(
    chunks: &Arc<Chunks>,
    want: &[ChunkId],
    rate: Option<u64>,
    stop: &AtomicBool,
    give_up_offline: bool,
) -> Result<()> {
    if !matches!(chunks.origin(), Origin::Remote(_)) {
        return Ok(());
    }
    let Origin::Remote(remote) = chunks.origin() else {
        return Ok(());
    };
    let mut pause = Duration::from_secs(1);
    loop {
        let spans = chunks.plan(want, FILL_RANGE);
        if spans.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut sent = 0u64;
        let mut failed = None;
        for span in &spans {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            // Reads that programs wait for go first.
            while chunks.demand.load(Ordering::SeqCst) > 0 && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            match chunks.fetch_span(remote, span) {
                Ok(()) => {
                    pause = Duration::from_secs(1);
                    sent += span.len();
                    if let Some(rate) = rate.filter(|r| *r > 0) {
                        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                        let spent = started.elapsed();
                        if due > spent {
                            sleep_unless(stop, due - spent);
                        }
                    }
                }
                Err(e @ Error::Untrusted(_)) => return Err(e),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            if give_up_offline {
                return Err(e);
            }
            sleep_unless(stop, pause);
            pause = (pause * 2).min(Duration::from_secs(60));
        }
    }
}

/// Sleep for `d`, waking early when `stop` is set.
pub fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
    }
}

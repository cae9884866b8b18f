//! Blob transfers over a slow link, against a real sidecar (one per test): a
//! download or an upload is bounded by its progress, not in total. The link
//! is a TCP proxy between the client and the sidecar that paces, or stops,
//! what the sidecar sends (or what the client sends). Every wait is bounded; nothing asserts on timing: the
//! pacing's sleeps alone make a download outlast the call timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use are_sdk::{Client, Code, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, timeout};

#[macro_use]
mod common;
use common::{start, WAIT};

/// Which direction of a [`SlowLink`] is paced.
#[derive(Clone, Copy, PartialEq)]
enum Paced {
    /// Sidecar to client: downloads.
    Downloads,
    /// Client to sidecar: uploads.
    Uploads,
}

/// A TCP proxy in front of a sidecar whose paced direction passes at most
/// `piece` bytes every `every`, and at most `budget` bytes in all (then
/// stalls, holding the connection open).
struct SlowLink {
    target: String,
    budget: Arc<AtomicU64>,
    relays: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    async fn start(upstream: &str, paced: Paced, piece: usize, every: Duration) -> SlowLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let budget = Arc::new(AtomicU64::new(u64::MAX));
        let relays = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_string();
        let accept = tokio::spawn({
            let (budget, relays) = (budget.clone(), relays.clone());
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let (upstream, budget) = (upstream.clone(), budget.clone());
                    let relay = tokio::spawn(async move {
                        let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let (mut from_client, mut to_client) = inbound.into_split();
                        let (mut from_server, mut to_server) = outbound.into_split();
                        if paced == Paced::Downloads {
                            tokio::select! {
                                _ = tokio::io::copy(&mut from_client, &mut to_server) => {}
                                _ = pace(&mut from_server, &mut to_client, piece, every, &budget) => {}
                            }
                        } else {
                            tokio::select! {
                                _ = pace(&mut from_client, &mut to_server, piece, every, &budget) => {}
                                _ = tokio::io::copy(&mut from_server, &mut to_client) => {}
                            }
                        }
                    });
                    relays.lock().unwrap().push(relay.abort_handle());
                }
            }
        });
        SlowLink {
            target,
            budget,
            relays,
            accept,
        }
    }

    /// From now on, passes `bytes` more from the sidecar, then stalls.
    fn stall_after(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::SeqCst);
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.accept.abort();
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }
}

/// Copies `from` to `to` a piece at a time, within `budget`.
async fn pace(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    piece: usize,
    every: Duration,
    budget: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0; piece];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut sent = 0;
        while sent < n {
            let allowed = budget.load(Ordering::SeqCst).min((n - sent) as u64) as usize;
            if allowed == 0 {
                sleep(Duration::from_millis(20)).await; // stalled
                continue;
            }
            budget.fetch_sub(allowed as u64, Ordering::SeqCst);
            to.write_all(&buf[sent..sent + allowed]).await?;
            sent += allowed;
        }
        if !every.is_zero() {
            sleep(every).await;
        }
    }
}

/// `n` bytes that are not all alike.
fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A 6 MiB blob over a link passing 32 KiB every 25 ms takes at least 4.8 s
/// (the sleeps alone), past the client's 3 s call timeout; each 1 MiB chunk
/// comes within about 0.8 s, so the download, bounded by its progress,
/// completes. (Bounded in total by the call timeout, as it was, it failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_download_longer_than_the_call_timeout_completes_while_it_progresses() {
    let (sidecar, direct) = start().await;
    let data = bytes(6 * 1024 * 1024);
    let blob = direct
        .put_blob(data.clone(), "application/octet-stream", "")
        .await
        .unwrap();
    let link = SlowLink::start(
        &sidecar.target,
        Paced::Downloads,
        32 * 1024,
        Duration::from_millis(25),
    )
    .await;
    let options = Options {
        call_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let slow = Client::connect(&link.target, options).await.unwrap();
    let read = timeout(WAIT, slow.get_blob(&blob.sha256))
        .await
        .expect("the download ended")
        .expect("the download completed");
    assert!(read == data, "read {} bytes of {}", read.len(), data.len());
}

/// A download that stops making progress fails one call timeout after its
/// last chunk, with the SDK's DEADLINE_EXCEEDED: the bound is still a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_download_that_stalls_fails_after_the_call_timeout() {
    let (sidecar, direct) = start().await;
    let data = bytes(3 * 1024 * 1024);
    let blob = direct
        .put_blob(data, "application/octet-stream", "")
        .await
        .unwrap();
    let link = SlowLink::start(&sidecar.target, Paced::Downloads, 64 * 1024, Duration::ZERO).await;
    let options = Options {
        call_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let slow = Client::connect(&link.target, options).await.unwrap();
    // The first chunk (1 MiB) and half the second pass; then nothing.
    link.stall_after(3 * 512 * 1024);
    let e = timeout(WAIT, slow.get_blob(&blob.sha256))
        .await
        .expect("the download ended")
        .expect_err("a stalled download fails");
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::DeadlineExceeded, "TIMEOUT"),
        "{e}"
    );
    assert!(
        e.message.contains("next chunk"),
        "stalled mid-download: {e}"
    );
}

/// An upload bounded by its progress too: 64 MiB over a link passing
/// 256 KiB every 16 ms takes at least 4 s (the sleeps alone), twice the
/// client's 2 s call timeout, and is stored whole. (Bounded in total by the
/// call timeout, as it was, it failed at 2 s.) The link is fast enough that
/// what is in flight when the last chunk is handed over (the sidecar's
/// flow-control window and the sockets' buffers, about 13 MiB here) passes
/// well within the call timeout that bounds the wait for the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_upload_longer_than_the_call_timeout_completes_while_it_progresses() {
    let (sidecar, direct) = start().await;
    let link = SlowLink::start(
        &sidecar.target,
        Paced::Uploads,
        256 * 1024,
        Duration::from_millis(16),
    )
    .await;
    let options = Options {
        call_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let slow = Client::connect(&link.target, options).await.unwrap();
    let data = bytes(64 * 1024 * 1024);
    let blob = timeout(
        WAIT,
        slow.put_blob(data.clone(), "application/octet-stream", ""),
    )
    .await
    .expect("the upload ended")
    .expect("the upload completed");
    assert_eq!(blob.size_bytes, data.len() as i64);
    let read = direct.get_blob(&blob.sha256).await.unwrap();
    assert!(
        read == data,
        "stored {} bytes of {}",
        read.len(),
        data.len()
    );
}

/// An upload that stops making progress fails, with the SDK's
/// DEADLINE_EXCEEDED: the bound is still a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_upload_that_stalls_fails_after_the_call_timeout() {
    let (sidecar, _direct) = start().await;
    let link = SlowLink::start(&sidecar.target, Paced::Uploads, 64 * 1024, Duration::ZERO).await;
    let options = Options {
        call_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let slow = Client::connect(&link.target, options).await.unwrap();
    // The connection's preface and the first chunk or so pass; then nothing.
    link.stall_after(3 * 512 * 1024);
    let e = timeout(
        WAIT,
        slow.put_blob(bytes(16 * 1024 * 1024), "application/octet-stream", ""),
    )
    .await
    .expect("the upload ended")
    .expect_err("a stalled upload fails");
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::DeadlineExceeded, "TIMEOUT"),
        "{e}"
    );
}

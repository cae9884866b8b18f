//! Connecting to the sidecar: [`Client`], [`Options`] and the raw stubs.

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Uri};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::error::{bounded, Error, FieldViolation, Result};
use crate::pb;
use crate::pb::cache_service_client::CacheServiceClient;
use crate::pb::router_service_client::RouterServiceClient;
use crate::pb::scheduler_service_client::SchedulerServiceClient;
use crate::pb::state_service_client::StateServiceClient;
use crate::pb::trace_service_client::TraceServiceClient;
use crate::pb::worker_service_client::WorkerServiceClient;
use crate::time::capped;

/// Largest payload sent inline; larger ones travel as blobs.
pub const MAX_INLINE_BYTES: usize = 4 * 1024 * 1024;

const BLOB_CHUNK_BYTES: usize = 1024 * 1024;

/// The largest blob the contract allows.
const MAX_BLOB_BYTES: i64 = 256 * 1024 * 1024;

/// Default bound of request and response messages, as the sidecar's.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Default interval of the client's keepalive pings ([`Options::keepalive_interval`]).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Default wait for a keepalive ping's ack ([`Options::keepalive_timeout`]).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default [`Options::reconnect_window`]: how long a wait keeps resuming its
/// dropped stream while the sidecar does not answer (as the Python SDK's
/// `reconnect_window`).
pub const DEFAULT_RECONNECT_WINDOW: Duration = Duration::from_secs(60);

/// The receive window of each HTTP/2 stream (hyper's default, set here
/// because [`CONNECTION_WINDOW_BYTES`] is reckoned from it): at most this
/// much of a stream's messages waits unread in the client.
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;

/// The receive window of each connection: the largest HTTP/2 allows, so
/// that only the streams' own windows pace what the sidecar sends, as in
/// gRPC's own transports. A connection window of a few streams' windows
/// (hyper's default, 5 MiB) let three [`crate::EventStream`]s read slowly,
/// or held unread, take all of it: every other call on the connection (a
/// worker's stream and heartbeats, unary calls) then waited until they were
/// read. What a connection keeps unread is still bounded, by
/// [`STREAM_WINDOW_BYTES`] per open stream (the sidecar serves 1,024 at once
/// on a connection).
const CONNECTION_WINDOW_BYTES: u32 = (1 << 31) - 1;

/// How to reach the sidecar.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bearer token sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// TLS configuration; `None` is plaintext. It applies to a `unix:`
    /// target too (the sidecar serves TLS there as on TCP): the certificate
    /// is then checked for the name `localhost`, unless the configuration
    /// names another with `ClientTlsConfig::domain_name` (which also
    /// replaces the host of a TCP target in the check).
    pub tls: Option<ClientTlsConfig>,
    /// Bound of [`Client::connect`] (default 10 s).
    pub connect_timeout: Duration,
    /// Bound of each unary call of the facade (default 30 s). Blob
    /// transfers are bounded by progress instead: a download
    /// ([`Client::get_blob`], and the payloads read through it) by each wait
    /// for its next chunk, an upload ([`Client::put_blob`], and the payloads
    /// written through it) by each wait to send its next chunk and then the
    /// wait for the sidecar's answer, not the whole transfer.
    pub call_timeout: Duration,
    /// Largest message sent or received (default 64 MiB, the sidecar's);
    /// a worker's stream keeps its batches of results and heartbeats under
    /// it (at most 16 MiB each). Set it to the sidecar's own bound
    /// (`--max-message-bytes`: 64 MiB by default, 32 MiB at the least): the
    /// sidecar sizes some answers to its own bound (a page of tasks with
    /// payloads, a poll's assignments: up to that bound less 1 MiB), and an
    /// answer over this bound fails on this side (tonic says OUT_OF_RANGE,
    /// "decoded message length too large"), which no retry fixes; a request
    /// over the sidecar's bound is refused there with RESOURCE_EXHAUSTED,
    /// which no retry fixes either. A bound just over 4 MiB, the largest
    /// inline payload, is not enough: a workflow's closing status with a
    /// 4 MiB inline result is 4 MiB and a few hundred bytes, a task with its
    /// payloads 8 MiB and more, a state document up to 16 MiB.
    pub max_message_bytes: usize,
    /// Keepalive: while a call is open (a worker's stream, a wait) and the
    /// connection is quiet, the client sends an HTTP/2 ping every interval
    /// and closes the connection when no ack comes within
    /// [`keepalive_timeout`](Options::keepalive_timeout), so that a sidecar
    /// that hangs (a stopped process, a frozen VM, a dead NAT entry) fails
    /// the open calls with UNAVAILABLE instead of leaving them waiting
    /// forever, and a worker reconnects. No pings are sent while no call is
    /// open. Default 30 s; `None` (or zero) turns keepalive off.
    pub keepalive_interval: Option<Duration>,
    /// How long to wait for a keepalive ping's ack (default 10 s; zero is
    /// the default).
    pub keepalive_timeout: Duration,
    /// How long a wait ([`crate::WorkflowHandle::wait`], `result`,
    /// `result_bytes`) keeps resuming its dropped stream while the sidecar
    /// does not answer (default [`DEFAULT_RECONNECT_WINDOW`], 60 s, as the
    /// Python SDK's `reconnect_window`): a restart shorter than this goes
    /// unnoticed; once this long has passed since the stream dropped without
    /// an answer, the wait returns the last UNAVAILABLE error. It bounds the
    /// silence, not the wait: a workflow that runs for hours is waited for
    /// as long as the wait's timeout allows, so long as the sidecar answers.
    /// It must not be zero ([`Client::connect`] refuses it with
    /// INVALID_ARGUMENT, naming the field `reconnect_window`); a very long
    /// one (`Duration::MAX`) resumes for as long as the wait's timeout
    /// allows.
    pub reconnect_window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token: None,
            tls: None,
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            keepalive_interval: Some(DEFAULT_KEEPALIVE_INTERVAL),
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            reconnect_window: DEFAULT_RECONNECT_WINDOW,
        }
    }
}

impl Options {
    /// The keepalive interval and timeout in effect, `None` when off.
    /// Each at most 30 years: hyper adds them to an `Instant`, which
    /// overflowed (a panic in the connection's task) at `Duration::MAX`.
    fn keepalive(&self) -> Option<(Duration, Duration)> {
        let interval = self.keepalive_interval.filter(|d| !d.is_zero())?;
        let timeout = if self.keepalive_timeout.is_zero() {
            DEFAULT_KEEPALIVE_TIMEOUT
        } else {
            self.keepalive_timeout
        };
        Some((capped(interval), capped(timeout)))
    }

    /// The endpoint's connect timeout, flow-control windows and keepalive
    /// (pings only while a call is open).
    fn configure(&self, endpoint: Endpoint) -> Endpoint {
        let endpoint = endpoint
            .connect_timeout(capped(self.connect_timeout))
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
        match self.keepalive() {
            Some((interval, timeout)) => endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(false),
            None => endpoint,
        }
    }
}

/// Adds the bearer token to every call.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    header: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// The transport every raw stub runs on.
pub type Transport = InterceptedService<Channel, Auth>;

/// The generated stubs of every service, sharing the client's connection
/// (cheap to clone; a tonic stub needs `&mut self` to call).
#[derive(Clone, Debug)]
pub struct Raw {
    /// `are.v1.SchedulerService`.
    pub scheduler: SchedulerServiceClient<Transport>,
    /// `are.v1.WorkerService`.
    pub worker: WorkerServiceClient<Transport>,
    /// `are.v1.StateService`.
    pub state: StateServiceClient<Transport>,
    /// `are.v1.CacheService`.
    pub cache: CacheServiceClient<Transport>,
    /// `are.v1.RouterService`.
    pub router: RouterServiceClient<Transport>,
    /// `are.v1.TraceService`.
    pub trace: TraceServiceClient<Transport>,
    /// `grpc.health.v1.Health`.
    pub health: HealthClient<Transport>,
}

/// A connection to one ARE sidecar, cheap to clone and safe to share.
///
/// Waits on workflows ([`crate::WorkflowHandle::wait`] and `result`) go over a
/// second connection that [`Client::connect`] opens: each holds a stream open
/// for as long as its workflow runs, and the sidecar serves 1,024 streams at
/// once on a connection, so on one connection a thousand pending waits would
/// hold up every other call of the client, a worker's stream included. Past
/// 1,024 waits, the next ones queue until streams free.
#[derive(Clone, Debug)]
pub struct Client {
    target: String,
    raw: Raw,
    /// The scheduler on the connection for waits (see above).
    watches: SchedulerServiceClient<Transport>,
    pub(crate) call_timeout: Duration,
    /// [`Options::max_message_bytes`]: a worker's stream cuts its batches
    /// below it.
    pub(crate) max_message_bytes: usize,
    /// [`Options::reconnect_window`]: how long a wait resumes a dropped
    /// stream while the sidecar does not answer.
    pub(crate) reconnect_window: Duration,
    /// The [`crate::Cache::get_or_call`] calls under way, shared by the
    /// clones of this client: concurrent callers of one question share one.
    pub(crate) flights: Arc<crate::cache::Flights>,
}

/// A channel to `target` (`host:port` or `unix:PATH`); `lazy` connects at the
/// first call instead of now (within `options.connect_timeout`).
async fn open_channel(target: &str, options: &Options, lazy: bool) -> Result<Channel> {
    let unavailable = |e: tonic::transport::Error| {
        Error::local(
            Code::Unavailable,
            "UNAVAILABLE",
            format!("no ARE sidecar answered at {target:?}: {e}"),
        )
        .with_source(e)
    };
    if let Some(path) = target.strip_prefix("unix:") {
        let path = path.trim_start_matches("//").to_string();
        // The sidecar serves TLS on its Unix socket as on TCP. A socket has
        // no host name: the certificate is checked for "localhost" (as gRPC's
        // own clients do for unix: targets) unless the TLS configuration
        // names another (`ClientTlsConfig::domain_name`).
        let endpoint = match options.tls.clone() {
            Some(tls) => options
                .configure(Endpoint::from_static("https://localhost"))
                .tls_config(tls)
                .map_err(unavailable)?,
            None => options.configure(Endpoint::from_static("http://localhost")),
        };
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        });
        if lazy {
            return Ok(endpoint.connect_with_connector_lazy(connector));
        }
        let connect = endpoint.connect_with_connector(connector);
        return bounded("connect", options.connect_timeout, async {
            connect.await.map_err(unavailable)
        })
        .await;
    }
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{target}")).map_err(|e| {
        Error::local(
            Code::InvalidArgument,
            "BAD_TARGET",
            format!("bad target {target:?}: {e}"),
        )
    })?;
    let mut endpoint = options.configure(endpoint).tcp_nodelay(true);
    if let Some(tls) = options.tls.clone() {
        endpoint = endpoint.tls_config(tls).map_err(unavailable)?;
    }
    if lazy {
        return Ok(endpoint.connect_lazy());
    }
    bounded("connect", options.connect_timeout, async {
        endpoint.connect().await.map_err(unavailable)
    })
    .await
}

macro_rules! stub {
    ($t:ident, $svc:expr, $n:expr) => {
        $t::new($svc.clone())
            .max_decoding_message_size($n)
            .max_encoding_message_size($n)
    };
}

impl Client {
    /// Connects to `target`, `host:port` or `unix:PATH`, within
    /// `options.connect_timeout`; an unreachable sidecar is UNAVAILABLE. A
    /// zero `options.reconnect_window` is INVALID_ARGUMENT (field
    /// `reconnect_window`), before anything is opened.
    pub async fn connect(target: &str, options: Options) -> Result<Client> {
        if options.reconnect_window.is_zero() {
            // Before any connection is opened, as the Python SDK's connect.
            let mut e = Error::local(
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
                "Options::reconnect_window must be positive, got 0s",
            );
            e.field_violations.push(FieldViolation {
                field: "reconnect_window".to_string(),
                description: "must be positive, got 0s".to_string(),
            });
            return Err(e);
        }
        let header = match &options.token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                Error::local(
                    Code::InvalidArgument,
                    "BAD_TOKEN",
                    "the token is not printable ASCII",
                )
            })?),
            None => None,
        };
        let channel = open_channel(target, &options, false).await?;
        // Connected at the first wait (see Client).
        let watch_channel = open_channel(target, &options, true).await?;
        let watches = InterceptedService::new(
            watch_channel,
            Auth {
                header: header.clone(),
            },
        );
        let svc = InterceptedService::new(channel, Auth { header });
        let n = options.max_message_bytes;
        let raw = Raw {
            scheduler: stub!(SchedulerServiceClient, svc, n),
            worker: stub!(WorkerServiceClient, svc, n),
            state: stub!(StateServiceClient, svc, n),
            cache: stub!(CacheServiceClient, svc, n),
            router: stub!(RouterServiceClient, svc, n),
            trace: stub!(TraceServiceClient, svc, n),
            health: stub!(HealthClient, svc, n),
        };
        Ok(Client {
            target: target.to_string(),
            raw,
            watches: stub!(SchedulerServiceClient, watches, n),
            call_timeout: options.call_timeout,
            max_message_bytes: n,
            reconnect_window: options.reconnect_window,
            flights: Arc::default(),
        })
    }

    /// The scheduler's stub on the connection for waits (see [`Client`]).
    pub(crate) fn watches(&self) -> SchedulerServiceClient<Transport> {
        self.watches.clone()
    }

    /// The target this client connected to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The generated stubs, for everything the facade does not cover.
    pub fn raw(&self) -> Raw {
        self.raw.clone()
    }

    /// The sidecar's overall health (`SERVING` once it accepts work).
    pub async fn health(&self) -> Result<ServingStatus> {
        let mut h = self.raw.health.clone();
        let resp = self
            .unary(
                "Health.Check",
                h.check(HealthCheckRequest {
                    service: String::new(),
                }),
            )
            .await?;
        Ok(ServingStatus::try_from(resp.status).unwrap_or(ServingStatus::Unknown))
    }

    /// Runs one unary call bounded by the call timeout.
    pub(crate) async fn unary<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        bounded(what, self.call_timeout, async {
            Ok(fut.await?.into_inner())
        })
        .await
    }

    /// Reads a payload's bytes, fetching a blob reference from the blob store.
    pub async fn payload_bytes(&self, payload: Option<&pb::Payload>) -> Result<Vec<u8>> {
        match payload.and_then(|p| p.content.as_ref()) {
            None => Ok(Vec::new()),
            Some(pb::payload::Content::Data(d)) => Ok(d.clone()),
            Some(pb::payload::Content::Blob(b)) => self.get_blob(&b.sha256).await,
        }
    }

    /// Reads a whole blob (GetBlob stream, chunks of at most 1 MiB),
    /// bounded by progress rather than in total: the call timeout bounds
    /// opening the stream and then each wait for the next chunk, so a large
    /// blob over a slow link is read to its end as long as chunks keep
    /// coming, and a download that stalls fails (DEADLINE_EXCEEDED, reason
    /// `TIMEOUT`) one call timeout after its last chunk.
    pub async fn get_blob(&self, sha256: &str) -> Result<Vec<u8>> {
        let mut state = self.raw.state.clone();
        let req = pb::GetBlobRequest {
            sha256: sha256.to_string(),
            ..Default::default()
        };
        let mut stream = bounded("GetBlob", self.call_timeout, async {
            Ok(state.get_blob(req).await?.into_inner())
        })
        .await?;
        let mut out = Vec::new();
        loop {
            let next = bounded(
                "GetBlob (waiting for its next chunk)",
                self.call_timeout,
                async { Ok(stream.message().await?) },
            )
            .await?;
            let Some(msg) = next else {
                return Ok(out);
            };
            if out.is_empty() {
                // The first message carries the blob's size: one allocation
                // (up to 256 MiB, the contract's largest blob).
                if let Some(size) = msg.blob.as_ref().map(|b| b.size_bytes) {
                    if size > 0 && size <= MAX_BLOB_BYTES {
                        out.reserve_exact(size as usize);
                    }
                }
            }
            out.extend_from_slice(&msg.chunk);
        }
    }

    /// Stores a blob (PutBlob stream, 1 MiB chunks), owned by `workflow_id`
    /// when not empty. Bounded by progress rather than in total, as
    /// [`Client::get_blob`] is: the call timeout bounds each wait to hand the
    /// stream its next chunk (the HTTP/2 flow control lets one in only as
    /// the sidecar takes what came before; the first wait includes opening
    /// the stream), and then the wait for the sidecar's answer once the last
    /// chunk is sent. So a large blob over a slow link is stored as long as
    /// the sidecar keeps taking it, and an upload that stalls fails
    /// (DEADLINE_EXCEEDED, reason `TIMEOUT`) one call timeout after its last
    /// progress. At most a chunk or two of it is copied at a time.
    pub async fn put_blob(
        &self,
        data: Vec<u8>,
        content_type: &str,
        workflow_id: &str,
    ) -> Result<pb::BlobRef> {
        use pb::put_blob_request::Message;
        let size = data.len();
        let header = pb::PutBlobRequest {
            message: Some(Message::Header(pb::BlobHeader {
                content_type: content_type.to_string(),
                size_bytes: size as i64,
                sha256: String::new(),
                workflow_id: workflow_id.to_string(),
            })),
        };
        // A channel of one: a send waits until the stream took the message
        // before, which it does as the flow control lets it send.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut state = self.raw.state.clone();
        let call = state.put_blob(tokio_stream::wrappers::ReceiverStream::new(rx));
        tokio::pin!(call);
        let chunks = data.chunks(BLOB_CHUNK_BYTES).map(|c| pb::PutBlobRequest {
            message: Some(Message::Chunk(c.to_vec())),
        });
        let answer: Result<pb::PutBlobResponse> = async {
            let mut sent = 0;
            for message in std::iter::once(header).chain(chunks) {
                let n = match &message.message {
                    Some(Message::Chunk(c)) => c.len(),
                    _ => 0,
                };
                let send = tokio::time::timeout(capped(self.call_timeout), tx.send(message));
                tokio::select! {
                    // The call ended before taking every chunk: its answer
                    // (an error: the sidecar answers once the stream ends).
                    ended = &mut call => return Ok(ended?.into_inner()),
                    accepted = send => match accepted {
                        Ok(Ok(())) => sent += n,
                        // The stream is gone: the call's own error says why.
                        Ok(Err(_)) => break,
                        Err(_) => {
                            let what = format!(
                                "PutBlob of {size} bytes (waiting to send more after {sent} bytes)"
                            );
                            return Err(Error::timeout(what, self.call_timeout));
                        }
                    },
                }
            }
            drop(tx); // the end of the stream
            bounded(
                "PutBlob (waiting for the answer after its last chunk)",
                self.call_timeout,
                async { Ok((&mut call).await?.into_inner()) },
            )
            .await
        }
        .await;
        answer?.blob.ok_or_else(|| {
            Error::local(Code::Internal, "EMPTY_RESPONSE", "PutBlob returned no blob")
        })
    }

    /// A payload of `data`: inline up to [`MAX_INLINE_BYTES`], else a blob.
    pub async fn inline_or_blob(
        &self,
        data: Vec<u8>,
        content_type: &str,
        workflow_id: &str,
    ) -> Result<pb::Payload> {
        let content = if data.len() <= MAX_INLINE_BYTES {
            pb::payload::Content::Data(data)
        } else {
            pb::payload::Content::Blob(self.put_blob(data, content_type, workflow_id).await?)
        };
        Ok(pb::Payload {
            content: Some(content),
            content_type: content_type.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_options() {
        let secs = Duration::from_secs;
        assert_eq!(Options::default().keepalive(), Some((secs(30), secs(10))));
        let custom = Options {
            keepalive_interval: Some(secs(15)),
            keepalive_timeout: secs(5),
            ..Default::default()
        };
        assert_eq!(custom.keepalive(), Some((secs(15), secs(5))));
        let default_timeout = Options {
            keepalive_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(default_timeout.keepalive(), Some((secs(30), secs(10))));
        for off in [None, Some(Duration::ZERO)] {
            let options = Options {
                keepalive_interval: off,
                ..Default::default()
            };
            assert_eq!(options.keepalive(), None);
        }
        // hyper adds them to an Instant: at most 30 years.
        let forever = Options {
            keepalive_interval: Some(Duration::MAX),
            keepalive_timeout: Duration::MAX,
            ..Default::default()
        };
        let longest = crate::time::LONGEST_WAIT;
        assert_eq!(forever.keepalive(), Some((longest, longest)));
    }

    /// A zero reconnect window is refused before anything is opened, as the
    /// Python SDK's connect does (nothing listens at the target).
    #[tokio::test]
    async fn a_zero_reconnect_window_is_refused_at_connect() {
        let options = Options {
            reconnect_window: Duration::ZERO,
            ..Default::default()
        };
        let e = Client::connect("127.0.0.1:1", options).await.unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{e}");
        assert_eq!(
            e.field("reconnect_window"),
            Some("must be positive, got 0s")
        );
        assert_eq!(
            Options::default().reconnect_window,
            DEFAULT_RECONNECT_WINDOW
        );
    }
}

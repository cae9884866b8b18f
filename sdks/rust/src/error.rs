//! The one error type of the SDK.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

use crate::pb;

/// Domain of the errors this SDK raises itself (a timeout it enforced, a
/// workflow that closed without success, a payload that is not JSON).
pub const SDK_DOMAIN: &str = "are-sdk";

/// One invalid field of a request: its path (`spec.tasks[1].depends_on[0]`)
/// and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// A failed call: the gRPC status the sidecar answered, decoded from its rich
/// details (`google.rpc.ErrorInfo`, `BadRequest`, `RetryInfo`), or an error
/// the SDK raised itself (then `domain` is [`SDK_DOMAIN`]). A clone shares
/// the source error (callers sharing one `Cache::get_or_call` get clones).
#[derive(Clone, Debug)]
pub struct Error {
    /// The gRPC status code (UNAVAILABLE also for a connection that broke
    /// during the call, see [`Error::from_status`]).
    pub code: Code,
    /// The human-readable message.
    pub message: String,
    /// The machine-readable ErrorInfo reason, such as `WORKFLOW_NOT_FOUND`
    /// ("" when the status carried none).
    pub reason: String,
    /// The ErrorInfo domain (`are.v1` for the sidecar).
    pub domain: String,
    /// The ErrorInfo metadata: identifiers to act on (`workflow_id`, `field`, ...).
    pub metadata: HashMap<String, String>,
    /// The invalid fields named by a `BadRequest` detail.
    pub field_violations: Vec<FieldViolation>,
    /// The `RetryInfo` delay after which a retry is likely to succeed.
    pub retry_delay: Option<Duration>,
    /// The closing status of a workflow that did not complete
    /// (reason `WORKFLOW_FAILED` or `WORKFLOW_CANCELLED`), from `result`.
    pub workflow: Option<Box<pb::Workflow>>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The SDK's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error raised by the SDK itself.
    pub fn local(code: Code, reason: &str, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            reason: reason.to_string(),
            domain: SDK_DOMAIN.to_string(),
            metadata: HashMap::new(),
            field_violations: Vec::new(),
            retry_delay: None,
            workflow: None,
            source: None,
        }
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// Decodes a status with its details.
    ///
    /// A connection that breaks during a call is UNAVAILABLE, as gRPC
    /// defines it and as the sidecar's other SDKs report it: tonic reports
    /// it as UNKNOWN ("h2 protocol error: error reading a body from
    /// connection"), a status the sidecar never sent, recognised by the
    /// local cause it carries (a status from the sidecar has none); so a
    /// wait resumes and a worker's report is retried after it, as after any
    /// other UNAVAILABLE.
    pub fn from_status(status: tonic::Status) -> Self {
        let broken = status.code() == Code::Unknown && std::error::Error::source(&status).is_some();
        let code = if broken {
            Code::Unavailable
        } else {
            status.code()
        };
        let mut e = Error::local(code, "", status.message());
        e.domain.clear();
        {
            let details = status.get_error_details();
            if let Some(info) = details.error_info() {
                e.reason = info.reason.clone();
                e.domain = info.domain.clone();
                e.metadata = info.metadata.clone();
            }
            if let Some(bad) = details.bad_request() {
                e.field_violations = bad
                    .field_violations
                    .iter()
                    .map(|v| FieldViolation {
                        field: v.field.clone(),
                        description: v.description.clone(),
                    })
                    .collect();
            }
            if let Some(retry) = details.retry_info() {
                e.retry_delay = retry.retry_delay;
            }
        }
        e.with_source(status)
    }

    /// The description of a violation of `field`, if the error names it.
    pub fn field(&self, field: &str) -> Option<&str> {
        self.field_violations
            .iter()
            .find(|v| v.field == field)
            .map(|v| v.description.as_str())
    }

    /// Whether a retry may succeed (UNAVAILABLE, or backpressure with a delay).
    pub fn is_retryable(&self) -> bool {
        self.code == Code::Unavailable
            || (self.code == Code::ResourceExhausted && self.retry_delay.is_some())
    }

    pub(crate) fn timeout(what: impl fmt::Display, after: Duration) -> Self {
        Error::local(
            Code::DeadlineExceeded,
            "TIMEOUT",
            format!("{what} did not finish within {after:?}"),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)?;
        if !self.reason.is_empty() {
            write!(f, " [{}]", self.reason)?;
        }
        for v in &self.field_violations {
            write!(f, "; {}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::from_status(status)
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::local(
            Code::InvalidArgument,
            "INVALID_JSON",
            format!("payload is not valid JSON: {err}"),
        )
        .with_source(err)
    }
}

/// Runs `fut` for at most `after`, as a DEADLINE_EXCEEDED [`Error`] otherwise.
pub(crate) async fn bounded<T>(
    what: &str,
    after: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::timeout(what, after)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn decodes_every_detail() {
        let mut details = ErrorDetails::with_error_info(
            "POOL_QUEUE_FULL",
            "are.v1",
            [("pool".to_string(), "default".to_string())],
        );
        details.add_bad_request_violation("spec.tasks[0]", "queue full");
        details.set_retry_info(Some(Duration::from_millis(1500)));
        let status = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "pool default is full",
            details,
        );
        let e = Error::from(status);
        assert_eq!(e.code, Code::ResourceExhausted);
        assert_eq!(e.reason, "POOL_QUEUE_FULL");
        assert_eq!(e.domain, "are.v1");
        assert_eq!(e.metadata["pool"], "default");
        assert_eq!(e.retry_delay, Some(Duration::from_millis(1500)));
        assert_eq!(e.field("spec.tasks[0]"), Some("queue full"));
        assert!(e.is_retryable());
        assert_eq!(
            e.to_string(),
            "ResourceExhausted: pool default is full [POOL_QUEUE_FULL]; spec.tasks[0]: queue full"
        );
    }

    #[test]
    fn a_broken_connection_is_unavailable() {
        let broken = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let status = tonic::Status::from_error(Box::new(broken));
        assert_eq!(status.code(), Code::Unknown);
        let e = Error::from(status);
        assert_eq!(e.code, Code::Unavailable);
        assert!(e.is_retryable());
        // An UNKNOWN the peer sent stays UNKNOWN.
        let sent = Error::from(tonic::Status::unknown("the handler raised"));
        assert_eq!(sent.code, Code::Unknown);
    }
}

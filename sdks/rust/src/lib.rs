//! A thin async Rust client of ARE, the Agent Runtime Environment sidecar.
//!
//! ```no_run
//! use std::time::Duration;
//! use are_sdk::{Client, Options, TaskBuilder, WorkflowBuilder};
//! # async fn demo() -> are_sdk::Result<()> {
//! let client = Client::connect("127.0.0.1:50051", Options::default()).await?;
//! let spec = WorkflowBuilder::new("pipeline")
//!     .task(TaskBuilder::new("research", "research").input(serde_json::json!({"topic": "caches"})))
//!     .task(TaskBuilder::new("write", "write").depends_on(["research"]));
//! let handle = client.submit(spec).await?; // returns at once
//! let result: serde_json::Value = handle.result(Duration::from_secs(60)).await?;
//! # Ok(()) }
//! ```
//!
//! Layers: the generated messages in [`pb`] and stubs in [`Raw`]; the facade
//! ([`Client`], [`WorkflowHandle`], [`Worker`], [`Cache`], [`State`], [`Router`],
//! [`Approval`], [`EventStream`]); one [`Error`].
#![warn(missing_docs)]

/// The `are.v1` messages and gRPC clients, generated from `proto/` at build time.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("are.v1");
}

mod approval;
mod cache;
mod client;
mod error;
mod json;
mod router;
mod state;
pub mod testing;
mod time;
mod trace;
mod worker;
mod workflow;

pub use approval::{Approval, ApprovalFilter, ApprovalPage};
pub use cache::{Cache, CacheHit, CacheOptions, CachedResult, GetOrCallError};
pub use client::{
    Auth, Client, Options, Raw, Transport, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_RECONNECT_WINDOW, MAX_INLINE_BYTES,
};
pub use error::{Error, FieldViolation, Result, SDK_DOMAIN};
pub use pb::{AgentSource, ApprovalDecision, RouteMode};
pub use router::{
    AgentCard, AgentFilter, AgentPage, ModelCatalog, ModelEstimate, ModelRoute, ModelRouteOptions,
    ModelSpec, Outcome, OutcomeOptions, RouteCandidate, RouteOptions, RouteQuery, RouteResult,
    Router,
};
pub use state::{
    Checkpoint, CheckpointPage, Fork, ForkOptions, HydrateOptions, Hydration, MemoryHit,
    MemoryNote, MemoryQuery, Patch, PatchOp, PatchOptions, State, StateSnapshot, WorkflowState,
};
pub use tokio_util::sync::CancellationToken;
pub use tonic::transport::ClientTlsConfig;
pub use tonic::Code;
pub use tonic_health::pb::health_check_response::ServingStatus;
pub use trace::{EventPage, EventStream};
pub use worker::{
    AttributeValue, Attributes, CancelReason, Dependency, LlmCallOptions, Task, TaskCause,
    TaskError, ToolCallOptions, Worker, WorkerOptions, WorkerStats, WorkerTransport,
    COMPLETION_REFUSED,
};
pub use workflow::{
    is_closed, json_payload, TaskBuilder, WorkflowBuilder, WorkflowHandle, JSON_CONTENT_TYPE,
};

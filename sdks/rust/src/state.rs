//! A workflow's state: one versioned JSON document read by JSON Pointer and
//! patched with optimistic concurrency, its checkpoints and forks, and its
//! memory of notes (`client.state()`).
//!
//! ```no_run
//! use are_sdk::{Client, HydrateOptions, Patch, PatchOp, PatchOptions};
//! use serde_json::json;
//! # async fn demo(client: Client, workflow_id: &str) -> are_sdk::Result<()> {
//! let state = client.state().for_workflow(workflow_id);
//! let v = state.patch(json!({"plan": {"steps": ["search"]}}), &PatchOptions::default()).await?;
//! state
//!     .patch(
//!         Patch::ops([PatchOp::set("/plan/steps/-", json!("book"))]),
//!         &PatchOptions { expected_version: Some(v), ..Default::default() },
//!     )
//!     .await?; // ABORTED, reason STATE_VERSION_MISMATCH, if someone wrote in between
//! let snap = state.get(&["/plan/steps", "/budget"], None).await?;
//! assert_eq!(snap.get("/plan/steps"), Some(&json!(["search", "book"])));
//! state.add_memory(vec!["the user prefers aisle seats".into()]).await?;
//! let notes = state.hydrate_memory("seat preference", &HydrateOptions::default()).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Result;
use crate::pb;
use crate::{Client, Task};

fn time(stamp: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    stamp.and_then(|t| SystemTime::try_from(t).ok())
}

/// Values read from one version of a state document.
#[derive(Clone, Debug)]
pub struct StateSnapshot {
    /// The version read.
    pub version: i64,
    /// When that version was written.
    pub update_time: Option<SystemTime>,
    /// The decoded values of the paths that resolved, in request order
    /// (path `""` is the whole document).
    pub values: Vec<(String, Value)>,
    /// The requested paths that did not resolve, in request order.
    pub missing_paths: Vec<String>,
}

impl StateSnapshot {
    /// The value at `path`, if it resolved.
    pub fn get(&self, path: &str) -> Option<&Value> {
        self.values.iter().find(|(p, _)| p == path).map(|(_, v)| v)
    }

    /// The value at `path` decoded into `T`; `None` if it did not resolve.
    /// (A `serde_json::Error` converts into an [`Error`](crate::Error) with `?`.)
    pub fn decode<T: DeserializeOwned>(&self, path: &str) -> serde_json::Result<Option<T>> {
        match self.get(path) {
            None => Ok(None),
            Some(v) => Ok(Some(crate::json::from_value(v)?)),
        }
    }
}

/// One JSON-pointer operation of a [`Patch`].
#[derive(Clone, Debug, PartialEq)]
pub enum PatchOp {
    /// Sets the value at a JSON Pointer (`/list/-` appends).
    Set {
        /// The JSON Pointer (RFC 6901).
        path: String,
        /// The value.
        value: Value,
    },
    /// Removes the value at a JSON Pointer.
    Remove {
        /// The JSON Pointer (RFC 6901).
        path: String,
    },
}

impl PatchOp {
    /// Sets `value` at `path`.
    pub fn set(path: &str, value: Value) -> Self {
        PatchOp::Set {
            path: path.to_string(),
            value,
        }
    }

    /// Removes the value at `path`.
    pub fn remove(path: &str) -> Self {
        PatchOp::Remove {
            path: path.to_string(),
        }
    }
}

/// One change to a state document, applied all or nothing as one new version.
/// A JSON value converts into a merge patch.
#[derive(Clone, Debug, PartialEq)]
pub enum Patch {
    /// A JSON Merge Patch (RFC 7386): an object whose members replace, add or
    /// (when null) remove members of the document.
    Merge(Value),
    /// JSON-pointer operations (1 to 1,000), applied in order.
    Operations(Vec<PatchOp>),
}

impl Patch {
    /// A JSON Merge Patch.
    pub fn merge(value: Value) -> Self {
        Patch::Merge(value)
    }

    /// A list of JSON-pointer operations.
    pub fn ops(ops: impl IntoIterator<Item = PatchOp>) -> Self {
        Patch::Operations(ops.into_iter().collect())
    }

    fn into_pb(self) -> pb::StatePatch {
        use pb::state_patch::Patch as P;
        let patch = match self {
            Patch::Merge(v) => P::MergePatchJson(crate::json::to_vec(&v)),
            Patch::Operations(ops) => P::Operations(pb::PatchOperationList {
                operations: ops
                    .into_iter()
                    .map(|op| match op {
                        PatchOp::Set { path, value } => pb::PatchOperation {
                            op: pb::PatchOperationType::Set as i32,
                            path,
                            value_json: crate::json::to_vec(&value),
                        },
                        PatchOp::Remove { path } => pb::PatchOperation {
                            op: pb::PatchOperationType::Remove as i32,
                            path,
                            value_json: Vec::new(),
                        },
                    })
                    .collect(),
            }),
        };
        pb::StatePatch { patch: Some(patch) }
    }
}

impl From<Value> for Patch {
    fn from(value: Value) -> Self {
        Patch::Merge(value)
    }
}

impl From<Vec<PatchOp>> for Patch {
    fn from(ops: Vec<PatchOp>) -> Self {
        Patch::Operations(ops)
    }
}

/// Options of a patch.
#[derive(Clone, Debug, Default)]
pub struct PatchOptions {
    /// Apply only if this is the current version, else the error is ABORTED
    /// with reason `STATE_VERSION_MISMATCH` (optimistic concurrency).
    pub expected_version: Option<i64>,
    /// Who writes, for the record, when not a task (at most 256 characters).
    pub writer: String,
    /// The task on whose behalf a worker writes; the worker must hold the
    /// attempt (else FAILED_PRECONDITION, reason `TASK_NOT_HELD`).
    pub task_id: String,
    /// The attempt of `task_id`.
    pub attempt: i32,
}

/// One retained version of a state document.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The version, from 1 (the initial state).
    pub version: i64,
    /// When it was written.
    pub create_time: Option<SystemTime>,
    /// The task that wrote it, if a task did.
    pub task_id: String,
    /// The attempt of that task.
    pub attempt: i32,
    /// Who wrote it otherwise (`submit`, `fork`, or a patch's writer).
    pub writer: String,
    /// The size of the document at this version.
    pub size_bytes: i64,
    /// The sequence of the event that recorded the write.
    pub event_sequence: u64,
}

/// One page of checkpoints, newest first.
#[derive(Clone, Debug)]
pub struct CheckpointPage {
    /// The checkpoints of this page.
    pub checkpoints: Vec<Checkpoint>,
    /// The token of the next page; empty on the last page.
    pub next_page_token: String,
    /// The oldest version still retained.
    pub oldest_version: i64,
    /// The latest version.
    pub latest_version: i64,
}

/// Options of a fork.
#[derive(Clone, Debug, Default)]
pub struct ForkOptions {
    /// The new workflow's id; empty means generated.
    pub new_workflow_id: String,
    /// Tasks to run again although terminal at the checkpoint (with their dependents).
    pub rerun_task_ids: Vec<String>,
    /// Labels of the new workflow; empty means the source's.
    pub labels: HashMap<String, String>,
    /// An optional idempotency key.
    pub request_id: String,
}

/// The workflow a fork created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fork {
    /// The new workflow's id.
    pub workflow_id: String,
    /// The state version it started from (resolved when 0 was asked).
    pub source_version: i64,
}

/// A note to add to a workflow's memory: text and/or a vector (text alone is
/// embedded by the sidecar), metadata, an optional payload. A string converts
/// into a text note.
#[derive(Clone, Debug, Default)]
pub struct MemoryNote {
    /// The text, at most 64 KiB.
    pub text: String,
    /// The embedding; `None` lets the sidecar embed the text.
    pub vector: Option<Vec<f32>>,
    /// Metadata for filtering.
    pub metadata: HashMap<String, String>,
    /// A payload stored and returned with the note (at most 64 KiB inline).
    pub content: Option<pb::Payload>,
}

impl From<&str> for MemoryNote {
    fn from(text: &str) -> Self {
        MemoryNote {
            text: text.to_string(),
            ..Default::default()
        }
    }
}

impl From<String> for MemoryNote {
    fn from(text: String) -> Self {
        MemoryNote {
            text,
            ..Default::default()
        }
    }
}

/// The query of a hydration: text (embedded by the sidecar) or a vector.
#[derive(Clone, Debug, PartialEq)]
pub enum MemoryQuery {
    /// Query text.
    Text(String),
    /// A query vector of the memory's dimension.
    Vector(Vec<f32>),
}

impl From<&str> for MemoryQuery {
    fn from(text: &str) -> Self {
        MemoryQuery::Text(text.to_string())
    }
}

impl From<String> for MemoryQuery {
    fn from(text: String) -> Self {
        MemoryQuery::Text(text)
    }
}

impl From<Vec<f32>> for MemoryQuery {
    fn from(vector: Vec<f32>) -> Self {
        MemoryQuery::Vector(vector)
    }
}

/// Options of a hydration; zero values are the sidecar's defaults.
#[derive(Clone, Debug, Default)]
pub struct HydrateOptions {
    /// The most notes, 1 to 100 (0: 10).
    pub top_k: i32,
    /// Only notes having every one of these metadata entries (at most 8).
    pub metadata: HashMap<String, String>,
    /// Budget of text plus inline content bytes (0: 64 KiB; at most 4 MiB).
    pub max_bytes: i64,
    /// Only notes at least this similar (cosine, in [-1, 1]).
    pub min_similarity: Option<f64>,
    /// Return the notes' vectors too.
    pub include_vectors: bool,
}

/// A note returned by a hydration.
#[derive(Clone, Debug)]
pub struct MemoryHit {
    /// The note's id.
    pub memory_id: String,
    /// Its text.
    pub text: String,
    /// Its cosine similarity to the query.
    pub similarity: f64,
    /// Its metadata.
    pub metadata: HashMap<String, String>,
    /// When it was added.
    pub create_time: Option<SystemTime>,
    /// Its payload, if it has one.
    pub content: Option<pb::Payload>,
    /// Its vector, when asked for.
    pub vector: Option<Vec<f32>>,
}

/// The notes a hydration chose, best first.
#[derive(Clone, Debug)]
pub struct Hydration {
    /// The notes, best first.
    pub hits: Vec<MemoryHit>,
    /// The bytes of text and content returned.
    pub total_bytes: i64,
    /// True when some relevant notes were skipped for the byte budget.
    pub truncated: bool,
}

impl Hydration {
    /// The notes' texts, best first (ready for a prompt).
    pub fn texts(&self) -> Vec<&str> {
        self.hits.iter().map(|h| h.text.as_str()).collect()
    }
}

/// The state service: `client.state()`. Every call is bounded by the call timeout.
#[derive(Clone, Debug)]
pub struct State {
    client: Client,
}

impl Client {
    /// The state service (documents, checkpoints, forks, memory).
    pub fn state(&self) -> State {
        State {
            client: self.clone(),
        }
    }
}

impl State {
    /// A view on one workflow's state and memory.
    pub fn for_workflow(&self, workflow_id: &str) -> WorkflowState {
        WorkflowState {
            state: self.clone(),
            workflow_id: workflow_id.to_string(),
            task_id: String::new(),
            attempt: 0,
        }
    }

    /// A view for a worker handler: its task's workflow, with every patch
    /// recorded as written by the task's attempt.
    pub fn for_task(&self, task: &Task) -> WorkflowState {
        WorkflowState {
            state: self.clone(),
            workflow_id: task.workflow_id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
        }
    }

    /// Reads JSON-pointer `paths` (none: the whole document, path `""`) at
    /// `version` (`None`: the latest). Paths that do not resolve are listed
    /// in `missing_paths`, not errors.
    pub async fn get(
        &self,
        workflow_id: &str,
        paths: &[&str],
        version: Option<i64>,
    ) -> Result<StateSnapshot> {
        let mut stub = self.client.raw().state;
        let req = pb::GetStateRequest {
            workflow_id: workflow_id.to_string(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            version,
        };
        let resp = self.client.unary("GetState", stub.get_state(req)).await?;
        let values = resp
            .values
            .into_iter()
            .map(|v| Ok((v.path, crate::json::from_slice(&v.value_json)?)))
            .collect::<serde_json::Result<_>>()?;
        Ok(StateSnapshot {
            version: resp.version,
            update_time: time(resp.update_time),
            values,
            missing_paths: resp.missing_paths,
        })
    }

    /// Applies one patch (a JSON value is a merge patch) and returns the new
    /// version. With `options.expected_version`, a concurrent write makes the
    /// error ABORTED, reason `STATE_VERSION_MISMATCH`; on error nothing changes.
    pub async fn patch(
        &self,
        workflow_id: &str,
        patch: impl Into<Patch>,
        options: &PatchOptions,
    ) -> Result<i64> {
        let mut stub = self.client.raw().state;
        let req = pb::PatchStateRequest {
            workflow_id: workflow_id.to_string(),
            patch: Some(patch.into().into_pb()),
            expected_version: options.expected_version,
            task_id: options.task_id.clone(),
            attempt: options.attempt,
            writer: options.writer.clone(),
        };
        Ok(self
            .client
            .unary("PatchState", stub.patch_state(req))
            .await?
            .version)
    }

    /// One page of retained versions, newest first (`page_size` 0: 100, at
    /// most 1,000; `page_token` "" for the first page).
    pub async fn list_checkpoints(
        &self,
        workflow_id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<CheckpointPage> {
        let mut stub = self.client.raw().state;
        let req = pb::ListCheckpointsRequest {
            workflow_id: workflow_id.to_string(),
            page_size,
            page_token: page_token.to_string(),
        };
        let resp = self
            .client
            .unary("ListCheckpoints", stub.list_checkpoints(req))
            .await?;
        Ok(CheckpointPage {
            checkpoints: resp
                .checkpoints
                .into_iter()
                .map(|c| Checkpoint {
                    version: c.version,
                    create_time: time(c.create_time),
                    task_id: c.task_id,
                    attempt: c.attempt,
                    writer: c.writer,
                    size_bytes: c.size_bytes,
                    event_sequence: c.event_sequence,
                })
                .collect(),
            next_page_token: resp.next_page_token,
            oldest_version: resp.oldest_version,
            latest_version: resp.latest_version,
        })
    }

    /// At most `limit` retained versions, newest first, fetched page by page
    /// (each call bounded by the call timeout).
    pub async fn checkpoints(&self, workflow_id: &str, limit: usize) -> Result<Vec<Checkpoint>> {
        let mut out = Vec::new();
        let mut token = String::new();
        while out.len() < limit {
            let size = (limit - out.len()).min(1000) as i32;
            let page = self.list_checkpoints(workflow_id, size, &token).await?;
            out.extend(page.checkpoints);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Starts a new workflow from `version` (0: the latest) of another, open
    /// or closed.
    pub async fn fork(
        &self,
        workflow_id: &str,
        version: i64,
        options: &ForkOptions,
    ) -> Result<Fork> {
        let mut stub = self.client.raw().state;
        let req = pb::ForkWorkflowRequest {
            workflow_id: workflow_id.to_string(),
            version,
            new_workflow_id: options.new_workflow_id.clone(),
            rerun_task_ids: options.rerun_task_ids.clone(),
            labels: options.labels.clone(),
            request_id: options.request_id.clone(),
        };
        let resp = self
            .client
            .unary("ForkWorkflow", stub.fork_workflow(req))
            .await?;
        Ok(Fork {
            workflow_id: resp.workflow_id,
            source_version: resp.source_version,
        })
    }

    /// Stores notes (1 to 1,000) in a workflow's memory; returns their ids in order.
    pub async fn add_memory(
        &self,
        workflow_id: &str,
        notes: impl IntoIterator<Item = MemoryNote>,
    ) -> Result<Vec<String>> {
        let mut stub = self.client.raw().state;
        let req = pb::AddMemoryRequest {
            workflow_id: workflow_id.to_string(),
            entries: notes
                .into_iter()
                .map(|n| pb::MemoryEntry {
                    text: n.text,
                    vector: n.vector.map(|values| pb::Vector { values }),
                    metadata: n.metadata,
                    content: n.content,
                    ..Default::default()
                })
                .collect(),
        };
        Ok(self
            .client
            .unary("AddMemory", stub.add_memory(req))
            .await?
            .memory_ids)
    }

    /// The notes of a workflow's memory most relevant to `query` (text or a
    /// vector), best first, within the options' count and byte budget.
    pub async fn hydrate_memory(
        &self,
        workflow_id: &str,
        query: impl Into<MemoryQuery>,
        options: &HydrateOptions,
    ) -> Result<Hydration> {
        use pb::hydrate_memory_request::Query;
        let mut stub = self.client.raw().state;
        let req = pb::HydrateMemoryRequest {
            workflow_id: workflow_id.to_string(),
            query: Some(match query.into() {
                MemoryQuery::Text(t) => Query::Text(t),
                MemoryQuery::Vector(values) => Query::Vector(pb::Vector { values }),
            }),
            top_k: options.top_k,
            metadata_match: options.metadata.clone(),
            max_bytes: options.max_bytes,
            min_similarity: options.min_similarity,
            include_vectors: options.include_vectors,
        };
        let resp = self
            .client
            .unary("HydrateMemory", stub.hydrate_memory(req))
            .await?;
        Ok(Hydration {
            hits: resp
                .hits
                .into_iter()
                .map(|h| {
                    let e = h.entry.unwrap_or_default();
                    MemoryHit {
                        memory_id: e.memory_id,
                        text: e.text,
                        similarity: h.similarity,
                        metadata: e.metadata,
                        create_time: time(e.create_time),
                        content: e.content,
                        vector: e.vector.map(|v| v.values),
                    }
                })
                .collect(),
            total_bytes: resp.total_bytes,
            truncated: resp.truncated,
        })
    }
}

/// One workflow's state and memory, from [`State::for_workflow`] or
/// [`State::for_task`] (then patches are attributed to the task's attempt).
#[derive(Clone, Debug)]
pub struct WorkflowState {
    state: State,
    /// The workflow.
    pub workflow_id: String,
    /// The task patches are attributed to ("" for none).
    pub task_id: String,
    /// The attempt of that task.
    pub attempt: i32,
}

impl WorkflowState {
    /// Reads `paths` (none: the whole document) at `version` (`None`: latest).
    pub async fn get(&self, paths: &[&str], version: Option<i64>) -> Result<StateSnapshot> {
        self.state.get(&self.workflow_id, paths, version).await
    }

    /// The latest value at one path decoded into `T`; `None` if it does not resolve.
    pub async fn value<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        Ok(self.get(&[path], None).await?.decode(path)?)
    }

    /// Applies one patch and returns the new version; attributed to the bound
    /// task attempt unless `options` names a task.
    pub async fn patch(&self, patch: impl Into<Patch>, options: &PatchOptions) -> Result<i64> {
        let mut options = options.clone();
        if options.task_id.is_empty() && !self.task_id.is_empty() {
            options.task_id = self.task_id.clone();
            options.attempt = self.attempt;
        }
        self.state.patch(&self.workflow_id, patch, &options).await
    }

    /// At most `limit` retained versions, newest first.
    pub async fn checkpoints(&self, limit: usize) -> Result<Vec<Checkpoint>> {
        self.state.checkpoints(&self.workflow_id, limit).await
    }

    /// Forks this workflow from `version` (0: the latest).
    pub async fn fork(&self, version: i64, options: &ForkOptions) -> Result<Fork> {
        self.state.fork(&self.workflow_id, version, options).await
    }

    /// Stores notes in this workflow's memory; returns their ids in order.
    pub async fn add_memory(
        &self,
        notes: impl IntoIterator<Item = MemoryNote>,
    ) -> Result<Vec<String>> {
        self.state.add_memory(&self.workflow_id, notes).await
    }

    /// The notes most relevant to `query`, best first.
    pub async fn hydrate_memory(
        &self,
        query: impl Into<MemoryQuery>,
        options: &HydrateOptions,
    ) -> Result<Hydration> {
        self.state
            .hydrate_memory(&self.workflow_id, query, options)
            .await
    }
}

//! The semantic cache of LLM results: lookup, store and get-or-call.
//!
//! Responses are stored as JSON. An entry another SDK stored in another
//! content type (bytes, text) is read as its bytes: a lookup returns it with
//! `value: None`, and [`Cache::get_or_call`], whose call answers JSON, takes
//! it for a miss.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tonic::Code;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};
use crate::pb;
use crate::time::to_proto;
use crate::workflow::JSON_CONTENT_TYPE;
use crate::Client;

/// Options of a lookup or a store; the defaults are the namespace's.
#[derive(Clone, Debug, Default)]
pub struct CacheOptions {
    /// A vector the caller computed (namespaces with embedder "caller").
    pub vector: Option<Vec<f32>>,
    /// Least similarity of a semantic hit (lookup).
    pub threshold: Option<f64>,
    /// Oldest entry a lookup accepts.
    pub max_age: Option<Duration>,
    /// Only the exact tier (lookup).
    pub exact_only: bool,
    /// Time to live of a stored entry.
    pub ttl: Option<Duration>,
    /// Metadata stored with the entry.
    pub metadata: HashMap<String, String>,
    /// Usage the stored response cost (counted as saved on hits).
    pub usage: Option<pb::Usage>,
}

/// A cache hit.
#[derive(Clone, Debug)]
pub struct CacheHit {
    /// The entry's id.
    pub entry_id: String,
    /// Which tier answered (a `pb::CacheTier`).
    pub tier: i32,
    /// Cosine similarity (1 for an exact hit).
    pub similarity: f64,
    /// The cached response decoded from JSON (`null` when it is empty);
    /// `None` when it is not JSON: its content type is not a JSON one
    /// (another SDK stored bytes or text), or its text does not parse (or
    /// nests past 512 levels). Its bytes are in `data` either way.
    pub value: Option<serde_json::Value>,
    /// The cached response's bytes (fetched when stored as a blob).
    pub data: Vec<u8>,
    /// The cached response's content type: JSON when it is "",
    /// `application/json` or a `*+json` type (as the Python SDK reads it).
    pub content_type: String,
    /// The prompt that was stored.
    pub matched_prompt: String,
    /// The entry's metadata.
    pub metadata: HashMap<String, String>,
    /// The usage stored with the entry.
    pub usage: Option<pb::Usage>,
}

/// What [`Cache::get_or_call`] returns: the value, the hit when the cache
/// answered, and when the call answered instead, whether its answer was
/// stored (or why not). A store that fails does not fail `get_or_call`:
/// the answer paid for is returned all the same, and `stored` says it is
/// not cached (the other SDKs log that failure as a warning).
///
/// Concurrent callers that share one call ([`Cache::get_or_call`]) each get
/// a clone of the same result.
#[derive(Clone, Debug)]
pub struct CachedResult {
    /// The cached response on a hit, else the call's answer as a later hit
    /// will return it (encoded as JSON and decoded back).
    pub value: serde_json::Value,
    /// The entry that answered (its `value` is always `Some`); `None` when
    /// the call was made.
    pub hit: Option<CacheHit>,
    /// `None` on a hit; when the call was made, `Ok` with the id of the
    /// entry its answer was stored as, or `Err` with why it was not: the
    /// store's error (over the namespace's bounds, refused metadata, the
    /// sidecar busy or gone), or, when the lookup failed because the cache
    /// was down (no store is tried then), the lookup's.
    pub stored: Option<Result<String>>,
}

impl CachedResult {
    /// Whether the cache answered (and the call was not made).
    pub fn from_cache(&self) -> bool {
        self.hit.is_some()
    }

    /// Why the call's answer is not cached, if it was made and not stored.
    pub fn store_error(&self) -> Option<&Error> {
        self.stored.as_ref().and_then(|s| s.as_ref().err())
    }
}

/// The error of [`Cache::get_or_call`]: the call's own, or the cache's
/// (a lookup refused for what it asked, not an outage). Concurrent callers
/// that share one call each get a clone of the same error.
#[derive(Clone, Debug)]
pub enum GetOrCallError<E> {
    /// The call failed; nothing was stored.
    Call(E),
    /// The lookup was refused (an unknown namespace, a bad vector).
    Cache(Error),
}

impl<E: fmt::Display> fmt::Display for GetOrCallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetOrCallError::Call(e) => write!(f, "{e}"),
            GetOrCallError::Cache(e) => write!(f, "cache: {e}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for GetOrCallError<E> {}

/// The cache service: `client.cache()`.
#[derive(Clone, Debug)]
pub struct Cache {
    client: Client,
}

impl Client {
    /// The cache service.
    pub fn cache(&self) -> Cache {
        Cache {
            client: self.clone(),
        }
    }
}

impl Cache {
    /// Creates or updates a namespace; returns it and whether it was created.
    pub async fn put_namespace(
        &self,
        namespace: pb::CacheNamespace,
    ) -> Result<(pb::CacheNamespace, bool)> {
        let mut stub = self.client.raw().cache;
        let req = pb::PutNamespaceRequest {
            namespace: Some(namespace),
            update_mask: None,
        };
        let resp = self
            .client
            .unary("PutNamespace", stub.put_namespace(req))
            .await?;
        Ok((resp.namespace.unwrap_or_default(), resp.created))
    }

    /// Changes only the settings of an existing namespace that `fields` names
    /// (CacheNamespace field names: `similarity_threshold`, `default_ttl`,
    /// `max_entries`, `max_bytes`, `description`, `search_expansion`,
    /// `recall_target`), taking their values from `namespace`; the others keep
    /// theirs. [`Cache::put_namespace`] instead sets every mutable setting, and
    /// those left zero return to their defaults. A named field sent as zero
    /// means its default.
    ///
    /// Errors: NOT_FOUND, reason `NAMESPACE_NOT_FOUND`, when there is no such
    /// namespace; INVALID_ARGUMENT naming `update_mask` for a field that is not
    /// a mutable setting.
    pub async fn update_namespace(
        &self,
        namespace: pb::CacheNamespace,
        fields: &[&str],
    ) -> Result<pb::CacheNamespace> {
        let mut stub = self.client.raw().cache;
        let req = pb::PutNamespaceRequest {
            namespace: Some(namespace),
            update_mask: Some(prost_types::FieldMask {
                paths: fields.iter().map(|f| f.to_string()).collect(),
            }),
        };
        let resp = self
            .client
            .unary("PutNamespace", stub.put_namespace(req))
            .await?;
        Ok(resp.namespace.unwrap_or_default())
    }

    /// Deletes a namespace with its entries, counters and index; returns how
    /// many entries it held. The entries go first, a chunk per commit:
    /// meanwhile lookups still answer those not yet removed, while stores and
    /// settings changes fail with ABORTED, reason `NAMESPACE_DELETING`. Once
    /// it returns, the name is free ([`Cache::put_namespace`] creates it
    /// afresh) and no longer counts toward the sidecar's 1,000 namespaces.
    ///
    /// Errors: NOT_FOUND, reason `NAMESPACE_NOT_FOUND`; RESOURCE_EXHAUSTED,
    /// reason `RESOURCE_LIMIT`, when the storage is busy: the entries removed
    /// so far stay removed (metadata `removed_count`), the namespace stays,
    /// and calling again finishes the deletion.
    pub async fn delete_namespace(&self, namespace: &str) -> Result<i64> {
        let mut stub = self.client.raw().cache;
        let req = pb::DeleteNamespaceRequest {
            namespace: namespace.to_string(),
        };
        let resp = self
            .client
            .unary("DeleteNamespace", stub.delete_namespace(req))
            .await?;
        Ok(resp.removed_count)
    }

    /// Looks `prompt` up: the exact tier, then the semantic one; `None` on a miss.
    pub async fn lookup(
        &self,
        namespace: &str,
        prompt: &str,
        options: &CacheOptions,
    ) -> Result<Option<CacheHit>> {
        let mut stub = self.client.raw().cache;
        let req = pb::LookupCacheRequest {
            namespace: namespace.to_string(),
            prompt: prompt.to_string(),
            vector: options.vector.clone().map(|values| pb::Vector { values }),
            threshold: options.threshold,
            max_age: options.max_age.map(to_proto),
            exact_only: options.exact_only,
        };
        let resp = self
            .client
            .unary("LookupCache", stub.lookup_cache(req))
            .await?;
        if !resp.hit {
            return Ok(None);
        }
        let data = self.client.payload_bytes(resp.response.as_ref()).await?;
        let content_type = match &resp.response {
            Some(pb::Payload {
                content: Some(pb::payload::Content::Blob(blob)),
                content_type,
            }) if content_type.is_empty() => blob.content_type.clone(),
            Some(payload) => payload.content_type.clone(),
            None => String::new(),
        };
        Ok(Some(CacheHit {
            entry_id: resp.entry_id,
            tier: resp.tier,
            similarity: resp.similarity,
            value: decode(&data, &content_type),
            data,
            content_type,
            matched_prompt: resp.matched_prompt,
            metadata: resp.metadata,
            usage: resp.usage,
        }))
    }

    /// Stores a JSON response for `prompt`; returns the entry's id.
    pub async fn store(
        &self,
        namespace: &str,
        prompt: &str,
        value: &serde_json::Value,
        options: &CacheOptions,
    ) -> Result<String> {
        self.store_json(namespace, prompt, crate::json::to_vec(value), options)
            .await
    }

    /// Stores JSON `text` for `prompt`; returns the entry's id.
    async fn store_json(
        &self,
        namespace: &str,
        prompt: &str,
        text: Vec<u8>,
        options: &CacheOptions,
    ) -> Result<String> {
        let mut stub = self.client.raw().cache;
        let req = pb::StoreCacheRequest {
            namespace: namespace.to_string(),
            prompt: prompt.to_string(),
            vector: options.vector.clone().map(|values| pb::Vector { values }),
            response: Some(
                self.client
                    .inline_or_blob(text, JSON_CONTENT_TYPE, "")
                    .await?,
            ),
            ttl: options.ttl.map(to_proto),
            metadata: options.metadata.clone(),
            usage: options.usage,
        };
        Ok(self
            .client
            .unary("StoreCache", stub.store_cache(req))
            .await?
            .entry_id)
    }

    /// Returns the cached response for `prompt`, or calls `call` on a miss and
    /// stores what it returns (with its usage). Returns the value with the
    /// hit (`None` when `call` ran) and, when `call` ran, the stored entry's
    /// id or why its answer was not stored ([`CachedResult::stored`]). A
    /// failed call stores nothing. On a miss the value returned is the
    /// call's answer as a later hit will return it: encoded as JSON, as it
    /// is stored, and decoded back (as the Python SDK's `get_or_call`).
    ///
    /// Concurrent calls of one client (and its clones) that ask the same
    /// question share one lookup and one `call`, as in the Python, Go and
    /// TypeScript SDKs, so that five callers of a prompt that misses pay for
    /// one LLM call, not five: the same namespace, the same prompt (equal
    /// once normalised as the sidecar does: Unicode NFC, whitespace runs
    /// collapsed, trimmed), the same lookup options (`vector`, `threshold`,
    /// `max_age`, `exact_only`) and the same error type `E` (a caller is
    /// only ever handed an error of its own type). The first caller's `call`
    /// and other options (`ttl`, `metadata`, `usage`) are used, and every
    /// caller gets a clone of its result, or of its error (then nothing is
    /// stored). The shared lookup, call and store run in a task of their own
    /// (hence the `Send + 'static` bounds): a caller whose future is dropped
    /// (a timeout, a `select!`) stops waiting while the others still wait,
    /// and the task is aborted only when no caller waits for it any more; a
    /// call arriving after that starts a call of its own. Each shared call
    /// is forgotten the moment it ends (or is abandoned): nothing is kept
    /// for the questions answered. A panic of `call` panics every caller
    /// waiting for it.
    ///
    /// A hit that is not JSON (an entry another SDK stored as bytes or text,
    /// or JSON that does not parse: [`CacheHit::value`] is `None`) cannot be
    /// this call's answer, so it counts as a miss: `call` is made and its
    /// answer stored, replacing the entry when it was stored under the same
    /// prompt. [`Cache::lookup`] returns such an entry's bytes.
    ///
    /// A cache outage does not stop the call it stands in front of: when the
    /// lookup fails because the cache is down or busy (UNAVAILABLE,
    /// RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED), `call` is made and
    /// its answer returned, not stored (`stored` holds the lookup's error).
    /// And the answer paid for is returned even when storing it fails (over
    /// the namespace's bounds, the sidecar busy or gone): it is then not
    /// cached, and `stored` holds the store's error. Other lookup errors (an
    /// unknown namespace, a bad vector) are returned as
    /// [`GetOrCallError::Cache`], without a call.
    pub async fn get_or_call<F, Fut, E>(
        &self,
        namespace: &str,
        prompt: &str,
        options: &CacheOptions,
        call: F,
    ) -> std::result::Result<CachedResult, GetOrCallError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<(serde_json::Value, Option<pb::Usage>), E>>
            + Send
            + 'static,
        E: Clone + Send + Sync + 'static,
    {
        let flights = &self.client.flights;
        let key = FlightKey::of::<E>(namespace, prompt, options);
        let (id, mut answer) = {
            let mut under_way = flights.lock();
            match under_way.flights.get_mut(&key) {
                // Never one that has ended: a flight leaves the map before it lands.
                Some(flight) => {
                    flight.waiters += 1;
                    (flight.id, flight.answer.clone())
                }
                None => {
                    let id = under_way.next_id;
                    under_way.next_id += 1;
                    let (land, answer) = watch::channel(None);
                    let landing = Landing {
                        flights: flights.clone(),
                        key: key.clone(),
                        id,
                    };
                    let cache = self.clone();
                    let (namespace, prompt) = (namespace.to_string(), prompt.to_string());
                    let options = options.clone();
                    let task = tokio::spawn(async move {
                        let result = cache
                            .look_up_or_call(&namespace, &prompt, &options, call)
                            .await;
                        drop(landing); // forgotten before anyone sees it landed
                        let result: Answer = Arc::new(result);
                        land.send_replace(Some(result));
                    });
                    let flight = Flight {
                        id,
                        waiters: 1,
                        answer: answer.clone(),
                        task: task.abort_handle(),
                    };
                    under_way.flights.insert(key.clone(), flight);
                    (id, answer)
                }
            }
        };
        let waiting = Waiting {
            flights,
            key: &key,
            id,
        };
        let landed = answer
            .wait_for(Option::is_some)
            .await
            .map(|answer| answer.clone())
            .ok()
            .flatten();
        drop(waiting);
        let Some(landed) = landed else {
            // The task ended without an answer while callers waited: `call` panicked.
            panic!("the call of a get_or_call shared by concurrent callers panicked");
        };
        landed
            .downcast_ref::<std::result::Result<CachedResult, GetOrCallError<E>>>()
            .expect("a flight's key holds its error type")
            .clone()
    }

    /// The lookup, call and store of [`Cache::get_or_call`], shared by its
    /// concurrent callers.
    async fn look_up_or_call<F, Fut, E>(
        &self,
        namespace: &str,
        prompt: &str,
        options: &CacheOptions,
        call: F,
    ) -> std::result::Result<CachedResult, GetOrCallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<(serde_json::Value, Option<pb::Usage>), E>>,
    {
        match self.lookup(namespace, prompt, options).await {
            Ok(Some(hit)) => {
                if let Some(value) = hit.value.clone() {
                    return Ok(CachedResult {
                        value,
                        hit: Some(hit),
                        stored: None,
                    });
                }
                // Not JSON: not an answer this call could give (see get_or_call).
            }
            Ok(None) => {}
            Err(e) if cache_down(&e) => {
                let (value, _) = call().await.map_err(GetOrCallError::Call)?;
                let (value, _) = as_stored(value);
                return Ok(CachedResult {
                    value,
                    hit: None,
                    stored: Some(Err(e)),
                });
            }
            Err(e) => return Err(GetOrCallError::Cache(e)),
        }
        let (value, usage) = call().await.map_err(GetOrCallError::Call)?;
        let mut options = options.clone();
        if usage.is_some() {
            options.usage = usage;
        }
        // Encoded once, for the store and for the value returned.
        let (value, text) = as_stored(value);
        // Not cached is the worst a failed store does: the caller learns of
        // it from `stored`, and has the answer all the same.
        let stored = self.store_json(namespace, prompt, text, &options).await;
        Ok(CachedResult {
            value,
            hit: None,
            stored: Some(stored),
        })
    }
}

/// The [`Cache::get_or_call`] calls under way of a client and its clones, by
/// what decides their answer ([`FlightKey`]): one per distinct question
/// being answered now, removed when its call ends or the moment its last
/// caller gives up on it (as the other SDKs keep theirs).
#[derive(Default)]
pub(crate) struct Flights {
    inner: Mutex<UnderWay>,
}

#[derive(Default)]
struct UnderWay {
    flights: HashMap<FlightKey, Flight>,
    /// The id of the next flight: tells a flight from a later one of the
    /// same question.
    next_id: u64,
}

impl Flights {
    /// The calls under way. No code of the caller's runs under the lock, so
    /// a poisoned one (a panic elsewhere) is as good as any.
    fn lock(&self) -> MutexGuard<'_, UnderWay> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
impl Flights {
    /// How many calls are under way (tests check that none is left).
    pub(crate) fn len(&self) -> usize {
        self.lock().flights.len()
    }

    /// How many callers wait now for the shared call of a question (0: none
    /// under way): tests start concurrent callers and need to know when all
    /// have joined.
    pub(crate) fn waiters<E: 'static>(
        &self,
        namespace: &str,
        prompt: &str,
        options: &CacheOptions,
    ) -> usize {
        let key = FlightKey::of::<E>(namespace, prompt, options);
        self.lock().flights.get(&key).map_or(0, |f| f.waiters)
    }
}

impl fmt::Debug for Flights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flights")
            .field("under_way", &self.lock().flights.len())
            .finish()
    }
}

/// A shared call's result: the `Result<CachedResult, GetOrCallError<E>>` of
/// the `E` its key names.
type Answer = Arc<dyn Any + Send + Sync>;

/// A [`Cache::get_or_call`] under way, shared by the callers waiting for it.
struct Flight {
    id: u64,
    waiters: usize,
    /// `None` until the call lands; closed without a value if it panicked.
    answer: watch::Receiver<Option<Answer>>,
    task: AbortHandle,
}

/// What decides a [`Cache::get_or_call`]'s answer: the namespace, the
/// normalised prompt and the lookup options, as the Go SDK's key; and the
/// type of the call's error, which every caller sharing it is handed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FlightKey {
    namespace: String,
    prompt: String,
    /// The vector's and the threshold's bits: equal floats, equal keys.
    vector: Option<Vec<u32>>,
    threshold: Option<u64>,
    max_age: Option<Duration>,
    exact_only: bool,
    error: TypeId,
}

impl FlightKey {
    fn of<E: 'static>(namespace: &str, prompt: &str, options: &CacheOptions) -> FlightKey {
        FlightKey {
            namespace: namespace.to_string(),
            prompt: normalise_prompt(prompt),
            vector: options
                .vector
                .as_ref()
                .map(|v| v.iter().map(|x| x.to_bits()).collect()),
            threshold: options.threshold.map(f64::to_bits),
            max_age: options.max_age,
            exact_only: options.exact_only,
            error: TypeId::of::<E>(),
        }
    }
}

/// The prompt as the sidecar's exact tier keys it: Unicode NFC, runs of
/// whitespace (Python's `str.isspace`: Unicode White_Space and U+001C to
/// U+001F) collapsed to one space, trimmed.
fn normalise_prompt(prompt: &str) -> String {
    let nfc: String = prompt.nfc().collect();
    nfc.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Owned by a shared call's task: forgets the flight when the task ends,
/// whether it returned, panicked or was aborted.
struct Landing {
    flights: Arc<Flights>,
    key: FlightKey,
    id: u64,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut under_way = self.flights.lock();
        if under_way.flights.get(&self.key).map(|f| f.id) == Some(self.id) {
            under_way.flights.remove(&self.key);
        }
    }
}

/// A caller waiting for a shared call: when it stops waiting (the answer
/// came, or its future was dropped), it is no longer counted, and the last
/// caller to give up on a call still under way aborts it.
struct Waiting<'a> {
    flights: &'a Flights,
    key: &'a FlightKey,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let abandoned = {
            let mut under_way = self.flights.lock();
            match under_way.flights.get_mut(self.key) {
                Some(flight) if flight.id == self.id => {
                    flight.waiters -= 1;
                    if flight.waiters == 0 {
                        // Forgotten now, so that a caller arriving meanwhile
                        // starts its own call instead of joining an aborted one.
                        under_way.flights.remove(self.key).map(|f| f.task)
                    } else {
                        None
                    }
                }
                // It landed (and was forgotten) already.
                _ => None,
            }
        };
        // Outside the lock: the task's Landing takes it.
        if let Some(task) = abandoned {
            task.abort();
        }
    }
}

/// A cached response's value: its bytes decoded when its content type is
/// JSON and they parse (empty is `null`, as the Python SDK's `None`), else
/// `None`.
fn decode(data: &[u8], content_type: &str) -> Option<serde_json::Value> {
    if !crate::json::is_json_content_type(content_type) {
        return None;
    }
    if data.is_empty() {
        return Some(serde_json::Value::Null);
    }
    crate::json::from_slice(data).ok()
}

/// `value` as a hit will return it, with its JSON text: encoded and decoded
/// back. Text that does not decode (nested past 512 levels, which the
/// sidecar refuses to store anyway) leaves the value as it is.
fn as_stored(value: serde_json::Value) -> (serde_json::Value, Vec<u8>) {
    let text = crate::json::to_vec(&value);
    let value = crate::json::from_slice(&text).unwrap_or(value);
    (value, text)
}

/// Whether a lookup failed because the cache is down or busy, rather than
/// for what was asked.
fn cache_down(e: &Error) -> bool {
    matches!(
        e.code,
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted
    )
}

#[cfg(test)]
mod flights;

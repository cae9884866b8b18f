//! The semantic cache of LLM results: lookup, store and get-or-call.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use tonic::Code;

use crate::error::{Error, Result};
use crate::pb;
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
    /// The cached response, decoded from JSON.
    pub value: serde_json::Value,
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
#[derive(Debug)]
pub struct CachedResult {
    /// The cached response on a hit, else the call's answer.
    pub value: serde_json::Value,
    /// The entry that answered; `None` when the call was made.
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
/// (a lookup refused for what it asked, not an outage).
#[derive(Debug)]
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

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
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
        };
        let resp = self
            .client
            .unary("PutNamespace", stub.put_namespace(req))
            .await?;
        Ok((resp.namespace.unwrap_or_default(), resp.created))
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
            max_age: options.max_age.map(duration),
            exact_only: options.exact_only,
        };
        let resp = self
            .client
            .unary("LookupCache", stub.lookup_cache(req))
            .await?;
        if !resp.hit {
            return Ok(None);
        }
        let bytes = self.client.payload_bytes(resp.response.as_ref()).await?;
        Ok(Some(CacheHit {
            entry_id: resp.entry_id,
            tier: resp.tier,
            similarity: resp.similarity,
            value: crate::json::from_slice(&bytes)?,
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
        let mut stub = self.client.raw().cache;
        let req = pb::StoreCacheRequest {
            namespace: namespace.to_string(),
            prompt: prompt.to_string(),
            vector: options.vector.clone().map(|values| pb::Vector { values }),
            response: Some(
                self.client
                    .inline_or_blob(crate::json::to_vec(value), JSON_CONTENT_TYPE, "")
                    .await?,
            ),
            ttl: options.ttl.map(duration),
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
    /// failed call stores nothing.
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
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<(serde_json::Value, Option<pb::Usage>), E>>,
    {
        match self.lookup(namespace, prompt, options).await {
            Ok(Some(hit)) => {
                return Ok(CachedResult {
                    value: hit.value.clone(),
                    hit: Some(hit),
                    stored: None,
                })
            }
            Ok(None) => {}
            Err(e) if cache_down(&e) => {
                let (value, _) = call().await.map_err(GetOrCallError::Call)?;
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
        // Not cached is the worst a failed store does: the caller learns of
        // it from `stored`, and has the answer all the same.
        let stored = self.store(namespace, prompt, &value, &options).await;
        Ok(CachedResult {
            value,
            hit: None,
            stored: Some(stored),
        })
    }
}

/// Whether a lookup failed because the cache is down or busy, rather than
/// for what was asked.
fn cache_down(e: &Error) -> bool {
    matches!(
        e.code,
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted
    )
}

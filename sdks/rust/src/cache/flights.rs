//! Concurrent `get_or_call`s of one question, against a real sidecar (one
//! per test): they share one lookup and one call, as the Python, Go and
//! TypeScript SDKs' do. They live in the crate to count the callers waiting
//! for a shared call (as the Go SDK's tests do through `FlightWaiters`), and
//! to check that no call is left behind once they are done. Every wait is
//! bounded; nothing asserts on timing.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::timeout;

use crate::testing::Sidecar;
use crate::{pb, CacheOptions, CancellationToken, Client, GetOrCallError};

/// The bound of every wait of a test (a hang guard, not a measure).
const WAIT: Duration = Duration::from_secs(60);

/// A sidecar, a client of it and a namespace in its cache.
async fn start(namespace: &str) -> (Sidecar, Client) {
    let sidecar = Sidecar::start(&[]).await.expect("sidecar");
    let client = sidecar.client().await.expect("connect");
    client
        .cache()
        .put_namespace(pb::CacheNamespace {
            name: namespace.into(),
            ..Default::default()
        })
        .await
        .expect("put_namespace");
    (sidecar, client)
}

/// Returns once `n` callers wait for the shared call of the question (whose
/// call fails with `E`); fails the test as soon as the call was made more
/// than once (each caller paying for its own).
async fn until_waiters<E: 'static>(
    client: &Client,
    namespace: &str,
    prompt: &str,
    options: &CacheOptions,
    n: usize,
    calls: &AtomicUsize,
) {
    let joined = async {
        while client.flights.waiters::<E>(namespace, prompt, options) != n {
            let made = calls.load(Ordering::SeqCst);
            assert!(
                made <= 1,
                "the call was made {made} times; want one call shared by the concurrent callers"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(WAIT, joined)
        .await
        .unwrap_or_else(|_| panic!("{n} callers never waited for one shared call"));
}

/// What a call answers.
type Answer<E> = Result<(serde_json::Value, Option<pb::Usage>), E>;

/// A call's future.
type CallFuture<E> = Pin<Box<dyn Future<Output = Answer<E>> + Send>>;

/// A call that counts itself, waits for `release`, then answers `answer`.
fn held_call<E: Clone + Send + Sync + 'static>(
    calls: &Arc<AtomicUsize>,
    release: &CancellationToken,
    answer: Result<serde_json::Value, E>,
) -> impl FnOnce() -> CallFuture<E> + Clone + Send + 'static {
    let (calls, release) = (calls.clone(), release.clone());
    move || {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            release.cancelled().await;
            answer.map(|value| (value, None))
        })
    }
}

/// Five concurrent `get_or_call`s of one question (the same prompt once
/// normalised as the sidecar does) made five lookups and five paid calls;
/// they now share one lookup and one call, and each gets its answer (the
/// same, stored once). Another threshold is another question.
#[tokio::test]
async fn concurrent_callers_of_one_question_share_one_call() {
    let ns = "rust-flight";
    let (_sidecar, client) = start(ns).await;
    let none = CacheOptions::default();
    let prompts = [
        "Où est le café ?",
        "  Où est  le café ? ",
        "Où est le cafe\u{301} ?", // NFD: NFC makes it the first
        "Où\u{3000}est le café\u{a0}?\n",
        "Où est le café\u{1f}?",
    ];
    let calls = Arc::new(AtomicUsize::new(0));
    let release = CancellationToken::new();
    let call = held_call::<&str>(&calls, &release, Ok(json!("near the station")));
    let callers: Vec<_> = prompts
        .into_iter()
        .map(|prompt| {
            let (cache, call, none) = (client.cache(), call.clone(), none.clone());
            tokio::spawn(async move { cache.get_or_call(ns, prompt, &none, call).await })
        })
        .collect();
    until_waiters::<&str>(&client, ns, prompts[0], &none, prompts.len(), &calls).await;
    release.cancel();
    let mut entries = Vec::new();
    for (i, caller) in callers.into_iter().enumerate() {
        let got = timeout(WAIT, caller)
            .await
            .expect("every caller is answered")
            .expect("no panic")
            .unwrap_or_else(|e| panic!("caller {i}: {e}"));
        assert_eq!(got.value, json!("near the station"), "caller {i}");
        assert!(got.hit.is_none(), "caller {i}: the call answered");
        entries.push(got.stored.expect("the call was made").expect("stored"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one call for five callers");
    assert!(
        entries.iter().all(|id| *id == entries[0]),
        "one answer, stored once: {entries:?}"
    );
    assert_eq!(client.flights.len(), 0, "the landed call is forgotten");
    let again = client
        .cache()
        .get_or_call(ns, prompts[1], &none, call.clone())
        .await
        .unwrap();
    assert_eq!(
        (
            again.from_cache(),
            again.value,
            calls.load(Ordering::SeqCst)
        ),
        (true, json!("near the station"), 1),
        "a later caller is answered by the cache"
    );

    // Another threshold is another question: its own call.
    let other = Arc::new(AtomicUsize::new(0));
    let hold = CancellationToken::new();
    let slow = held_call::<&str>(&other, &hold, Ok(json!("x")));
    let question = "a question asked at two thresholds";
    let thresholds: Vec<_> = [0.9, 0.8]
        .into_iter()
        .map(|threshold| {
            let options = CacheOptions {
                threshold: Some(threshold),
                ..Default::default()
            };
            let (cache, slow) = (client.cache(), slow.clone());
            tokio::spawn(async move { cache.get_or_call(ns, question, &options, slow).await })
        })
        .collect();
    let both = async {
        while other.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(WAIT, both)
        .await
        .expect("get_or_call of two thresholds makes two calls");
    hold.cancel();
    for caller in thresholds {
        timeout(WAIT, caller).await.unwrap().unwrap().unwrap();
    }
    assert_eq!(client.flights.len(), 0);
}

/// A caller that gives up (its future dropped) stops waiting, while the
/// shared call goes on for the callers still waiting.
#[tokio::test]
async fn a_caller_giving_up_leaves_the_call_to_the_others() {
    let ns = "rust-flight-give-up";
    let (_sidecar, client) = start(ns).await;
    let none = CacheOptions::default();
    let prompt = "who gives up";
    let calls = Arc::new(AtomicUsize::new(0));
    let release = CancellationToken::new();
    let call = held_call::<&str>(&calls, &release, Ok(json!("kept")));
    let spawn_caller = || {
        let (cache, call, none) = (client.cache(), call.clone(), none.clone());
        tokio::spawn(async move { cache.get_or_call(ns, prompt, &none, call).await })
    };
    let first = spawn_caller();
    until_waiters::<&str>(&client, ns, prompt, &none, 1, &calls).await;
    let second = spawn_caller();
    until_waiters::<&str>(&client, ns, prompt, &none, 2, &calls).await;
    first.abort();
    let gave_up = timeout(WAIT, first).await.expect("the first caller ended");
    assert!(gave_up.unwrap_err().is_cancelled());
    assert_eq!(client.flights.waiters::<&str>(ns, prompt, &none), 1);
    release.cancel();
    let got = timeout(WAIT, second)
        .await
        .expect("the caller still waiting is answered")
        .unwrap()
        .expect("the call's answer");
    assert_eq!((got.value, got.hit.is_none()), (json!("kept"), true));
    assert!(matches!(got.stored, Some(Ok(_))), "{:?}", got.stored);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(client.flights.len(), 0);
}

/// Once no caller waits, the shared call is aborted (nothing is stored), and
/// the next caller makes a call of its own.
#[tokio::test]
async fn a_call_every_caller_gave_up_on_is_aborted() {
    let ns = "rust-flight-abandoned";
    let (_sidecar, client) = start(ns).await;
    let none = CacheOptions::default();
    let prompt = "nobody waits";
    let calls = Arc::new(AtomicUsize::new(0));
    let (entered, dropped) = (CancellationToken::new(), CancellationToken::new());
    let call = {
        let (calls, entered, dropped) = (calls.clone(), entered.clone(), dropped.clone());
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            // Cancelled when the call's future is dropped: the task aborted.
            let _dropped = dropped.drop_guard();
            entered.cancel();
            std::future::pending::<()>().await;
            Ok::<_, &str>((json!("late"), None))
        }
    };
    let caller = {
        let (cache, none) = (client.cache(), none.clone());
        tokio::spawn(async move { cache.get_or_call(ns, prompt, &none, call).await })
    };
    timeout(WAIT, entered.cancelled())
        .await
        .expect("the call was made");
    caller.abort();
    assert!(timeout(WAIT, caller)
        .await
        .unwrap()
        .unwrap_err()
        .is_cancelled());
    assert_eq!(
        client.flights.len(),
        0,
        "forgotten the moment its last caller gave up"
    );
    timeout(WAIT, dropped.cancelled())
        .await
        .expect("the call every caller gave up on was aborted");
    let fresh = client
        .cache()
        .get_or_call(ns, prompt, &none, || async {
            Ok::<_, &str>((json!("fresh"), None))
        })
        .await
        .unwrap();
    assert_eq!(
        (
            fresh.value,
            fresh.hit.is_none(),
            calls.load(Ordering::SeqCst)
        ),
        (json!("fresh"), true, 1),
        "a call of its own, nothing stored before"
    );
}

/// The shared call's error goes to every caller waiting for it, and nothing
/// is stored; a panic of the call panics every caller waiting for it.
#[tokio::test]
async fn a_calls_error_is_every_callers_and_nothing_is_stored() {
    let ns = "rust-flight-error";
    let (_sidecar, client) = start(ns).await;
    let none = CacheOptions::default();
    let prompt = "a failing call";
    let calls = Arc::new(AtomicUsize::new(0));
    let release = CancellationToken::new();
    let call = held_call(&calls, &release, Err("the model is down"));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (cache, call, none) = (client.cache(), call.clone(), none.clone());
            tokio::spawn(async move { cache.get_or_call(ns, prompt, &none, call).await })
        })
        .collect();
    until_waiters::<&str>(&client, ns, prompt, &none, 3, &calls).await;
    release.cancel();
    for caller in callers {
        let e = timeout(WAIT, caller)
            .await
            .expect("every caller is answered")
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(e, GetOrCallError::Call("the model is down")),
            "{e}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(client.flights.len(), 0);
    let miss = client.cache().lookup(ns, prompt, &none).await.unwrap();
    assert!(miss.is_none(), "nothing stored: {miss:?}");

    // A panic: every caller waiting for the call panics, and it is forgotten.
    let calls = Arc::new(AtomicUsize::new(0));
    let release = CancellationToken::new();
    let panicking = {
        let (calls, release) = (calls.clone(), release.clone());
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            release.cancelled().await;
            if calls.load(Ordering::SeqCst) > 0 {
                panic!("the call panics");
            }
            Ok::<_, &str>((json!(null), None))
        }
    };
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (cache, call, none) = (client.cache(), panicking.clone(), none.clone());
            tokio::spawn(async move { cache.get_or_call(ns, prompt, &none, call).await })
        })
        .collect();
    until_waiters::<&str>(&client, ns, prompt, &none, 2, &calls).await;
    release.cancel();
    for caller in callers {
        let ended = timeout(WAIT, caller).await.expect("every caller ends");
        assert!(ended.unwrap_err().is_panic());
    }
    assert_eq!(client.flights.len(), 0);
}

//! What goes into the sidecar comes back out: doubles to the bit, integers
//! as far as serde_json holds them, and cache entries other SDKs stored in
//! another content type. Against a real sidecar (one per test), started from
//! the repository's `.venv`; every wait is bounded.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use are_sdk::{pb, CacheOptions, Client, PatchOptions, TaskBuilder, Worker, WorkflowBuilder};
use serde_json::{json, Value};

mod common;
use common::{cache_with_namespace, fast, start, Running, WAIT};

/// Doubles, each written as its shortest text, that serde_json read back one
/// unit in the last place off without its `float_roundtrip` feature (about
/// one double in ten is), and the ends of the range.
const DOUBLES: [f64; 9] = [
    0.9856906946328695,
    434.29198722896365,
    985690694.6328695,
    4.2590741869380864e-7,
    0.41952481325285884,
    972610478803.3849,
    1.6501177855747128e-7,
    f64::MAX,
    5e-324,
];

/// An answer holding the doubles.
fn scores() -> Value {
    json!({"score": DOUBLES[0], "cost": DOUBLES[1], "all": DOUBLES})
}

/// A running workflow (a task nobody serves keeps it open).
async fn running_workflow(client: &Client, name: &str) -> String {
    let spec = WorkflowBuilder::new(name).task(TaskBuilder::new("hold", &format!("nobody-{name}")));
    client.submit(spec).await.expect("submit").id
}

/// `get_or_call` returned {"score":0.9856906946328695} on its miss (the
/// call's own value) and 0.9856906946328696 on the next hit (the stored text
/// read back inexactly). The doubles now read back exactly, and a miss
/// returns the answer as a hit will: encoded as it is stored and decoded back.
#[tokio::test]
async fn get_or_call_returns_on_a_miss_the_doubles_a_hit_returns() {
    let (_sidecar, client) = start().await;
    let ns = "rust-doubles";
    let cache = cache_with_namespace(&client, ns).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let call = {
        let calls = calls.clone();
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>((scores(), None))
        }
    };
    let options = CacheOptions::default();
    let miss = cache
        .get_or_call(ns, "what is the score", &options, call.clone())
        .await
        .unwrap();
    let hit = cache
        .get_or_call(ns, "what is the score", &options, call)
        .await
        .unwrap();
    assert_eq!((miss.from_cache(), hit.from_cache()), (false, true));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(miss.value, hit.value, "the miss returns what a hit does");
    assert_eq!(hit.value, scores(), "the doubles come back to the bit");
}

/// The same decode reads task inputs, outputs, workflow results and state.
#[tokio::test]
async fn doubles_read_back_exactly_from_tasks_and_state() {
    let (_sidecar, client) = start().await;
    let worker = Worker::new(
        &client,
        "rust-doubles",
        fast(are_sdk::WorkerTransport::Stream),
    )
    .handle("rust-doubles", |task| async move {
        let input: Value = task.input_json()?;
        // What the worker read is what was sent.
        Ok(json!({"echo": input, "same": input == scores()}))
    });
    let (running, _) = Running::spawn(worker);
    let spec = WorkflowBuilder::new("rust-doubles")
        .task(TaskBuilder::new("echo", "rust-doubles").input(scores()))
        .result_task("echo");
    let handle = client.submit(spec).await.unwrap();
    let result: Value = handle.result(WAIT).await.unwrap();
    assert_eq!(result, json!({"echo": scores(), "same": true}));
    let output: Value = handle.task_output("echo").await.unwrap();
    assert_eq!(output, result);
    running.stop().await;

    let state = client
        .state()
        .for_workflow(&running_workflow(&client, "rust-doubles-state").await);
    state
        .patch(json!({"scores": scores()}), &PatchOptions::default())
        .await
        .unwrap();
    assert_eq!(
        state.value::<Value>("/scores").await.unwrap(),
        Some(scores())
    );
    let snapshot = state.get(&[], None).await.unwrap();
    assert_eq!(snapshot.get(""), Some(&json!({"scores": scores()})));
    let score: Option<f64> = state.value("/scores/score").await.unwrap();
    assert_eq!(score.map(f64::to_bits), Some(DOUBLES[0].to_bits()));
}

/// An integer past 64 bits, as JSON text.
const BIG: &str = "18446744073709551617"; // u64::MAX + 2

/// Whether serde_json keeps numbers as their text (its `arbitrary_precision`
/// feature, off unless a crate of the build turns it on: see the README,
/// "JSON numbers").
fn arbitrary_precision() -> bool {
    let read: Value = serde_json::from_str(BIG).unwrap();
    serde_json::to_string(&read).unwrap() == BIG
}

/// Integers within i64 and u64 read back exactly. Past them (written by
/// another SDK), serde_json reads the nearest double, and a value read and
/// written back is stored as that double: the limit the README states. With
/// serde_json's `arbitrary_precision` turned on in the user's crate (the
/// SDK passes values through without looking at their numbers), they read
/// and write back exactly.
#[tokio::test]
async fn integers_past_64_bits_read_as_the_nearest_double_unless_arbitrary_precision() {
    let (_sidecar, client) = start().await;
    let wid = running_workflow(&client, "rust-integers").await;
    let text = format!(
        r#"{{"big":{BIG},"small":-9223372036854775809,"u64":{},"i64":{}}}"#,
        u64::MAX,
        i64::MIN
    );
    client
        .raw()
        .state
        .patch_state(pb::PatchStateRequest {
            workflow_id: wid.clone(),
            patch: Some(pb::StatePatch {
                patch: Some(pb::state_patch::Patch::MergePatchJson(text.into_bytes())),
            }),
            ..Default::default()
        })
        .await
        .expect("patched as another SDK would");
    let state = client.state().for_workflow(&wid);
    let paths = ["/big", "/small", "/u64", "/i64"];
    let snapshot = state.get(&paths, None).await.unwrap();
    let value = |path: &str| snapshot.get(path).cloned().unwrap();
    assert_eq!(value("/u64"), json!(u64::MAX));
    assert_eq!(value("/i64"), json!(i64::MIN));
    assert_eq!(state.value::<u64>("/u64").await.unwrap(), Some(u64::MAX));
    let (big, small) = (value("/big"), value("/small"));
    if arbitrary_precision() {
        assert_eq!(big.to_string(), BIG);
        assert_eq!(small.to_string(), "-9223372036854775809");
    } else {
        assert_eq!(big.as_f64(), Some(18446744073709551617.0));
        assert!(big.is_f64() && !big.is_u64(), "{big}");
        assert_eq!(small.as_f64(), Some(-9223372036854775809.0));
    }
    // Read, modify, write: what is stored is what was read.
    state
        .patch(json!({"copy": big}), &PatchOptions::default())
        .await
        .unwrap();
    let stored = client
        .raw()
        .state
        .get_state(pb::GetStateRequest {
            workflow_id: wid,
            paths: vec!["/copy".into()],
            version: None,
        })
        .await
        .unwrap()
        .into_inner();
    let stored = String::from_utf8(stored.values[0].value_json.clone()).unwrap();
    if arbitrary_precision() {
        assert_eq!(stored, BIG);
    } else {
        let double: f64 = stored.parse().unwrap();
        assert_eq!(double, 18446744073709551617.0, "{stored}");
    }
}

/// Stores `data` as the response to `prompt` with `content_type`, as another
/// SDK does (the Python SDK's `RawPayload`, Go's `WithContentType`).
async fn store_raw(client: &Client, ns: &str, prompt: &str, data: &[u8], content_type: &str) {
    client
        .raw()
        .cache
        .store_cache(pb::StoreCacheRequest {
            namespace: ns.into(),
            prompt: prompt.into(),
            response: Some(pb::Payload {
                content: Some(pb::payload::Content::Data(data.to_vec())),
                content_type: content_type.into(),
            }),
            ..Default::default()
        })
        .await
        .expect("stored");
}

/// A cache entry that is not JSON (bytes, text, JSON that does not parse)
/// made every lookup and `get_or_call` of its prompt fail with INVALID_JSON,
/// for good. A lookup now returns its bytes and content type (`value:
/// None`), JSON being decided by the content type as the Python SDK does;
/// and `get_or_call`, whose call answers JSON, takes such an entry for a
/// miss: it calls and stores the answer, which later calls get.
#[tokio::test]
async fn a_cache_entry_that_is_not_json_is_read_raw_and_a_miss_for_get_or_call() {
    let (_sidecar, client) = start().await;
    let ns = "rust-raw";
    let cache = cache_with_namespace(&client, ns).await;
    let raw: [(&str, &[u8], &str); 3] = [
        (
            "render the logo",
            b"\x89PNG\r\n",
            "application/octet-stream",
        ),
        ("say hello", b"hello world", "text/plain"),
        ("broken json", br#"{"half":"#, "application/json"),
    ];
    for (prompt, data, content_type) in raw {
        store_raw(&client, ns, prompt, data, content_type).await;
    }
    let exact = CacheOptions {
        exact_only: true,
        ..Default::default()
    };
    for (prompt, data, content_type) in raw {
        let hit = cache.lookup(ns, prompt, &exact).await.unwrap().unwrap();
        assert_eq!(hit.value, None, "{content_type}");
        assert_eq!(
            (hit.data.as_slice(), hit.content_type.as_str()),
            (data, content_type)
        );
    }
    // JSON by its content type: "", application/json or *+json, any case.
    let json_types: [(&str, &[u8], &str, Value); 3] = [
        ("untyped", b"[1.5]", "", json!([1.5])),
        (
            "a problem",
            br#"{"title":"gone"}"#,
            "Application/Problem+JSON; charset=utf-8",
            json!({"title": "gone"}),
        ),
        ("nothing", b"", "application/json", Value::Null),
    ];
    for (prompt, data, content_type, value) in json_types {
        store_raw(&client, ns, prompt, data, content_type).await;
        let hit = cache.lookup(ns, prompt, &exact).await.unwrap().unwrap();
        assert_eq!(hit.value, Some(value), "{content_type:?}");
        let got = cache
            .get_or_call(ns, prompt, &exact, || async {
                Ok::<_, Infallible>((json!("not called"), None))
            })
            .await
            .unwrap();
        assert!(got.from_cache(), "{content_type:?}");
        assert_eq!(got.value, hit.value.unwrap(), "{content_type:?}");
    }

    for (prompt, _, content_type) in raw {
        let calls = Arc::new(AtomicUsize::new(0));
        let call = {
            let calls = calls.clone();
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>((json!({"fresh": prompt}), None))
            }
        };
        let got = cache
            .get_or_call(ns, prompt, &exact, call.clone())
            .await
            .unwrap_or_else(|e| panic!("{content_type}: {e}"));
        assert_eq!(got.value, json!({"fresh": prompt}), "{content_type}");
        assert!(!got.from_cache(), "{content_type}");
        let stored = got.stored.expect("the call was made").expect("stored");
        let again = cache.get_or_call(ns, prompt, &exact, call).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{content_type}");
        assert_eq!(again.value, json!({"fresh": prompt}), "{content_type}");
        let hit = again.hit.expect("a hit");
        assert_eq!(hit.entry_id, stored);
        assert_eq!(hit.content_type, "application/json");
    }
}

//! Tests against a real sidecar (one per test), started from the repository's
//! `.venv`. Every wait is bounded; nothing asserts on timing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use are_sdk::testing::{Sidecar, SidecarOptions};
use are_sdk::{
    pb, AgentCard, AgentFilter, AgentSource, Attributes, CacheOptions, CancelReason,
    CancellationToken, Client, ClientTlsConfig, Code, GetOrCallError, LlmCallOptions,
    ServingStatus, TaskBuilder, TaskError, ToolCallOptions, Worker, WorkerOptions, WorkerTransport,
    WorkflowBuilder,
};
use serde_json::{json, Value};
use tokio::time::timeout;
use tonic::transport::Certificate;

#[macro_use]
mod common;
use common::{cache_with_namespace, failed_task, fast, nested, start, Running, WAIT};

on_both_transports!(
    two_task_workflow_run_by_a_rust_worker,
    failing_handler_fails_by_the_retry_policy,
    cancellation_reaches_a_running_handler,
    a_handler_outlasting_its_heartbeat_timeout_is_heartbeated_for,
    large_output_as_a_blob_and_the_event_stream,
    graceful_shutdown_lets_a_running_handler_finish,
    handlers_report_llm_and_tool_calls,
    a_refused_completion_is_reported_as_a_failure,
    a_failure_past_the_sidecars_bounds_is_fitted_to_them,
    a_handlers_error_sources_are_its_failures_causes,
    a_source_chain_deeper_than_8_is_cut_saying_so,
);

#[tokio::test]
async fn connect_and_health() {
    let (_sidecar, client) = start().await;
    assert_eq!(client.health().await.unwrap(), ServingStatus::Serving);
    let bad = Client::connect(
        "127.0.0.1:1",
        are_sdk::Options {
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(bad.code, Code::Unavailable);
}

/// Each wait holds a WatchWorkflow stream, and the sidecar serves 1,024 streams
/// at once on a connection: on the client's one connection, 1,030 pending
/// waits starved its other calls. Waits have a connection of their own.
#[tokio::test]
async fn a_thousand_pending_waits_hold_up_no_other_call_of_the_client() {
    let (_sidecar, client) = start().await;
    let handle = client
        .submit(
            WorkflowBuilder::new("rust-nobody").task(TaskBuilder::new("a", "rust-nobody-serves")),
        )
        .await
        .unwrap();
    let waits: Vec<_> = (0..1030)
        .map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.wait(Duration::from_secs(60)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await; // the waits open their streams
    let health = timeout(Duration::from_secs(10), client.health()).await;
    for wait in &waits {
        wait.abort();
    }
    assert_eq!(
        health
            .expect("the health check answered beside 1,030 waits")
            .unwrap(),
        ServingStatus::Serving
    );
    handle.cancel("done").await.unwrap();
}

#[tokio::test]
async fn custom_keepalive_or_none_still_works() {
    let (sidecar, _client) = start().await;
    for (interval, timeout) in [
        (Some(Duration::from_secs(10)), Duration::from_secs(5)),
        (None, Duration::ZERO),
    ] {
        let client = Client::connect(
            &sidecar.target,
            are_sdk::Options {
                keepalive_interval: interval,
                keepalive_timeout: timeout,
                ..Default::default()
            },
        )
        .await
        .expect("connect");
        assert_eq!(client.health().await.unwrap(), ServingStatus::Serving);
        let e = client
            .workflow("wf-does-not-exist")
            .get()
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::NotFound);
    }
}

#[tokio::test]
async fn errors_carry_reason_and_field() {
    let (_sidecar, client) = start().await;
    let e = client
        .workflow("wf-does-not-exist")
        .get()
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    assert_eq!(e.reason, "WORKFLOW_NOT_FOUND");
    assert_eq!(e.domain, "are.v1");

    let bad = pb::CacheNamespace {
        name: "not a valid name!".into(),
        ..Default::default()
    };
    let e = client.cache().put_namespace(bad).await.unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert_eq!(e.reason, "INVALID_ARGUMENT");
    assert!(
        e.field("namespace.name").is_some(),
        "violations {:?}",
        e.field_violations
    );

    let spec = WorkflowBuilder::new("bad")
        .task(TaskBuilder::new("a", "x"))
        .task(TaskBuilder::new("b", "x").depends_on(["missing"]));
    let e = client.submit(spec).await.unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument);
    assert!(
        e.field("spec.tasks[1].depends_on[0]").is_some(),
        "violations {:?}",
        e.field_violations
    );
}

async fn two_task_workflow_run_by_a_rust_worker(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let seen2 = seen.clone();
    let worker = Worker::new(&client, "rust-worker", fast(transport)).handle("rust-e2e", move |task| {
        let seen = seen2.clone();
        async move {
            seen.lock().unwrap().insert(task.task_id.clone(), task.attempt);
            match task.task_id.as_str() {
                "research" => {
                    let input: Value = task.input_json()?;
                    task.add_usage(pb::Usage { input_tokens: 10, output_tokens: 5, llm_calls: 1, ..Default::default() });
                    Ok(json!({"notes": format!("about {}", input["topic"].as_str().unwrap_or("?"))}))
                }
                "write" => {
                    let notes: Value = task
                        .dependency_json("research")
                        .ok_or_else(|| TaskError::new("MissingInput", "no research output"))?;
                    Ok(json!({"draft": notes["notes"]}))
                }
                other => Err(TaskError::new("Unexpected", other).non_retryable()),
            }
        }
    });
    let (running, stats) = Running::spawn(worker);

    let spec = WorkflowBuilder::new("rust-two-tasks")
        .task(TaskBuilder::new("research", "rust-e2e").input(json!({"topic": "caches"})))
        .task(TaskBuilder::new("write", "rust-e2e").depends_on(["research"]));
    let handle = client.submit(spec).await.unwrap();
    let workflow = handle.wait(WAIT).await.unwrap();
    assert_eq!(
        workflow.state,
        pb::WorkflowState::Completed as i32,
        "{:?}",
        workflow.failure
    );
    assert_eq!(workflow.task_counts.unwrap().completed, 2);
    assert_eq!(
        workflow.usage.and_then(|u| u.usage).unwrap().input_tokens,
        10
    );

    let research: Value = handle.task_output("research").await.unwrap();
    assert_eq!(research, json!({"notes": "about caches"}));
    let result: Value = handle.result(WAIT).await.unwrap();
    assert_eq!(result, json!({"draft": "about caches"}));
    assert_eq!(
        *seen.lock().unwrap(),
        HashMap::from([("research".to_string(), 1), ("write".to_string(), 1)])
    );
    running.stop().await;
    assert_eq!(stats.completed.load(Ordering::Relaxed), 2);
}

async fn failing_handler_fails_by_the_retry_policy(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let calls = Arc::new(Mutex::new(HashMap::<String, i32>::new()));
    let calls2 = calls.clone();
    let worker =
        Worker::new(&client, "rust-failer", fast(transport)).handle("rust-fail", move |task| {
            let calls = calls2.clone();
            async move {
                let n = {
                    let mut c = calls.lock().unwrap();
                    let n = c.entry(task.task_id.clone()).or_default();
                    *n += 1;
                    *n
                };
                match task.task_id.as_str() {
                    "flaky" if n == 1 => Err(TaskError::new("Transient", "try again")),
                    "flaky" => Ok(json!("ok")),
                    "broken" => Err(TaskError::new("Boom", "boom")),
                    "fatal" => Err(TaskError::new("Fatal", "no point retrying").non_retryable()),
                    _ => panic!("handler bug"),
                }
            }
        });
    let (running, _) = Running::spawn(worker);
    // Two retries' backoff timers firing apart while one unary poll waits
    // once stranded an attempt here (fixed in the sidecar: a poll answers
    // with one commit's assignments and takes nothing after it).
    let retry = |t: TaskBuilder| t.max_attempts(3, Duration::from_millis(10));
    let spec = WorkflowBuilder::new("rust-failing")
        .task(retry(TaskBuilder::new("flaky", "rust-fail")))
        .task(retry(TaskBuilder::new("broken", "rust-fail")))
        .task(retry(TaskBuilder::new("fatal", "rust-fail")))
        .task(TaskBuilder::new("panics", "rust-fail").max_attempts(1, Duration::from_millis(10)));
    let handle = client.submit(spec).await.unwrap();
    let e = handle.result::<Value>(WAIT).await.unwrap_err();
    assert_eq!(e.reason, "WORKFLOW_FAILED", "{e}");
    assert_eq!(
        e.workflow.as_ref().unwrap().state,
        pb::WorkflowState::Failed as i32
    );

    for (id, state, attempts, typ) in [
        ("flaky", pb::TaskState::Completed, 2, "Transient"),
        ("broken", pb::TaskState::Failed, 3, "Boom"),
        ("fatal", pb::TaskState::Failed, 1, "Fatal"),
        ("panics", pb::TaskState::Failed, 1, "panic"),
    ] {
        let task = handle.task(id).await.unwrap();
        assert_eq!(task.state, state as i32, "task {id}");
        assert_eq!(task.attempt, attempts, "task {id}");
        assert_eq!(calls.lock().unwrap()[id], attempts, "handler calls of {id}");
        assert_eq!(
            task.failure.as_ref().map(|f| f.r#type.as_str()),
            Some(typ),
            "task {id}"
        );
    }
    assert!(
        handle
            .task("fatal")
            .await
            .unwrap()
            .failure
            .unwrap()
            .non_retryable
    );
    let e = handle.task_output::<Value>("broken").await.unwrap_err();
    assert_eq!(e.reason, "TASK_NOT_COMPLETED");
    running.stop().await;
}

/// A completion the sidecar refuses as invalid (here a negative usage
/// counter) leaves the attempt held: the worker reports a CompletionRefused
/// failure naming the field, with the completion's valid usage, instead of
/// leaving the task RUNNING.
async fn a_refused_completion_is_reported_as_a_failure(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let worker = Worker::new(&client, "rust-refused", fast(transport)).handle(
        "rust-refused",
        |task| async move {
            task.add_usage(pb::Usage {
                input_tokens: 7,
                output_tokens: 3,
                cost_micro_usd: -5,
                llm_calls: 1,
                tool_calls: 0,
            });
            Ok(json!("out"))
        },
    );
    let (running, stats) = Running::spawn(worker);
    let task = failed_task(&client, "rust-refused").await;
    let failure = task.failure.unwrap();
    let field = match transport {
        WorkerTransport::Stream => "complete.completions[0].usage.cost_micro_usd",
        WorkerTransport::Unary => "completion.usage.cost_micro_usd",
    };
    assert_eq!(failure.r#type, are_sdk::COMPLETION_REFUSED);
    assert!(!failure.non_retryable);
    assert!(
        failure.message.contains("INVALID_ARGUMENT") && failure.message.contains(field),
        "{}",
        failure.message
    );
    let usage = task.usage.unwrap().usage.unwrap();
    assert_eq!(
        (
            usage.input_tokens,
            usage.output_tokens,
            usage.cost_micro_usd,
            usage.llm_calls
        ),
        (7, 3, 0, 1)
    );
    running.stop().await;
    assert_eq!(stats.completed.load(Ordering::Relaxed), 0);
    assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
}

async fn cancellation_reaches_a_running_handler(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let (started_tx, started_rx) = tokio::sync::mpsc::channel(1);
    let (reason_tx, reason_rx) = tokio::sync::mpsc::channel(1);
    let worker = Worker::new(&client, "rust-canceller", fast(transport)).handle(
        "rust-cancel",
        move |task| {
            let started = started_tx.clone();
            let reason = reason_tx.clone();
            async move {
                started.send(()).await.ok();
                // A long LLM call, say, that honours its token (bounded all the same).
                let _ = timeout(WAIT, task.cancellation().cancelled()).await;
                reason.send(task.cancel_reason()).await.ok();
                Err(TaskError::new("Cancelled", "stopped"))
            }
        },
    );
    let (running, stats) = Running::spawn(worker);
    let handle = client
        .submit(WorkflowBuilder::new("rust-cancel").task(TaskBuilder::new("long", "rust-cancel")))
        .await
        .unwrap();
    let mut started_rx = started_rx;
    timeout(WAIT, started_rx.recv())
        .await
        .expect("the handler started");
    let workflow = handle.cancel("the user changed their mind").await.unwrap();
    assert_eq!(workflow.state, pb::WorkflowState::Cancelled as i32);
    let mut reason_rx = reason_rx;
    let reason = timeout(WAIT, reason_rx.recv())
        .await
        .expect("the cancellation reached the handler");
    assert!(
        matches!(
            reason,
            Some(Some(
                CancelReason::CancelRequested | CancelReason::LeaseLost
            ))
        ),
        "reason {reason:?}"
    );
    let e = handle.result::<Value>(WAIT).await.unwrap_err();
    assert_eq!(e.reason, "WORKFLOW_CANCELLED");
    running.stop().await;
    assert_eq!(stats.cancelled.load(Ordering::Relaxed), 1);
}

/// A handler that runs several times its task's heartbeat timeout without
/// heartbeating keeps its attempt: the worker heartbeats it every quarter
/// of the timeout. On the stream, due heartbeats were looked for once a
/// second whatever the attempts' timeouts, so an attempt whose timeout was
/// under about 1 s always "missed its heartbeat_timeout" (and with a single
/// attempt its workflow failed). At 800 ms, a heartbeat every 200 ms leaves
/// room for a stall of several hundred milliseconds.
async fn a_handler_outlasting_its_heartbeat_timeout_is_heartbeated_for(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let worker = Worker::new(&client, "rust-quiet", fast(transport)).handle(
        "rust-quiet",
        |task| async move {
            // A long call that records no heartbeat of its own.
            let _ = timeout(Duration::from_secs(3), task.cancellation().cancelled()).await;
            Ok(json!({ "cancelled": format!("{:?}", task.cancel_reason()) }))
        },
    );
    let (running, stats) = Running::spawn(worker);
    let handle = client
        .submit(
            WorkflowBuilder::new("rust-quiet").task(
                TaskBuilder::new("x", "rust-quiet")
                    .heartbeat_timeout(Duration::from_millis(800))
                    .max_attempts(1, Duration::from_millis(10)),
            ),
        )
        .await
        .unwrap();
    let result: Value = handle
        .result(WAIT)
        .await
        .expect("the task completed within its heartbeat timeout");
    assert_eq!(result, json!({ "cancelled": "None" }));
    running.stop().await;
    assert_eq!(stats.completed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.cancelled.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_cache_namespace_updated_then_deleted_frees_its_name() {
    let (_sidecar, client) = start().await;
    let cache = client.cache();
    let ns = "rust-deleted";
    let settings = pb::CacheNamespace {
        name: ns.into(),
        description: "old".into(),
        ..Default::default()
    };
    cache.put_namespace(settings).await.unwrap();
    let none = CacheOptions::default();
    for prompt in [
        "What is the capital of Spain?",
        "What is the capital of Italy?",
    ] {
        cache
            .store(ns, prompt, &json!("a city"), &none)
            .await
            .unwrap();
    }
    let updated = cache
        .update_namespace(
            pb::CacheNamespace {
                name: ns.into(),
                similarity_threshold: 0.8,
                ..Default::default()
            },
            &["similarity_threshold"],
        )
        .await
        .unwrap();
    assert!((updated.similarity_threshold - 0.8).abs() < 1e-6);
    assert_eq!(updated.description, "old"); // kept: not named
    assert_eq!(cache.delete_namespace(ns).await.unwrap(), 2);
    let e = cache
        .lookup(ns, "What is the capital of Spain?", &none)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::NotFound, "NAMESPACE_NOT_FOUND")
    );
    let e = cache.delete_namespace(ns).await.unwrap_err();
    assert_eq!(e.code, Code::NotFound, "{e}");
    let (again, created) = cache
        .put_namespace(pb::CacheNamespace {
            name: ns.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(created);
    assert_eq!(again.description, "");
    let exact = CacheOptions {
        exact_only: true,
        ..Default::default()
    };
    assert!(cache
        .lookup(ns, "What is the capital of Spain?", &exact)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn cache_exact_tier_and_get_or_call() {
    let (_sidecar, client) = start().await;
    let cache = client.cache();
    let ns = "rust-exact";
    let (_, created) = cache
        .put_namespace(pb::CacheNamespace {
            name: ns.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(created);
    let none = CacheOptions::default();
    assert!(cache
        .lookup(ns, "What is the capital of France?", &none)
        .await
        .unwrap()
        .is_none());
    let stored = cache
        .store(
            ns,
            "What is the capital of France?",
            &json!("Paris"),
            &CacheOptions {
                usage: Some(pb::Usage {
                    input_tokens: 12,
                    output_tokens: 3,
                    cost_micro_usd: 40,
                    ..Default::default()
                }),
                metadata: HashMap::from([("model".into(), "gpt-x".into())]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let exact = CacheOptions {
        exact_only: true,
        ..Default::default()
    };
    let hit = cache
        .lookup(ns, "  What is the   capital of France?", &exact)
        .await
        .unwrap()
        .expect("a hit");
    assert_eq!(hit.tier, pb::CacheTier::Exact as i32);
    assert_eq!(hit.value, Some(json!("Paris")));
    assert_eq!(
        (hit.data.as_slice(), hit.content_type.as_str()),
        (&br#""Paris""#[..], "application/json")
    );
    assert_eq!(hit.entry_id, stored);
    assert_eq!(hit.usage.unwrap().output_tokens, 3);
    assert_eq!(hit.metadata["model"], "gpt-x");
    let e = cache
        .lookup("no-such-namespace", "x", &none)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::NotFound, "NAMESPACE_NOT_FOUND")
    );

    let calls = Arc::new(AtomicUsize::new(0));
    let mut entry = None;
    for i in 0..3 {
        let calls = calls.clone();
        let got = cache
            .get_or_call(ns, "the answer to everything", &none, || async move {
                calls.fetch_add(1, Ordering::Relaxed);
                Ok::<_, std::io::ErrorKind>((
                    json!("42"),
                    Some(pb::Usage {
                        input_tokens: 7,
                        output_tokens: 1,
                        ..Default::default()
                    }),
                ))
            })
            .await
            .unwrap();
        assert_eq!(got.value, json!("42"));
        assert_eq!(got.from_cache(), i > 0, "call #{i}");
        match (i, got.hit, got.stored) {
            (0, None, Some(Ok(id))) => entry = Some(id),
            (_, Some(hit), None) => assert_eq!(Some(&hit.entry_id), entry.as_ref()),
            (_, hit, stored) => panic!("call #{i}: hit {hit:?}, stored {stored:?}"),
        }
    }
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    let failed = cache
        .get_or_call(ns, "another prompt", &none, || async {
            Err::<(Value, Option<pb::Usage>), _>("provider down")
        })
        .await
        .unwrap_err();
    assert!(matches!(failed, GetOrCallError::Call("provider down")));
    assert!(cache
        .lookup(ns, "another prompt", &none)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn json_nested_512_deep_goes_through_tasks_and_the_cache() {
    let (_sidecar, client) = start().await;
    let deep = nested(512); // the sidecar's bound
    let worker = Worker::new(&client, "rust-deep", fast(WorkerTransport::Stream)).handle(
        "rust-deep",
        |task| async move {
            match task.task_id.as_str() {
                "echo" => task.input_json::<Value>(),
                _ => task
                    .dependency_json::<Value>("echo")
                    .ok_or_else(|| TaskError::new("MissingInput", "no echo output")),
            }
        },
    );
    let (running, _) = Running::spawn(worker);
    let spec = WorkflowBuilder::new("rust-deep")
        .task(TaskBuilder::new("echo", "rust-deep").input(deep.clone()))
        .task(TaskBuilder::new("again", "rust-deep").depends_on(["echo"]))
        .result_task("again");
    let handle = client.submit(spec).await.unwrap();
    let result: Value = handle.result(WAIT).await.unwrap();
    assert!(result == deep, "the result is not the input");
    let echoed: Value = handle.task_output("echo").await.unwrap();
    assert!(echoed == deep, "the echo's output is not the input");
    running.stop().await;

    let ns = "rust-deep";
    let cache = cache_with_namespace(&client, ns).await;
    let exact = CacheOptions {
        exact_only: true,
        ..Default::default()
    };
    cache.store(ns, "deep", &deep, &exact).await.unwrap();
    let hit = cache
        .lookup(ns, "deep", &exact)
        .await
        .unwrap()
        .expect("a hit");
    assert!(
        hit.value.as_ref() == Some(&deep),
        "the cached value is not the stored one"
    );
}

#[tokio::test]
async fn unix_socket_and_token() {
    let sidecar = Sidecar::start_with(SidecarOptions {
        uds: true,
        token: Some("s3cret-token".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(sidecar.target.starts_with("unix:"), "{}", sidecar.target);
    let client = sidecar.client().await.unwrap();
    assert_eq!(client.health().await.unwrap(), ServingStatus::Serving);
    let e = client.workflow("wf-missing").get().await.unwrap_err();
    assert_eq!(e.code, Code::NotFound, "{e}");

    let anonymous = Client::connect(&sidecar.target, Default::default())
        .await
        .unwrap();
    let e = anonymous.workflow("wf-missing").get().await.unwrap_err();
    assert_eq!(e.code, Code::Unauthenticated, "{e}");
}

/// A test CA and a certificate it signed for `names` (DNS subjectAltNames),
/// made with openssl in `dir`: the chain (certificate, then the CA's) and
/// the key, as PEM files; `None` without openssl. rustls refuses a
/// self-signed CA certificate as a server's, hence the two.
fn certificate_chain(dir: &std::path::Path, names: &[&str]) -> Option<(PathBuf, PathBuf)> {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = [
        &["req", "-x509"][..],
        &ec,
        &["-days", "1", "-subj", "/CN=are-test-ca"],
    ]
    .concat();
    let ca = [&ca[..], &["-keyout", "ca.key", "-out", "ca.pem"]].concat();
    match run(&ca) {
        Err(e) => {
            eprintln!("skipped: no openssl to make a test certificate: {e}");
            return None;
        }
        Ok(out) => assert!(out.status.success(), "{out:?}"),
    }
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            sans.join(",")
        ),
    )
    .unwrap();
    let csr = [&["req"][..], &ec, &["-subj", "/CN=localhost"]].concat();
    let csr = [&csr[..], &["-keyout", "key.pem", "-out", "leaf.csr"]].concat();
    let out = run(&csr).unwrap();
    assert!(out.status.success(), "{out:?}");
    let sign = [
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "leaf.pem",
    ];
    let out = run(&sign).unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut chain = std::fs::read(dir.join("leaf.pem")).unwrap();
    chain.extend(std::fs::read(dir.join("ca.pem")).unwrap());
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    Some((dir.join("chain.pem"), dir.join("key.pem")))
}

/// The sidecar serves TLS on its Unix socket as on TCP. A `unix:` target
/// has no host name, so the client checks the certificate for `localhost`
/// (as gRPC's own clients do), or for the name the TLS configuration gives
/// (`ClientTlsConfig::domain_name`). (The client spoke plaintext to every
/// `unix:` target, whatever its TLS options: it could not connect.)
#[tokio::test]
async fn tls_on_a_unix_socket_checks_localhost_or_the_name_given() {
    let dir = tempfile::tempdir().unwrap();
    let Some((chain, key)) = certificate_chain(dir.path(), &["localhost", "sidecar.test"]) else {
        return;
    };
    // Its readiness check is a health call through sidecar.client(): TLS,
    // trusting the chain, checked for localhost.
    let sidecar = Sidecar::start_with(SidecarOptions {
        uds: true,
        tls: Some((chain.clone(), key)),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(sidecar.target.starts_with("unix:"), "{}", sidecar.target);
    let client = sidecar.client().await.unwrap();
    let e = client.workflow("wf-missing").get().await.unwrap_err();
    assert_eq!(e.code, Code::NotFound, "{e}");

    let pem = std::fs::read(&chain).unwrap();
    let named = |name: &str| are_sdk::Options {
        tls: Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pem.clone()))
                .domain_name(name),
        ),
        connect_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let client = Client::connect(&sidecar.target, named("sidecar.test"))
        .await
        .unwrap();
    assert_eq!(client.health().await.unwrap(), ServingStatus::Serving);
    let e = Client::connect(&sidecar.target, named("elsewhere.test"))
        .await
        .expect_err("a certificate not for that name is refused");
    assert_eq!(e.code, Code::Unavailable, "{e}");
}

/// A wait answers a workflow already closed even with a zero timeout (the
/// first status may outlast a short timeout, as in the Python SDK); one
/// still running is TIMEOUT. (A zero timeout was TIMEOUT before any
/// status came.)
#[tokio::test]
async fn a_zero_timeout_wait_answers_a_closed_workflow() {
    let (_sidecar, client) = start().await;
    let handle = client
        .submit(
            WorkflowBuilder::new("rust-zero-wait")
                .task(TaskBuilder::new("a", "rust-nobody-serves")),
        )
        .await
        .unwrap();
    let e = timeout(WAIT, handle.wait(Duration::ZERO))
        .await
        .expect("the wait ended")
        .expect_err("a running workflow did not close within 0 s");
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::DeadlineExceeded, "TIMEOUT"),
        "{e}"
    );
    handle.cancel("done").await.unwrap();
    for wait in [Duration::ZERO, Duration::from_nanos(1)] {
        let w = timeout(WAIT, handle.wait(wait))
            .await
            .expect("the wait ended")
            .unwrap_or_else(|e| panic!("wait({wait:?}) of a closed workflow: {e}"));
        assert_eq!(w.state(), pb::WorkflowState::Cancelled);
    }
    let e = timeout(WAIT, handle.result_bytes(Duration::ZERO))
        .await
        .expect("the wait ended")
        .unwrap_err();
    assert_eq!(e.reason, "WORKFLOW_CANCELLED", "{e}");
}

async fn large_output_as_a_blob_and_the_event_stream(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let big = "x".repeat(are_sdk::MAX_INLINE_BYTES + 1024);
    let out = big.clone();
    let worker =
        Worker::new(&client, "rust-blobber", fast(transport)).handle("rust-blob", move |_task| {
            let out = out.clone();
            async move { Ok(json!(out)) }
        });
    let (running, _) = Running::spawn(worker);
    let handle = client
        .submit(WorkflowBuilder::new("rust-blob").task(TaskBuilder::new("big", "rust-blob")))
        .await
        .unwrap();
    let result: String = handle.result(WAIT).await.unwrap();
    assert!(
        result == big,
        "the result is {} bytes; want {}",
        result.len(),
        big.len()
    );
    let task = handle.task("big").await.unwrap();
    assert!(matches!(
        task.output.and_then(|p| p.content),
        Some(pb::payload::Content::Blob(_))
    ));
    running.stop().await;

    let filter = pb::EventFilter {
        workflow_ids: vec![handle.id.clone()],
        ..Default::default()
    };
    let mut events = client.stream_events(filter, Some(0)).await.unwrap();
    let mut types = Vec::new();
    loop {
        match events
            .next(WAIT)
            .await
            .unwrap()
            .expect("the stream is open")
        {
            pb::stream_events_response::Message::Event(e) => types.push(e.event_type),
            pb::stream_events_response::Message::CaughtUp(_) => break,
            pb::stream_events_response::Message::Missed(m) => panic!("missed {m:?}"),
            pb::stream_events_response::Message::Batch(_) => {
                panic!("a batch: the stream returns its events one by one")
            }
        }
    }
    assert!(
        types.contains(&(pb::EventType::WorkflowSubmitted as i32)),
        "{types:?}"
    );
    assert!(
        types.contains(&(pb::EventType::WorkflowCompleted as i32)),
        "{types:?}"
    );
}

async fn graceful_shutdown_lets_a_running_handler_finish(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(1);
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let worker =
        Worker::new(&client, "rust-stopper", fast(transport)).handle("rust-stop", move |task| {
            let started = started_tx.clone();
            let mut go = go_rx.clone();
            async move {
                started.send(()).await.ok();
                let _ = timeout(WAIT, go.wait_for(|g| *g)).await;
                assert!(task.cancel_reason().is_none());
                Ok(json!("finished"))
            }
        });
    let (running, stats) = Running::spawn(worker);
    let handle = client
        .submit(WorkflowBuilder::new("rust-stop").task(TaskBuilder::new("slow", "rust-stop")))
        .await
        .unwrap();
    timeout(WAIT, started_rx.recv())
        .await
        .expect("the handler started");
    running.stop.cancel(); // shutdown begins while the handler runs
    go_tx.send(true).unwrap();
    let Running { join, .. } = running;
    timeout(WAIT, join).await.unwrap().unwrap().unwrap();
    assert_eq!(stats.completed.load(Ordering::Relaxed), 1);
    let result: String = handle.result(WAIT).await.unwrap();
    assert_eq!(result, "finished");
}

#[tokio::test]
async fn several_tasks_over_one_stream() {
    let (_sidecar, client) = start().await;
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now2, most2) = (now.clone(), most.clone());
    let worker = Worker::new(&client, "rust-streamer", fast(WorkerTransport::Stream)).handle(
        "rust-fan",
        move |task| {
            let (now, most) = (now2.clone(), most2.clone());
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                task.record_heartbeat(json!({"step": 1}));
                tokio::task::yield_now().await;
                let out = if task.task_id == "join" {
                    let sum: i64 = (0..8)
                        .filter_map(|i| task.dependency_json::<i64>(&format!("part-{i}")))
                        .sum();
                    json!(sum)
                } else {
                    let input: Value = task.input_json()?;
                    json!(input["n"].as_i64().unwrap_or(0) * 10)
                };
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(out)
            }
        },
    );
    let (running, stats) = Running::spawn(worker);
    let mut spec = WorkflowBuilder::new("rust-fan");
    let mut parts = Vec::new();
    for i in 0..8 {
        let id = format!("part-{i}");
        spec = spec.task(TaskBuilder::new(&id, "rust-fan").input(json!({"n": i})));
        parts.push(id);
    }
    spec = spec.task(TaskBuilder::new("join", "rust-fan").depends_on(parts));
    let handle = client.submit(spec).await.unwrap();
    let result: i64 = handle.result(WAIT).await.unwrap();
    assert_eq!(result, (0..8).map(|i| i * 10).sum::<i64>());
    running.stop().await;
    assert_eq!(stats.completed.load(Ordering::Relaxed), 9);
    assert_eq!(stats.connects.load(Ordering::Relaxed), 1);
    assert!(
        most.load(Ordering::SeqCst) <= 4,
        "more handlers than the concurrency"
    );
}

/// Results that pile up while the stream writes go out in the next write,
/// up to 1,000 a message: 20 outputs of nearly 4 MiB (each within the inline
/// bound) finishing at once made one message of 80 MiB, over the 64 MiB that
/// the client and the sidecar accept. The stream broke, and every attempt in
/// it was lost (here, with one attempt each, the workflow failed). A message
/// is now also cut by its size. The handlers return together (a barrier), on
/// one thread, so all 20 completions are queued before the writer runs.
#[tokio::test]
async fn many_large_completions_at_once_stay_under_the_message_bound() {
    const TASKS: usize = 20;
    let (_sidecar, client) = start().await;
    // A JSON string of MAX_INLINE_BYTES - 62 bytes: inline, not a blob.
    let big = Arc::new("x".repeat(are_sdk::MAX_INLINE_BYTES - 64));
    let together = Arc::new(tokio::sync::Barrier::new(TASKS));
    let out = big.clone();
    let options = WorkerOptions {
        concurrency: TASKS,
        ..fast(WorkerTransport::Stream)
    };
    let worker = Worker::new(&client, "rust-bulky", options).handle("rust-bulky", move |_task| {
        let (out, together) = (out.clone(), together.clone());
        async move {
            timeout(WAIT, together.wait())
                .await
                .map_err(|_| TaskError::new("Stuck", "not every handler started"))?;
            Ok(json!(*out))
        }
    });
    let (running, stats) = Running::spawn(worker);
    let mut spec = WorkflowBuilder::new("rust-bulky");
    for i in 0..TASKS {
        spec = spec.task(
            TaskBuilder::new(&format!("t-{i}"), "rust-bulky")
                .max_attempts(1, Duration::from_millis(10)),
        );
    }
    let handle = client.submit(spec).await.unwrap();
    let workflow = handle.wait(WAIT).await.unwrap();
    let task = handle.task("t-7").await.unwrap();
    assert_eq!(
        workflow.state,
        pb::WorkflowState::Completed as i32,
        "the workflow ended {:?}; a task's failure: {:?}",
        pb::WorkflowState::try_from(workflow.state),
        task.failure.map(|f| f.message)
    );
    let Some(pb::payload::Content::Data(data)) = task.output.and_then(|p| p.content) else {
        panic!("the output is not inline");
    };
    assert_eq!(data.len(), big.len() + 2);
    running.stop().await;
    assert_eq!(stats.completed.load(Ordering::Relaxed), TASKS as i64);
    assert_eq!(
        stats.connects.load(Ordering::Relaxed),
        1,
        "the stream broke"
    );
}

#[tokio::test]
async fn a_refused_registration_ends_run() {
    let (_sidecar, client) = start().await;
    let worker = Worker::new(&client, "not a valid name!", fast(WorkerTransport::Stream))
        .handle("rust-x", |_task| async move { Ok(Value::Null) });
    let e = timeout(WAIT, worker.run(CancellationToken::new()))
        .await
        .expect("run returned in time")
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert_eq!(worker.stats().connects.load(Ordering::Relaxed), 0);
}

#[test]
fn the_stream_is_the_default_transport() {
    assert_eq!(WorkerOptions::default().transport, WorkerTransport::Stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_sidecar_takes_back_a_running_attempt() {
    let (sidecar, client) = start().await;
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(1);
    let (reason_tx, mut reason_rx) = tokio::sync::mpsc::channel(1);
    let worker = Worker::new(&client, "rust-orphan", fast(WorkerTransport::Stream)).handle(
        "rust-orphan",
        move |task| {
            let (started, reason) = (started_tx.clone(), reason_tx.clone());
            async move {
                started.send(()).await.ok();
                let _ = timeout(WAIT, task.cancellation().cancelled()).await;
                reason.send(task.cancel_reason()).await.ok();
                Err(TaskError::new("Cancelled", "stopped"))
            }
        },
    );
    let (running, stats) = Running::spawn(worker);
    client
        .submit(WorkflowBuilder::new("rust-orphan").task(TaskBuilder::new("t", "rust-orphan")))
        .await
        .unwrap();
    timeout(WAIT, started_rx.recv())
        .await
        .expect("the handler started");
    // SIGTERM: the sidecar drains the stream (a short grace in tests), then
    // ends it; the attempt's lease is gone and the worker keeps retrying.
    tokio::task::spawn_blocking(move || drop(sidecar))
        .await
        .unwrap();
    let reason = timeout(WAIT, reason_rx.recv())
        .await
        .expect("the handler heard of it");
    assert_eq!(reason, Some(Some(CancelReason::LeaseLost)));
    running.stop().await;
    assert_eq!(stats.cancelled.load(Ordering::Relaxed), 1);
    assert_eq!(stats.completed.load(Ordering::Relaxed), 0);
}

/// A name no other test (or run) uses.
fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{nanos}-{}", N.fetch_add(1, Ordering::Relaxed))
}

#[tokio::test]
async fn labels_go_in_the_streams_registration() {
    let (_sidecar, client) = start().await;
    assert!(WorkerOptions::default().labels.is_empty());
    // The sidecar shows a worker's labels nowhere (no RPC lists workers with
    // them); what is observable is that it accepts them, and refuses a bad
    // key naming the field.
    let run = unique("r");
    let capability = format!("rust-labelled-{run}");
    let labelled = WorkerOptions {
        labels: HashMap::from([
            ("team".to_string(), "rust".to_string()),
            ("run".to_string(), run.clone()),
        ]),
        ..fast(WorkerTransport::Stream)
    };
    let worker = Worker::new(&client, &capability, labelled)
        .handle(&capability, |_task| async move { Ok(json!("ok")) });
    let (running, stats) = Running::spawn(worker);
    let handle =
        client
            .submit(WorkflowBuilder::new("rust-labels").task(
                TaskBuilder::new("a", &capability).max_attempts(1, Duration::from_millis(10)),
            ))
            .await
            .unwrap();
    let result: String = handle.result(WAIT).await.unwrap();
    assert_eq!(result, "ok");
    running.stop().await;
    assert_eq!(stats.connects.load(Ordering::Relaxed), 1);

    let bad = WorkerOptions {
        labels: HashMap::from([("bad key!".to_string(), "x".to_string())]),
        ..fast(WorkerTransport::Stream)
    };
    let worker = Worker::new(&client, "rust-badly-labelled", bad)
        .handle("rust-x", |_task| async move { Ok(Value::Null) });
    let e = timeout(WAIT, worker.run(CancellationToken::new()))
        .await
        .expect("run returned in time")
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert!(
        e.field("register.labels['bad key!']").is_some(),
        "violations {:?}",
        e.field_violations
    );
    assert_eq!(worker.stats().connects.load(Ordering::Relaxed), 0);
}

/// The cards ListAgents shows for a capability.
async fn cards_of(client: &Client, capability: &str) -> Vec<AgentCard> {
    let filter = AgentFilter {
        capability: capability.to_string(),
        ..Default::default()
    };
    client.router().agents(&filter, 100).await.unwrap()
}

#[tokio::test]
async fn workers_declare_their_cards_and_intents_go_to_the_cheapest_class() {
    let (_sidecar, client) = start().await;
    assert!(WorkerOptions::default().card.is_none());
    let run = unique("c");
    let n = run.replace('-', "");
    let words = format!("summarise quarterly filings of mining firms zq{n}x");
    let mut workers = Vec::new();
    let mut capabilities = HashMap::new();
    for (class, cost) in [("cheap", 3), ("dear", 900)] {
        let capability = format!("rust-sum-{class}-{run}");
        let options = WorkerOptions {
            card: Some(AgentCard {
                description: words.clone(),
                capabilities: vec![capability.clone()],
                cost_per_call_micro_usd: cost,
                ..AgentCard::new(&format!("class-{class}-{run}"))
            }),
            ..fast(WorkerTransport::Stream)
        };
        let worker = Worker::new(&client, &format!("{class}-{run}"), options)
            .handle(&capability, move |_task| async move { Ok(json!(class)) });
        let (running, stats) = Running::spawn(worker);
        workers.push((running, stats));
        capabilities.insert(class, capability);
    }
    // A spawned worker registers in the background: wait (bounded) for both
    // classes to be up before routing between them.
    timeout(WAIT, async {
        for capability in capabilities.values() {
            while !cards_of(&client, capability)
                .await
                .iter()
                .any(|c| c.available)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await
    .expect("both workers registered");
    let cards = cards_of(&client, &capabilities["cheap"]).await;
    let seen: Vec<_> = cards
        .iter()
        .map(|c| {
            (
                c.agent_id.as_str(),
                c.source,
                c.cost_per_call_micro_usd,
                c.available,
            )
        })
        .collect();
    let cheap = format!("class-cheap-{run}");
    assert_eq!(
        seen,
        vec![(cheap.as_str(), AgentSource::Worker, 3, true)],
        "{cards:?}"
    );
    assert_eq!(cards[0].description, words);

    let target = pb::task_spec::Target::Intent(words.clone());
    let handle = client
        .submit(
            WorkflowBuilder::new("rust-intent").task(
                TaskBuilder::new("a", "")
                    .configure(|t| t.target = Some(target))
                    .max_attempts(1, Duration::from_millis(10)),
            ),
        )
        .await
        .unwrap();
    // Cost-biased: both classes clear the threshold, the cheap one wins.
    let answer: String = handle.result(WAIT).await.unwrap();
    assert_eq!(answer, "cheap");
    let mut trace = client.raw().trace;
    let routed = timeout(WAIT, async {
        loop {
            let page = trace
                .list_events(pb::ListEventsRequest {
                    filter: Some(pb::EventFilter {
                        workflow_ids: vec![handle.id.clone()],
                        event_types: vec![pb::EventType::TaskRouted as i32],
                        ..Default::default()
                    }),
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if let Some(event) = page.events.into_iter().next() {
                return event;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the task was routed");
    let agent = routed
        .attributes
        .get("are.route.agent_id")
        .and_then(|v| v.value.clone());
    assert_eq!(
        agent,
        Some(pb::attribute_value::Value::StringValue(cheap.clone())),
        "{routed:?}"
    );

    for (running, stats) in workers {
        running.stop().await;
        assert_eq!(stats.connects.load(Ordering::Relaxed), 1);
    }
    // The workers left: their class is gone (or shown unavailable).
    timeout(WAIT, async {
        while cards_of(&client, &capabilities["cheap"])
            .await
            .iter()
            .any(|c| c.available)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the class left with its workers");
    let left: Vec<bool> = cards_of(&client, &capabilities["cheap"])
        .await
        .iter()
        .map(|c| c.available)
        .collect();
    assert!(left.is_empty() || left == [false], "{left:?}");
}

#[tokio::test]
async fn a_declared_card_is_checked_and_names_the_field() {
    let (_sidecar, client) = start().await;
    let capability = unique("rust-bad-card");
    let bad_cards = [
        (
            "register.agent_card.vector",
            AgentCard {
                capabilities: vec![capability.clone()],
                vector: Some(vec![1.0, 0.0]), // the router's dimension is 256
                ..AgentCard::new("bad-vector")
            },
        ),
        (
            "register.agent_card.capabilities[0]",
            AgentCard {
                capabilities: vec!["not-served".to_string()],
                ..AgentCard::new("bad-cap")
            },
        ),
        (
            "register.agent_card.agent_id",
            AgentCard {
                capabilities: vec![capability.clone()],
                ..AgentCard::new("bad id!")
            },
        ),
    ];
    for (field, card) in bad_cards {
        let options = WorkerOptions {
            card: Some(card),
            ..fast(WorkerTransport::Stream)
        };
        let worker = Worker::new(&client, &unique("rust-bad-card"), options)
            .handle(&capability, |_task| async move { Ok(Value::Null) });
        let e = timeout(WAIT, worker.run(CancellationToken::new()))
            .await
            .expect("run returned in time")
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{e}");
        let fields: Vec<&str> = e
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, [field], "{e}");
        assert_eq!(worker.stats().connects.load(Ordering::Relaxed), 0);
    }
    assert!(cards_of(&client, &capability).await.is_empty()); // nothing was declared
}

async fn handlers_report_llm_and_tool_calls(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let model = unique(&format!("rust-model-{transport:?}").to_lowercase());
    let held = Arc::new(Mutex::new(None));
    let (held2, model2) = (held.clone(), model.clone());
    let worker =
        Worker::new(&client, "rust-reporter", fast(transport)).handle("rust-report", move |task| {
            let (held, model) = (held2.clone(), model2.clone());
            async move {
                *held.lock().unwrap() = Some(task.clone());
                let usage = pb::Usage {
                    input_tokens: 20,
                    output_tokens: 4,
                    cost_micro_usd: 30,
                    ..Default::default()
                };
                task.report_llm_call(&model, usage, Some(Duration::from_millis(15)))
                    .await?;
                // Counts one call, no tokens.
                task.report_llm_call(&model, pb::Usage::default(), None)
                    .await?;
                task.report_tool_call("search", Some(Duration::from_millis(1)))
                    .await?;
                Ok(json!("done"))
            }
        });
    let (running, _) = Running::spawn(worker);
    let handle =
        client
            .submit(WorkflowBuilder::new("rust-report").task(
                TaskBuilder::new("t", "rust-report").max_attempts(1, Duration::from_millis(10)),
            ))
            .await
            .unwrap();
    let result: String = handle.result(WAIT).await.unwrap();
    assert_eq!(result, "done");
    running.stop().await;

    // The attempt's usage, reported with its result: both LLM calls and the
    // tool call; the workflow's sums the same.
    let want = pb::Usage {
        input_tokens: 20,
        output_tokens: 4,
        cost_micro_usd: 30,
        llm_calls: 2,
        tool_calls: 1,
    };
    let task = handle.task("t").await.unwrap();
    assert_eq!(task.usage.and_then(|u| u.usage), Some(want));
    let workflow = handle.get().await.unwrap();
    assert_eq!(workflow.usage.and_then(|u| u.usage), Some(want));

    let mut trace = client.raw().trace;
    let page = trace
        .list_events(pb::ListEventsRequest {
            filter: Some(pb::EventFilter {
                workflow_ids: vec![handle.id.clone()],
                event_types: vec![
                    pb::EventType::LlmCall as i32,
                    pb::EventType::ToolCall as i32,
                ],
                ..Default::default()
            }),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut llm, mut tools) = (Vec::new(), Vec::new());
    for event in page.events {
        assert_eq!((event.task_id.as_str(), event.attempt), ("t", 1));
        if event.event_type == pb::EventType::LlmCall as i32 {
            llm.push(event);
        } else {
            tools.push(event);
        }
    }
    assert_eq!(llm.len(), 2, "{llm:?}");
    assert_eq!(llm[0].name, model);
    assert_eq!(
        llm[0].usage,
        Some(pb::Usage {
            input_tokens: 20,
            output_tokens: 4,
            cost_micro_usd: 30,
            llm_calls: 1,
            tool_calls: 0,
        })
    );
    assert_eq!(
        llm[0].duration,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 15_000_000
        })
    );
    assert_eq!(llm[1].name, model);
    assert_eq!(llm[1].usage.map(|u| u.llm_calls), Some(1));
    assert_eq!(llm[1].duration, None);
    assert_eq!(tools.len(), 1, "{tools:?}");
    assert_eq!(tools[0].name, "search");
    assert_eq!(tools[0].usage.map(|u| u.tool_calls), Some(1));

    // Once the attempt is over, its events are still taken for five minutes
    // (event.proto): a report sent just after the result is not lost.
    let task = held.lock().unwrap().take().expect("the handler ran");
    task.report_tool_call("late", None)
        .await
        .expect("an event just after the attempt ended is recorded");
}

/// report_llm_call could not name the provider, nor a handler record a
/// custom event; the sidecar fills the GenAI attributes the call itself gives.
#[tokio::test]
async fn reported_calls_carry_the_gen_ai_attributes_and_custom_events_reach_the_trace() {
    let (_sidecar, client) = start().await;
    let capability = unique("rust-genai");
    let worker = Worker::new(&client, "rust-genai", fast(WorkerTransport::Stream)).handle(
        &capability,
        |task| async move {
            let usage = pb::Usage {
                input_tokens: 12,
                output_tokens: 3,
                ..Default::default()
            };
            let options = LlmCallOptions {
                provider: "openai".into(),
                response_model: "gpt-x-2025".into(),
                attributes: Attributes::from([("temp".into(), 0.5.into())]),
            };
            task.report_llm_call_with("gpt-x", usage, None, options)
                .await?;
            task.report_llm_call("bare-model", pb::Usage::default(), None)
                .await?;
            let options = ToolCallOptions {
                call_id: "call_7".into(),
                attributes: Attributes::from([
                    ("hits".into(), 3.into()),
                    ("cached".into(), true.into()),
                ]),
            };
            task.report_tool_call_with("search", None, options).await?;
            task.report_event("chose plan B", [("reason", "budget")])
                .await?;
            // Refused before sending: the handler hands the error back.
            let e = task
                .report_event("bad", [("x", f64::NAN)])
                .await
                .unwrap_err();
            Ok(json!([
                e.code as i32,
                e.reason,
                e.field_violations[0].field,
                e.field_violations[0].description
            ]))
        },
    );
    let (running, _) = Running::spawn(worker);
    let handle =
        client
            .submit(WorkflowBuilder::new("rust-genai").task(
                TaskBuilder::new("t", &capability).max_attempts(1, Duration::from_millis(10)),
            ))
            .await
            .unwrap();
    let refused: Value = handle.result(WAIT).await.unwrap();
    running.stop().await;
    assert_eq!(
        refused,
        json!([
            Code::InvalidArgument as i32,
            "INVALID_ARGUMENT",
            "attributes['x']",
            "is NaN: event attributes must be finite numbers"
        ])
    );

    let page = client
        .raw()
        .trace
        .list_events(pb::ListEventsRequest {
            filter: Some(pb::EventFilter {
                workflow_ids: vec![handle.id.clone()],
                event_types: vec![
                    pb::EventType::LlmCall as i32,
                    pb::EventType::ToolCall as i32,
                    pb::EventType::WorkerCustom as i32,
                ],
                ..Default::default()
            }),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    fn values(event: &pb::Event) -> HashMap<String, Value> {
        use pb::attribute_value::Value as V;
        event
            .attributes
            .iter()
            .map(|(k, v)| {
                let v = match &v.value {
                    Some(V::StringValue(s)) => json!(s),
                    Some(V::IntValue(i)) => json!(i),
                    Some(V::DoubleValue(d)) => json!(d),
                    Some(V::BoolValue(b)) => json!(b),
                    None => Value::Null,
                };
                (k.clone(), v)
            })
            .collect()
    }
    let expect =
        |pairs: Value| -> HashMap<String, Value> { serde_json::from_value(pairs).unwrap() };
    let [llm, bare, tool, custom] = &page.events[..] else {
        panic!("four events, got {:?}", page.events);
    };
    assert_eq!(llm.name, "gpt-x");
    assert_eq!(
        values(llm),
        expect(json!({
            "gen_ai.system": "openai",
            "gen_ai.response.model": "gpt-x-2025",
            "gen_ai.request.model": "gpt-x",
            "gen_ai.operation.name": "chat",
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.usage.output_tokens": 3,
            "temp": 0.5,
        }))
    );
    assert_eq!(values(bare)["gen_ai.request.model"], json!("bare-model"));
    assert_eq!(tool.event_type, pb::EventType::ToolCall as i32);
    assert_eq!(
        values(tool),
        expect(json!({
            "gen_ai.tool.name": "search",
            "gen_ai.tool.call.id": "call_7",
            "hits": 3,
            "cached": true,
        }))
    );
    assert_eq!(custom.event_type, pb::EventType::WorkerCustom as i32);
    assert_eq!(custom.name, "chose plan B");
    assert_eq!(values(custom), expect(json!({"reason": "budget"})));
}

/// A failure whose type is over 256 characters and details over 1 MiB, with
/// a negative usage counter, was refused by the sidecar, leaving the task
/// RUNNING: the worker cuts the type, drops the details saying so and
/// clamps the counter, so the task ends FAILED.
async fn a_failure_past_the_sidecars_bounds_is_fitted_to_them(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let worker = Worker::new(&client, "rust-oversized", fast(transport)).handle(
        "rust-oversized",
        |task| async move {
            task.add_usage(pb::Usage {
                input_tokens: 5,
                output_tokens: -1,
                ..Default::default()
            });
            Err::<Value, _>(are_sdk::TaskError {
                details: Some(json!("x".repeat(1024 * 1024))),
                ..are_sdk::TaskError::new(&format!("{}é", "T".repeat(299)), "too big")
            })
        },
    );
    let (running, _stats) = Running::spawn(worker);
    let task = failed_task(&client, "rust-oversized").await;
    let failure = task.failure.unwrap();
    assert_eq!(failure.r#type, "T".repeat(256));
    assert_eq!(
        failure.message,
        "too big (details of 1048578 bytes dropped: over 1 MiB)"
    );
    assert!(failure.details.is_none());
    let usage = task.usage.unwrap().usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (5, 0));
    running.stop().await;
}

/// An error with a message and, maybe, the error it came from.
#[derive(Debug)]
struct Layer {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Layer {
    fn new(message: &str, source: Option<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Layer {
            message: message.to_string(),
            source,
        }
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Layer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// An error whose Display panics.
#[derive(Debug)]
struct Unreadable(std::io::Error);

impl std::fmt::Display for Unreadable {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("no message for you")
    }
}

impl std::error::Error for Unreadable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A chain of `depth` errors, "level {depth}" outermost.
fn layers(depth: usize, message: impl Fn(usize) -> String) -> Layer {
    let mut e = Layer::new(&message(1), None);
    for level in 2..=depth {
        e = Layer::new(&message(level), Some(Box::new(e)));
    }
    e
}

/// A failure and its causes, outermost first, as "type: message".
fn chain_of(failure: &pb::Failure) -> Vec<String> {
    std::iter::successors(Some(failure), |f| f.cause.as_deref())
        .map(|f| format!("{}: {}", f.r#type, f.message))
        .collect()
}

/// A handler's error with sources (`?` on a 3-level chain; one whose cause
/// cannot be displayed) fails its task with those sources as the failure's
/// nested causes, outermost first: each with its message and a type (a
/// common type's name, else its Debug's leading identifier), readable from
/// the task's failure. They used to be dropped: the failure had no cause.
async fn a_handlers_error_sources_are_its_failures_causes(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    fn fetch() -> Result<Value, Layer> {
        let disk = std::io::Error::other("disk full");
        let cache = Layer::new("the cache could not be written", Some(Box::new(disk)));
        Err(Layer::new(
            "could not fetch the page",
            Some(Box::new(cache)),
        ))
    }
    fn lookup() -> Result<Value, Layer> {
        let gone = std::io::Error::new(std::io::ErrorKind::NotFound, "no such model");
        Err(Layer::new(
            "lookup failed",
            Some(Box::new(Unreadable(gone))),
        ))
    }
    let worker = Worker::new(&client, "rust-causes", fast(transport))
        .handle("rust-causes", |_| async move { Ok(fetch()?) })
        .handle("rust-causes-unreadable", |_| async move { Ok(lookup()?) });
    let (running, _stats) = Running::spawn(worker);

    let failure = failed_task(&client, "rust-causes").await.failure.unwrap();
    assert_eq!(
        chain_of(&failure),
        [
            "sidecar::Layer: could not fetch the page",
            "Layer: the cache could not be written",
            "std::io::error::Error: disk full",
        ]
    );
    let mut causes = std::iter::successors(failure.cause.as_deref(), |f| f.cause.as_deref());
    assert!(causes.all(|c| c.kind == pb::FailureKind::Application as i32));

    let failure = failed_task(&client, "rust-causes-unreadable").await.failure;
    assert_eq!(
        chain_of(&failure.unwrap()),
        [
            "sidecar::Layer: lookup failed",
            "Unreadable: Unreadable (its message could not be read: its Display panicked)",
            "std::io::error::Error: no such model",
        ]
    );
    running.stop().await;
}

/// A source chain deeper than the sidecar keeps (50 errors) is cut to its 8
/// outermost causes, the deepest saying how many were dropped and why; one
/// that with the failure's details is over 1 MiB loses its deepest causes
/// until it fits, the deepest kept one saying so.
async fn a_source_chain_deeper_than_8_is_cut_saying_so(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let worker = Worker::new(&client, "rust-deep-causes", fast(transport))
        .handle("rust-causes-deep", |_| async move {
            Err::<Value, _>(layers(50, |level| format!("level {level}")).into())
        })
        .handle("rust-causes-large", |_| async move {
            let long = layers(3, |level| format!("{level}{}", "a".repeat(30_000)));
            Err::<Value, _>(TaskError {
                details: Some(json!("x".repeat(1_000_000))),
                ..Layer::new("too much", Some(Box::new(long))).into()
            })
        });
    let (running, _stats) = Running::spawn(worker);

    let levels = chain_of(
        &failed_task(&client, "rust-causes-deep")
            .await
            .failure
            .unwrap(),
    );
    assert_eq!(levels.len(), 9, "{levels:?}");
    assert_eq!(levels[0], "sidecar::Layer: level 50");
    assert_eq!(levels[1], "Layer: level 49");
    assert_eq!(
        levels[8],
        "Layer: level 42 [41 deeper causes dropped: causes nest at most 8 deep]"
    );

    let failure = failed_task(&client, "rust-causes-large")
        .await
        .failure
        .unwrap();
    assert!(failure.details.is_some(), "1 MB of details fit alone");
    let levels = chain_of(&failure);
    assert_eq!(
        levels.len(),
        2,
        "one 30 KB cause fits beside 1 MB of details"
    );
    assert!(levels[1].starts_with("Layer: 3aaa"), "{}", &levels[1][..20]);
    assert!(
        levels[1]
            .ends_with(" [2 deeper causes dropped: a failure with its causes is at most 1 MiB]"),
        "{}",
        &levels[1][levels[1].len() - 100..]
    );
    running.stop().await;
}

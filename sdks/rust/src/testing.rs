//! Starts a real sidecar for tests: `PYTHON -m sidecar serve` on
//! 127.0.0.1:0 in a temporary data folder, stopped with SIGTERM on drop.
//!
//! PYTHON is `$ARE_PYTHON`, else the repository's `.venv/bin/python`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use tonic::transport::Certificate;

use crate::{Client, ClientTlsConfig, Code, Options, ServingStatus};

/// A sidecar process for the length of a test.
#[derive(Debug)]
pub struct Sidecar {
    /// The `host:port` (or `unix:PATH`) it listens on.
    pub target: String,
    token: Option<String>,
    tls_cert: Option<PathBuf>,
    child: Child,
    dir: PathBuf,
}

/// How to start a [`Sidecar`].
#[derive(Clone, Debug, Default)]
pub struct SidecarOptions {
    /// Require this bearer token (written to a token file).
    pub token: Option<String>,
    /// Listen on a Unix socket in the temporary folder instead of TCP.
    pub uds: bool,
    /// Serve TLS with this PEM certificate (chain) and key; the sidecar's
    /// [`Sidecar::client`] trusts the certificate. On a Unix socket too,
    /// where the client checks it for the name `localhost`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// More options for `serve`.
    pub args: Vec<String>,
}

fn python() -> PathBuf {
    std::env::var_os("ARE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"))
}

fn fail(msg: String) -> Error {
    Error::local(Code::Unavailable, "SIDECAR_NOT_STARTED", msg)
}

impl Sidecar {
    /// Starts a sidecar with extra `serve` options and waits (at most 30 s)
    /// until it answers SERVING.
    pub async fn start(args: &[&str]) -> Result<Sidecar> {
        Sidecar::start_with(SidecarOptions {
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        })
        .await
    }

    /// Starts a sidecar as `options` say and waits (at most 30 s) until it
    /// answers SERVING.
    pub async fn start_with(options: SidecarOptions) -> Result<Sidecar> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("are-sdk-rust-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("cannot create {dir:?}: {e}")))?;
        let ready = dir.join("ready.json");
        let log =
            std::fs::File::create(dir.join("sidecar.log")).map_err(|e| fail(e.to_string()))?;
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut command = Command::new(python());
        command.args([
            "-m",
            "sidecar",
            "serve",
            "--durability",
            "relaxed",
            "--shutdown-grace-s",
            "1",
        ]);
        if options.uds {
            command
                .args(["--listen", "off", "--uds"])
                .arg(dir.join("are.sock"));
        } else {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if let Some(token) = &options.token {
            let file = dir.join("token");
            std::fs::write(&file, token).map_err(|e| fail(e.to_string()))?;
            command.arg("--token-file").arg(file);
        }
        if let Some((cert, key)) = &options.tls {
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        let child = command
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--ready-file")
            .arg(&ready)
            .args(&options.args)
            .current_dir(repo)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| fail(e.to_string()))?)
            .stderr(log)
            .spawn()
            .map_err(|e| fail(format!("cannot run {:?}: {e}", python())))?;
        let mut sidecar = Sidecar {
            target: String::new(),
            token: options.token,
            tls_cert: options.tls.map(|(cert, _)| cert),
            child,
            dir,
        };
        let started = Instant::now();
        let limit = Duration::from_secs(30);
        while started.elapsed() < limit {
            if let Ok(Some(status)) = sidecar.child.try_wait() {
                let log =
                    std::fs::read_to_string(sidecar.dir.join("sidecar.log")).unwrap_or_default();
                return Err(fail(format!("the sidecar exited with {status}: {log}")));
            }
            let text = std::fs::read_to_string(&ready).unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if let Some(t) = v["targets"][0].as_str() {
                    sidecar.target = t.to_string();
                    let client = sidecar.client().await?;
                    if client.health().await? == ServingStatus::Serving {
                        return Ok(sidecar);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(fail(format!(
            "the sidecar was not SERVING within {limit:?}"
        )))
    }

    /// A client of this sidecar (with its token, trusting its certificate).
    pub async fn client(&self) -> Result<Client> {
        let tls = match &self.tls_cert {
            Some(cert) => {
                let pem =
                    std::fs::read(cert).map_err(|e| fail(format!("cannot read {cert:?}: {e}")))?;
                Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            }
            None => None,
        };
        let options = Options {
            token: self.token.clone(),
            tls,
            ..Default::default()
        };
        Client::connect(&self.target, options).await
    }

    /// Kills the sidecar at once (SIGKILL), as a crash or a power loss
    /// would, and reaps it: its open calls fail with UNAVAILABLE and nothing
    /// answers at its target any more. Its temporary folder goes on drop.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sidecar {
    /// SIGTERM, up to 15 s for a graceful exit, then SIGKILL.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            // Gone already (killed): its pid may be another process's now.
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

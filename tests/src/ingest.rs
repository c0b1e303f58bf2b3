//! Runs the real `fluxgate-ingest` binary on ports it picks itself (so parallel tests never
//! race for a port) and waits until it is ready.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{STARTUP_DEADLINE, http, workspace_binary};

/// The log line ingest writes once it listens, under a target of its own.
const LISTEN_TARGET: &str = "fluxgate_ingest::listen";

pub struct Ingest {
    pub port: u16,
    pub admin_port: u16,
    child: Child,
}

impl Ingest {
    /// Starts ingest against `nats_url` with `receivers_file` and any extra flags, learns its
    /// ports from its start-up log line, and waits for `/readyz` to answer 200. Its other log
    /// lines (warnings, unless `RUST_LOG` says otherwise) go to this process's stderr.
    pub async fn start(nats_url: &str, receivers_file: &Path, extra_args: &[&str]) -> Self {
        let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let mut child = Command::new(workspace_binary("fluxgate-ingest"))
            .arg("--nats-url")
            .arg(nats_url)
            .arg("--receivers-file")
            .arg(receivers_file)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--reload-interval", "100ms", "--log-format", "json"])
            .args(extra_args)
            .env("RUST_LOG", format!("{level},{LISTEN_TARGET}=info"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fluxgate-ingest");
        let (ports_tx, ports_rx) = tokio::sync::oneshot::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || forward_logs(stderr, ports_tx));
        let (port, admin_port) = match tokio::time::timeout(STARTUP_DEADLINE, ports_rx).await {
            Ok(Ok(ports)) => ports,
            Ok(Err(_)) => panic!(
                "fluxgate-ingest exited before listening: {:?}",
                child.wait()
            ),
            Err(_) => panic!("fluxgate-ingest did not start listening"),
        };
        let ingest = Self {
            port,
            admin_port,
            child,
        };
        ingest.wait_ready().await;
        ingest
    }

    pub fn hook_url(&self, hook_path: &str) -> String {
        format!("http://127.0.0.1:{}{hook_path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(response) = http::get(&self.admin_url("/readyz")).await
                && response.status == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "fluxgate-ingest did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

/// Copies ingest's log lines to stderr, and reports the ports of its "serving" line.
fn forward_logs(
    stderr: std::process::ChildStderr,
    ports: tokio::sync::oneshot::Sender<(u16, u16)>,
) {
    let mut ports = Some(ports);
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        let parsed: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        let Some(entry) = parsed.filter(|e| e["target"] == LISTEN_TARGET) else {
            eprintln!("{line}");
            continue;
        };
        let port_of = |field: &str| {
            entry[field]
                .as_str()
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
        };
        if let (Some(listen), Some(admin), Some(tx)) =
            (port_of("listen"), port_of("admin"), ports.take())
        {
            let _ = tx.send((listen, admin));
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

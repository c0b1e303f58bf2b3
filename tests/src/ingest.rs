//! Runs the real `fluxgate-ingest` binary on free ports and waits until it is ready.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{STARTUP_DEADLINE, free_port, http, workspace_binary};

pub struct Ingest {
    pub port: u16,
    pub admin_port: u16,
    child: Child,
}

impl Ingest {
    /// Starts ingest against `nats_url` with `receivers_file` and any extra flags, and waits
    /// for `/readyz` to answer 200.
    pub async fn start(nats_url: &str, receivers_file: &Path, extra_args: &[&str]) -> Self {
        let ingest = Self::spawn(nats_url, receivers_file, extra_args);
        ingest.wait_ready().await;
        ingest
    }

    /// Starts ingest without waiting for readiness.
    pub fn spawn(nats_url: &str, receivers_file: &Path, extra_args: &[&str]) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let child = Command::new(workspace_binary("fluxgate-ingest"))
            .arg("--nats-url")
            .arg(nats_url)
            .arg("--receivers-file")
            .arg(receivers_file)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--reload-interval", "100ms", "--log-format", "text"])
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fluxgate-ingest");
        Self {
            port,
            admin_port,
            child,
        }
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

    /// Waits for the process to exit by itself (a start-up failure, say).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for fluxgate-ingest")
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

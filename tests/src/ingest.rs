//! Runs the real `fluxgate-ingest` binary and waits until it is ready.

use crate::process::Service;
use crate::{eventually, http};
use std::path::Path;

pub struct Ingest {
    pub port: u16,
    pub admin_port: u16,
    service: Service,
}

impl Ingest {
    /// Starts ingest against `nats_url` with `receivers_file` and any extra flags on ports of
    /// its choosing, and waits for `/readyz` to answer 200.
    pub async fn start(nats_url: &str, receivers_file: &Path, extra_args: &[&str]) -> Self {
        let file = receivers_file.display().to_string();
        let mut args = vec!["--receivers-file", file.as_str()];
        args.extend_from_slice(extra_args);
        Self::start_with(nats_url, &args, &[]).await
    }

    /// Starts ingest without a receivers file: it watches the cluster of `kubeconfig`.
    pub async fn start_in_cluster(nats_url: &str, kubeconfig: &Path, extra_args: &[&str]) -> Self {
        let kubeconfig = kubeconfig.display().to_string();
        Self::start_with(nats_url, extra_args, &[("KUBECONFIG", kubeconfig.as_str())]).await
    }

    /// Starts ingest with these flags and environment variables added to the test's.
    pub async fn start_with(nats_url: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args: Vec<String> = vec![
            "--nats-url".into(),
            nats_url.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--reload-interval".into(),
            "100ms".into(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let (service, ports) = Service::start(
            "fluxgate-ingest",
            &args,
            env,
            "fluxgate_ingest::listen",
            &["listen", "admin"],
        )
        .await;
        let ingest = Self {
            port: ports[0],
            admin_port: ports[1],
            service,
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

    /// Its log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.service.logs()
    }

    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(&self) {
        eventually("fluxgate-ingest ready", || async {
            match http::get(&self.admin_url("/readyz")).await {
                Ok(response) if response.status == 200 => Ok(()),
                other => Err(other.map(|r| r.status)),
            }
        })
        .await
    }

    /// The metrics page, as text.
    pub async fn metrics(&self) -> String {
        let response = http::get(&self.admin_url("/metrics"))
            .await
            .expect("metrics");
        String::from_utf8_lossy(&response.body).into_owned()
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited successfully.
    pub async fn terminate(&mut self) -> bool {
        self.service.terminate().await
    }
}

//! Runs a fluxgate binary as a child process on ports it picks itself, learning them from the
//! start-up log line it writes under a target of its own (so parallel tests never race for a
//! port). The child's other log lines are copied to this process's stderr, and kept.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::{STARTUP_DEADLINE, eventually, workspace_binary};

pub struct Service {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// Starts `binary` with `args` (plus `--log-format json`), waits for its log line with
    /// `target`, and returns the service with the ports of that line's `fields`
    /// (`"127.0.0.1:1234"` style values), in order.
    pub async fn start(
        binary: &str,
        args: &[String],
        env: &[(&str, &str)],
        target: &str,
        fields: &[&str],
    ) -> (Self, Vec<u16>) {
        let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let mut child = Command::new(workspace_binary(binary))
            .args(args)
            .args(["--log-format", "json"])
            .envs(env.iter().copied())
            .env("RUST_LOG", format!("{level},{target}=info"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}"));
        let (ports_tx, ports_rx) = tokio::sync::oneshot::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let (target, fields) = (
            target.to_owned(),
            fields.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        );
        let logs = Arc::new(Mutex::new(Vec::new()));
        let kept = logs.clone();
        std::thread::spawn(move || forward_logs(stderr, &target, &fields, ports_tx, &kept));
        let ports = match tokio::time::timeout(STARTUP_DEADLINE, ports_rx).await {
            Ok(Ok(ports)) => ports,
            Ok(Err(_)) => panic!("{binary} exited before listening: {:?}", child.wait()),
            Err(_) => panic!("{binary} did not start listening"),
        };
        (Self { child, logs }, ports)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines written so far (those at the level the test asked for: `RUST_LOG`, else
    /// warnings and errors).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited successfully.
    /// Waiting polls instead of blocking, so servers in this test's runtime (the API stand-in)
    /// keep answering the exiting process.
    pub async fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let exited = eventually("the process to exit after SIGTERM", || {
            let polled = self.child.try_wait();
            async move {
                match polled {
                    Ok(Some(status)) => Ok(status.success()),
                    Ok(None) => Err("still running"),
                    // Cannot learn how it ended: not a successful exit.
                    Err(_) => Ok(false),
                }
            }
        });
        exited.await
    }

    /// SIGKILLs the process, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies log lines to stderr, and reports the ports of the line with `target`.
fn forward_logs(
    stderr: std::process::ChildStderr,
    target: &str,
    fields: &[String],
    ports: tokio::sync::oneshot::Sender<Vec<u16>>,
    kept: &Mutex<Vec<String>>,
) {
    let mut ports = Some(ports);
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        if let Ok(mut kept) = kept.lock() {
            kept.push(line.clone());
        }
        let parsed: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        let Some(entry) = parsed.filter(|e| e["target"] == target) else {
            eprintln!("{line}");
            continue;
        };
        let found: Option<Vec<u16>> = fields
            .iter()
            .map(|field| {
                entry[field.as_str()]
                    .as_str()
                    .and_then(|addr| addr.rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok())
            })
            .collect();
        if let (Some(found), Some(tx)) = (found, ports.take()) {
            let _ = tx.send(found);
        }
    }
}

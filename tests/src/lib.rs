//! Test and benchmark support for fluxgate: a `nats-server` harness, real-binary process
//! handles, and signed-webhook helpers. Used by the end-to-end tests and the load tool.

pub mod apiserver;
pub mod containers;
pub mod dispatcher;
pub mod http;
pub mod ingest;
pub mod nats;
pub mod oidc;
pub mod otlp;
pub mod process;
pub mod soak;
pub mod stack;
pub mod tls;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

/// How long a harness waits for a process to become ready before failing the test.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long [`eventually`] waits for something that should happen.
pub const EVENTUALLY_DEADLINE: Duration = Duration::from_secs(90);

/// Polls `probe` until it answers `Ok`, and returns that; its `Err` says what it saw instead,
/// and is in the panic when `what` has not happened within [`EVENTUALLY_DEADLINE`]. The one
/// poll loop of the end-to-end tests: they wait for processes and streams, which notify no one.
pub async fn eventually<T, E, F, Fut>(what: &str, mut probe: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY_DEADLINE;
    loop {
        match probe().await {
            Ok(done) => return done,
            Err(seen) => assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; last seen: {seen:#?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A binary of this workspace, next to the running test or tool (`target/<profile>/`), or in
/// `$FLUXGATE_BIN_DIR` (a benchmark comparing two builds). `cargo test --workspace` and
/// `cargo nextest run --workspace` build every binary first.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = match std::env::var_os("FLUXGATE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => exe.parent().expect("executable directory").to_path_buf(),
    };
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// Runs the `fluxgate` CLI against `nats_url` (with `env` added to its environment) and returns
/// its exit status, stdout and stderr.
pub fn fluxgate_cli(nats_url: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = std::process::Command::new(workspace_binary("fluxgate"))
        .env("NATS_URL", nats_url)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run fluxgate");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The repository's root directory.
pub fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

/// Renders a kustomization of this repository (`deploy/...`) with `kubectl kustomize`:
/// `$FLUXGATE_KUBECTL`, else `kubectl` on PATH (`scripts/tools.sh` installs one).
pub fn kustomize(path: &str) -> String {
    let kubectl = std::env::var("FLUXGATE_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let output = std::process::Command::new(&kubectl)
        .arg("kustomize")
        .arg(repository_root().join(path))
        .output()
        .unwrap_or_else(|e| {
            panic!("run {kubectl} (set FLUXGATE_KUBECTL, see scripts/tools.sh): {e}")
        });
    assert!(
        output.status.success(),
        "kubectl kustomize {path}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kustomize prints UTF-8")
}

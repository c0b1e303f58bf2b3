//! The container image and docker-compose.yml, through a real Docker engine: the image runs
//! the three binaries as a non-root user without a shell and carries the OCI labels, and
//! `docker compose up` takes a signed webhook through NATS, ingest and the dispatcher to a
//! patched object that the stand-in's Flux controllers report handled.
//!
//! Needs Docker and the images `fluxgate:dev` and `fluxgate-stand-in:dev`, which the test
//! command builds (`scripts/docker.sh start`, then `scripts/images.sh`).

use std::process::{Command, Output};
use std::time::Instant;

use fluxgate_tests::webhook::{github_push_body, hook_path, post_github_push};
use fluxgate_tests::{eventually, http, repository_root};
use serde_json::Value;

const IMAGE: &str = "fluxgate:dev";

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repository_root())
        .output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e} (is Docker installed?)"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn inspect(image: &str) -> Value {
    let output = run("docker", &["image", "inspect", image], &[]);
    assert!(
        output.status.success(),
        "{image} is missing: build it with scripts/images.sh ({})",
        String::from_utf8_lossy(&output.stderr)
    );
    let images: Value = serde_json::from_slice(&output.stdout).expect("inspect JSON");
    images[0].clone()
}

#[test]
fn the_image_runs_the_three_binaries_as_non_root_without_a_shell() {
    let image = inspect(IMAGE);
    let config = &image["Config"];
    assert_eq!(config["User"], "65532:65532", "{config:#}");
    for label in [
        "org.opencontainers.image.title",
        "org.opencontainers.image.description",
        "org.opencontainers.image.licenses",
        "org.opencontainers.image.version",
        "org.opencontainers.image.revision",
        "org.opencontainers.image.created",
        "org.opencontainers.image.base.name",
    ] {
        let value = config["Labels"][label].as_str().unwrap_or_default();
        assert!(!value.is_empty(), "label {label} missing: {config:#}");
    }
    for binary in ["fluxgate-ingest", "fluxgate-dispatcher", "fluxgate"] {
        let output = run("docker", &["run", "--rm", IMAGE, binary, "--version"], &[]);
        assert!(output.status.success(), "{binary}: {output:?}");
        assert!(stdout(&output).starts_with(binary), "{binary}: {output:?}");
    }
    let shell = run(
        "docker",
        &[
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            IMAGE,
            "-c",
            "true",
        ],
        &[],
    );
    assert!(!shell.status.success(), "the runtime has no shell");
}

/// `docker compose`, or the standalone `docker-compose` (v1) where the plugin is absent.
fn compose_command() -> Vec<String> {
    if let Ok(command) = std::env::var("FLUXGATE_COMPOSE") {
        return command.split_whitespace().map(str::to_owned).collect();
    }
    let plugin = Command::new("docker").args(["compose", "version"]).output();
    if plugin.is_ok_and(|o| o.status.success()) {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// A compose project of its own, on ports Docker picks, torn down (volumes too) when dropped;
/// a failing test prints its services' logs first.
struct Compose {
    command: Vec<String>,
    project: String,
}

impl Compose {
    fn compose(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = self.command[1..].iter().map(String::as_str).collect();
        all.extend(["-p", self.project.as_str()]);
        all.extend_from_slice(args);
        run(
            &self.command[0],
            &all,
            &[
                ("FLUXGATE_INGEST_PORT", "0"),
                ("FLUXGATE_APISERVER_PORT", "0"),
            ],
        )
    }

    /// The host address Docker published `port` of `service` on.
    fn address(&self, service: &str, port: &str) -> String {
        let output = self.compose(&["port", service, port]);
        let published = stdout(&output).trim().to_owned();
        let port = published.rsplit(':').next().unwrap_or_default();
        assert!(
            !port.is_empty(),
            "{service}:{port} not published: {output:?}"
        );
        format!("127.0.0.1:{port}")
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", stdout(&self.compose(&["logs", "--no-color"])));
        }
        let _ = self.compose(&["down", "-v", "--remove-orphans"]);
    }
}

#[tokio::test]
async fn docker_compose_takes_a_signed_webhook_to_a_handled_reconcile() {
    inspect(IMAGE);
    inspect("fluxgate-stand-in:dev");
    let stack = Compose {
        command: compose_command(),
        project: format!("fluxgate-test-{}", std::process::id()),
    };
    let started = Instant::now();
    let up = stack.compose(&["up", "-d"]);
    assert!(up.status.success(), "compose up: {up:?}");
    let ingest = stack.address("ingest", "9292");
    let apiserver = stack.address("apiserver", "6443");

    // The quick start's receiver (deploy/examples/receivers.yaml).
    let token = "quickstart-secret-change-me";
    let url = format!(
        "http://{ingest}{}",
        hook_path(token, "github-receiver", "flux-system")
    );
    let accepted_at = eventually("ingest accepting the webhook", || async {
        // 503 until ingest has listed the Receivers and reached JetStream.
        let response = post_github_push(&url, token, "compose-1", github_push_body(128)).await;
        if response.status == 202 {
            Ok(Instant::now())
        } else {
            Err(response)
        }
    })
    .await;
    let ready_in = accepted_at - started;

    let object = format!(
        "http://{apiserver}/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/webapp"
    );
    let requested = eventually("webapp reconciled and handled", || async {
        let repository = http::get(&object).await.map(|r| r.json());
        let annotations = repository.as_ref().ok().map(|r| {
            let requested =
                r["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"].as_str();
            let handled = r["status"]["lastHandledReconcileAt"].as_str();
            (requested.map(str::to_owned), handled.map(str::to_owned))
        });
        match annotations {
            Some((Some(requested), Some(handled))) if requested == handled => Ok(requested),
            _ => Err(repository),
        }
    })
    .await;
    let round_trip = accepted_at.elapsed();
    assert!(!requested.is_empty());

    // The history, as the README shows it: the CLI in the same image, on the compose network.
    let history = eventually("the delivery handled in the history", || async {
        let output = stack.compose(&["run", "--rm", "fluxgate", "deliveries", "list"]);
        let history = stdout(&output);
        if history.contains("compose-1") && history.contains("handled") {
            Ok(history)
        } else {
            Err(output)
        }
    })
    .await;
    assert!(history.contains("flux-system/github-receiver"), "{history}");
    println!(
        "compose: up and accepting in {ready_in:?}; webhook accepted to object handled in {round_trip:?}"
    );
}

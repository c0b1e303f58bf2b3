//! The binaries against a `nats-server` that requires credentials or mutual TLS: each works with
//! what it is given, and refuses to start, saying why, when the credentials are unreadable or
//! refused.

use std::process::Command;

use fluxgate_tests::stack::Stack;
use fluxgate_tests::tls::Pki;
use fluxgate_tests::webhook::{
    github_push_body, post_github_push, receiver_manifest, secret_manifest,
};
use fluxgate_tests::{fluxgate_cli, workspace_binary};
use serde_json::json;

const NS: &str = "flux-system";
const GH_TOKEN: &str = "gh-secret";
const PASSWORD: &str = "ingest-pw";

fn receivers() -> String {
    [
        secret_manifest("gh-token", NS, GH_TOKEN),
        receiver_manifest("gh", NS, "github", "gh-token", ""),
    ]
    .join("---\n")
}

/// Runs `binary` with `args` until it exits (it must not start) and returns its stderr.
fn refused_start(binary: &str, args: &[String]) -> String {
    let output = Command::new(workspace_binary(binary))
        .args(args)
        .args(["--admin-listen", "127.0.0.1:0", "--log-format", "text"])
        .output()
        .expect("run the binary");
    assert!(!output.status.success(), "{binary} started: {output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn user_and_password_from_a_file_and_refusals_that_stop_start_up() {
    let stack = Stack::builder()
        .nats_config(&format!(
            "authorization {{ users = [ {{user: ingest, password: {PASSWORD:?}}} ] }}\n"
        ))
        .nats_client(async_nats::ConnectOptions::with_user_and_password(
            "ingest".into(),
            PASSWORD.into(),
        ))
        .receivers(receivers())
        .start()
        .await;
    let password_file = stack.dir().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write password");
    let file = password_file.display().to_string();
    let ingest = stack
        .start_ingest(&["--nats-user", "ingest", "--nats-password-file", &file])
        .await;
    let url = ingest.hook_url(&fluxgate_tests::webhook::hook_path(GH_TOKEN, "gh", NS));
    let response = post_github_push(&url, GH_TOKEN, "auth-1", github_push_body(64)).await;
    assert_eq!(response.status, 202, "{:?}", response.body);
    assert_eq!(stack.stored().await, 1);

    let base = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["--nats-url", stack.nats_url(), "--receivers-file"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.push(stack.receivers_file().display().to_string());
        args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let wrong = stack.dir().join("wrong");
    std::fs::write(&wrong, "not-the-password").expect("write");
    let wrong = wrong.display().to_string();
    let stderr = refused_start(
        "fluxgate-ingest",
        &base(&["--nats-user", "ingest", "--nats-password-file", &wrong]),
    );
    assert!(
        stderr.contains("refused the connection") && stderr.contains("authorization violation"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-password"),
        "the password leaked: {stderr}"
    );

    let stderr = refused_start(
        "fluxgate-ingest",
        &base(&[
            "--nats-user",
            "ingest",
            "--nats-password-file",
            "/nonexistent/pw",
        ]),
    );
    assert!(
        stderr.contains("cannot read the NATS password file /nonexistent/pw"),
        "{stderr}"
    );
    let stderr = refused_start(
        "fluxgate-ingest",
        &base(&["--nats-creds", "/nonexistent/ingest.creds"]),
    );
    assert!(
        stderr.contains("cannot read the NATS credentials file /nonexistent/ingest.creds"),
        "{stderr}"
    );

    // The CLI takes the same flags, or their variables (the password only from one).
    let password = ("NATS_PASSWORD", PASSWORD);
    let (ok, listed, stderr) = fluxgate_cli(
        stack.nats_url(),
        &["-o", "json", "deliveries", "list"],
        &[("NATS_USER", "ingest"), password],
    );
    assert!(ok, "{stderr}");
    assert!(listed.contains("auth-1"), "{listed}");
    let (ok, _, stderr) = fluxgate_cli(stack.nats_url(), &["deliveries", "list"], &[]);
    assert!(!ok);
    assert!(stderr.contains("authorization violation"), "{stderr}");
}

#[tokio::test]
async fn mutual_tls_with_tls_urls_for_ingest_the_dispatcher_and_the_cli() {
    let pki = Pki::new();
    let args = pki.client_args();
    let mut dispatcher_args = args.clone();
    dispatcher_args
        .extend(["--leader-election", "false", "--coalesce-window", "20ms"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dispatcher_args: Vec<&str> = dispatcher_args.iter().map(String::as_str).collect();
    let stack = Stack::builder()
        .nats_config(&pki.server_config())
        .nats_client(pki.client_options())
        .cluster([json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": "app", "namespace": NS},
            "spec": {"url": "https://example.org/repo", "interval": "10m"},
        })])
        .receivers(receivers())
        .ingest(&args)
        .dispatcher(&dispatcher_args)
        .start()
        .await;
    let url = stack.hook_url(GH_TOKEN, "gh", NS);
    let response = post_github_push(&url, GH_TOKEN, "tls-1", github_push_body(64)).await;
    assert_eq!(response.status, 202, "{:?}", response.body);
    stack
        .outcomes_until("the patch over TLS", |events| {
            events.iter().any(|e| e["type"] == "patched")
        })
        .await;

    let tls_url = format!("tls://127.0.0.1:{}", stack.nats().port);
    let env = pki.client_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (ok, listed, stderr) = fluxgate_cli(&tls_url, &["-o", "json", "deliveries", "list"], &env);
    assert!(ok, "{stderr}");
    assert!(listed.contains("tls-1"), "{listed}");

    // A server certificate from a CA the client was not given: refused at start-up.
    let stderr = refused_start(
        "fluxgate-dispatcher",
        &[
            "--nats-url".into(),
            tls_url.clone(),
            "--receivers-file".into(),
            stack.receivers_file().display().to_string(),
            "--leader-election".into(),
            "false".into(),
        ],
    );
    assert!(stderr.contains("refused the connection"), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
}

//! The monitoring component of `deploy/` names only metrics the binaries export: every
//! `fluxgate_*` series in the PrometheusRule's alerts and in the Grafana dashboard is found in a
//! scrape of a running ingest and dispatcher, so renaming a metric cannot silently blind an
//! alert.

use std::collections::BTreeSet;

use fluxgate_tests::apiserver::ApiServer;
use fluxgate_tests::dispatcher::Dispatcher;
use fluxgate_tests::eventually;
use fluxgate_tests::http;
use fluxgate_tests::ingest::Ingest;
use fluxgate_tests::nats::NatsServer;
use fluxgate_tests::webhook::{github_push_body, hook_path, post_github_push};
use fluxgate_tests::{kustomize, repository_root};

/// The metric families named in `text`: `fluxgate_` names without the series suffixes of
/// counters and histograms.
fn families(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (start, _) in text.match_indices("fluxgate_") {
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        // Skip labels and resource names such as `fluxgate_dashboard`.
        if !(name.starts_with("fluxgate_ingest_") || name.starts_with("fluxgate_dispatcher_")) {
            continue;
        }
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        found.insert(family.to_owned());
    }
    found
}

#[tokio::test]
async fn alerts_and_dashboard_name_metrics_the_binaries_export() {
    let rendered = kustomize("deploy/overlays/production");
    let rule_start = rendered
        .find("kind: PrometheusRule")
        .expect("the production overlay has the PrometheusRule");
    let alerts = families(&rendered[rule_start..]);
    let dashboard = families(
        &std::fs::read_to_string(
            repository_root().join("deploy/components/monitoring/dashboard.json"),
        )
        .expect("dashboard"),
    );
    assert!(
        alerts.len() >= 5 && dashboard.len() >= 10,
        "{alerts:?} {dashboard:?}"
    );

    let nats = NatsServer::start().await;
    let api = ApiServer::start_local().await;
    let examples = repository_root().join("deploy/examples");
    api.apply_yaml(&std::fs::read_to_string(examples.join("cluster.yaml")).expect("cluster"))
        .expect("targets");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.write_kubeconfig(dir.path()).expect("kubeconfig");
    let receivers = examples.join("receivers.yaml");
    let ingest = Ingest::start(&nats.url(), &receivers, &[]).await;
    let dispatcher = Dispatcher::start(&nats.url(), Some(&receivers), &kubeconfig, &[]).await;
    // Labelled families appear once they have a series: one webhook through to a patch.
    let token = "quickstart-secret-change-me";
    let url = ingest.hook_url(&hook_path(token, "github-receiver", "flux-system"));
    let accepted = post_github_push(&url, token, "metrics-1", github_push_body(64)).await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let exported = eventually("a patch in the metrics", || async {
        let mut text = String::new();
        for url in [
            ingest.admin_url("/metrics"),
            dispatcher.admin_url("/metrics"),
        ] {
            let scrape = http::get(&url).await.map_err(|e| e.to_string())?;
            text.push_str(&String::from_utf8_lossy(&scrape.body));
        }
        if text.contains("fluxgate_dispatcher_patches_total{result=\"patched\"}") {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    let exported: BTreeSet<String> = exported
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    for (what, names) in [("alerts", &alerts), ("dashboard", &dashboard)] {
        let missing: Vec<&String> = names.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "the {what} name metrics nobody exports: {missing:?}; exported: {exported:?}"
        );
    }
}

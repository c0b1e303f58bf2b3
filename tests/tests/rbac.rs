//! The RBAC of `deploy/`, proven rather than assumed: the Kubernetes API stand-in enforces the
//! Roles, ClusterRoles and bindings that `kubectl kustomize` renders, and the real binaries run
//! as their ServiceAccounts through a webhook's whole path -- Receivers watched, Secrets watched
//! by name, the targets' watch caches (a named target's metadata for its filter, a wildcard,
//! confirmation), patches, the Lease taken and released. Every request must be allowed, and every verb granted on the resources the
//! binaries touch must have been used: a verb missing from the manifests, or one too many,
//! fails here.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use fluxgate_tests::apiserver::{Attributes, Authorizer, VERBS, service_account_user};
use fluxgate_tests::dispatcher::Dispatcher;
use fluxgate_tests::eventually;
use fluxgate_tests::ingest::Ingest;
use fluxgate_tests::kustomize;
use fluxgate_tests::stack::Stack;
use fluxgate_tests::webhook::{github_push_body, hook_path, post_github_push};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

const NS: &str = "flux-system";

fn git_repository(name: &str, namespace: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"url": "https://example.org/repo", "interval": "10m"},
    })
}

/// A cluster enforcing the RBAC of `manifests`, with one GitHub Receiver whose targets make the
/// dispatcher use every call it has: a named target with a filter, a wildcard (both from the
/// namespace's watch cache), and, when `other_namespace` is given, a target there (the ClusterRole's reach). Returns the
/// stack and how many targets the Receiver has.
async fn start(manifests: &str, other_namespace: Option<&str>) -> (Stack, usize) {
    let mut resources = vec![
        json!({"kind": "GitRepository", "name": "app"}),
        json!({"kind": "GitRepository", "name": "*", "matchLabels": {"tier": "web"}}),
    ];
    let mut objects = vec![
        git_repository("app", NS, json!({})),
        git_repository("web-1", NS, json!({"tier": "web"})),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gh-token", "namespace": NS}, "stringData": {"token": "s3cret"}}),
    ];
    if let Some(other) = other_namespace {
        resources.push(json!({"kind": "GitRepository", "name": "other", "namespace": other}));
        objects.push(git_repository("other", other, json!({})));
    }
    let targets = resources.len();
    objects.push(json!({
        "apiVersion": "notification.toolkit.fluxcd.io/v1",
        "kind": "Receiver",
        "metadata": {"name": "gh", "namespace": NS},
        "spec": {
            "type": "github",
            "secretRef": {"name": "gh-token"},
            // A filter makes the dispatcher read the named targets' metadata.
            "resourceFilter": "res.metadata.name != ''",
            "resources": resources,
        },
    }));
    let stack = Stack::builder()
        .cluster(objects)
        .rbac(manifests)
        .start()
        .await;
    stack.api().play_flux_controllers(Duration::from_millis(50));
    (stack, targets)
}

fn kubeconfig(stack: &Stack, service_account: &str) -> PathBuf {
    stack
        .api()
        .write_service_account_kubeconfig(stack.dir(), NS, service_account)
        .expect("kubeconfig")
}

/// Runs a webhook through ingest and the dispatcher as their ServiceAccounts until every
/// target is reported handled, then stops the dispatcher (releasing its Lease).
async fn run_a_webhook(stack: &Stack, targets: usize, extra_args: &[&str]) {
    let nats_url = stack.nats_url();
    let ingest =
        Ingest::start_in_cluster(nats_url, &kubeconfig(stack, "fluxgate-ingest"), extra_args).await;
    let mut args = vec!["--coalesce-window", "50ms", "--lease-namespace", NS];
    args.extend_from_slice(extra_args);
    let dispatcher_kubeconfig = kubeconfig(stack, "fluxgate-dispatcher");
    let mut dispatcher = Dispatcher::start(nats_url, None, &dispatcher_kubeconfig, &args).await;
    let url = ingest.hook_url(&hook_path("s3cret", "gh", NS));
    let response = post_github_push(&url, "s3cret", "rbac-1", github_push_body(128)).await;
    assert_eq!(response.status, 202, "{:?}", response.body);

    eventually("every target handled", || async {
        let events = stack.outcomes().await;
        let handled = events.iter().filter(|e| e["type"] == "handled").count();
        if handled == targets {
            Ok(())
        } else {
            Err((events, denied(stack)))
        }
    })
    .await;
    assert!(dispatcher.service.terminate().await, "dispatcher exits 0");
}

/// Requests refused by authentication or authorization.
fn denied(stack: &Stack) -> Vec<String> {
    stack
        .api()
        .requests()
        .into_iter()
        .filter(|r| r.status == 401 || r.status == 403)
        .map(|r| format!("{:?} {} {} {}", r.user, r.method, r.path, r.query))
        .collect()
}

/// What every resource request of `service_account` asked, as RBAC sees it.
fn asked(stack: &Stack, service_account: &str) -> BTreeSet<Attributes> {
    let user = service_account_user(NS, service_account);
    stack
        .api()
        .requests()
        .into_iter()
        .filter(|r| r.user.as_deref() == Some(user.as_str()))
        .filter_map(|r| r.attributes)
        .collect()
}

/// `(verb, group/resource)` of each request asked.
fn used(asked: &BTreeSet<Attributes>) -> BTreeSet<(String, String)> {
    asked
        .iter()
        .map(|a| (a.verb.clone(), format!("{}/{}", a.group, a.resource)))
        .collect()
}

/// `(verb, group/resource)` that the manifests grant `service_account` on each resource it used,
/// in the namespace and for the name it used them with.
fn granted_on_used(
    manifests: &str,
    asked: &BTreeSet<Attributes>,
    service_account: &str,
) -> BTreeSet<(String, String)> {
    let rbac = Authorizer::from_yaml(manifests).expect("manifests");
    let user = service_account_user(NS, service_account);
    let mut granted = BTreeSet::new();
    for a in asked {
        for verb in VERBS {
            // get, update, patch and delete name an object; the other verbs ask a collection.
            let object_verb = matches!(verb, "get" | "update" | "patch" | "delete");
            if object_verb && a.name.is_none() {
                continue;
            }
            let probe = Attributes {
                verb: verb.into(),
                name: if object_verb { a.name.clone() } else { None },
                ..a.clone()
            };
            if rbac.allows(&user, &probe) {
                granted.insert((verb.to_owned(), format!("{}/{}", a.group, a.resource)));
            }
        }
    }
    granted
}

fn pairs(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|(v, r)| ((*v).to_owned(), (*r).to_owned()))
        .collect()
}

/// What each binary does with the API, which is what the manifests must grant.
fn expected_ingest() -> BTreeSet<(String, String)> {
    pairs(&[
        ("list", "notification.toolkit.fluxcd.io/receivers"),
        ("watch", "notification.toolkit.fluxcd.io/receivers"),
        ("list", "/secrets"),
        ("watch", "/secrets"),
    ])
}

fn expected_dispatcher() -> BTreeSet<(String, String)> {
    pairs(&[
        ("list", "notification.toolkit.fluxcd.io/receivers"),
        ("watch", "notification.toolkit.fluxcd.io/receivers"),
        ("list", "source.toolkit.fluxcd.io/gitrepositories"),
        ("watch", "source.toolkit.fluxcd.io/gitrepositories"),
        ("patch", "source.toolkit.fluxcd.io/gitrepositories"),
        ("get", "coordination.k8s.io/leases"),
        ("create", "coordination.k8s.io/leases"),
        ("update", "coordination.k8s.io/leases"),
    ])
}

async fn check_least_privilege(overlay: &str, other_namespace: Option<&str>, args: &[&str]) {
    let manifests = kustomize(overlay);
    let (stack, targets) = start(&manifests, other_namespace).await;
    run_a_webhook(&stack, targets, args).await;

    assert_eq!(
        denied(&stack),
        Vec::<String>::new(),
        "every call is granted"
    );
    for (account, expected) in [
        ("fluxgate-ingest", expected_ingest()),
        ("fluxgate-dispatcher", expected_dispatcher()),
    ] {
        let asked = asked(&stack, account);
        assert_eq!(used(&asked), expected, "what {account} calls");
        assert_eq!(
            granted_on_used(&manifests, &asked, account),
            expected,
            "what {overlay} grants {account} on what it touches: no more, no less"
        );
    }
}

#[tokio::test]
async fn the_cluster_wide_rbac_of_deploy_base_is_exactly_what_the_binaries_use() {
    check_least_privilege("deploy/base", Some("apps"), &[]).await;
}

#[tokio::test]
async fn the_namespaced_rbac_works_with_watch_namespace() {
    check_least_privilege(
        "deploy/overlays/namespaced",
        None,
        &["--watch-namespace", NS],
    )
    .await;
}

#[tokio::test]
async fn ingest_asks_for_secrets_only_by_name_and_can_patch_nothing() {
    let manifests = kustomize("deploy/base");
    let (stack, targets) = start(&manifests, None).await;
    run_a_webhook(&stack, targets, &[]).await;
    // Kubernetes cannot grant a watch of a name not known in advance, so the ClusterRole lets
    // ingest list and watch Secrets; ingest itself only ever asks for the one a Receiver names.
    let secrets: Vec<Attributes> = (asked(&stack, "fluxgate-ingest").into_iter())
        .filter(|a| a.resource == "secrets")
        .collect();
    assert!(!secrets.is_empty());
    for asked in secrets {
        assert_eq!(asked.name.as_deref(), Some("gh-token"), "{asked:?}");
        assert_eq!(asked.namespace.as_deref(), Some(NS), "{asked:?}");
    }

    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig(&stack, "fluxgate-ingest"))
            .expect("kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("config");
    let client = kube::Client::try_from(config).expect("client");
    let forbidden = |result: Result<(), kube::Error>, what: &str| match result {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{what}: {status:?}"),
        other => panic!("{what}: expected 403, got {other:?}"),
    };
    let patch = Patch::Merge(json!({"metadata": {"annotations": {"x": "y"}}}));
    for (api_version, kind, plural, name) in [
        (
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "gitrepositories",
            "app",
        ),
        (
            "notification.toolkit.fluxcd.io/v1",
            "Receiver",
            "receivers",
            "gh",
        ),
        ("v1", "Secret", "secrets", "gh-token"),
    ] {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &resource);
        forbidden(
            api.patch(name, &PatchParams::default(), &patch)
                .await
                .map(drop),
            &format!("patch {kind} {name}"),
        );
    }
    // Without a token, nothing at all: 401, as an API server with anonymous access off.
    let anonymous = fluxgate_tests::http::get(&format!(
        "{}/api/v1/namespaces/{NS}/secrets/gh-token",
        stack.api().url()
    ))
    .await
    .expect("get");
    assert_eq!(anonymous.status, 401);
}

//! Fidelity of the Kubernetes API stand-in, checked with the real `kube` client and
//! kube-runtime's watcher -- the same code paths the dispatcher uses.

use std::time::Duration;

use fluxgate_tests::apiserver::{ApiServer, Fault, ObjectRef};
use futures::TryStreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

const NS: &str = "flux-system";
const SOURCE: &str = "source.toolkit.fluxcd.io/v1";

async fn client(server: &ApiServer) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config from kubeconfig");
    kube::Client::try_from(config).expect("client")
}

fn git_repository(name: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": SOURCE,
        "kind": "GitRepository",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"url": "https://example.org/repo", "interval": "1m"},
    })
}

async fn git_repositories(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("source.toolkit.fluxcd.io", "v1", "GitRepository");
    let (resource, _) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .expect("discover GitRepository");
    Api::namespaced_with(client.clone(), NS, &resource)
}

fn api_error(error: kube::Error) -> Box<kube::core::Status> {
    match error {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn discovery_lists_groups_and_resources() {
    let server = ApiServer::start_local().await;
    let client = client(&server).await;
    let discovery = kube::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let source = discovery
        .get("source.toolkit.fluxcd.io")
        .expect("source group");
    let kinds: Vec<String> = source
        .recommended_resources()
        .into_iter()
        .map(|(r, _)| r.kind)
        .collect();
    assert!(
        kinds.contains(&"GitRepository".to_owned()) && kinds.contains(&"OCIRepository".to_owned()),
        "{kinds:?}"
    );
    let (resource, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"))
        .expect("Lease");
    assert_eq!(resource.plural, "leases");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let version = client.apiserver_version().await.expect("/version");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );
}

#[tokio::test]
async fn get_and_list_with_label_selectors() {
    let server = ApiServer::start_local().await;
    server.apply(git_repository("web-1", json!({"app": "web"})));
    server.apply(git_repository(
        "web-2",
        json!({"app": "web", "tier": "edge"}),
    ));
    server.apply(git_repository("api", json!({"app": "api"})));
    let api = git_repositories(&client(&server).await).await;

    let names = |list: kube::core::ObjectList<DynamicObject>| -> Vec<String> {
        list.items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect()
    };
    let web = api
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list");
    assert_eq!(names(web), ["web-1", "web-2"]);
    let edge = api
        .list(&ListParams::default().labels("app=web,tier=edge"))
        .await
        .expect("list");
    assert_eq!(names(edge), ["web-2"]);
    let not_web = api
        .list(&ListParams::default().labels("app!=web"))
        .await
        .expect("list");
    assert_eq!(names(not_web), ["api"]);
    let by_field = api
        .list(&ListParams::default().fields("metadata.name=api"))
        .await
        .expect("list");
    assert_eq!(names(by_field), ["api"]);

    let got = api.get("web-1").await.expect("get");
    assert_eq!(got.data["spec"]["url"], "https://example.org/repo");
    assert!(got.metadata.resource_version.is_some() && got.metadata.uid.is_some());

    let missing = api_error(api.get("nope").await.expect_err("missing object"));
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert!(missing.message.contains("nope"), "{}", missing.message);
}

#[tokio::test]
async fn merge_patch_bumps_the_resource_version_and_reaches_watchers() {
    let server = ApiServer::start_local().await;
    server.apply(git_repository("app", json!({})));
    let api = git_repositories(&client(&server).await).await;
    let events = watcher(api.clone(), watcher::Config::default()).applied_objects();
    tokio::pin!(events);
    let first = events
        .try_next()
        .await
        .expect("watch")
        .expect("initial object");
    let before: u64 = first
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("rv");

    let patch = json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "2026-11-23T00:00:00.000000001Z"}}});
    let patched = api
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let after: u64 = patched
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("rv");
    assert!(after > before, "a change must bump resourceVersion");
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "annotations do not bump the generation"
    );

    let seen = tokio::time::timeout(Duration::from_secs(20), events.try_next())
        .await
        .expect("the watcher must see the patch")
        .expect("watch")
        .expect("object");
    assert_eq!(
        seen.metadata
            .annotations
            .unwrap_or_default()
            .get("reconcile.fluxcd.io/requestedAt")
            .map(String::as_str),
        Some("2026-11-23T00:00:00.000000001Z")
    );

    let same = api
        .patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    assert_eq!(
        same.metadata.resource_version, patched.metadata.resource_version,
        "no change, no new version"
    );

    let recorded = server.requests();
    let patches: Vec<_> = recorded.iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(patches.len(), 2);
    assert_eq!(
        patches[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(patches[0].body.as_ref(), Some(&patch));
    assert_eq!(
        patches[0].path,
        "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/gitrepositories/app"
    );
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_with_deletes() {
    let server = ApiServer::start_local().await;
    server.apply(git_repository("a", json!({})));
    let api = git_repositories(&client(&server).await).await;
    let list = api.list(&ListParams::default()).await.expect("list");
    let version = list.metadata.resource_version.expect("list version");
    server.apply(git_repository("b", json!({})));
    server.delete(&ObjectRef::new(SOURCE, "GitRepository", NS, "a"));

    let stream = api
        .watch(&kube::api::WatchParams::default().timeout(5), &version)
        .await
        .expect("watch");
    tokio::pin!(stream);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match stream
            .try_next()
            .await
            .expect("watch event")
            .expect("event before timeout")
        {
            kube::api::WatchEvent::Added(o) => {
                seen.push(format!("added {}", o.metadata.name.unwrap_or_default()))
            }
            kube::api::WatchEvent::Deleted(o) => {
                seen.push(format!("deleted {}", o.metadata.name.unwrap_or_default()))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["added b", "deleted a"]);
}

#[tokio::test]
async fn leases_enforce_resource_version_preconditions() {
    let server = ApiServer::start_local().await;
    let leases: Api<Lease> = Api::namespaced(client(&server).await, NS);
    let mut lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "fluxgate-dispatcher"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }))
    .expect("lease");
    let created = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create");
    let again = api_error(
        leases
            .create(&PostParams::default(), &lease)
            .await
            .expect_err("exists"),
    );
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));

    lease = created.clone();
    lease.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    let replaced = leases
        .replace("fluxgate-dispatcher", &PostParams::default(), &lease)
        .await
        .expect("replace");
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );

    // A writer holding the old version loses.
    let mut stale = created;
    stale.spec.as_mut().expect("spec").holder_identity = Some("c".into());
    let conflict = api_error(
        leases
            .replace("fluxgate-dispatcher", &PostParams::default(), &stale)
            .await
            .expect_err("stale"),
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    let current = leases.get("fluxgate-dispatcher").await.expect("get");
    assert_eq!(
        current.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("b")
    );
}

#[tokio::test]
async fn injected_faults_fail_requests_in_order() {
    let server = ApiServer::start_local().await;
    server.apply(git_repository("app", json!({})));
    let target = ObjectRef::new(SOURCE, "GitRepository", NS, "app");
    server.inject(&target, Fault::status(500).on("PATCH"));
    server.inject(&target, Fault::too_many_requests(1).on("PATCH"));
    let api = git_repositories(&client(&server).await).await;
    let patch = json!({"metadata": {"annotations": {"x": "1"}}});
    let merge = Patch::Merge(&patch);

    assert_eq!(
        api.get("app").await.map(|_| ()).ok(),
        Some(()),
        "GET is not affected by PATCH faults"
    );
    let first = api_error(
        api.patch("app", &PatchParams::default(), &merge)
            .await
            .expect_err("500"),
    );
    assert_eq!((first.code, first.reason.as_str()), (500, "InternalError"));
    // The kube client itself retries a 429 after its Retry-After, so this patch succeeds.
    api.patch("app", &PatchParams::default(), &merge)
        .await
        .expect("patched after the 429");
    let statuses: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [500, 429, 200]);

    // Retry-After reaches the client as a header (kube's error type does not carry headers).
    server.inject(&target, Fault::too_many_requests(7));
    let url = format!(
        "{}/apis/source.toolkit.fluxcd.io/v1/namespaces/{NS}/gitrepositories/app",
        server.url()
    );
    let raw = fluxgate_tests::http::get(&url).await.expect("raw GET");
    assert_eq!((raw.status, raw.header("retry-after")), (429, Some("7")));
    assert_eq!(raw.json()["kind"], "Status");

    server.inject(&target, Fault::status(404));
    assert!(api_error(api.get("app").await.expect_err("404")).is_not_found());

    server.inject(&target, Fault::delay(Duration::from_secs(30)));
    let delayed = tokio::time::timeout(Duration::from_millis(200), api.get("app")).await;
    assert!(
        delayed.is_err(),
        "a delayed request must not answer before its delay"
    );
}

#[tokio::test]
async fn status_subresource_changes_only_status() {
    let server = ApiServer::start_local().await;
    server.apply(git_repository("app", json!({})));
    let api = git_repositories(&client(&server).await).await;
    let patch = json!({"status": {"lastHandledReconcileAt": "t1"}, "spec": {"url": "changed"}});
    let patched = api
        .patch_status("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch status");
    assert_eq!(patched.data["status"]["lastHandledReconcileAt"], "t1");
    assert_eq!(patched.data["spec"]["url"], "https://example.org/repo");
    let events: Vec<_> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|o| o.data["status"]["lastHandledReconcileAt"].clone())
        .collect();
    assert_eq!(events, [json!("t1")]);
}

#[tokio::test]
async fn secret_string_data_is_folded_into_data_as_the_api_server_does() {
    let server = ApiServer::start_local().await;
    server.apply(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "token", "namespace": NS},
        "data": {"token": "b2xk", "other": "eA=="},
        "stringData": {"token": "new"},
    }));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client(&server).await, NS);
    let secret = secrets.get("token").await.expect("secret");
    let data = secret.data.expect("data");
    assert_eq!(data.get("token").map(|v| v.0.as_slice()), Some(&b"new"[..]));
    assert_eq!(data.get("other").map(|v| v.0.as_slice()), Some(&b"x"[..]));
    assert!(secret.string_data.is_none(), "stringData is write-only");
}

//! The stand-in's REST surface, as the API server lays it out: discovery, collections (LIST,
//! WATCH, POST) and objects (GET, PUT, PATCH, DELETE), `Status` bodies for every error.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::Shared;
use super::rbac::Attributes;
use super::selector::{LabelSelector, field_selector_matches, labels_of};
use super::store::{EventType, ObjectKey, RecordedRequest, ResourceType, Store, WatchEvent};

/// How long a watch without `timeoutSeconds` stays open.
const DEFAULT_WATCH_SECONDS: u64 = 300;

enum Route {
    Version,
    ApiVersions,
    GroupList,
    ResourceList {
        group: String,
        version: String,
    },
    Collection {
        ty: ResourceType,
        namespace: Option<String>,
    },
    Object {
        ty: ResourceType,
        namespace: String,
        name: String,
        status: bool,
    },
}

/// A `Status` error body with its HTTP code.
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    fn not_found(what: &str) -> Self {
        Self::new(404, "NotFound", format!("{what} not found"))
    }

    /// The reason the API server gives for an injected status.
    fn injected(code: u16, retry_after: Option<u64>) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        Self {
            retry_after,
            ..Self::new(code, reason, format!("injected fault: {reason}"))
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = seconds.to_string().parse()
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

pub async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
    let parsed_body: Option<Value> = serde_json::from_slice(&body).ok();
    let user = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let mut attributes = None;
    let response = match serve(
        &shared,
        &method,
        uri.path(),
        &query,
        content_type.as_deref(),
        &body,
        (user.as_deref(), &mut attributes),
    )
    .await
    {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    if let Ok(mut store) = shared.store.lock() {
        store.requests.push(RecordedRequest {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().unwrap_or_default().to_owned(),
            content_type,
            body: parsed_body,
            status: response.status().as_u16(),
            user,
            attributes,
        });
    }
    response
}

async fn serve(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    content_type: Option<&str>,
    body: &[u8],
    (user, attributes): (Option<&str>, &mut Option<Attributes>),
) -> Result<Response, ApiError> {
    let route = {
        let store = shared.lock()?;
        route(&store, path)?
    };
    *attributes = rbac_attributes(&route, method, query);
    authorize(shared, user, attributes.as_ref())?;
    match route {
        Route::Version => Ok(axum::Json(json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-fluxgate-stand-in",
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "",
            "compiler": "",
            "platform": "linux/amd64",
        }))
        .into_response()),
        Route::ApiVersions => Ok(axum::Json(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}],
        }))
        .into_response()),
        Route::GroupList => Ok(axum::Json(group_list(&shared.lock()?.types)).into_response()),
        Route::ResourceList { group, version } => {
            Ok(axum::Json(resource_list(&shared.lock()?.types, &group, &version)).into_response())
        }
        Route::Collection { ty, namespace } => {
            let key = ObjectKey {
                group: ty.group.clone(),
                plural: ty.plural.clone(),
                namespace: namespace.clone().unwrap_or_default(),
                name: String::new(),
            };
            injected_fault(shared, &key, method).await?;
            match *method {
            Method::GET if is_true(query.get("watch")) => watch(shared, &ty, namespace, query),
            Method::GET => list(shared, &ty, namespace.as_deref(), query),
            Method::POST => {
                let namespace = namespace.ok_or_else(|| ApiError::new(405, "MethodNotAllowed", "create needs a namespace"))?;
                let object = parse_object(body)?;
                create(shared, &ty, &namespace, object)
            }
            _ => Err(ApiError::new(405, "MethodNotAllowed", format!("{method} is not supported on a collection"))),
            }
        }
        Route::Object { ty, namespace, name, status } => {
            let key = ObjectKey {
                group: ty.group.clone(),
                plural: ty.plural.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
            };
            injected_fault(shared, &key, method).await?;
            let mut store = shared.lock()?;
            match *method {
                Method::GET => Ok(axum::Json(stored(&store, &ty, &key)?).into_response()),
                Method::PUT => replace(&mut store, &ty, key, parse_object(body)?, status),
                Method::PATCH => patch(&mut store, &ty, key, content_type, body, status),
                Method::DELETE => {
                    let object = stored(&store, &ty, &key)?;
                    Ok(axum::Json(store.commit(key, EventType::Deleted, object)).into_response())
                }
                _ => Err(ApiError::new(405, "MethodNotAllowed", format!("{method} is not supported on an object"))),
            }
        }
    }
}

/// The next fault queued for requests with `method` on `key` (an object, or with an empty name
/// a collection): its delay, then its status instead of the answer.
async fn injected_fault(shared: &Shared, key: &ObjectKey, method: &Method) -> Result<(), ApiError> {
    let fault = shared.lock()?.take_fault(key, method.as_str());
    if let Some(fault) = fault {
        if !fault.delay.is_zero() {
            tokio::time::sleep(fault.delay).await;
        }
        if let Some(code) = fault.status {
            return Err(ApiError::injected(code, fault.retry_after_seconds));
        }
    }
    Ok(())
}

/// What RBAC checks for a request on `route`: none for discovery (every authenticated user may
/// read it); for a collection the verb is list, watch, create or deletecollection, and a
/// `metadata.name=` field selector names the object, as the API server reads it.
fn rbac_attributes(
    route: &Route,
    method: &Method,
    query: &HashMap<String, String>,
) -> Option<Attributes> {
    let (ty, namespace, name, status, verb) = match route {
        Route::Collection { ty, namespace } => {
            let verb = match *method {
                Method::GET if is_true(query.get("watch")) => "watch",
                Method::GET => "list",
                Method::POST => "create",
                Method::DELETE => "deletecollection",
                _ => "unknown",
            };
            let name = query
                .get("fieldSelector")
                .and_then(|f| f.strip_prefix("metadata.name="))
                .filter(|n| !n.contains(','))
                .map(str::to_owned);
            (ty, namespace.clone(), name, false, verb)
        }
        Route::Object {
            ty,
            namespace,
            name,
            status,
        } => {
            let verb = match *method {
                Method::GET => "get",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                _ => "unknown",
            };
            (
                ty,
                Some(namespace.clone()),
                Some(name.clone()),
                *status,
                verb,
            )
        }
        _ => return None,
    };
    let resource = if status {
        format!("{}/status", ty.plural)
    } else {
        ty.plural.clone()
    };
    Some(Attributes {
        verb: verb.into(),
        group: ty.group.clone(),
        resource,
        namespace,
        name,
    })
}

/// With RBAC in force: 401 without a known user, 403 when no binding grants the request.
fn authorize(
    shared: &Shared,
    user: Option<&str>,
    attributes: Option<&Attributes>,
) -> Result<(), ApiError> {
    let store = shared.lock()?;
    let Some(authorizer) = &store.authorizer else {
        return Ok(());
    };
    let Some(user) = user.filter(|u| authorizer.knows(u)) else {
        return Err(ApiError::new(401, "Unauthorized", "Unauthorized"));
    };
    match attributes {
        Some(a) if !authorizer.allows(user, a) => {
            Err(ApiError::new(403, "Forbidden", a.forbidden_message(user)))
        }
        _ => Ok(()),
    }
}

fn is_true(value: Option<&String>) -> bool {
    value.is_some_and(|v| v == "true" || v == "1")
}

fn describe(ty: &ResourceType, name: &str) -> String {
    let resource = if ty.group.is_empty() {
        ty.plural.clone()
    } else {
        format!("{}.{}", ty.plural, ty.group)
    };
    format!("{resource} {name:?}")
}

fn route(store: &Store, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["api"] => return Ok(Route::ApiVersions),
        ["apis"] => return Ok(Route::GroupList),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => {
            return Err(ApiError::not_found(
                "the server could not find the requested resource; path",
            ));
        }
    };
    let find = |plural: &str| {
        store
            .resource_type(group, version, plural)
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(&format!(
                    "the server could not find the requested resource; {plural}"
                ))
            })
    };
    match rest {
        [] => Ok(Route::ResourceList {
            group: group.into(),
            version: version.into(),
        }),
        [plural] => Ok(Route::Collection {
            ty: find(plural)?,
            namespace: None,
        }),
        ["namespaces", namespace, plural] => Ok(Route::Collection {
            ty: find(plural)?,
            namespace: Some((*namespace).into()),
        }),
        ["namespaces", namespace, plural, name] => Ok(Route::Object {
            ty: find(plural)?,
            namespace: (*namespace).into(),
            name: (*name).into(),
            status: false,
        }),
        ["namespaces", namespace, plural, name, "status"] => Ok(Route::Object {
            ty: find(plural)?,
            namespace: (*namespace).into(),
            name: (*name).into(),
            status: true,
        }),
        _ => Err(ApiError::not_found(
            "the server could not find the requested resource; path",
        )),
    }
}

fn group_list(types: &[ResourceType]) -> Value {
    let mut groups: Vec<(String, String)> = types
        .iter()
        .filter(|t| !t.group.is_empty())
        .map(|t| (t.group.clone(), t.version.clone()))
        .collect();
    groups.sort();
    groups.dedup();
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(group, version)| {
            let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
            json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Value {
    let resources: Vec<Value> = types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .flat_map(|t| {
            let verbs = ["create", "delete", "get", "list", "patch", "update", "watch"];
            [
                json!({"name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced, "kind": t.kind, "verbs": verbs}),
                json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}),
            ]
        })
        .collect();
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

/// Which objects of a collection a LIST or WATCH wants: type, namespace and selectors.
struct Selection {
    group: String,
    plural: String,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: String,
}

impl Selection {
    fn new(
        ty: &ResourceType,
        namespace: Option<&str>,
        query: &HashMap<String, String>,
    ) -> Result<Self, ApiError> {
        let labels =
            LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
                .map_err(|e| ApiError::new(400, "BadRequest", e))?;
        let fields = query.get("fieldSelector").cloned().unwrap_or_default();
        // Reject an unsupported field selector up front, as the API server does.
        field_selector_matches(&fields, &json!({"metadata": {}}))
            .map_err(|e| ApiError::new(400, "BadRequest", e))?;
        Ok(Self {
            group: ty.group.clone(),
            plural: ty.plural.clone(),
            namespace: namespace.map(str::to_owned),
            labels,
            fields,
        })
    }

    /// The stored objects it selects. A namespace narrows the scan to its range of keys, and a
    /// lone `metadata.name=` selector (how clients watch one object) to that key: thousands of
    /// such watches stay cheap.
    fn select<'a>(
        &'a self,
        store: &'a Store,
    ) -> Box<dyn Iterator<Item = (&'a ObjectKey, &'a Value)> + 'a> {
        let prefix = |namespace: &str, name: &str| ObjectKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let one_name = (self.fields.strip_prefix("metadata.name="))
            .filter(|name| !name.contains(',') && !name.contains('='));
        let scan: Box<dyn Iterator<Item = (&ObjectKey, &Value)>> = match (&self.namespace, one_name)
        {
            (Some(namespace), Some(name)) => Box::new(
                store
                    .objects
                    .get_key_value(&prefix(namespace, name))
                    .into_iter(),
            ),
            (Some(namespace), None) => Box::new(
                (store.objects.range(prefix(namespace, "")..))
                    .take_while(move |(key, _)| &key.namespace == namespace),
            ),
            (None, _) => Box::new(store.objects.iter()),
        };
        Box::new(scan.filter(|(key, object)| self.matches(key, object)))
    }

    fn matches(&self, key: &ObjectKey, object: &Value) -> bool {
        key.group == self.group
            && key.plural == self.plural
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| &key.namespace == ns)
            && self.labels.matches(&labels_of(object))
            && field_selector_matches(&self.fields, object).unwrap_or(false)
    }
}

fn list(
    shared: &Shared,
    ty: &ResourceType,
    namespace: Option<&str>,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let selection = Selection::new(ty, namespace, query)?;
    let store = shared.lock()?;
    let items: Vec<Value> = (selection.select(&store))
        .map(|(_, object)| object.clone())
        .collect();
    Ok(axum::Json(json!({
        "kind": format!("{}List", ty.kind),
        "apiVersion": ty.api_version(),
        "metadata": {"resourceVersion": store.revision.to_string()},
        "items": items,
    }))
    .into_response())
}

/// A newline-delimited stream of watch events after `resourceVersion` (all current objects as
/// ADDED when it is absent or 0), then live ones, until `timeoutSeconds`.
fn watch(
    shared: &Shared,
    ty: &ResourceType,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let from: u64 = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => 0,
        Some(v) => v.parse().map_err(|_| {
            ApiError::new(400, "BadRequest", format!("invalid resourceVersion {v:?}"))
        })?,
    };
    let seconds = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_WATCH_SECONDS);
    let selection = Selection::new(ty, namespace.as_deref(), query)?;
    let store = shared.lock()?;
    // Replay and subscribe under one lock, so no event falls between them.
    let initial: Vec<Bytes> = if from == 0 {
        (selection.select(&store))
            .map(|(_, object)| event_line(EventType::Added, object))
            .collect()
    } else {
        // The history is in revision order: only what follows `from` is looked at.
        let after = store.history.partition_point(|e| e.revision <= from);
        store.history[after..]
            .iter()
            .filter(|e| selection.matches(&e.key, &e.object))
            .map(|e| event_line(e.kind, &e.object))
            .collect()
    };
    let live = store.live.subscribe();
    let mut ended = store.watches_ended.subscribe();
    drop(store);

    // A reader too slow for the channel ends its watch; the client resumes from its last version.
    let live = futures::stream::unfold(live, |mut rx| async move {
        rx.recv().await.ok().map(|event| (event, rx))
    })
    .filter_map(move |event: Arc<WatchEvent>| {
        let keep = selection.matches(&event.key, &event.object);
        futures::future::ready(keep.then(|| event_line(event.kind, &event.object)))
    });
    let stream = futures::stream::iter(initial)
        .chain(live)
        .take_until(tokio::time::sleep(Duration::from_secs(seconds)))
        .take_until(async move { ended.changed().await.ok() })
        .map(Ok::<_, Infallible>);
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

fn event_line(kind: EventType, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": kind.as_str(), "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let object: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "BadRequest", format!("invalid JSON: {e}")))?;
    if !object.is_object() {
        return Err(ApiError::new(
            400,
            "BadRequest",
            "the body must be an object",
        ));
    }
    Ok(object)
}

fn create(
    shared: &Shared,
    ty: &ResourceType,
    namespace: &str,
    mut object: Value,
) -> Result<Response, ApiError> {
    let name = object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::new(422, "Invalid", "metadata.name: Required value"))?;
    let mut store = shared.lock()?;
    let key = ObjectKey {
        group: ty.group.clone(),
        plural: ty.plural.clone(),
        namespace: namespace.into(),
        name: name.clone(),
    };
    if store.objects.contains_key(&key) {
        return Err(ApiError::new(
            409,
            "AlreadyExists",
            format!("{} already exists", describe(ty, &name)),
        ));
    }
    stamp_new(&mut object, ty, namespace);
    let created = store.commit(key, EventType::Added, object);
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// Fills in what the API server sets on create.
pub fn stamp_new(object: &mut Value, ty: &ResourceType, namespace: &str) {
    object["apiVersion"] = json!(ty.api_version());
    object["kind"] = json!(ty.kind);
    let metadata = &mut object["metadata"];
    metadata["namespace"] = json!(namespace);
    metadata["uid"] = json!(format!("{:032x}", fastrand::u128(..)));
    metadata["creationTimestamp"] =
        json!(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string());
    metadata["generation"] = json!(1);
}

/// A write must name the current resourceVersion when it names one at all (409 otherwise).
fn check_precondition(
    current: &Value,
    given: &Value,
    ty: &ResourceType,
    name: &str,
) -> Result<(), ApiError> {
    match given["metadata"]["resourceVersion"].as_str() {
        Some(rv)
            if !rv.is_empty() && Some(rv) != current["metadata"]["resourceVersion"].as_str() =>
        {
            Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {}: the object has been modified; please apply your changes to the latest version and try again",
                    describe(ty, name)
                ),
            ))
        }
        _ => Ok(()),
    }
}

fn replace(
    store: &mut Store,
    ty: &ResourceType,
    key: ObjectKey,
    object: Value,
    status_only: bool,
) -> Result<Response, ApiError> {
    let current = stored(store, ty, &key)?;
    check_precondition(&current, &object, ty, &key.name)?;
    Ok(axum::Json(update(store, key, &current, object, status_only)).into_response())
}

fn patch(
    store: &mut Store,
    ty: &ResourceType,
    key: ObjectKey,
    content_type: Option<&str>,
    body: &[u8],
    status_only: bool,
) -> Result<Response, ApiError> {
    let current = stored(store, ty, &key)?;
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "BadRequest", format!("invalid patch: {e}")))?;
    let mut object = current.clone();
    match content_type {
        Some("application/merge-patch+json") | Some("application/strategic-merge-patch+json") => {
            check_precondition(&current, &patch, ty, &key.name)?;
            json_patch::merge(&mut object, &patch);
        }
        Some("application/json-patch+json") => {
            let operations: json_patch::Patch = serde_json::from_value(patch).map_err(|e| {
                ApiError::new(400, "BadRequest", format!("invalid JSON patch: {e}"))
            })?;
            json_patch::patch(&mut object, &operations)
                .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("unsupported patch type {other:?}"),
            ));
        }
    }
    Ok(axum::Json(update(store, key, &current, object, status_only)).into_response())
}

/// The object as stored, or 404.
fn stored(store: &Store, ty: &ResourceType, key: &ObjectKey) -> Result<Value, ApiError> {
    store
        .objects
        .get(key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&describe(ty, &key.name)))
}

/// Stores a new version of an object: identity fields stay, the generation moves with the spec,
/// an unchanged object keeps its resourceVersion (as the API server does), and a write to the
/// status subresource changes only `status`.
fn update(
    store: &mut Store,
    key: ObjectKey,
    current: &Value,
    mut object: Value,
    status_only: bool,
) -> Value {
    if status_only {
        let mut updated = current.clone();
        updated["status"] = object["status"].take();
        object = updated;
    }
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "resourceVersion",
        "generation",
    ] {
        object["metadata"][field] = current["metadata"][field].clone();
    }
    object["apiVersion"] = current["apiVersion"].clone();
    object["kind"] = current["kind"].clone();
    if object == *current {
        return object;
    }
    if object.get("spec") != current.get("spec") {
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        object["metadata"]["generation"] = json!(generation);
    }
    store.commit(key, EventType::Modified, object)
}

impl Shared {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Store>, ApiError> {
        self.store
            .lock()
            .map_err(|_| ApiError::new(500, "InternalError", "stand-in state poisoned"))
    }
}

//! Target resolution: a Receiver's `spec.resources` become the objects to annotate, as Flux
//! resolves them -- namespace and apiVersion defaults, `name: "*"` with `matchLabels` listed by
//! label selector, optional refusal of cross-namespace references -- for any kind, through
//! discovery and the scopes' watch caches (no API read per delivery); then the receiver's CEL
//! filters decide which of them to keep.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument as _;

pub use fluxgate_shared::contract::Target;
use fluxgate_shared::filter::{self, Expression};
use fluxgate_shared::receivers::{Receiver, ResourceRef};
use fluxgate_shared::within_deadline;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};

use crate::cache::{Caches, Scope};
use crate::request::Inputs;

/// How long a delivery's filters may take for one entry of `spec.resources`.
const FILTER_BUDGET: Duration = Duration::from_secs(1);

/// Flux's apiVersion for a kind named without one; other kinds must say theirs.
pub fn default_api_version(kind: &str) -> Option<&'static str> {
    match kind {
        "Bucket" | "GitRepository" | "HelmChart" | "HelmRepository" | "OCIRepository" => {
            Some("source.toolkit.fluxcd.io/v1")
        }
        "ImageRepository" => Some("image.toolkit.fluxcd.io/v1"),
        "ArtifactGenerator" => Some("source.extensions.fluxcd.io/v1beta1"),
        _ => None,
    }
}

/// The targets of a delivery, those its filters left out, and what cannot be served: a
/// reference (no target) or a target whose filter could not be evaluated, with why.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub targets: Vec<Target>,
    pub filtered_out: Vec<Target>,
    pub refused: Vec<(Option<Target>, String)>,
}

pub struct Resolver {
    client: kube::Client,
    no_cross_namespace_refs: bool,
    caches: Arc<Caches>,
    /// apiVersion + kind -> what discovery said about it.
    discovered: Mutex<HashMap<(String, String), Arc<ApiResource>>>,
}

/// An API error as a reason to record: the API server's own message and code, not the client's
/// whole debug dump.
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    }
}

/// An API error that asking again will not change.
pub fn is_permanent(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 400 | 403 | 404 | 405 | 410 | 422),
        kube::Error::Discovery(_) => true,
        _ => false,
    }
}

impl Resolver {
    /// A resolver with caches of its own, which tell no one of what they see (the CLI's).
    pub fn new(client: kube::Client, no_cross_namespace_refs: bool) -> Self {
        let caches = Caches::new(client.clone(), Arc::new(|_, _| {}), Default::default());
        Self::with_caches(client, no_cross_namespace_refs, caches)
    }

    pub fn with_caches(
        client: kube::Client,
        no_cross_namespace_refs: bool,
        caches: Arc<Caches>,
    ) -> Self {
        Self {
            client,
            no_cross_namespace_refs,
            caches,
            discovered: Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    pub fn caches(&self) -> &Arc<Caches> {
        &self.caches
    }

    /// The dynamic API of a kind, from discovery (cached).
    pub async fn api_resource(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<Arc<ApiResource>, kube::Error> {
        // Looked through rather than by a key made of owned strings: the kinds are few, and this
        // runs for every delivery.
        let known = self.discovered.lock().ok().and_then(|d| {
            (d.iter())
                .find(|((v, k), _)| v == api_version && k == kind)
                .map(|(_, found)| found.clone())
        });
        if let Some(found) = known {
            return Ok(found);
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, _) =
            within_deadline(kube::discovery::pinned_kind(&self.client, &gvk)).await?;
        let resource = Arc::new(resource);
        if let Ok(mut discovered) = self.discovered.lock() {
            let key = (api_version.to_owned(), kind.to_owned());
            discovered.insert(key, resource.clone());
        }
        Ok(resource)
    }

    /// Resolves every entry of `spec.resources` and applies the filters (`spec.resourceFilter`
    /// and the entry's `filter`, ANDed) with `res` = the target's apiVersion, kind and metadata
    /// plus `req` and `claims` from `inputs`. Refusals (bad references, unknown kinds, missing named targets
    /// when filtering, filter errors) are permanent and reported; any other API error is
    /// returned, to be retried.
    pub async fn resolve(
        &self,
        receiver: &Receiver,
        inputs: &Arc<Inputs>,
    ) -> Result<Resolved, kube::Error> {
        let mut targets = BTreeSet::new();
        let mut filtered_out = BTreeSet::new();
        let mut refused = Vec::new();
        for resource in &receiver.resources {
            let filters: Vec<Expression> = (receiver.resource_filter.iter())
                .chain(resource.filter.iter())
                .cloned()
                .collect();
            let candidates = match self.resolve_one(receiver, resource).await {
                Ok(found) => found,
                Err(Refusal::Permanent(reason)) => {
                    refused.push((None, reason));
                    continue;
                }
                Err(Refusal::Transient(error)) => return Err(error),
            };
            let mut to_filter = Vec::new();
            for (target, object) in candidates {
                if filters.is_empty() {
                    targets.insert(target);
                    continue;
                }
                let object = match object {
                    Some(object) => object,
                    None => match self.object(&target).await {
                        Ok(object) => object,
                        Err(Refusal::Permanent(reason)) => {
                            refused.push((Some(target), reason));
                            continue;
                        }
                        Err(Refusal::Transient(error)) => return Err(error),
                    },
                };
                to_filter.push((target, object));
            }
            let candidates = to_filter.len();
            let evaluating =
                tracing::info_span!("evaluate filters", fluxgate.candidates = candidates);
            for (target, verdict) in filter_all(filters, to_filter, inputs)
                .instrument(evaluating)
                .await
            {
                match verdict {
                    Ok(true) => {
                        targets.insert(target);
                    }
                    Ok(false) => {
                        filtered_out.insert(target);
                    }
                    Err(reason) => refused.push((Some(target), reason)),
                }
            }
        }
        Ok(Resolved {
            filtered_out: filtered_out.difference(&targets).cloned().collect(),
            targets: targets.into_iter().collect(),
            refused,
        })
    }

    /// A named target as its scope's cache holds it, for its filters.
    async fn object(&self, target: &Target) -> Result<Arc<DynamicObject>, Refusal> {
        let api_resource = self.api_resource(&target.api_version, &target.kind).await?;
        let cache = self
            .caches
            .synced(&Scope::of(target), &api_resource)
            .await?;
        match cache.get(&target.name) {
            Some(object) => Ok(object),
            None => Err(Refusal::Permanent(format!(
                "{} {}/{} not found",
                target.kind, target.namespace, target.name
            ))),
        }
    }

    /// Where an entry of `spec.resources` points: its scope, or why it cannot be served.
    fn scope_of(&self, receiver: &Receiver, resource: &ResourceRef) -> Result<Scope, Refusal> {
        let describe = || format!("{} {}", resource.kind, resource.name);
        let namespace = resource
            .namespace
            .clone()
            .unwrap_or_else(|| receiver.namespace.clone());
        if self.no_cross_namespace_refs && namespace != receiver.namespace {
            return Err(Refusal::Permanent(format!(
                "{}: cross-namespace reference to {namespace} refused (--no-cross-namespace-refs)",
                describe()
            )));
        }
        let api_version = match &resource.api_version {
            Some(v) if !v.is_empty() => v.clone(),
            _ => default_api_version(&resource.kind)
                .ok_or_else(|| {
                    Refusal::Permanent(format!(
                        "{}: apiVersion is required for kind {}",
                        describe(),
                        resource.kind
                    ))
                })?
                .to_owned(),
        };
        Ok(Scope {
            api_version,
            kind: resource.kind.clone(),
            namespace,
        })
    }

    /// The `reconcile.fluxcd.io/requestedAt` of `target` as its scope's cache holds it; none
    /// when it has none, or the cache cannot say.
    pub async fn requested_at(&self, target: &Target) -> Option<String> {
        let resource = (self.api_resource(&target.api_version, &target.kind).await).ok()?;
        let cache = self
            .caches
            .synced(&Scope::of(target), &resource)
            .await
            .ok()?;
        let object = cache.get(&target.name)?;
        let annotations = object.metadata.annotations.as_ref()?;
        annotations.get(crate::patch::REQUESTED_AT).cloned()
    }

    /// The scopes `receiver` names, whose caches are kept while it exists.
    pub fn scopes_named<'a>(&'a self, receiver: &'a Receiver) -> impl Iterator<Item = Scope> + 'a {
        (receiver.resources.iter()).filter_map(|resource| self.scope_of(receiver, resource).ok())
    }

    async fn resolve_one(
        &self,
        receiver: &Receiver,
        resource: &ResourceRef,
    ) -> Result<Vec<(Target, Option<Arc<DynamicObject>>)>, Refusal> {
        let scope = self.scope_of(receiver, resource)?;
        let target = |name: String| Target {
            api_version: scope.api_version.clone(),
            kind: scope.kind.clone(),
            namespace: scope.namespace.clone(),
            name,
        };
        if resource.name != "*" {
            // As in Flux, matchLabels only apply to the wildcard.
            return Ok(vec![(target(resource.name.clone()), None)]);
        }
        // `matchLabels: {}` is an empty selector, which selects every object, as in Flux; only
        // no `matchLabels` at all is refused.
        let labels = resource.match_labels.as_ref().ok_or_else(|| {
            Refusal::Permanent(format!(
                "{} {}: matchLabels field not set when using wildcard '*' as name",
                resource.kind, resource.name
            ))
        })?;
        let api_resource = self.api_resource(&scope.api_version, &scope.kind).await?;
        let cache = self.caches.synced(&scope, &api_resource).await?;
        // By name, from the store: the object as it is now (a selection may be older).
        Ok((cache.matching(labels).iter())
            .filter_map(|name| Some((target(name.clone()), Some(cache.get(name)?))))
            .collect())
    }
}

/// Each candidate with whether every filter holds for it, evaluated on a blocking thread --
/// a costly expression must not stall the async workers (and the Lease renewal with them) --
/// within [`FILTER_BUDGET`]; past it, each is refused with the reason. The evaluation itself
/// cannot be stopped: its thread runs on until it is done.
async fn filter_all(
    filters: Vec<Expression>,
    candidates: Vec<(Target, Arc<DynamicObject>)>,
    inputs: &Arc<Inputs>,
) -> Vec<(Target, Result<bool, String>)> {
    if candidates.is_empty() {
        return Vec::new();
    }
    let names: Vec<Target> = candidates
        .iter()
        .map(|(target, _)| target.clone())
        .collect();
    let inputs = inputs.clone();
    let evaluation = tokio::task::spawn_blocking(move || {
        (candidates.into_iter())
            .map(|(target, object)| {
                let verdict = passes(&filters, &target, &object.metadata, &inputs);
                (target, verdict)
            })
            .collect()
    });
    match tokio::time::timeout(FILTER_BUDGET, evaluation).await {
        Ok(Ok(verdicts)) => verdicts,
        Ok(Err(panicked)) => refuse_all(names, format!("the filters failed: {panicked}")),
        Err(_) => refuse_all(
            names,
            format!("the filters did not finish within {FILTER_BUDGET:?}"),
        ),
    }
}

fn refuse_all(targets: Vec<Target>, reason: String) -> Vec<(Target, Result<bool, String>)> {
    (targets.into_iter())
        .map(|target| (target, Err(reason.clone())))
        .collect()
}

/// Whether every filter holds for `target`; the first false one stops, an error fails.
fn passes(
    filters: &[Expression],
    target: &Target,
    metadata: &ObjectMeta,
    inputs: &Inputs,
) -> Result<bool, String> {
    // `res` carries no spec or status, as in Flux.
    let res = filter::value(&serde_json::json!({
        "apiVersion": target.api_version,
        "kind": target.kind,
        "metadata": metadata,
    }));
    let mut variables = vec![("res", &res), ("req", &inputs.req)];
    if let Some(claims) = &inputs.claims {
        variables.push(("claims", claims));
    }
    for expression in filters {
        if !expression.is_true(&variables)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Why a reference or a target cannot be served now: for good, or for a moment (retried).
pub enum Refusal {
    Permanent(String),
    Transient(kube::Error),
}

impl From<kube::Error> for Refusal {
    fn from(error: kube::Error) -> Self {
        if is_permanent(&error) {
            Self::Permanent(describe(&error))
        } else {
            Self::Transient(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flux_defaults_for_source_kinds_only() {
        assert_eq!(
            default_api_version("GitRepository"),
            Some("source.toolkit.fluxcd.io/v1")
        );
        assert_eq!(
            default_api_version("OCIRepository"),
            Some("source.toolkit.fluxcd.io/v1")
        );
        assert_eq!(
            default_api_version("ImageRepository"),
            Some("image.toolkit.fluxcd.io/v1")
        );
        assert_eq!(
            default_api_version("ArtifactGenerator"),
            Some("source.extensions.fluxcd.io/v1beta1")
        );
        assert_eq!(default_api_version("Kustomization"), None);
    }

    #[test]
    fn api_errors_are_described_by_the_api_servers_message() {
        let error = kube::Error::Api(Box::new(kube::core::Status {
            code: 404,
            reason: "NotFound".into(),
            message: "gitrepositories \"infra\" not found".into(),
            ..Default::default()
        }));
        assert_eq!(
            describe(&error),
            "404 NotFound: gitrepositories \"infra\" not found"
        );
    }

    #[test]
    fn permanent_errors_are_the_ones_a_retry_cannot_fix() {
        let status = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        for code in [400, 403, 404, 422] {
            assert!(is_permanent(&status(code)), "{code}");
        }
        for code in [409, 429, 500, 503] {
            assert!(!is_permanent(&status(code)), "{code}");
        }
    }
}

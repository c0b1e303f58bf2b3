//! Optional authorization for the stand-in, as the API server's RBAC authorizer decides it: Roles,
//! ClusterRoles and their bindings loaded from manifests (what `kubectl kustomize deploy/...`
//! renders), enforced per ServiceAccount for every resource request. Authentication is reduced
//! to the bearer token naming the user (`system:serviceaccount:<namespace>:<name>`); the token
//! of the plain kubeconfig is the cluster admin.

use serde::Deserialize;

/// The token and user of [`super::ApiServer::kubeconfig`]: allowed everything (system:masters).
pub const ADMIN_TOKEN: &str = "stand-in";

/// The verbs the API server authorizes resource requests with.
pub const VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// A ServiceAccount's user name, which the stand-in also takes as its bearer token.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// What a resource request asks for, in the terms of RBAC rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    /// The plural, with `/status` for the status subresource.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Attributes {
    /// The API server's words for a denial.
    pub fn forbidden_message(&self, user: &str) -> String {
        let what = if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        let name = self
            .name
            .as_ref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        let scope = match &self.namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "at the cluster scope".into(),
        };
        format!(
            "{what}{name} is forbidden: User {user:?} cannot {} resource {:?} in API group {:?} {scope}",
            self.verb, self.resource, self.group
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

impl Rule {
    fn allows(&self, a: &Attributes) -> bool {
        let has = |list: &[String], value: &str| list.iter().any(|v| v == "*" || v == value);
        has(&self.verbs, &a.verb)
            && has(&self.api_groups, &a.group)
            && has(&self.resources, &a.resource)
            // A rule with names never matches a request without one (list, create), as in RBAC.
            && (self.resource_names.is_empty()
                || a.name.as_ref().is_some_and(|n| self.resource_names.contains(n)))
    }
}

#[derive(Debug, Deserialize)]
struct Meta {
    name: String,
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RoleRef {
    kind: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct Subject {
    kind: String,
    name: String,
    namespace: Option<String>,
}

impl Subject {
    fn is(&self, user: &str) -> bool {
        match self.kind.as_str() {
            "ServiceAccount" => {
                service_account_user(self.namespace.as_deref().unwrap_or_default(), &self.name)
                    == user
            }
            "User" => self.name == user,
            "Group" => match user.strip_prefix("system:serviceaccount:") {
                Some(rest) => {
                    let namespace = rest.split(':').next().unwrap_or_default();
                    self.name == "system:authenticated"
                        || self.name == "system:serviceaccounts"
                        || self.name == format!("system:serviceaccounts:{namespace}")
                }
                None => self.name == "system:authenticated",
            },
            _ => false,
        }
    }
}

/// A Role (namespaced) or ClusterRole (`namespace` None).
#[derive(Debug)]
struct Role {
    cluster: bool,
    namespace: Option<String>,
    name: String,
    rules: Vec<Rule>,
}

/// A RoleBinding (namespaced) or ClusterRoleBinding (`namespace` None).
#[derive(Debug)]
struct Binding {
    namespace: Option<String>,
    role_ref: RoleRef,
    subjects: Vec<Subject>,
}

/// The RBAC objects of a set of manifests.
#[derive(Debug, Default)]
pub struct Authorizer {
    roles: Vec<Role>,
    bindings: Vec<Binding>,
}

impl Authorizer {
    /// Takes the Roles, ClusterRoles, RoleBindings and ClusterRoleBindings of a multi-document
    /// YAML stream; other objects are ignored.
    pub fn from_yaml(yaml: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Object {
            kind: Option<String>,
            metadata: Option<Meta>,
            #[serde(default)]
            rules: Vec<Rule>,
            role_ref: Option<RoleRef>,
            #[serde(default)]
            subjects: Vec<Subject>,
        }
        let mut authorizer = Self::default();
        for document in serde_yaml_ng::Deserializer::from_str(yaml) {
            let object = Object::deserialize(document).map_err(|e| e.to_string())?;
            let (Some(kind), Some(metadata)) = (object.kind, object.metadata) else {
                continue;
            };
            let cluster = kind.starts_with("Cluster");
            let namespace = if cluster { None } else { metadata.namespace };
            match kind.as_str() {
                "Role" | "ClusterRole" => authorizer.roles.push(Role {
                    cluster,
                    namespace,
                    name: metadata.name,
                    rules: object.rules,
                }),
                "RoleBinding" | "ClusterRoleBinding" => {
                    let role_ref = object
                        .role_ref
                        .ok_or_else(|| format!("{kind} {} has no roleRef", metadata.name))?;
                    authorizer.bindings.push(Binding {
                        namespace,
                        role_ref,
                        subjects: object.subjects,
                    });
                }
                _ => {}
            }
        }
        Ok(authorizer)
    }

    /// Whether the stand-in authenticates `user`: the admin, or any ServiceAccount.
    pub fn knows(&self, user: &str) -> bool {
        user == ADMIN_TOKEN || user.starts_with("system:serviceaccount:")
    }

    /// Whether `user` may do what `a` asks: some binding of the user grants a rule that
    /// matches, a RoleBinding only within its own namespace.
    pub fn allows(&self, user: &str, a: &Attributes) -> bool {
        if user == ADMIN_TOKEN {
            return true;
        }
        self.bindings.iter().any(|binding| {
            let in_scope = match &binding.namespace {
                None => true,
                Some(ns) => a.namespace.as_ref() == Some(ns),
            };
            in_scope
                && binding.subjects.iter().any(|s| s.is(user))
                && self
                    .role_of(binding)
                    .is_some_and(|role| role.rules.iter().any(|rule| rule.allows(a)))
        })
    }

    fn role_of(&self, binding: &Binding) -> Option<&Role> {
        let cluster = binding.role_ref.kind == "ClusterRole";
        self.roles.iter().find(|role| {
            role.cluster == cluster
                && role.name == binding.role_ref.name
                && (cluster || role.namespace == binding.namespace)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
rules:
  - {apiGroups: [""], resources: [secrets], verbs: [get]}
  - {apiGroups: [coordination.k8s.io], resources: [leases], resourceNames: [one], verbs: [update]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}
subjects: [{kind: ServiceAccount, name: a, namespace: ns}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: lister, namespace: ns}
rules: [{apiGroups: ["*"], resources: ["*"], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: lister, namespace: ns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lister}
subjects: [{kind: ServiceAccount, name: b, namespace: ns}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-in-other, namespace: other}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}
subjects: [{kind: Group, name: "system:serviceaccounts:ns"}]
"#;

    fn ask(
        verb: &str,
        group: &str,
        resource: &str,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn bindings_grant_their_rules_in_their_scope_only() {
        let rbac = Authorizer::from_yaml(MANIFESTS).expect("manifests");
        let a = service_account_user("ns", "a");
        let b = service_account_user("ns", "b");
        // ClusterRoleBinding: every namespace; only the verbs and resources of the rules.
        assert!(rbac.allows(&a, &ask("get", "", "secrets", Some("x"), Some("s"))));
        assert!(!rbac.allows(&a, &ask("list", "", "secrets", Some("x"), None)));
        assert!(!rbac.allows(&a, &ask("get", "", "configmaps", Some("x"), Some("c"))));
        // resourceNames: that name only, never a request without a name.
        assert!(rbac.allows(
            &a,
            &ask(
                "update",
                "coordination.k8s.io",
                "leases",
                Some("ns"),
                Some("one")
            )
        ));
        assert!(!rbac.allows(
            &a,
            &ask(
                "update",
                "coordination.k8s.io",
                "leases",
                Some("ns"),
                Some("two")
            )
        ));
        // A Role's binding: its namespace only, wildcards match any group and resource.
        assert!(rbac.allows(&b, &ask("list", "apps", "deployments", Some("ns"), None)));
        assert!(!rbac.allows(&b, &ask("list", "apps", "deployments", Some("x"), None)));
        assert!(!rbac.allows(&b, &ask("list", "apps", "deployments", None, None)));
        // A ClusterRole bound by a RoleBinding to a group: that namespace only.
        assert!(rbac.allows(&b, &ask("get", "", "secrets", Some("other"), Some("s"))));
        assert!(!rbac.allows(&b, &ask("get", "", "secrets", Some("ns"), Some("s"))));
        assert!(!rbac.allows(
            "system:serviceaccount:elsewhere:c",
            &ask("get", "", "secrets", Some("other"), Some("s"))
        ));
        assert!(rbac.allows(ADMIN_TOKEN, &ask("delete", "", "secrets", None, None)));
    }

    #[test]
    fn denials_read_like_the_api_servers() {
        let message = ask("list", "", "secrets", Some("flux-system"), None)
            .forbidden_message("system:serviceaccount:flux-system:fluxgate-ingest");
        assert_eq!(
            message,
            "secrets is forbidden: User \"system:serviceaccount:flux-system:fluxgate-ingest\" cannot list resource \"secrets\" in API group \"\" in the namespace \"flux-system\""
        );
    }
}

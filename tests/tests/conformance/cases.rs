//! The cases: notification-controller's own receiver tests, each with the inputs Flux's test
//! gives it (spec, headers, payload, expressions, claims), Flux's answer, and fluxgate's.

use fluxgate_shared::pubsub;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use super::{Auth, Case, GCR_AUDIENCE, GCR_EMAIL, MAX_BODY, TOKEN, Token};

const MERGED: &str = "cd.change.merged.v1";
const JSON: (&str, &str) = ("Content-Type", "application/json");
const JSON_UTF8: (&str, &str) = ("Content-Type", "application/json; charset=utf-8");

/// Why fluxgate answers differently, where it does on purpose.
const CREDENTIAL: &str = "a missing or bad credential is 401 Unauthorized";
const NOT_SENDERS: &str =
    "stored and answered 202: the failure is not the sender's to fix; the dispatcher records it";
const IGNORED: &str = "an event outside spec.events is answered 200 and ignored: GitLab disables a hook that answers 4xx";

/// The issuers the cases' OIDC providers name.
pub struct Issuers<'a> {
    pub main: &'a str,
    pub other: &'a str,
}

/// A case Flux answers 400 and fluxgate 401: a missing or bad credential.
fn refused(case: Case) -> Case {
    case.answers((400, 0), (401, 0)).differs(CREDENTIAL)
}

fn case(from: &'static str, name: &'static str, spec: Value) -> Case {
    Case {
        from,
        name,
        spec,
        secret: Some(json!({"token": TOKEN})),
        objects: vec![],
        headers: vec![],
        body: Value::Null,
        raw_body: None,
        auth: Auth::None,
        flux: (200, 0),
        fluxgate: (202, 0),
        differs: None,
        says: None,
    }
}

/// Flux's single target, `test-resource` (a GitRepository here, a Receiver in Flux's fake
/// client: the kind only matters for its apiVersion default).
fn test_resource() -> Value {
    json!([{"kind": "GitRepository", "name": "test-resource"}])
}

fn object(name: &'static str) -> (&'static str, Value, Value) {
    (name, json!({}), json!({}))
}

fn labelled(name: &'static str, labels: Value) -> (&'static str, Value, Value) {
    (name, labels, json!({}))
}

/// `spec` with Flux's single target, and that target.
fn targeting(mut spec: Value) -> (Value, Vec<(&'static str, Value, Value)>) {
    spec["resources"] = test_resource();
    (spec, vec![object("test-resource")])
}

fn gcr_data(event: &Value) -> Value {
    pubsub::envelope(event, "gcr-1")
}

fn flux_cdevent() -> Value {
    json!({
        "context": {
            "gitRepository": "adamkenihan/notification-controller",
            "gitRevision": "5555",
            "version": "0.3.0",
            "id": "5555",
            "source": "github",
            "timestamp": "2023-12-07T14:51:29.908479495Z",
            "type": "dev.cdevents.change.merged.0.2.0",
        },
        "subject": {"type": "change", "id": "5555"},
    })
}

fn image_push() -> Value {
    json!({
        "action": "INSERT",
        "digest": "us-east1-docker.pkg.dev/my-project/my-repo/hello-world@sha256:6ec128e26cd5...",
        "tag": "us-east1-docker.pkg.dev/my-project/my-repo/hello-world:1.1",
    })
}

const UPDATE_IMAGE: &str = "has(res.metadata.annotations) && req.tag.split('/').last().value().split(\":\").first().value() == res.metadata.annotations['update-image']";

/// `Test_handlePayload`.
fn handle_payload() -> Vec<Case> {
    const FROM: &str = "Test_handlePayload";
    let cel = |name, spec: Value| {
        let (spec, objects) = targeting(spec);
        case(FROM, name, spec)
            .objects(objects)
            .answers((200, 1), (202, 1))
    };
    vec![
        case(FROM, "Generic receiver", json!({"type": "generic"})),
        case(FROM, "gitlab receiver", json!({"type": "gitlab"}))
            .headers(&[("X-Gitlab-Token", TOKEN)]),
        case(FROM, "cdevents receiver", json!({"type": "cdevents", "events": [MERGED]}))
            .headers(&[("Ce-Type", MERGED)])
            .body(flux_cdevent()),
        case(FROM, "cdevents receiver wrong event type", json!({"type": "cdevents", "events": ["cd.environment.modified.v1"]}))
            .headers(&[("Ce-Type", MERGED)])
            .body(flux_cdevent())
            .says("\"ignored\":true")
            .answers((400, 0), (200, 0))
            .differs(IGNORED),
        case(FROM, "cdevents receiver no event type specified", json!({"type": "cdevents"}))
            .headers(&[("Ce-Type", MERGED)])
            .body(flux_cdevent()),
        case(FROM, "github receiver", json!({"type": "github"}))
            .auth(Auth::HubSignature)
            .headers(&[JSON])
            .body(json!({"action": "push"})),
        case(FROM, "generic hmac receiver", json!({"type": "generic-hmac"}))
            .auth(Auth::XSignature)
            .headers(&[JSON]),
        case(FROM, "bitbucket receiver", json!({"type": "bitbucket", "events": ["push"]}))
            .auth(Auth::HubSignature)
            .headers(&[JSON, ("X-Event-Key", "push")]),
        case(FROM, "quay receiver", json!({"type": "quay"}))
            .body(json!({"docker_url": "docker.io", "updated_tags": ["v0.0.1"]})),
        case(FROM, "harbor receiver", json!({"type": "harbor"}))
            .headers(&[("Authorization", TOKEN)]),
        case(FROM, "missing secret", json!({"type": "generic"}))
            .with(|c| c.secret = None)
            .answers((400, 0), (404, 0))
            .differs("a Receiver whose Secret is missing is not served at all: its hook path needs the token"),
        case(FROM, "no receiver configured", Value::Null).answers((404, 0), (404, 0)),
        case(FROM, "not ready receiver is ignored (fluxgate reads readiness from the spec: an invalid filter)", json!({"type": "generic", "resourceFilter": "req.tag =="}))
            .answers((503, 0), (503, 0)),
        case(FROM, "suspended receiver ignored", json!({"type": "generic", "suspend": true}))
            .answers((503, 0), (503, 0)),
        case(FROM, "missing apiVersion in resource", json!({"type": "generic", "resources": [{"kind": "Receiver", "matchLabels": {"label": "match"}}]}))
            .answers((500, 0), (202, 0))
            .differs(NOT_SENDERS),
        case(FROM, "resource by name not found", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "does-not-exists"}]}))
            .answers((500, 0), (202, 0))
            .differs(NOT_SENDERS),
        case(FROM, "annotating resources by label match", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "*", "matchLabels": {"label": "match"}}]}))
            .objects(vec![
                labelled("dummy-resource-2", json!({"label": "does-not-match"})),
                labelled("dummy-resource", json!({"label": "match"})),
            ])
            .answers((200, 1), (202, 1)),
        case(FROM, "annotating resource by name", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "dummy-resource"}]}))
            .objects(vec![object("dummy-resource-2"), object("dummy-resource")])
            .answers((200, 1), (202, 1)),
        case(FROM, "cannot annotate all resources if name is * and no labels were set", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "*"}]}))
            .objects(vec![object("dummy-resource")])
            .answers((500, 0), (202, 0))
            .differs(NOT_SENDERS),
        case(FROM, "no cross-namespace refs", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "some-resource", "namespace": "another-namespace"}]}))
            .answers((500, 0), (202, 0))
            .differs(NOT_SENDERS),
        case(FROM, "large payload", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "some-resource"}]}))
            .body(json!({"padding": "x".repeat(MAX_BODY)}))
            .answers((400, 0), (413, 0))
            .differs("a body over the limit is 413 Content Too Large, HTTP's status for it"),
        case(FROM, "resource matchLabels is ignored if name is not *", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "dummy-resource", "matchLabels": {"label": "match"}}]}))
            .objects(vec![labelled("dummy-resource-2", json!({"label": "match"})), object("dummy-resource")])
            .answers((200, 1), (202, 1)),
        case(FROM, "resources filtered with CEL expressions", json!({
            "type": "generic",
            "resources": [{"kind": "GitRepository", "name": "*", "matchLabels": {"label": "production"}}],
            "resourceFilter": UPDATE_IMAGE,
        }))
            .headers(&[JSON_UTF8])
            .body(image_push())
            .objects(vec![
                ("test-resource-1", json!({"label": "production"}), json!({"update-image": "hello-world"})),
                ("tested/test-resource-2", json!({"label": "production"}), json!({"update-image": "other-image"})),
                labelled("test-resource-3", json!({"label": "production"})),
            ])
            .answers((200, 1), (202, 1)),
        case(FROM, "filtering out a single named resource with CEL", json!({"type": "generic", "resources": test_resource(), "resourceFilter": UPDATE_IMAGE}))
            .headers(&[JSON_UTF8])
            .body(image_push())
            .objects(vec![("test-resource", json!({}), json!({"update-image": "not-hello-world"}))]),
        cel("CEL filtering a GitHub receiver", json!({"type": "github", "resourceFilter": "res.metadata.name == 'test-resource' && req.action == 'push'"}))
            .auth(Auth::HubSignature)
            .headers(&[JSON])
            .body(json!({"action": "push"})),
        cel("CEL filtering a GitLab receiver - (does not read body)", json!({"type": "gitlab", "resourceFilter": "res.metadata.name == 'test-resource' && req.action == 'push'"}))
            .headers(&[JSON, ("X-Gitlab-Token", TOKEN)])
            .body(json!({"action": "push"})),
        cel("CEL filtering a cdevents receiver", json!({"type": "cdevents", "events": [MERGED], "resourceFilter": "res.metadata.name == 'test-resource' && req.context.gitRepository == 'adamkenihan/notification-controller'"}))
            .headers(&[("Ce-Type", MERGED), JSON_UTF8])
            .body(flux_cdevent()),
        cel("CEL filtering a Bitbucket receiver", json!({"type": "bitbucket", "resourceFilter": "res.metadata.name == 'test-resource' && req.action == 'push'"}))
            .auth(Auth::HubSignature)
            .headers(&[JSON, ("X-Event-Key", "push")])
            .body(json!({"action": "push"})),
        cel("CEL filtering a quay receiver", json!({"type": "quay", "resourceFilter": "res.metadata.name == 'test-resource' && req.docker_url == 'docker.io'"}))
            .headers(&[JSON])
            .body(json!({"docker_url": "docker.io", "updated_tags": ["v0.0.1"]})),
        cel("CEL filtering a Harbor receiver - (does not read body)", json!({"type": "harbor", "resourceFilter": "res.metadata.name == 'test-resource' && req.events[0].full_name == 'prj/repo1'"}))
            .headers(&[("Authorization", TOKEN), JSON])
            .body(json!({"event_type": "pushImage", "events": [{
                "project": "prj", "repo_name": "repo1", "tag": "latest", "full_name": "prj/repo1",
                "trigger_time": 158_322_233_213_u64,
                "image_id": "9e2c9d5f44efbb6ee83aecd17a120c513047d289d142ec5738c9f02f9b24ad07",
                "project_type": "Private",
            }]})),
        cel("CEL filtering a Docker hub receiver", json!({"type": "dockerhub", "resourceFilter": "res.metadata.name == 'test-resource' && req.push_data.tag.split('/').last().value().split(':').first().value() == 'test-repo'"}))
            .headers(&[JSON])
            .body(json!({"push_data": {"tag": "test-org/test-repo:v1.0"}, "repository": {"repo_url": "docker.io"}})),
        cel("CEL filtering a GCR receiver (with a Google ID token: Flux's case predates gcr authentication)", json!({"type": "gcr", "resourceFilter": "res.metadata.name == 'test-resource' && req.tag.split('/').last().value().split(\":\").first().value() == 'app1'"}))
            .auth(Auth::Google)
            .with(|c| c.secret = Some(json!({"token": TOKEN, "email": GCR_EMAIL, "audience": GCR_AUDIENCE})))
            .headers(&[JSON])
            .body(gcr_data(&json!({
                "action": "INSERT",
                "digest": "us-east1-docker.pkg.dev/my-project/my-repo/app1@sha256:6ec128e26cd5...",
                "tag": "us-east1-docker.pkg.dev/my-project/my-repo/app1:v1.2.3",
            }))),
        cel("CEL filtering a Nexus receiver", json!({"type": "nexus", "resourceFilter": "res.metadata.name == 'test-resource' && req.repositoryName == 'npm-proxy'"}))
            .auth(Auth::Nexus)
            .headers(&[JSON])
            .body(json!({
                "timestamp": "2016-11-10T23:57:49.664+0000",
                "nodeId": "52905B51-085CCABB-CEBBEAAD-16795588-FC927D93",
                "initiator": "admin/127.0.0.1",
                "repositoryName": "npm-proxy",
                "action": "CREATED",
                "asset": {"id": "31c950c8eeeab78336308177ae9c441c", "assetId": "bnBtLXByb3h5OjMxYzk1MGM4ZWVlYWI3ODMzNjMwODE3N2FlOWM0NDFj", "format": "npm", "name": "concrete"},
            })),
        cel("CEL filtering an ACR receiver", json!({"type": "acr", "resourceFilter": "res.metadata.name == 'test-resource' && req.target.repository == 'hello-world'"}))
            .headers(&[JSON])
            .body(json!({"action": "push", "target": {"repository": "hello-world", "tag": "v1"}})),
        case(FROM, "handling errors when parsing the CEL expression results", json!({
            "type": "generic",
            "resources": [{"kind": "GitRepository", "name": "*", "matchLabels": {"label": "production"}}],
            "resourceFilter": "res.name == \"test-resource-1\"",
        }))
            .headers(&[JSON_UTF8])
            .objects(vec![labelled("test-resource-1", json!({"label": "production"}))])
            .answers((500, 0), (202, 0))
            .differs(NOT_SENDERS),
    ]
}

fn repository_claims(claims: &mut Value) {
    claims["aud"] = json!("flux");
    claims["sub"] = json!("subject");
    claims["repository"] = json!("my-org/my-repo");
    claims["environment"] = json!("production");
}

/// `TestValidateGenericOIDC`, through the whole handler: Flux's answer is the handler's.
fn validate_generic_oidc(issuers: &Issuers) -> Vec<Case> {
    const FROM: &str = "TestValidateGenericOIDC";
    let base = json!({
        "issuerURL": issuers.main,
        "audience": "flux",
        "validations": [
            {"expression": "claims.repository == 'my-org/my-repo'", "message": "wrong repo"},
            {"expression": "claims.environment == 'production'", "message": "wrong environment"},
        ],
    });
    let oidc = |name, provider: &Value| {
        let (spec, objects) =
            targeting(json!({"type": "generic-oidc", "oidcProviders": [provider]}));
        case(FROM, name, spec)
            .objects(objects)
            .with(|c| c.secret = None)
    };
    vec![
        oidc("valid token passes validations", &base)
            .auth(Auth::token(repository_claims))
            .answers((200, 1), (202, 1)),
        refused(oidc("missing authorization header", &base)),
        refused(oidc("malformed bearer", &base).auth(Auth::Raw("Bearer not-a-jwt"))),
        refused(oidc("unknown issuer", &base).auth(Auth::Oidc(Token {
            other_issuer: true,
            ..Token::of(repository_claims)
        }))),
        refused(oidc("wrong audience", &base).auth(Auth::token(|c| {
            repository_claims(c);
            c["aud"] = json!("someone-else");
        }))),
        refused(oidc("expired token", &base).auth(Auth::token(|c| {
            repository_claims(c);
            c["exp"] = json!(chrono::Utc::now().timestamp() - 60);
        }))),
        refused(oidc("failed validations are aggregated", &base).auth(Auth::token(|c| {
            repository_claims(c);
            c["repository"] = json!("evil/repo");
            c["environment"] = json!("staging");
        })))
        .says("wrong repo; wrong environment"),
        oidc("variables resolve before validations", &json!({
            "issuerURL": issuers.main,
            "audience": "flux",
            "variables": [{"name": "allowed", "expression": "['my-org/my-repo']"}],
            "validations": [{"expression": "claims.repository in vars.allowed", "message": "repo not allowed"}],
        }))
        .auth(Auth::token(repository_claims))
        .answers((200, 1), (202, 1)),
    ]
}

/// A generic-oidc receiver with these providers and Flux's single target, sent a token from the
/// main issuer whose claims `claims` sets.
fn oidc_receiver(
    from: &'static str,
    name: &'static str,
    providers: Value,
    claims: fn(&mut Value),
) -> Case {
    let (spec, objects) = targeting(json!({"type": "generic-oidc", "oidcProviders": providers}));
    case(from, name, spec)
        .objects(objects)
        .with(|c| c.secret = None)
        .auth(Auth::token(claims))
}

fn repo_and_env(claims: &mut Value) {
    claims["aud"] = json!("id");
    claims["repo"] = json!("org/repo");
    claims["owner"] = json!("org");
    claims["env"] = json!("dev");
}

/// `TestOIDCClaimsProcessor_Evaluate`, through the whole handler (ingest's own unit test runs
/// the processor alone, where "no validations" passes).
fn claims_processor(issuers: &Issuers) -> Vec<Case> {
    const FROM: &str = "TestOIDCClaimsProcessor_Evaluate";
    let provider = |variables: Value, validations: Value| json!([{"issuerURL": issuers.main, "audience": "id", "variables": variables, "validations": validations}]);
    vec![
        oidc_receiver(FROM, "no validations always passes (the processor does; the spec check stalls the Receiver first)", provider(json!([]), json!([])), repo_and_env)
            .answers((503, 0), (503, 0)),
        oidc_receiver(FROM, "passing validation", provider(json!([]), json!([{"expression": "claims.repo == 'org/repo'", "message": "wrong repo"}])), repo_and_env)
            .answers((200, 1), (202, 1)),
        refused(oidc_receiver(FROM, "all failures aggregated", provider(json!([]), json!([
            {"expression": "claims.repo == 'org/repo'", "message": "wrong repo"},
            {"expression": "claims.env == 'prod'", "message": "wrong env"},
        ])), |c| {
            repo_and_env(c);
            c["repo"] = json!("evil");
        }))
        .says("wrong repo; wrong env"),
        oidc_receiver(FROM, "variables flow into validations", provider(
            json!([{"name": "allowed", "expression": "['org/repo']"}]),
            json!([{"expression": "claims.repo in vars.allowed", "message": "repo denied"}]),
        ), repo_and_env)
            .answers((200, 1), (202, 1)),
        oidc_receiver(FROM, "variables can reference earlier variables", provider(
            json!([{"name": "owner", "expression": "claims.owner"}, {"name": "allowed", "expression": "[vars.owner + '/repo']"}]),
            json!([{"expression": "claims.repo in vars.allowed", "message": "repo denied"}]),
        ), repo_and_env)
            .answers((200, 1), (202, 1)),
    ]
}

fn my_org(claims: &mut Value) {
    claims["aud"] = json!("aud");
    claims["repository_owner"] = json!("my-org");
    claims["x"] = json!("y");
}

/// `TestValidateOIDCProvidersSpec` and `TestCompileOIDCProviders`: a provider Flux refuses
/// stalls the Receiver (503); one it accepts serves a token from its issuer.
fn provider_spec(issuers: &Issuers) -> Vec<Case> {
    const SPEC: &str = "TestValidateOIDCProvidersSpec";
    const COMPILE: &str = "TestCompileOIDCProviders";
    let check =
        json!([{"expression": "claims.repository_owner == 'my-org'", "message": "wrong org"}]);
    let (a, b) = (issuers.main, issuers.other);
    let stalled = |c: Case| c.answers((503, 0), (503, 0));
    let serves = |c: Case| c.answers((200, 1), (202, 1));
    vec![
        serves(oidc_receiver(
            SPEC,
            "two providers",
            json!([
                {"issuerURL": a, "audience": "aud", "validations": check},
                {"issuerURL": b, "audience": "aud", "validations": check},
            ]),
            my_org,
        )),
        stalled(oidc_receiver(
            SPEC,
            "issuerURL is required",
            json!([{"audience": "aud", "validations": check}]),
            my_org,
        )),
        serves(oidc_receiver(
            SPEC,
            "audience is optional (defaults to notification-controller)",
            json!([{"issuerURL": a, "validations": check}]),
            |c| {
                my_org(c);
                c["aud"] = json!("notification-controller");
            },
        )),
        stalled(oidc_receiver(
            SPEC,
            "issuerURL must start with http:// or https://",
            json!([{"issuerURL": "example.com", "audience": "aud", "validations": check}]),
            my_org,
        )),
        stalled(oidc_receiver(
            SPEC,
            "variable expression is required",
            json!([{"issuerURL": a, "audience": "aud", "variables": [{"name": "x"}], "validations": check}]),
            my_org,
        )),
        stalled(oidc_receiver(
            SPEC,
            "validation expression is required",
            json!([{"issuerURL": a, "audience": "aud", "validations": [{"message": "msg"}]}]),
            my_org,
        )),
        stalled(oidc_receiver(
            SPEC,
            "duplicate issuerURL",
            json!([
                {"issuerURL": a, "audience": "aud", "validations": check},
                {"issuerURL": a, "audience": "aud", "validations": check},
            ]),
            my_org,
        )),
        stalled(oidc_receiver(
            SPEC,
            "at least one validation is required",
            json!([{"issuerURL": a, "audience": "aud"}]),
            my_org,
        )),
        stalled(oidc_receiver(
            SPEC,
            "an empty audience (Flux v1.9's check; the CRD default covers an absent one)",
            json!([{"issuerURL": a, "audience": "", "validations": check}]),
            my_org,
        )),
        stalled(oidc_receiver(
            SPEC,
            "variable name is required",
            json!([{"issuerURL": a, "variables": [{"expression": "claims.x"}], "validations": check}]),
            my_org,
        )),
        stalled(oidc_receiver(
            SPEC,
            "validation message is required",
            json!([{"issuerURL": a, "validations": [{"expression": "claims.x == 'y'"}]}]),
            my_org,
        )),
        serves(oidc_receiver(
            COMPILE,
            "a valid expression compiles",
            json!([{"issuerURL": a, "audience": "aud", "validations": [{"expression": "claims.x == 'y'", "message": "ok"}]}]),
            my_org,
        )),
        stalled(oidc_receiver(
            COMPILE,
            "an invalid expression does not",
            json!([{"issuerURL": a, "audience": "aud", "validations": [{"expression": "not-valid-cel ===", "message": "x"}]}]),
            my_org,
        )),
    ]
}

/// A generic receiver with Flux's single target filtered by `expression`, sent `body` as JSON.
fn filtered(from: &'static str, name: &'static str, expression: &str, body: Value) -> Case {
    let (spec, objects) = targeting(json!({"type": "generic", "resourceFilter": expression}));
    case(from, name, spec)
        .objects(objects)
        .headers(&[JSON])
        .body(body)
}

/// `TestValidateCELExpression{Valid,Invalid}Expressions`, the claims they declare, and
/// `TestCELEvaluation`.
fn cel_expressions(issuers: &Issuers) -> Vec<Case> {
    const VALID: &str = "TestValidateCELExpressionValidExpressions";
    const INVALID: &str = "TestValidateCELExpressionInvalidExpressions";
    const EVAL: &str = "TestCELEvaluation";
    let value = json!({"value": "test"});
    let mut claims_filter = oidc_receiver(
        "CEL claims",
        "claims in a generic-oidc receiver's filter",
        json!([{
            "issuerURL": issuers.main,
            "validations": [{"expression": "claims.sub == 'tester'", "message": "not the tester"}],
        }]),
        |_| {},
    );
    claims_filter.spec["resourceFilter"] =
        json!("res.metadata.name == 'test-resource' && claims.sub == 'tester'");
    vec![
        filtered(VALID, "true", "true", value.clone()).answers((200, 1), (202, 1)),
        filtered(VALID, "false", "false", value.clone()),
        filtered(VALID, "req.value == 'test'", "req.value == 'test'", value.clone()).answers((200, 1), (202, 1)),
        filtered(INVALID, "'test' (expected bool, got string)", "'test'", value.clone()).answers((503, 0), (503, 0)),
        filtered(INVALID, "requrest.body.value (undeclared reference)", "requrest.body.value", value.clone()).answers((503, 0), (503, 0)),
        filtered("CEL claims", "claims outside generic-oidc", "claims.sub == 'tester'", value).answers((503, 0), (503, 0)),
        claims_filter.answers((200, 1), (202, 1)),
        filtered(EVAL, "res.metadata.name and req.target.repository", "res.metadata.name == 'test-resource' && req.target.repository == 'hello-world'", json!({"target": {"repository": "hello-world"}}))
            .answers((200, 1), (202, 1)),
        filtered(EVAL, "req.bool == true", "req.bool == true", json!({"bool": true})).answers((200, 1), (202, 1)),
        filtered(EVAL, "split, last, startsWith", "res.metadata.name == 'test-resource' && req.image.source.split(':').last().value().startsWith('v')", json!({"image": {"source": "hello-world:v1.0.0"}}))
            .answers((200, 1), (202, 1)),
    ]
}

/// Filter stacking: `spec.resourceFilter` and each entry's `filter` are ANDed.
fn filter_stacking() -> Vec<Case> {
    const FROM: &str = "TestResourceFilterStacking";
    let stacked = |name, resource_filter: &str, filters: [&str; 2], expected: usize| {
        case(
            FROM,
            name,
            json!({
                "type": "generic",
                "resourceFilter": resource_filter,
                "resources": [
                    {"kind": "GitRepository", "name": "app-a", "filter": filters[0]},
                    {"kind": "GitRepository", "name": "app-b", "filter": filters[1]},
                ],
            }),
        )
        .objects(vec![object("app-a"), object("app-b")])
        .headers(&[JSON])
        .body(json!({"app": "app-a", "env": "prod"}))
        .answers((200, expected), (202, expected))
    };
    vec![
        stacked(
            "both pass",
            "req.env == 'prod'",
            [
                "req.app == res.metadata.name",
                "req.app == res.metadata.name",
            ],
            1,
        ),
        stacked(
            "the spec filter refuses every target",
            "req.env == 'dev'",
            ["true", "true"],
            0,
        ),
        stacked(
            "each entry's filter picks its own",
            "true",
            ["req.app == 'app-a'", "req.app == 'app-b'"],
            1,
        ),
        stacked(
            "an empty filter is none: the spec's alone decides",
            "res.metadata.name != 'app-a'",
            ["", ""],
            1,
        ),
    ]
}

fn tester(_: &mut Value) {}

/// go-oidc's checks, which Flux's OIDC verification is (not a Flux test: the library's).
fn oidc_library(issuers: &Issuers) -> Vec<Case> {
    const FROM: &str = "go-oidc (Flux's verifier)";
    let provider = json!([{"issuerURL": issuers.main, "validations": [{"expression": "claims.sub == 'tester'", "message": "not the tester"}]}]);
    let receiver = |name, token: Token| {
        oidc_receiver(FROM, name, provider.clone(), tester).auth(Auth::Oidc(token))
    };
    vec![
        refused(receiver(
            "exp 30 s ago (no leeway)",
            Token::of(|c| {
                c["exp"] = json!(chrono::Utc::now().timestamp() - 30);
            }),
        )),
        receiver(
            "nbf 2 min ahead (5 min leeway)",
            Token::of(|c| {
                c["nbf"] = json!(chrono::Utc::now().timestamp() + 120);
            }),
        )
        .answers((200, 1), (202, 1)),
        refused(receiver(
            "nbf 10 min ahead",
            Token::of(|c| {
                c["nbf"] = json!(chrono::Utc::now().timestamp() + 600);
            }),
        )),
        refused(receiver(
            "RS384 when discovery lists RS256 only",
            Token {
                alg: Algorithm::RS384,
                ..Token::of(tester)
            },
        )),
        receiver(
            "no kid: every key of the set is tried (a decoy comes first)",
            Token {
                kid: None,
                ..Token::of(tester)
            },
        )
        .answers((200, 1), (202, 1)),
        refused(
            oidc_receiver(
                FROM,
                "unverified issuer read from the payload, then verified",
                provider,
                tester,
            )
            .auth(Auth::UnsignedWithIssuer),
        ),
    ]
}

/// What Flux's handler does with a gcr Secret lacking a key (not a case of its tests).
fn gcr_secrets() -> Vec<Case> {
    const FROM: &str = "Flux's handler (gcr)";
    let without = |name, secret: Value| {
        case(FROM, name, json!({"type": "gcr"}))
            .auth(Auth::Google)
            .with(|c| c.secret = Some(secret))
            .body(gcr_data(&json!({"action": "INSERT", "tag": "t"})))
            .answers((400, 0), (503, 0))
            .differs("a receiver that can never authenticate is not ready (503), not the sender's bad request")
    };
    vec![
        without(
            "Secret without email",
            json!({"token": TOKEN, "audience": GCR_AUDIENCE}),
        ),
        without(
            "Secret without audience",
            json!({"token": TOKEN, "email": GCR_EMAIL}),
        ),
    ]
}

/// Inputs Flux accepts that fluxgate once refused, and one Go's decoder refuses.
fn go_inputs() -> Vec<Case> {
    const FROM: &str = "Go's decoders";
    vec![
        case(FROM, "name * with matchLabels {} lists every object", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "*", "matchLabels": {}}]}))
            .objects(vec![object("app-a"), labelled("app-b", json!({"team": "x"}))])
            .answers((200, 2), (202, 2)),
        case(FROM, "quay body with nulls and trailing data", json!({"type": "quay"}))
            .with(|c| c.raw_body = Some(b"{\"docker_url\":null,\"updated_tags\":[\"v1\",null]}\n{\"next\":1}".to_vec())),
        case(FROM, "dockerhub body null", json!({"type": "dockerhub"})),
        case(FROM, "acr body with keys in another case", json!({"type": "acr"}))
            .body(json!({"Action": "push", "TARGET": {"Repository": "app", "Tag": "v1"}})),
        case(FROM, "gcr message with unknown fields and a null tag", json!({"type": "gcr"}))
            .auth(Auth::Google)
            .with(|c| c.secret = Some(json!({"token": TOKEN, "email": GCR_EMAIL, "audience": GCR_AUDIENCE})))
            .body(gcr_data(&json!({"action": "INSERT", "tag": null, "extra": 1}))),
        case(FROM, "nexus body with trailing data (json.Unmarshal refuses it)", json!({"type": "nexus"}))
            .auth(Auth::Nexus)
            .with(|c| c.raw_body = Some(b"{\"action\":\"CREATED\"} trailing".to_vec()))
            .answers((400, 0), (400, 0)),
    ]
}

pub fn all(issuers: &Issuers) -> Vec<Case> {
    let mut cases = handle_payload();
    cases.extend(validate_generic_oidc(issuers));
    cases.extend(claims_processor(issuers));
    cases.extend(provider_spec(issuers));
    cases.extend(cel_expressions(issuers));
    cases.extend(filter_stacking());
    cases.extend(oidc_library(issuers));
    cases.extend(gcr_secrets());
    cases.extend(go_inputs());
    cases
}

//! End-to-end tests of the ID-token receiver types, `generic-oidc` and `gcr`: the real ingest
//! binary and nats-server, and a local OpenID Connect issuer minting real RS256 tokens.

use fluxgate_shared::contract::DeliveryMeta;
use fluxgate_shared::pubsub;
use fluxgate_tests::http::{self, Response};
use fluxgate_tests::oidc::{self, Issuer, KEY_ID};
use fluxgate_tests::stack::Stack;
use fluxgate_tests::webhook::secret_manifest;
use serde_json::{Value, json};

const NS: &str = "apps";
const GCR_TOKEN: &str = "gcr-token";
const GCR_EMAIL: &str = "push@project.iam.gserviceaccount.com";
const GCR_AUDIENCE: &str = "https://hooks.example.org/gcr";

fn oidc_receiver(name: &str, issuer: &str, provider_extra: &str) -> String {
    format!(
        "apiVersion: notification.toolkit.fluxcd.io/v1\nkind: Receiver\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  type: generic-oidc\n  resources:\n    - kind: GitRepository\n      name: app\n  oidcProviders:\n    - issuerURL: {issuer}\n{provider_extra}"
    )
}

fn gcr_receiver(name: &str, secret: &str) -> String {
    format!(
        "apiVersion: notification.toolkit.fluxcd.io/v1\nkind: Receiver\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  type: gcr\n  secretRef:\n    name: {secret}\n  resources:\n    - kind: GitRepository\n      name: app\n"
    )
}

fn receivers_yaml(issuer: &str) -> String {
    let gcr_secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gcr\n  namespace: {NS}\nstringData:\n  token: {GCR_TOKEN}\n  email: {GCR_EMAIL}\n  audience: {GCR_AUDIENCE}\n"
    );
    [
        oidc_receiver(
            "ci",
            issuer,
            "      validations:\n        - expression: claims.sub == 'tester'\n          message: only the tester may deploy\n",
        ),
        // Variables see the claims and the vars before them; validations see both.
        oidc_receiver(
            "repos",
            issuer,
            "      audience: fluxgate\n      variables:\n        - name: repo\n          expression: claims.repository.split('/')[1]\n        - name: prefix\n          expression: vars.repo.split('-')[0]\n      validations:\n        - expression: vars.prefix == 'web'\n          message: not a web repository\n        - expression: claims.ref == 'refs/heads/main'\n          message: not the main branch\n",
        ),
        gcr_secret,
        gcr_receiver("gcr", "gcr"),
        secret_manifest("gcr-incomplete", NS, GCR_TOKEN),
        gcr_receiver("gcr-incomplete", "gcr-incomplete"),
    ]
    .join("---\n")
}

/// NATS, a local issuer, and ingest serving the receivers above with the issuer's keys as
/// Google's.
async fn start() -> (Stack, Issuer) {
    let issuer = Issuer::start().await;
    let keys = issuer.keys_url();
    let stack = Stack::builder()
        .receivers(receivers_yaml(issuer.url()))
        .ingest(&["--google-certs-url", &keys])
        .start()
        .await;
    (stack, issuer)
}

/// POSTs to a generic-oidc receiver (their hook path has an empty token).
async fn oidc(stack: &Stack, receiver: &str, authorization: Option<&str>) -> Response {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(value) = authorization {
        headers.push(("authorization", value));
    }
    http::post(&stack.hook_url("", receiver, NS), &headers, "{}")
        .await
        .expect("post")
}

async fn oidc_token(stack: &Stack, receiver: &str, claims: &Value) -> Response {
    let bearer = format!("Bearer {}", oidc::sign(claims, KEY_ID));
    oidc(stack, receiver, Some(&bearer)).await
}

async fn gcr(stack: &Stack, receiver: &str, claims: &Value, message_id: &str) -> Response {
    let event =
        json!({"action": "INSERT", "digest": "gcr.io/p/app@sha256:1", "tag": "gcr.io/p/app:1.0"});
    let bearer = format!("Bearer {}", oidc::sign(claims, KEY_ID));
    http::post(
        &stack.hook_url(GCR_TOKEN, receiver, NS),
        &[
            ("content-type", "application/json"),
            ("authorization", &bearer),
        ],
        pubsub::envelope(&event, message_id).to_string(),
    )
    .await
    .expect("post")
}

fn google_claims(issuer: &Issuer) -> Value {
    let mut claims = issuer.claims(GCR_AUDIENCE);
    claims["iss"] = json!("https://accounts.google.com");
    claims["email"] = json!(GCR_EMAIL);
    claims["email_verified"] = json!(true);
    claims
}

fn error_of(response: &Response) -> String {
    response.json()["error"]
        .as_str()
        .expect("error message")
        .to_owned()
}

fn assert_unauthorized(response: &Response, says: &str) {
    assert_eq!(response.status, 401, "{:?}", response.body);
    let error = error_of(response);
    assert!(error.contains(says), "{error:?} should say {says:?}");
}

#[tokio::test]
async fn a_valid_oidc_token_is_stored_with_its_claims_and_keys_are_cached() {
    let (stack, issuer) = start().await;
    let claims = issuer.claims("notification-controller");
    for _ in 0..3 {
        let response = oidc_token(&stack, "ci", &claims).await;
        assert_eq!(response.status, 202, "{:?}", response.body);
    }
    let stored = stack.last_delivery(NS, "ci").await;
    let meta = DeliveryMeta::read(&stored.subject, Some(&stored.headers)).expect("a delivery");
    let kept: Value =
        serde_json::from_str(meta.oidc_claims.as_deref().expect("claims")).expect("claims JSON");
    assert_eq!(kept["sub"], "tester");
    assert!(
        stored.headers.get("authorization").is_none()
            && !meta.request_headers.contains_key("authorization"),
        "the token is a credential"
    );
    assert_eq!(issuer.key_fetches(), 1, "keys are fetched once and cached");
}

#[tokio::test]
async fn oidc_rejections_say_why() {
    let (stack, issuer) = start().await;
    assert_unauthorized(
        &oidc(&stack, "ci", None).await,
        "missing Authorization header",
    );
    assert_unauthorized(
        &oidc(&stack, "ci", Some("Bearer")).await,
        "malformed Authorization header",
    );
    assert_unauthorized(
        &oidc(&stack, "ci", Some("Bearer abc.def")).await,
        "malformed bearer token",
    );

    let mut unknown = issuer.claims("notification-controller");
    unknown["iss"] = json!("https://elsewhere.example");
    assert_unauthorized(
        &oidc_token(&stack, "ci", &unknown).await,
        "no OIDC provider",
    );

    let wrong_audience = issuer.claims("someone-else");
    assert_unauthorized(
        &oidc_token(&stack, "ci", &wrong_audience).await,
        "InvalidAudience",
    );

    let mut expired = issuer.claims("notification-controller");
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 3600);
    assert_unauthorized(
        &oidc_token(&stack, "ci", &expired).await,
        "ExpiredSignature",
    );

    let mut stranger = issuer.claims("notification-controller");
    stranger["sub"] = json!("stranger");
    assert_unauthorized(
        &oidc_token(&stack, "ci", &stranger).await,
        "only the tester may deploy",
    );

    let unknown_key = oidc::sign(&issuer.claims("notification-controller"), "rotated-away");
    let response = oidc(&stack, "ci", Some(&format!("Bearer {unknown_key}"))).await;
    assert_unauthorized(&response, "no key rotated-away");
}

#[tokio::test]
async fn oidc_variables_come_before_validations_and_failures_are_joined() {
    let (stack, issuer) = start().await;
    let mut claims = issuer.claims("fluxgate");
    claims["repository"] = json!("org/web-shop");
    claims["ref"] = json!("refs/heads/main");
    let accepted = oidc_token(&stack, "repos", &claims).await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);

    claims["repository"] = json!("org/api-gateway");
    claims["ref"] = json!("refs/heads/dev");
    let response = oidc_token(&stack, "repos", &claims).await;
    assert_eq!(response.status, 401, "{:?}", response.body);
    assert_eq!(
        error_of(&response),
        "token validation failed: not a web repository; not the main branch"
    );
}

#[tokio::test]
async fn gcr_pushes_are_verified_and_keyed_by_message_id() {
    let (stack, issuer) = start().await;
    let claims = google_claims(&issuer);
    let response = gcr(&stack, "gcr", &claims, "pubsub-42").await;
    assert_eq!(response.status, 202, "{:?}", response.body);
    assert_eq!(response.json()["delivery"], "pubsub-42");
    let again = gcr(&stack, "gcr", &claims, "pubsub-42").await;
    assert_eq!(
        again.json()["duplicate"],
        true,
        "Pub/Sub redelivers by message id"
    );

    let mut other_email = claims.clone();
    other_email["email"] = json!("intruder@example.org");
    assert_unauthorized(
        &gcr(&stack, "gcr", &other_email, "m").await,
        "email is not the receiver's",
    );
    let mut unverified = claims.clone();
    unverified["email_verified"] = json!(false);
    assert_unauthorized(&gcr(&stack, "gcr", &unverified, "m").await, "not verified");
    let mut wrong_issuer = claims.clone();
    wrong_issuer["iss"] = json!(issuer.url());
    assert_unauthorized(
        &gcr(&stack, "gcr", &wrong_issuer, "m").await,
        "InvalidIssuer",
    );
    let mut wrong_audience = claims.clone();
    wrong_audience["aud"] = json!("https://other.example");
    assert_unauthorized(
        &gcr(&stack, "gcr", &wrong_audience, "m").await,
        "InvalidAudience",
    );
}

#[tokio::test]
async fn a_gcr_receiver_whose_secret_lacks_email_or_audience_is_not_ready() {
    // Flux answers 400 to every request then; the receiver can never serve, so fluxgate says
    // 503 "not ready", as for any misconfigured receiver.
    let (stack, issuer) = start().await;
    let response = gcr(&stack, "gcr-incomplete", &google_claims(&issuer), "m").await;
    assert_eq!(response.status, 503, "{:?}", response.body);
    assert!(error_of(&response).contains("not ready"));
}

#[tokio::test]
async fn a_burst_of_tokens_makes_one_key_fetch() {
    let (stack, issuer) = start().await;
    let claims = issuer.claims("notification-controller");
    let burst = (0..20).map(|_| oidc_token(&stack, "ci", &claims));
    let answers = futures::future::join_all(burst).await;
    assert!(
        answers.iter().all(|a| a.status == 202),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert_eq!(issuer.key_fetches(), 1, "one fetch for the whole burst");
}

#[tokio::test]
async fn an_unreachable_key_set_is_503_without_its_address() {
    let issuer = Issuer::start().await;
    // A port nothing listens on, standing for an address inside the cluster.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let keys = format!(
        "http://{}/internal/certs",
        closed.local_addr().expect("addr")
    );
    drop(closed);
    let stack = Stack::builder()
        .receivers(receivers_yaml(issuer.url()))
        .ingest(&["--google-certs-url", &keys])
        .start()
        .await;
    let claims = google_claims(&issuer);
    for _ in 0..3 {
        let response = gcr(&stack, "gcr", &claims, "m-1").await;
        assert_eq!(response.status, 503, "{:?}", response.body);
        let error = error_of(&response);
        assert!(
            !error.contains("127.0.0.1") && !error.contains("/internal/certs"),
            "{error}"
        );
        assert!(error.contains("issuer cannot be reached"), "{error}");
    }
}

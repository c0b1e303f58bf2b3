//! CEL expressions of Receivers -- `spec.resourceFilter`, `resources[].filter` and the OIDC
//! providers' variables and validations -- compiled once when the catalog loads and evaluated
//! against JSON inputs, with the functions Flux's expressions use.

use std::fmt;
use std::sync::{Arc, LazyLock};

use cel::common::types::{CelOptional, LIST_TYPE};
use cel::common::value::CowVal;
use cel::{Context, Env, ExecutionError, Program};

pub use cel::Value;

use crate::catalog::ReceiverType;
use crate::pubsub;

/// The CEL environment: the standard library with optionals, cel-go's strings and lists
/// extensions, and the `first()`/`last()` list functions the CEL crate lacks (cel-go has them
/// in its optional library: Flux's `req.tag.split('/').last().value()` relies on them).
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    let extended = env
        .add_extension(cel::extensions::strings)
        .and_then(|()| env.add_extension(cel::extensions::lists))
        .and_then(|()| env.add_member_overload("first", "list.first()", LIST_TYPE, vec![], first))
        .and_then(|()| env.add_member_overload("last", "list.last()", LIST_TYPE, vec![], last));
    // Only a clash of names can fail here, which a test would show at once.
    if let Err(error) = extended {
        tracing::error!(%error, "cannot extend the CEL environment");
    }
    Arc::new(env)
});

fn first<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    end_of_list(args, "first", false)
}

fn last<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    end_of_list(args, "last", true)
}

/// `optional.of` the list's first (or last) element, or `optional.none()` when it is empty.
fn end_of_list<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
    function: &str,
    last: bool,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [list]: [CowVal<'b, 'v>; 1] = args
        .try_into()
        .map_err(|args: Vec<_>| ExecutionError::invalid_argument_count(1, args.len()))?;
    let iterable = list
        .as_iterable()
        .ok_or_else(|| ExecutionError::function_error(function, "not a list"))?;
    let mut items = iterable.iter();
    let mut found = items.next();
    while last && let Some(item) = items.next() {
        found = Some(item);
    }
    let element = found.map(|item| item.clone_as_boxed());
    Ok(CowVal::owned(CelOptional::from(element)))
}

/// A compiled expression, with its source for messages.
#[derive(Clone)]
pub struct Expression {
    source: String,
    program: Arc<Program>,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Expression {}

impl Expression {
    /// Parses `source`; the message says where it is wrong.
    pub fn compile(source: &str) -> Result<Self, String> {
        let program = ENV.compile(source).map_err(|e| e.to_string())?;
        Ok(Self {
            source: source.to_owned(),
            program: Arc::new(program),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates with the given variables.
    pub fn evaluate(&self, variables: &[(&str, &Value)]) -> Result<Value, String> {
        let mut context = Context::with_env(ENV.clone());
        for (name, value) in variables {
            context.add_variable_from_value(*name, (*value).clone());
        }
        self.program
            .execute(&context)
            .map_err(|e| format!("{}: {e}", self.source))
    }

    /// Evaluates to a bool; any other result is an error, as in Flux.
    pub fn is_true(&self, variables: &[(&str, &Value)]) -> Result<bool, String> {
        match self.evaluate(variables)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!(
                "{}: must evaluate to a bool, got {:?}",
                self.source,
                other.type_of()
            )),
        }
    }
}

/// A JSON document as a CEL value (objects become maps, numbers ints or doubles).
pub fn value(json: &serde_json::Value) -> Value {
    // Serialising JSON into CEL cannot fail: every JSON value has a CEL counterpart.
    cel::to_value(json).unwrap_or(Value::Null)
}

/// The `req` of a webhook: its body as JSON when the Content-Type says JSON, else `{}`, as in
/// Flux; for gcr, the registry event inside the Pub/Sub message. A JSON Content-Type with a
/// body that is not JSON is an error.
pub fn request(
    kind: ReceiverType,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Value, String> {
    if kind == ReceiverType::Gcr {
        return pubsub::parse(body).map(|message| value(&message.event));
    }
    let essence = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    let is_json = essence.is_some_and(|c| c == "application/json" || c.ends_with("+json"));
    if !is_json {
        return Ok(value(&serde_json::json!({})));
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .map(|json| value(&json))
        .map_err(|e| format!("the body is not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(expression: &str, vars: &[(&str, serde_json::Value)]) -> Result<bool, String> {
        let values: Vec<(&str, Value)> = vars.iter().map(|(n, v)| (*n, value(v))).collect();
        let refs: Vec<(&str, &Value)> = values.iter().map(|(n, v)| (*n, v)).collect();
        Expression::compile(expression)?.is_true(&refs)
    }

    #[test]
    fn flux_image_tag_example_works_as_written() {
        let expr = "req.tag.split('/').last().value().split(\":\").first().value() == res.metadata.annotations['update-image']";
        let req = json!({"tag": "europe-docker.pkg.dev/org/app:1.2.3"});
        let hit = json!({"metadata": {"annotations": {"update-image": "app"}}});
        let miss = json!({"metadata": {"annotations": {"update-image": "other"}}});
        assert_eq!(check(expr, &[("req", req.clone()), ("res", hit)]), Ok(true));
        assert_eq!(check(expr, &[("req", req), ("res", miss)]), Ok(false));
    }

    #[test]
    fn flux_body_and_metadata_examples_work() {
        let req = json!({"events": [{"full_name": "prj/repo1"}], "action": "push"});
        let res = json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "app"}});
        assert_eq!(
            check(
                "req.events[0].full_name == 'prj/repo1'",
                &[("req", req.clone())]
            ),
            Ok(true)
        );
        assert_eq!(
            check(
                "res.metadata.name == 'app' && req.action == 'push'",
                &[("req", req), ("res", res)]
            ),
            Ok(true)
        );
    }

    #[test]
    fn first_and_last_of_an_empty_list_have_no_value() {
        assert_eq!(check("[].last().hasValue()", &[]), Ok(false));
        assert_eq!(check("[1, 2].first().value() == 1", &[]), Ok(true));
        assert!(check("[].first().value() == 1", &[]).is_err());
    }

    #[test]
    fn req_is_the_json_body_only_for_json_content_types() {
        let body = br#"{"action": "push"}"#;
        let action = Expression::compile("req.action == 'push'").expect("compiles");
        for content_type in [
            "application/json",
            "application/json; charset=UTF-8",
            "application/cloudevents+json",
        ] {
            let req = request(ReceiverType::Generic, Some(content_type), body).expect("json");
            assert_eq!(action.is_true(&[("req", &req)]), Ok(true), "{content_type}");
        }
        let form = request(
            ReceiverType::Github,
            Some("application/x-www-form-urlencoded"),
            b"payload=x",
        )
        .expect("{}");
        let empty = Expression::compile("size(req) == 0").expect("compiles");
        assert_eq!(empty.is_true(&[("req", &form)]), Ok(true));
        assert!(request(ReceiverType::Generic, Some("application/json"), b"not json").is_err());
        let event = serde_json::json!({"action": "INSERT", "digest": "d", "tag": "gcr.io/p/app:1"});
        let body = pubsub::envelope(&event, "m").to_string();
        let req =
            request(ReceiverType::Gcr, Some("application/json"), body.as_bytes()).expect("pubsub");
        let tag = Expression::compile("req.tag == 'gcr.io/p/app:1' && req.action == 'INSERT'")
            .expect("compiles");
        assert_eq!(tag.is_true(&[("req", &req)]), Ok(true));
    }

    #[test]
    fn syntax_errors_fail_at_compile_time() {
        assert!(Expression::compile("req.tag ==").is_err());
    }

    #[test]
    fn errors_and_non_bool_results_are_errors() {
        let missing = check("req.nope == 'x'", &[("req", json!({}))]);
        assert!(missing.is_err(), "{missing:?}");
        let not_bool = check("'text'", &[]).expect_err("not a bool");
        assert!(not_bool.contains("must evaluate to a bool"), "{not_bool}");
    }
}

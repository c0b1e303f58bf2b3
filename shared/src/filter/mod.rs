//! CEL expressions of Receivers -- `spec.resourceFilter`, `resources[].filter` and the OIDC
//! providers' variables and validations -- compiled once when the catalog loads and evaluated
//! against JSON inputs, with the functions Flux's expressions use.

mod check;
mod env;

use std::fmt;
use std::sync::Arc;

use cel::{Context, Program};

pub use cel::Value;

use crate::receivers::ReceiverType;
use crate::{gojson, pubsub};

use env::ENV;

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
    /// Parses `source` and checks that it names only the `declared` variables (and those its
    /// macros bind), as Flux's compile step does; the message says what is wrong.
    pub fn compile(source: &str, declared: &[&str]) -> Result<Self, String> {
        let program = ENV.compile(source).map_err(|e| e.to_string())?;
        check::undeclared(program.expression(), declared)?;
        Ok(Self {
            source: source.to_owned(),
            program: Arc::new(program),
        })
    }

    /// As [`Expression::compile`], for an expression that must return a bool: one seen to
    /// return anything else is refused, as Flux refuses it.
    pub fn condition(source: &str, declared: &[&str]) -> Result<Self, String> {
        let expression = Self::compile(source, declared)?;
        check::returns_bool(expression.program.expression(), declared)?;
        Ok(expression)
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

/// The `req` of a webhook, as Flux builds it: the body decoded as Go's JSON decoder does (its
/// first value, which must be an object) when the Content-Type says `application/json`, else
/// `{}`; for gcr, the registry event inside the Pub/Sub message. A JSON Content-Type with a body
/// that is not a JSON object is an error.
pub fn request(
    kind: ReceiverType,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Value, String> {
    if kind == ReceiverType::Gcr {
        return pubsub::parse(body).map(|message| value(&message.event));
    }
    if !content_type.is_some_and(is_json) {
        return Ok(value(&serde_json::json!({})));
    }
    let body = gojson::first_value(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    match body {
        serde_json::Value::Null => Ok(value(&serde_json::json!({}))),
        object @ serde_json::Value::Object(_) => Ok(value(&object)),
        other => Err(format!(
            "the body is not a JSON object but {}",
            gojson::describe(&other)
        )),
    }
}

/// Flux's test of a Content-Type: one of its comma-separated media types is exactly
/// `application/json` (parameters aside), looking no further than one that does not parse.
fn is_json(content_type: &str) -> bool {
    for media_type in content_type.split(',') {
        let essence = media_type.split(';').next().unwrap_or_default().trim();
        let Some((kind, subtype)) = essence.split_once('/') else {
            return false;
        };
        if kind.is_empty() || subtype.is_empty() {
            return false;
        }
        if essence.eq_ignore_ascii_case("application/json") {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(expression: &str, vars: &[(&str, serde_json::Value)]) -> Result<bool, String> {
        let values: Vec<(&str, Value)> = vars.iter().map(|(n, v)| (*n, value(v))).collect();
        let refs: Vec<(&str, &Value)> = values.iter().map(|(n, v)| (*n, v)).collect();
        let names: Vec<&str> = vars.iter().map(|(n, _)| *n).collect();
        Expression::condition(expression, &names)?.is_true(&refs)
    }

    const FILTER: &[&str] = &["res", "req"];

    /// notification-controller's `TestValidateCELExpressionValidExpressions` and
    /// `...InvalidExpressions`, with Flux's messages.
    #[test]
    fn flux_filter_validity_cases() {
        for valid in ["true", "false", "req.value == 'test'"] {
            assert!(Expression::condition(valid, FILTER).is_ok(), "{valid}");
        }
        for (invalid, says) in [
            (
                "'test'",
                "CEL expression output type mismatch: expected bool, got string",
            ),
            ("requrest.body.value", "undeclared reference to 'requrest'"),
        ] {
            let error = Expression::condition(invalid, FILTER).expect_err(invalid);
            assert!(error.contains(says), "{invalid}: {error}");
        }
    }

    /// notification-controller's `TestCELEvaluation`: a Receiver object as `res`, a JSON body.
    #[test]
    fn flux_filter_evaluation_cases() {
        let res = json!({
            "apiVersion": "notification.toolkit.fluxcd.io/v1",
            "kind": "Receiver",
            "metadata": {"name": "test-resource"},
        });
        for (expression, req) in [
            (
                "res.metadata.name == 'test-resource' && req.target.repository == 'hello-world'",
                json!({"target": {"repository": "hello-world"}}),
            ),
            ("req.bool == true", json!({"bool": true})),
            (
                "res.metadata.name == 'test-resource' && req.image.source.split(':').last().value().startsWith('v')",
                json!({"image": {"source": "hello-world:v1.0.0"}}),
            ),
        ] {
            let got = check(expression, &[("res", res.clone()), ("req", req)]);
            assert_eq!(got, Ok(true), "{expression}");
        }
    }

    #[test]
    fn the_environment_is_fluxs_strings_sets_encoders_and_optionals() {
        for expression in [
            "sets.contains(['a', 'b', 'c'], ['a', 'c'])",
            "!sets.contains(['a'], ['a', 'b'])",
            "sets.equivalent(['a', 'b', 'b'], ['b', 'a'])",
            "sets.intersects(['a', 'b'], ['z', 'b'])",
            "!sets.intersects(['a'], ['b'])",
            "base64.encode(b'flux') == 'Zmx1eA=='",
            "base64.decode('Zmx1eA==') == b'flux'",
            "'a,b'.split(',').last().value() == 'b'",
            "'Flux'.lowerAscii() == 'flux'",
            "optional.of(1).hasValue() && !optional.none().hasValue()",
            "{'a': 1}.?b.orValue(2) == 2",
        ] {
            assert_eq!(check(expression, &[]), Ok(true), "{expression}");
        }
        // cel-go's lists extension is not in Flux's environment, so not here either.
        assert!(check("[[1], [2]].flatten() == [1, 2]", &[]).is_err());
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
        let action = Expression::condition("req.action == 'push'", FILTER).expect("compiles");
        for content_type in [
            "application/json",
            "application/json; charset=UTF-8",
            "text/plain, application/json",
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
        let empty = Expression::condition("size(req) == 0", FILTER).expect("compiles");
        assert_eq!(empty.is_true(&[("req", &form)]), Ok(true));
        // Only application/json itself is JSON to Flux, as is a body after a bad media type.
        for not_json in ["application/cloudevents+json", "bad, application/json"] {
            let req = request(ReceiverType::Generic, Some(not_json), body).expect("{}");
            assert_eq!(empty.is_true(&[("req", &req)]), Ok(true), "{not_json}");
        }
        assert!(request(ReceiverType::Generic, Some("application/json"), b"not json").is_err());
        assert!(request(ReceiverType::Generic, Some("application/json"), b"[1]").is_err());
        // Go's decoder reads the first value and no further.
        let trailing = request(
            ReceiverType::Generic,
            Some("application/json"),
            b"{\"action\":\"push\"} x",
        );
        assert_eq!(
            action.is_true(&[("req", &trailing.expect("first value"))]),
            Ok(true)
        );
        let event = serde_json::json!({"action": "INSERT", "digest": "d", "tag": "gcr.io/p/app:1"});
        let body = pubsub::envelope(&event, "m").to_string();
        let req =
            request(ReceiverType::Gcr, Some("application/json"), body.as_bytes()).expect("pubsub");
        let tag = Expression::condition(
            "req.tag == 'gcr.io/p/app:1' && req.action == 'INSERT'",
            FILTER,
        )
        .expect("compiles");
        assert_eq!(tag.is_true(&[("req", &req)]), Ok(true));
    }

    #[test]
    fn syntax_errors_fail_at_compile_time() {
        assert!(Expression::compile("req.tag ==", FILTER).is_err());
    }

    #[test]
    fn errors_and_non_bool_results_are_errors() {
        let missing = check("req.nope == 'x'", &[("req", json!({}))]);
        assert!(missing.is_err(), "{missing:?}");
        // Its type is not told at compile time here (cel-go would); evaluation refuses it.
        let req = json!({"tag": "a/b"});
        let not_bool =
            check("req.tag.split('/').last().value()", &[("req", req)]).expect_err("not a bool");
        assert!(not_bool.contains("must evaluate to a bool"), "{not_bool}");
    }
}

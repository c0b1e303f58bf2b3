//! Kubernetes label and field selectors, as the API server parses and matches them.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector: every requirement must hold (they are ANDed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses `a=b,c!=d,e,!f,g in (x,y),h notin (z)`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_term(term)?);
        }
        Ok(Self(requirements))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("invalid set in selector term {term:?}"))?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    if let Some((key, rest)) = term.split_once(" notin ") {
        return Ok(Requirement::NotIn(key.trim().to_owned(), set(rest)?));
    }
    if let Some((key, rest)) = term.split_once(" in ") {
        return Ok(Requirement::In(key.trim().to_owned(), set(rest)?));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key.trim().to_owned()));
    }
    if term.contains(char::is_whitespace) {
        return Err(format!("invalid selector term {term:?}"));
    }
    Ok(Requirement::Exists(term.to_owned()))
}

/// The object's `metadata.labels`.
pub fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// A field selector: only `metadata.name` and `metadata.namespace`, with `=`, `==` or `!=`.
pub fn field_selector_matches(selector: &str, object: &Value) -> Result<bool, String> {
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (field, negate, value) = if let Some((f, v)) = term.split_once("!=") {
            (f, true, v)
        } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (f, false, v)
        } else {
            return Err(format!("invalid field selector {term:?}"));
        };
        let actual = match field.trim() {
            "metadata.name" => object["metadata"]["name"].as_str(),
            "metadata.namespace" => object["metadata"]["namespace"].as_str(),
            other => return Err(format!("field label not supported: {other}")),
        };
        if (actual == Some(value.trim())) == negate {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_existence() {
        let s = LabelSelector::parse("app=web,tier!=db,env,!legacy").expect("valid");
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod"), ("legacy", "1")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db"), ("env", "x")])));
        assert!(!s.matches(&labels(&[("app", "api"), ("env", "x")])));
    }

    #[test]
    fn set_based() {
        let s = LabelSelector::parse("env in (prod, staging),tier notin (db)").expect("valid");
        assert!(s.matches(&labels(&[("env", "prod")])));
        assert!(!s.matches(&labels(&[("env", "dev")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("tier", "db")])));
    }

    #[test]
    fn empty_selects_everything() {
        assert!(
            LabelSelector::parse("")
                .expect("valid")
                .matches(&labels(&[]))
        );
    }

    #[test]
    fn field_selector_on_name() {
        let obj = serde_json::json!({"metadata": {"name": "a", "namespace": "n"}});
        assert_eq!(field_selector_matches("metadata.name=a", &obj), Ok(true));
        assert_eq!(field_selector_matches("metadata.name!=a", &obj), Ok(false));
        assert!(field_selector_matches("spec.x=1", &obj).is_err());
    }
}

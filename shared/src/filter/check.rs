//! What Flux's compile step (cel-go's type checker) finds in an expression before any webhook
//! arrives: a name that is not declared, and a result that is plainly not a bool. The CEL crate
//! has no checker, so this walks the parsed expression; where the result's type cannot be told
//! without one (a function it does not know the result of), the expression is let through, and
//! evaluation still refuses a non-bool.

use cel::common::ast::operators;
use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};

use super::env::FUNCTION_NAMESPACES;

/// Identifiers every expression may use: the type names (`type(x) == string`).
const TYPE_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "dyn",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
];

/// The first name `expression` uses that is neither declared nor bound by a macro, as cel-go
/// says it: "undeclared reference to 'x'".
pub fn undeclared(expression: &IdedExpr, declared: &[&str]) -> Result<(), String> {
    let mut scope = Vec::new();
    walk(expression, declared, &mut scope)
}

fn walk<'e>(expr: &'e IdedExpr, declared: &[&str], scope: &mut Vec<&'e str>) -> Result<(), String> {
    match &expr.expr {
        Expr::Ident(name) => {
            let known = declared.contains(&name.as_str())
                || scope.contains(&name.as_str())
                || TYPE_NAMES.contains(&name.as_str())
                || name.starts_with('@');
            if known {
                Ok(())
            } else {
                Err(format!("undeclared reference to '{name}'"))
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target
                && !is_namespace(target, declared, scope)
            {
                walk(target, declared, scope)?;
            }
            call.args.iter().try_for_each(|a| walk(a, declared, scope))
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, declared, scope)?;
            walk(&c.accu_init, declared, scope)?;
            let bound = scope.len();
            scope.push(&c.iter_var);
            scope.extend(c.iter_var2.as_deref());
            scope.push(&c.accu_var);
            let inner = [&c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .try_for_each(|e| walk(e, declared, scope));
            scope.truncate(bound);
            inner
        }
        Expr::List(list) => list
            .elements
            .iter()
            .try_for_each(|e| walk(e, declared, scope)),
        Expr::Map(map) => map.entries.iter().try_for_each(|e| match &e.expr {
            EntryExpr::MapEntry(entry) => {
                walk(&entry.key, declared, scope)?;
                walk(&entry.value, declared, scope)
            }
            EntryExpr::StructField(field) => walk(&field.value, declared, scope),
        }),
        Expr::Struct(s) => s.entries.iter().try_for_each(|e| match &e.expr {
            EntryExpr::MapEntry(entry) => walk(&entry.value, declared, scope),
            EntryExpr::StructField(field) => walk(&field.value, declared, scope),
        }),
        Expr::Select(select) => walk(&select.operand, declared, scope),
        Expr::Literal(_) | Expr::Unspecified => Ok(()),
    }
}

/// Whether a call's target names a function namespace (`sets` in `sets.contains(..)`) rather
/// than a value, as the CEL crate resolves it too.
fn is_namespace(target: &IdedExpr, declared: &[&str], scope: &[&str]) -> bool {
    matches!(&target.expr, Expr::Ident(name)
        if FUNCTION_NAMESPACES.contains(&name.as_str())
            && !declared.contains(&name.as_str())
            && !scope.contains(&name.as_str()))
}

/// What can be told of an expression's result without a type checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Null,
    List,
    Map,
    /// A declared variable: a `google.protobuf.Struct`, as Flux declares them.
    Struct,
    /// A field or element of a `Struct`: cel-go types it `dyn`, not bool.
    Dyn,
    /// Not known here.
    Unknown,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bool => "bool",
            Kind::Int => "int",
            Kind::Uint => "uint",
            Kind::Double => "double",
            Kind::String => "string",
            Kind::Bytes => "bytes",
            Kind::Null => "null_type",
            Kind::List => "list",
            Kind::Map => "map",
            Kind::Struct => "google.protobuf.Struct",
            Kind::Dyn => "dyn",
            Kind::Unknown => "unknown",
        }
    }
}

/// Refuses an expression whose result is seen not to be a bool, as Flux's compile step does
/// with cel-go's message: a bare field of `req` is `dyn` there, and refused too.
pub fn returns_bool(expression: &IdedExpr, declared: &[&str]) -> Result<(), String> {
    match kind(expression, declared) {
        Kind::Bool | Kind::Unknown => Ok(()),
        other => Err(format!(
            "CEL expression output type mismatch: expected bool, got {}",
            other.name()
        )),
    }
}

fn kind(expr: &IdedExpr, declared: &[&str]) -> Kind {
    match &expr.expr {
        Expr::Literal(literal) => match literal {
            LiteralValue::Boolean(_) => Kind::Bool,
            LiteralValue::Bytes(_) => Kind::Bytes,
            LiteralValue::Double(_) => Kind::Double,
            LiteralValue::Int(_) => Kind::Int,
            LiteralValue::Null => Kind::Null,
            LiteralValue::String(_) => Kind::String,
            LiteralValue::UInt(_) => Kind::Uint,
        },
        Expr::List(_) => Kind::List,
        Expr::Map(_) => Kind::Map,
        Expr::Ident(name) if declared.contains(&name.as_str()) => Kind::Struct,
        Expr::Select(select) if select.test => Kind::Bool,
        Expr::Select(select) => field_of(kind(&select.operand, declared)),
        Expr::Comprehension(c) => match &c.result.expr {
            Expr::Ident(name) if *name == c.accu_var => kind(&c.accu_init, declared),
            _ => kind(&c.result, declared),
        },
        Expr::Call(call) => call_kind(&call.func_name, &call.args, declared),
        Expr::Ident(_) | Expr::Struct(_) | Expr::Unspecified => Kind::Unknown,
    }
}

fn field_of(container: Kind) -> Kind {
    match container {
        Kind::Struct | Kind::Dyn => Kind::Dyn,
        _ => Kind::Unknown,
    }
}

fn call_kind(function: &str, args: &[IdedExpr], declared: &[&str]) -> Kind {
    match function {
        operators::EQUALS
        | operators::NOT_EQUALS
        | operators::LESS
        | operators::LESS_EQUALS
        | operators::GREATER
        | operators::GREATER_EQUALS
        | operators::LOGICAL_AND
        | operators::LOGICAL_OR
        | operators::LOGICAL_NOT
        | operators::NOT_STRICTLY_FALSE
        | operators::IN
        | "startsWith"
        | "endsWith"
        | "contains"
        | "matches"
        | "hasValue"
        | "equivalent"
        | "intersects" => Kind::Bool,
        "size" | "int" | "indexOf" | "lastIndexOf" => Kind::Int,
        "uint" => Kind::Uint,
        "double" => Kind::Double,
        "string" | "lowerAscii" | "upperAscii" | "trim" | "replace" | "substring" | "charAt"
        | "format" | "join" | "quote" | "encode" => Kind::String,
        "bytes" | "decode" => Kind::Bytes,
        "split" => Kind::List,
        "dyn" => Kind::Dyn,
        operators::INDEX => field_of(args.first().map_or(Kind::Unknown, |a| kind(a, declared))),
        operators::ADD
        | operators::SUBSTRACT
        | operators::MULTIPLY
        | operators::DIVIDE
        | operators::MODULO
        | operators::NEGATE => {
            let kinds: Vec<Kind> = args.iter().map(|a| kind(a, declared)).collect();
            match kinds.as_slice() {
                [one] => *one,
                [a, b] if a == b => *a,
                [a, b] if *a == Kind::Dyn || *b == Kind::Dyn => Kind::Dyn,
                _ => Kind::Unknown,
            }
        }
        operators::CONDITIONAL => match args {
            [_, a, b] => Some(kind(a, declared))
                .filter(|k| *k == kind(b, declared))
                .unwrap_or(Kind::Unknown),
            _ => Kind::Unknown,
        },
        _ => Kind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::super::env::ENV;
    use super::*;

    fn parsed(source: &str) -> IdedExpr {
        ENV.compile(source).expect("parses").expression().clone()
    }

    #[test]
    fn names_must_be_declared_or_bound_by_a_macro() {
        let declared = ["req", "res"];
        for ok in [
            "req.value == 'test'",
            "req.items.exists(i, i.name == res.metadata.name)",
            "req.items.map(i, i.tag).all(t, t != '')",
            "sets.contains(req.tags, ['a'])",
            "type(req.x) == string",
            "base64.decode(req.data) == b'x'",
        ] {
            assert_eq!(undeclared(&parsed(ok), &declared), Ok(()), "{ok}");
        }
        assert_eq!(
            undeclared(&parsed("requrest.body.value"), &declared),
            Err("undeclared reference to 'requrest'".into())
        );
        assert_eq!(
            undeclared(&parsed("req.items.exists(i, j == 1)"), &declared),
            Err("undeclared reference to 'j'".into())
        );
        assert_eq!(
            undeclared(&parsed("claims.sub == 'x'"), &declared),
            Err("undeclared reference to 'claims'".into())
        );
    }

    #[test]
    fn results_seen_not_to_be_bool_are_refused_with_cel_gos_words() {
        let declared = ["req", "res"];
        for ok in [
            "true",
            "req.value == 'test'",
            "has(req.a) && !has(req.b)",
            "req.items.exists(i, i == 1)",
            "'a' in req.list",
            "req.tag.split('/').last().value().startsWith('v')",
            "sets.intersects(req.a, req.b)",
            // Not known without a checker: let through, evaluation refuses a non-bool.
            "req.tag.split('/').last().value()",
        ] {
            assert_eq!(returns_bool(&parsed(ok), &declared), Ok(()), "{ok}");
        }
        for (source, got) in [
            ("'test'", "string"),
            ("1 + 2", "int"),
            ("req.flag", "dyn"),
            ("req['flag']", "dyn"),
            ("req", "google.protobuf.Struct"),
            ("req.items.map(i, i.x)", "list"),
            ("size(req.items)", "int"),
        ] {
            assert_eq!(
                returns_bool(&parsed(source), &declared),
                Err(format!(
                    "CEL expression output type mismatch: expected bool, got {got}"
                )),
                "{source}"
            );
        }
    }
}

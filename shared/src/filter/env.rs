//! The CEL environment of Receivers' expressions: what fluxcd/pkg's `runtime/cel` gives Flux --
//! the standard library with optionals, cel-go's strings, sets and encoders extensions -- and
//! nothing more, so an expression that works in one works in the other.

use std::sync::{Arc, LazyLock};

use cel::common::types::{CelBool, CelOptional, LIST_TYPE};
use cel::common::value::{CowVal, Val};
use cel::{Env, ExecutionError};

/// Namespaces of the environment's functions: `sets.contains(a, b)` calls a function, it does
/// not select `contains` of a variable `sets`.
pub(super) const FUNCTION_NAMESPACES: &[&str] = &["sets", "base64", "strings", "optional"];

pub(super) static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    if let Err(error) = extend(&mut env) {
        // Only a clash of names can fail here, which the module's tests would show at once.
        tracing::error!(%error, "cannot extend the CEL environment");
    }
    Arc::new(env)
});

fn extend(env: &mut Env) -> Result<(), cel::DeclarationError> {
    env.add_extension(cel::extensions::strings)?;
    env.add_extension(cel::extensions::encoders)?;
    // cel-go has `first()`/`last()` in its optional library (Flux's
    // `req.tag.split('/').last().value()` relies on them); the CEL crate lacks them.
    env.add_member_overload("first", "list.first()", LIST_TYPE, vec![], first)?;
    env.add_member_overload("last", "list.last()", LIST_TYPE, vec![], last)?;
    // cel-go's sets extension, which the CEL crate lacks.
    let lists = || vec![LIST_TYPE, LIST_TYPE];
    env.add_overload("sets.contains", "sets.contains", lists(), contains)?;
    env.add_overload("sets.equivalent", "sets.equivalent", lists(), equivalent)?;
    env.add_overload("sets.intersects", "sets.intersects", lists(), intersects)?;
    Ok(())
}

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

/// `sets.contains(a, b)`: every element of `b` is in `a`.
fn contains<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (a, b) = two_lists(&args, "sets.contains")?;
    Ok(boolean(subset(&b, &a)))
}

/// `sets.equivalent(a, b)`: the same elements, duplicates and order aside.
fn equivalent<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (a, b) = two_lists(&args, "sets.equivalent")?;
    Ok(boolean(subset(&a, &b) && subset(&b, &a)))
}

/// `sets.intersects(a, b)`: an element in both.
fn intersects<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (a, b) = two_lists(&args, "sets.intersects")?;
    Ok(boolean(a.iter().any(|x| b.iter().any(|y| x.equals(*y)))))
}

fn subset(part: &[&dyn Val], whole: &[&dyn Val]) -> bool {
    part.iter().all(|x| whole.iter().any(|y| x.equals(*y)))
}

type Elements<'a> = Vec<&'a dyn Val>;

fn two_lists<'a>(
    args: &'a [CowVal<'_, '_>],
    function: &str,
) -> Result<(Elements<'a>, Elements<'a>), ExecutionError> {
    let [a, b] = args else {
        return Err(ExecutionError::invalid_argument_count(2, args.len()));
    };
    let elements = |list: &'a CowVal<'_, '_>| -> Result<Elements<'a>, ExecutionError> {
        let iterable = list
            .as_iterable()
            .ok_or_else(|| ExecutionError::function_error(function, "not a list"))?;
        let mut items = iterable.iter();
        let mut all = Vec::new();
        while let Some(item) = items.next() {
            all.push(item);
        }
        Ok(all)
    };
    Ok((elements(a)?, elements(b)?))
}

fn boolean<'b, 'v>(b: bool) -> CowVal<'b, 'v> {
    CowVal::owned(CelBool::from(b))
}

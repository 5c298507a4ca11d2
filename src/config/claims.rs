//! Validation of `auth.claims` conditions and `source_ips` into their
//! compiled form ([`crate::policy`]): one operator or one combinator per
//! condition, pointers that parse, values of a type the operator compares,
//! `{path.NAME}` only for a parameter of the route's template, and nesting at
//! most [`MAX_DEPTH`] deep. Every error names the condition's place
//! (`routes[2] (orders).auth.claims[1].any_of[0]`).

use serde_json::Value;

use super::ctx::Ctx;
use super::raw::RawCondition;
use super::{ConfigError, Field};
use crate::policy::{Cidr, Condition, Operand, Pointer, Test, MAX_DEPTH};
use crate::routing::template::{PathTemplate, Segment};

/// The route's `auth.claims`, compiled.
pub(super) fn conditions(
    ctx: &Ctx,
    at: &Field,
    raw: Vec<RawCondition>,
    template: Option<&PathTemplate>,
) -> Result<Vec<Condition>, ConfigError> {
    raw.into_iter()
        .enumerate()
        .map(|(i, c)| condition(ctx, &at.at("auth").at("claims").index(i), c, template, 1))
        .collect()
}

fn condition(
    ctx: &Ctx,
    at: &Field,
    raw: RawCondition,
    template: Option<&PathTemplate>,
    depth: usize,
) -> Result<Condition, ConfigError> {
    if depth > MAX_DEPTH {
        return Err(ctx.err(
            at,
            format!("conditions nest more than {MAX_DEPTH} deep; flatten the any_of / all_of / not"),
        ));
    }
    let operand = |v: Value, what: &str| -> Result<Operand, ConfigError> {
        if v.is_array() || v.is_object() {
            return Err(ctx.err(
                at.at(what),
                "compares with a string, number, boolean or null, not a list or a map",
            ));
        }
        let o = Operand::from_value(v);
        if let Operand::PathParam(name) = &o {
            check_param(ctx, &at.at(what), name, template)?;
        }
        Ok(o)
    };
    let list = |values: Vec<Value>, what: &str| -> Result<Vec<Operand>, ConfigError> {
        if values.is_empty() {
            return Err(ctx.err(at.at(what), "the list is empty"));
        }
        values.into_iter().map(|v| operand(v, what)).collect()
    };
    let mut tests = Vec::new();
    if let Some(v) = raw.equals {
        tests.push(Test::Equals(operand(v, "equals")?));
    }
    if let Some(v) = raw.in_ {
        tests.push(Test::In(list(v, "in")?));
    }
    if let Some(v) = raw.contains {
        tests.push(Test::Contains(operand(v, "contains")?));
    }
    if let Some(v) = raw.contains_any {
        tests.push(Test::ContainsAny(list(v, "contains_any")?));
    }
    if let Some(v) = raw.contains_all {
        tests.push(Test::ContainsAll(list(v, "contains_all")?));
    }
    if let Some(v) = raw.exists {
        tests.push(Test::Exists(v));
    }
    if let Some(v) = raw.prefix {
        tests.push(Test::Prefix(operand(Value::String(v), "prefix")?));
    }
    let mut combinators = Vec::new();
    let nested = |items: Vec<RawCondition>, what: &str| -> Result<Vec<Condition>, ConfigError> {
        if items.is_empty() {
            return Err(ctx.err(at.at(what), "the list is empty"));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, c)| condition(ctx, &at.at(what).index(i), c, template, depth + 1))
            .collect()
    };
    if let Some(items) = raw.any_of {
        combinators.push(Condition::AnyOf(nested(items, "any_of")?));
    }
    if let Some(items) = raw.all_of {
        combinators.push(Condition::AllOf(nested(items, "all_of")?));
    }
    if let Some(inner) = raw.not {
        let inner = condition(ctx, &at.at("not"), *inner, template, depth + 1)?;
        combinators.push(Condition::Not(Box::new(inner)));
    }
    const ONE_OF: &str = "write `claim:` with one of equals, in, contains, contains_any, contains_all, exists, prefix; or one of any_of, all_of, not";
    match (raw.claim, tests.len(), combinators.len()) {
        (Some(claim), 1, 0) => {
            let pointer = Pointer::parse(&claim).map_err(|why| ctx.err(at.at("claim"), format!("{claim:?} {why}")))?;
            Ok(Condition::Claim(pointer, tests.remove(0)))
        }
        (None, 0, 1) => Ok(combinators.remove(0)),
        (Some(_), 0, 1..) => Err(ctx.err(at, format!("a combinator takes no `claim`: {ONE_OF}"))),
        (Some(_), 0, 0) => Err(ctx.err(at, format!("`claim` needs an operator: {ONE_OF}"))),
        (None, 1.., _) => Err(ctx.err(at, format!("an operator needs `claim`: {ONE_OF}"))),
        _ => Err(ctx.err(at, format!("one condition per entry: {ONE_OF}"))),
    }
}

/// `{path.NAME}` must be a parameter of the route's `path_template`.
fn check_param(ctx: &Ctx, at: &Field, name: &str, template: Option<&PathTemplate>) -> Result<(), ConfigError> {
    let names: Vec<&str> = template
        .map(|t| {
            t.segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(n) => Some(n.as_str()),
                    Segment::Literal(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.contains(&name) {
        return Ok(());
    }
    Err(ctx.err(
        at,
        match template {
            None => format!("{{path.{name}}} needs a route matched by `path_template` with a {{{name}}} parameter"),
            Some(t) => format!("{{path.{name}}}: the template {} has no {{{name}}} parameter", t.text),
        },
    ))
}

/// `source_ips`: addresses and CIDR ranges.
pub(super) fn source_ips(ctx: &Ctx, at: &Field, raw: Option<Vec<String>>) -> Result<Vec<Cidr>, ConfigError> {
    let Some(list) = raw else { return Ok(Vec::new()) };
    if list.is_empty() {
        return Err(ctx.err(
            at.at("source_ips"),
            "the list is empty, so no client could call; leave it out to allow any address",
        ));
    }
    list.iter()
        .map(|s| Cidr::parse(s).map_err(|why| ctx.err(at.at("source_ips"), why)))
        .collect()
}

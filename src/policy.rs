//! Authorisation beyond scopes (docs/configuration.md, `auth.claims` and
//! `source_ips`): conditions on a verified token's claims, and client address
//! ranges. Pure and self-contained: the configuration builds these values,
//! the pipeline and `explain` evaluate them, and nothing here does I/O.
//!
//! A condition names a claim by JSON Pointer (RFC 6901) and applies one
//! operator; combinators nest conditions up to [`MAX_DEPTH`]. An absent claim,
//! or one of another type than the operator reads, makes a condition false —
//! never an error, never true. Numbers compare by value, exactly: `1` equals
//! `1.0`, and integers past 2^53 are not rounded; a string never equals a number.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use serde_json::{Map, Number, Value};

/// How deep combinators may nest.
pub(crate) const MAX_DEPTH: usize = 8;

/// A JSON Pointer into the claims, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// As written in the configuration (for messages).
    pub text: String,
    tokens: Vec<String>,
}

impl Pointer {
    /// The last segment: the name a copied claim takes (`/realm_access/roles` is `roles`).
    pub fn name(&self) -> &str {
        self.tokens.last().map_or("", String::as_str)
    }

    /// `/a/b~1c` (RFC 6901), or a bare name for a top-level claim (taken as
    /// it is: `https://example.com/org` is one claim).
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Err("is empty; write /claim or a claim name".into());
        }
        let tokens = match text.strip_prefix('/') {
            None => vec![text.to_string()],
            Some(rest) => rest.split('/').map(unescape).collect::<Result<_, _>>()?,
        };
        Ok(Pointer {
            text: text.to_string(),
            tokens,
        })
    }

    /// The value the pointer names in `claims`, if any.
    pub fn find<'c>(&self, claims: &'c Map<String, Value>) -> Option<&'c Value> {
        let (first, rest) = self.tokens.split_first()?;
        let mut at = claims.get(first)?;
        for token in rest {
            at = match at {
                Value::Object(map) => map.get(token)?,
                Value::Array(items) => items.get(array_index(token)?)?,
                _ => return None,
            };
        }
        Some(at)
    }
}

/// One reference token: `~1` is `/`, `~0` is `~`; any other `~` is an error.
fn unescape(token: &str) -> Result<String, String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => return Err("has a '~' not followed by 0 or 1 (write ~0 for '~' and ~1 for '/')".into()),
        }
    }
    Ok(out)
}

/// An array index as RFC 6901 writes it: decimal, no leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = token.bytes().all(|b| b.is_ascii_digit());
    if !digits || token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

/// A value a condition compares with: written in the configuration, or taken
/// from the request (`"{path.NAME}"`, `"{host}"`).
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Literal(Value),
    /// The route template's parameter, percent-decoded.
    PathParam(String),
    /// The request's host, lower case, without port.
    Host,
}

// JSON numbers are never NaN: equality is reflexive.
impl Eq for Operand {}
impl Eq for Test {}
impl Eq for Condition {}

impl Operand {
    /// A configured value, with the substitutions recognised.
    pub fn from_value(v: Value) -> Operand {
        match v.as_str() {
            Some("{host}") => Operand::Host,
            Some(s) => match s.strip_prefix("{path.").and_then(|n| n.strip_suffix('}')) {
                Some(name) => Operand::PathParam(name.to_string()),
                None => Operand::Literal(v),
            },
            None => Operand::Literal(v),
        }
    }

    /// The value compared with: borrowed when written in the configuration.
    fn resolve(&self, facts: &Facts<'_>) -> Option<Cow<'_, Value>> {
        match self {
            Operand::Literal(v) => Some(Cow::Borrowed(v)),
            Operand::Host => facts.host.map(|h| Cow::Owned(Value::String(h.to_string()))),
            Operand::PathParam(name) => facts
                .path_params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| Cow::Owned(Value::String(v.clone()))),
        }
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Literal(Value::String(s)) => f.write_str(s),
            Operand::Literal(v) => write!(f, "{v}"),
            Operand::PathParam(n) => write!(f, "{{path.{n}}}"),
            Operand::Host => f.write_str("{host}"),
        }
    }
}

/// What one condition checks of the claim it names.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    Equals(Operand),
    In(Vec<Operand>),
    Contains(Operand),
    ContainsAny(Vec<Operand>),
    ContainsAll(Vec<Operand>),
    Exists(bool),
    Prefix(Operand),
}

/// A condition on the claims.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Claim(Pointer, Test),
    AnyOf(Vec<Condition>),
    AllOf(Vec<Condition>),
    Not(Box<Condition>),
}

/// What a condition may read of the request besides the claims.
#[derive(Debug, Default, Clone, Copy)]
pub struct Facts<'a> {
    pub host: Option<&'a str>,
    /// The route template's parameters, percent-decoded.
    pub path_params: &'a [(String, String)],
}

impl Condition {
    /// Whether the claims meet the condition.
    pub fn holds(&self, claims: &Map<String, Value>, facts: &Facts<'_>) -> bool {
        match self {
            Condition::Claim(pointer, test) => test.holds(pointer.find(claims), facts),
            Condition::AnyOf(all) => all.iter().any(|c| c.holds(claims, facts)),
            Condition::AllOf(all) => all.iter().all(|c| c.holds(claims, facts)),
            Condition::Not(c) => !c.holds(claims, facts),
        }
    }

    /// The `{path.NAME}` parameters the condition reads.
    pub fn path_params(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.each_operand(&mut |o| {
            if let Operand::PathParam(n) = o {
                out.push(n.as_str());
            }
        });
        out
    }

    fn each_operand<'a>(&'a self, f: &mut impl FnMut(&'a Operand)) {
        match self {
            Condition::Claim(_, test) => match test {
                Test::Equals(o) | Test::Contains(o) | Test::Prefix(o) => f(o),
                Test::In(list) | Test::ContainsAny(list) | Test::ContainsAll(list) => list.iter().for_each(f),
                Test::Exists(_) => {}
            },
            Condition::AnyOf(all) | Condition::AllOf(all) => all.iter().for_each(|c| c.each_operand(f)),
            Condition::Not(c) => c.each_operand(f),
        }
    }
}

/// The first of `conditions` that the claims do not meet, if any.
pub fn first_failure(conditions: &[Condition], claims: &Map<String, Value>, facts: &Facts<'_>) -> Option<usize> {
    conditions.iter().position(|c| !c.holds(claims, facts))
}

impl Test {
    fn holds(&self, claim: Option<&Value>, facts: &Facts<'_>) -> bool {
        if let Test::Exists(want) = self {
            return claim.is_some() == *want;
        }
        let Some(claim) = claim else { return false };
        let equals = |o: &Operand| o.resolve(facts).is_some_and(|v| same(claim, &v));
        let contains = |o: &Operand| o.resolve(facts).is_some_and(|v| contains(claim, &v));
        match self {
            Test::Equals(o) => equals(o),
            Test::In(list) => list.iter().any(equals),
            Test::Contains(o) => contains(o),
            Test::ContainsAny(list) => list.iter().any(contains),
            Test::ContainsAll(list) => list.iter().all(contains),
            Test::Prefix(o) => match (claim, o.resolve(facts).as_deref()) {
                (Value::String(c), Some(Value::String(p))) => c.starts_with(p.as_str()),
                _ => false,
            },
            Test::Exists(_) => unreachable!("answered above"),
        }
    }
}

/// Equal scalars: same JSON type, numbers by exact value.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        (Value::String(_) | Value::Bool(_) | Value::Null, _) => a == b,
        _ => false,
    }
}

/// An array holding an equal element, or a space-delimited string holding
/// the string as a word (as `scope` is written).
fn contains(claim: &Value, v: &Value) -> bool {
    match (claim, v) {
        (Value::Array(items), _) => items.iter().any(|item| same(item, v)),
        (Value::String(words), Value::String(word)) => words.split(' ').any(|w| !w.is_empty() && w == word),
        _ => false,
    }
}

/// Numbers compared by value without rounding: integers as integers, and a
/// float equal to an integer only when it is that integer exactly.
fn same_number(x: &Number, y: &Number) -> bool {
    match (exact_integer(x), exact_integer(y)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => x.as_f64() == y.as_f64(),
        _ => false,
    }
}

/// The number as an integer when it is one exactly (a float such as `1.0`
/// included); `None` for a fraction or a float beyond every integer type.
fn exact_integer(n: &Number) -> Option<i128> {
    if let Some(i) = n.as_i64() {
        return Some(i128::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Some(i128::from(u));
    }
    let f = n.as_f64()?;
    // 2^100 is far past any JSON integer serde gives, and exactly representable.
    let fits = f.fract() == 0.0 && f.abs() < 2f64.powi(100);
    fits.then_some(f as i128)
}

/// `Display` for a condition, as the log and `explain` name it:
/// `/realm_access/roles contains orders-reader`.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: &[Operand]| items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        match self {
            Condition::Claim(p, test) => match test {
                Test::Equals(o) => write!(f, "{} equals {o}", p.text),
                Test::In(l) => write!(f, "{} in [{}]", p.text, list(l)),
                Test::Contains(o) => write!(f, "{} contains {o}", p.text),
                Test::ContainsAny(l) => write!(f, "{} contains_any [{}]", p.text, list(l)),
                Test::ContainsAll(l) => write!(f, "{} contains_all [{}]", p.text, list(l)),
                Test::Exists(b) => write!(f, "{} exists {b}", p.text),
                Test::Prefix(o) => write!(f, "{} prefix {o}", p.text),
            },
            Condition::AnyOf(all) => write!(f, "any_of ({} conditions)", all.len()),
            Condition::AllOf(all) => write!(f, "all_of ({} conditions)", all.len()),
            Condition::Not(c) => write!(f, "not ({c})"),
        }
    }
}

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        // `::ffff:10.0.0.0/104` is the IPv4 range 10.0.0.0/8.
        let (network, prefix) = match (network, canonical(network)) {
            (IpAddr::V6(_), v4 @ IpAddr::V4(_)) if prefix >= 96 => (v4, prefix - 96),
            (IpAddr::V6(_), IpAddr::V4(_)) => {
                return Err(format!(
                    "{text:?}: an IPv4-mapped range needs a prefix of /96 or longer"
                ))
            }
            (_, same) => (same, prefix),
        };
        let cidr = Cidr { network, prefix };
        if cidr.masked(cidr.network) != Some(cidr.network) {
            return Err(format!(
                "{text:?} has host bits set; the range is written with its first address"
            ));
        }
        Ok(cidr)
    }

    /// Whether `addr` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.masked(canonical(addr)) == Some(self.network)
    }

    fn masked(&self, addr: IpAddr) -> Option<IpAddr> {
        match (addr, self.network) {
            (IpAddr::V4(a), IpAddr::V4(_)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                Some(IpAddr::V4((u32::from(a) & mask).into()))
            }
            (IpAddr::V6(a), IpAddr::V6(_)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                Some(IpAddr::V6((u128::from(a) & mask).into()))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`) as the IPv4 address it is.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests;

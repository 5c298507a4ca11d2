use super::*;
use serde_json::json;

fn claims(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("claims are an object"),
    }
}

fn claim(pointer: &str, test: Test) -> Condition {
    Condition::Claim(Pointer::parse(pointer).unwrap(), test)
}

fn lit(v: Value) -> Operand {
    Operand::Literal(v)
}

#[test]
fn pointers() {
    let c = claims(json!({
        "realm_access": {"roles": ["a", "b"]},
        "https://example.com/org": "acme",
        "a/b": 1, "m~n": 2, "": 3,
        "list": [{"x": 1}, {"x": 2}]
    }));
    let at = |p: &str| Pointer::parse(p).unwrap().find(&c).cloned();
    assert_eq!(at("/realm_access/roles"), Some(json!(["a", "b"])));
    assert_eq!(at("/realm_access/roles/1"), Some(json!("b")));
    assert_eq!(at("/realm_access/roles/01"), None, "no leading zeros");
    assert_eq!(at("/realm_access/roles/2"), None);
    assert_eq!(at("/realm_access/roles/-"), None);
    assert_eq!(
        at("https://example.com/org"),
        Some(json!("acme")),
        "a bare name is one claim"
    );
    assert_eq!(at("/https:~1~1example.com~1org"), Some(json!("acme")));
    assert_eq!(at("/a~1b"), Some(json!(1)));
    assert_eq!(at("/m~0n"), Some(json!(2)));
    assert_eq!(at("/list/1/x"), Some(json!(2)));
    assert_eq!(at("/"), Some(json!(3)), "the empty key");
    assert_eq!(at("/nope/deeper"), None);
    assert_eq!(at("/realm_access/roles/0/x"), None, "into a string");
    for bad in ["", "/a~2", "/a~", "/~x"] {
        assert!(Pointer::parse(bad).is_err(), "{bad:?}");
    }
}

/// Every operator against every type it may meet.
#[test]
fn operators_and_types() {
    let c = claims(json!({
        "s": "orders", "n": 1, "f": 1.5, "big": 9007199254740993u64, "neg": -3,
        "t": true, "z": null, "arr": ["x", "y", 1], "scope": "read write  admin",
        "obj": {"k": "v"}
    }));
    let facts = Facts::default();
    let cases: Vec<(Condition, bool)> = vec![
        (claim("/s", Test::Equals(lit(json!("orders")))), true),
        (claim("/s", Test::Equals(lit(json!("Orders")))), false),
        (claim("/n", Test::Equals(lit(json!(1.0)))), true),
        (claim("/n", Test::Equals(lit(json!("1")))), false),
        (claim("/s", Test::Equals(lit(json!(1)))), false),
        (claim("/f", Test::Equals(lit(json!(1.5)))), true),
        (claim("/f", Test::Equals(lit(json!(1)))), false),
        (claim("/big", Test::Equals(lit(json!(9007199254740993u64)))), true),
        (claim("/big", Test::Equals(lit(json!(9007199254740992u64)))), false),
        (claim("/big", Test::Equals(lit(json!(9007199254740992.0)))), false),
        (claim("/neg", Test::Equals(lit(json!(-3.0)))), true),
        (claim("/t", Test::Equals(lit(json!(true)))), true),
        (claim("/t", Test::Equals(lit(json!("true")))), false),
        (claim("/z", Test::Equals(lit(Value::Null))), true),
        (claim("/missing", Test::Equals(lit(Value::Null))), false),
        (claim("/arr", Test::Equals(lit(json!("x")))), false),
        (claim("/obj", Test::Equals(lit(json!("v")))), false),
        (claim("/s", Test::In(vec![lit(json!("a")), lit(json!("orders"))])), true),
        (claim("/n", Test::In(vec![lit(json!("1")), lit(json!(2))])), false),
        (claim("/arr", Test::Contains(lit(json!("y")))), true),
        (claim("/arr", Test::Contains(lit(json!(1.0)))), true),
        (claim("/arr", Test::Contains(lit(json!("1")))), false),
        (claim("/scope", Test::Contains(lit(json!("admin")))), true),
        (claim("/scope", Test::Contains(lit(json!("adm")))), false),
        (claim("/scope", Test::Contains(lit(json!("")))), false),
        (claim("/s", Test::Contains(lit(json!("orders")))), true),
        (claim("/n", Test::Contains(lit(json!(1)))), false),
        (claim("/obj", Test::Contains(lit(json!("k")))), false),
        (
            claim("/arr", Test::ContainsAny(vec![lit(json!("q")), lit(json!("x"))])),
            true,
        ),
        (claim("/arr", Test::ContainsAny(vec![lit(json!("q"))])), false),
        (
            claim("/arr", Test::ContainsAll(vec![lit(json!("x")), lit(json!("y"))])),
            true,
        ),
        (
            claim("/arr", Test::ContainsAll(vec![lit(json!("x")), lit(json!("q"))])),
            false,
        ),
        (
            claim(
                "/scope",
                Test::ContainsAll(vec![lit(json!("read")), lit(json!("write"))]),
            ),
            true,
        ),
        (claim("/z", Test::Exists(true)), true),
        (claim("/missing", Test::Exists(true)), false),
        (claim("/missing", Test::Exists(false)), true),
        (claim("/s", Test::Exists(false)), false),
        (claim("/s", Test::Prefix(lit(json!("ord")))), true),
        (claim("/s", Test::Prefix(lit(json!("x")))), false),
        (claim("/n", Test::Prefix(lit(json!("1")))), false),
        (claim("/missing", Test::Prefix(lit(json!("")))), false),
        (claim("/missing", Test::Contains(lit(json!("x")))), false),
        (
            Condition::Not(Box::new(claim("/missing", Test::Equals(lit(json!(1)))))),
            true,
        ),
        (Condition::AnyOf(vec![]), false),
        (Condition::AllOf(vec![]), true),
        (
            Condition::AnyOf(vec![
                claim("/t", Test::Equals(lit(json!(false)))),
                Condition::AllOf(vec![
                    claim("/arr", Test::Contains(lit(json!("x")))),
                    Condition::Not(Box::new(claim("/act", Test::Exists(true)))),
                ]),
            ]),
            true,
        ),
    ];
    for (condition, want) in cases {
        assert_eq!(condition.holds(&c, &facts), want, "{condition}");
    }
}

#[test]
fn substitutions_come_from_the_request() {
    let c = claims(json!({"org": "acme", "hosts": ["api.acme.test"], "pre": "acme/x"}));
    let params = vec![("org".to_string(), "acme".to_string())];
    let facts = Facts {
        host: Some("api.acme.test"),
        path_params: &params,
    };
    let org = Operand::from_value(json!("{path.org}"));
    assert_eq!(org, Operand::PathParam("org".into()));
    assert!(claim("/org", Test::Equals(org.clone())).holds(&c, &facts));
    assert!(claim("/hosts", Test::Contains(Operand::from_value(json!("{host}")))).holds(&c, &facts));
    assert!(claim("/pre", Test::Prefix(org.clone())).holds(&c, &facts));
    let other = vec![("org".to_string(), "globex".to_string())];
    let facts = Facts {
        host: None,
        path_params: &other,
    };
    assert!(!claim("/org", Test::Equals(org)).holds(&c, &facts));
    assert!(
        !claim("/hosts", Test::Contains(Operand::Host)).holds(&c, &facts),
        "no host: false"
    );
    assert_eq!(
        Operand::from_value(json!("{path.org} ")),
        Operand::Literal(json!("{path.org} ")),
        "only a whole value is a substitution"
    );
}

#[test]
fn address_ranges() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let net = Cidr::parse("10.0.0.0/8").unwrap();
    assert!(net.contains(ip("10.1.2.3")));
    assert!(!net.contains(ip("11.0.0.1")));
    assert!(net.contains(ip("::ffff:10.9.9.9")), "IPv4-mapped IPv6 is IPv4");
    assert!(!net.contains(ip("::1")));
    let v6 = Cidr::parse("2001:db8::/32").unwrap();
    assert!(v6.contains(ip("2001:db8:1::5")));
    assert!(!v6.contains(ip("2001:db9::1")));
    assert!(!v6.contains(ip("10.0.0.1")));
    let one = Cidr::parse("127.0.0.1").unwrap();
    assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
    assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
    assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
    let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
    assert!(mapped.contains(ip("10.2.3.4")) && !mapped.contains(ip("11.0.0.1")));
    assert!(Cidr::parse("::ffff:0.0.0.0/95").is_err());
    for bad in [
        "10.0.0.1/8",
        "10.0.0.0/33",
        "nope",
        "10.0.0.0/",
        "::1/129",
        "1.2.3.4/-1",
    ] {
        assert!(Cidr::parse(bad).is_err(), "{bad}");
    }
}

/// The evaluator against a reference written independently (over plain
/// values, with its own number rule) on generated claims and conditions.
#[test]
fn random_conditions_agree_with_a_reference() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let scalars = [
        json!("a"),
        json!("b"),
        json!(1),
        json!(1.0),
        json!(2.5),
        json!(true),
        Value::Null,
        json!("a b"),
    ];
    for _ in 0..20_000 {
        let mut doc = Map::new();
        for key in ["p", "q"] {
            if next(4) != 0 {
                let v = match next(3) {
                    0 => scalars[next(8) as usize].clone(),
                    1 => Value::Array((0..next(4)).map(|_| scalars[next(8) as usize].clone()).collect()),
                    _ => json!({"r": scalars[next(8) as usize].clone()}),
                };
                doc.insert(key.to_string(), v);
            }
        }
        let pointer = ["/p", "/q", "/p/r", "/q/0", "p"][next(5) as usize];
        let operand = scalars[next(8) as usize].clone();
        let test = match next(6) {
            0 => Test::Equals(lit(operand.clone())),
            1 => Test::Contains(lit(operand.clone())),
            2 => Test::Exists(next(2) == 0),
            3 => Test::Prefix(lit(operand.clone())),
            4 => Test::In(vec![lit(operand.clone()), lit(json!("b"))]),
            _ => Test::ContainsAny(vec![lit(operand.clone()), lit(json!(2.5))]),
        };
        let condition = claim(pointer, test.clone());
        let want = reference(&doc, pointer, &test);
        assert_eq!(
            condition.holds(&doc, &Facts::default()),
            want,
            "{condition} on {}",
            Value::Object(doc.clone())
        );
        assert_eq!(
            Condition::Not(Box::new(condition.clone())).holds(&doc, &Facts::default()),
            !want
        );
    }
}

/// The reference: serde_json's own pointer, numbers through f64 (the
/// generated numbers are all exact in f64), types compared by name.
fn reference(doc: &Map<String, Value>, pointer: &str, test: &Test) -> bool {
    let root = Value::Object(doc.clone());
    let found = if pointer.starts_with('/') {
        root.pointer(pointer)
    } else {
        doc.get(pointer)
    };
    let kind = |v: &Value| match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    };
    let eq = |a: &Value, b: &Value| {
        kind(a) == kind(b)
            && kind(a) < 4
            && match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => x == y,
                _ => a == b,
            }
    };
    let holds_word = |c: &Value, v: &Value| match (c, v) {
        (Value::Array(items), _) => items.iter().any(|i| eq(i, v)),
        (Value::String(s), Value::String(w)) => !w.is_empty() && s.split(' ').any(|x| x == w),
        _ => false,
    };
    let value = |o: &Operand| match o {
        Operand::Literal(v) => v.clone(),
        _ => unreachable!("the generator writes literals only"),
    };
    match (test, found) {
        (Test::Exists(want), f) => f.is_some() == *want,
        (_, None) => false,
        (Test::Equals(o), Some(c)) => eq(c, &value(o)),
        (Test::In(l), Some(c)) => l.iter().any(|o| eq(c, &value(o))),
        (Test::Contains(o), Some(c)) => holds_word(c, &value(o)),
        (Test::ContainsAny(l), Some(c)) => l.iter().any(|o| holds_word(c, &value(o))),
        (Test::ContainsAll(l), Some(c)) => l.iter().all(|o| holds_word(c, &value(o))),
        (Test::Prefix(o), Some(Value::String(c))) => value(o).as_str().is_some_and(|p| c.starts_with(p)),
        (Test::Prefix(_), Some(_)) => false,
    }
}

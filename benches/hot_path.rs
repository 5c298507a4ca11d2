//! Microbenchmarks of the request path: `cargo bench`. Criterion reports the
//! figures; nothing here asserts a time.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::auth::cache::TokenCache;
use portcullis::auth::{token, ProviderState};
use portcullis::config::{Access, AuthRule, KeySource, PathMatch, Provider, Route};
use portcullis::proxy::headers::{self, IdentityHeaders, StripRules};
use portcullis::routing::normalize::normalize;
use portcullis::routing::table::{Lookup, RouteTable};

fn bench_normalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize");
    for path in [
        "/api/orders/12345",
        "/api/v1/users/42/orders?x",
        "/public/%2e%2e/admin//x/./y",
        "/a%20b/c%7Ed/%41",
    ] {
        g.bench_with_input(BenchmarkId::from_parameter(path), path, |b, p| {
            b.iter(|| normalize(black_box(p)))
        });
    }
    g.finish();
}

fn route(i: usize) -> Route {
    Route {
        name: format!("r{i}"),
        path: if i.is_multiple_of(2) {
            PathMatch::Prefix(format!("/svc{i}/items"))
        } else {
            PathMatch::Exact(format!("/svc{i}/health"))
        },
        methods: Some(vec![Method::GET, Method::POST]),
        host: None,
        upstream: Some(0),
        strip_prefix: None,
        access: Access::Public,
        source_ips: vec![],
        websocket: None,
        cors: None,
        rate_limits: vec![],
    }
}

fn bench_routes(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    for n in [10usize, 100, 1000] {
        let table = RouteTable::new((0..n).map(route).collect());
        // The last route: the worst case for a scan in file order.
        let last = if (n - 1) % 2 == 0 { n - 1 } else { n - 2 };
        let path = format!("/svc{last}/items/7");
        // Each case is checked to find what it says, so a broken table cannot
        // bench fast by finding nothing.
        assert_eq!(
            table.find(Some("api.example.com"), &Method::GET, &path),
            Lookup::Found(last)
        );
        assert_eq!(table.find(None, &Method::GET, "/nothing/here"), Lookup::NotFound);
        g.bench_with_input(BenchmarkId::new("last_route", n), &path, |b, p| {
            b.iter(|| table.find(black_box(Some("api.example.com")), &Method::GET, black_box(p)))
        });
        g.bench_with_input(BenchmarkId::new("no_match", n), "/nothing/here", |b, p| {
            b.iter(|| table.find(black_box(None), &Method::GET, black_box(p)))
        });
        // Every route under one shared prefix, as real APIs are (`/api/v1/...`).
        let shared = RouteTable::new(
            (0..n)
                .map(|i| {
                    let mut r = route(i);
                    if let PathMatch::Prefix(p) | PathMatch::Exact(p) = &mut r.path {
                        *p = format!("/api/v1{p}");
                    }
                    r
                })
                .collect(),
        );
        let path = format!("/api/v1{path}");
        assert_eq!(shared.find(None, &Method::GET, &path), Lookup::Found(last));
        g.bench_with_input(BenchmarkId::new("shared_prefix_last_route", n), &path, |b, p| {
            b.iter(|| shared.find(black_box(None), &Method::GET, black_box(p)))
        });
        // Templates as an imported OpenAPI document has them: `/api/v1/svcN/items/{id}`.
        let templated = RouteTable::new(
            (0..n)
                .map(|i| {
                    let mut r = route(i);
                    let text = format!("/api/v1/svc{i}/items/{{item_id}}/owner");
                    r.path = PathMatch::Template(portcullis::routing::template::PathTemplate::parse(&text).unwrap());
                    r
                })
                .collect(),
        );
        let path = format!("/api/v1/svc{}/items/42/owner", n - 1);
        assert_eq!(templated.find(None, &Method::GET, &path), Lookup::Found(n - 1));
        g.bench_with_input(BenchmarkId::new("template_last_route", n), &path, |b, p| {
            b.iter(|| templated.find(black_box(None), &Method::GET, black_box(p)))
        });
    }
    g.finish();
}

struct Signer {
    alg: Algorithm,
    key: EncodingKey,
    public_pem: String,
}

fn signer(alg: Algorithm) -> Signer {
    let rc = match alg {
        Algorithm::RS256 => &rcgen::PKCS_RSA_SHA256,
        Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        _ => &rcgen::PKCS_ED25519,
    };
    let kp = rcgen::KeyPair::generate_for(rc).unwrap();
    let key = portcullis::mint::pem_signing_key(alg, kp.serialize_pem().as_bytes()).unwrap();
    Signer {
        alg,
        key,
        public_pem: kp.public_key_pem(),
    }
}

fn provider(dir: &std::path::Path, name: &str, keys: KeySource) -> Arc<ProviderState> {
    let _ = dir;
    let config = Provider {
        name: name.into(),
        issuer: Some("https://id.example.com/".into()),
        audiences: Some(vec!["api".into()]),
        keys,
        ca_file: None,
        algorithms: None,
        leeway: std::time::Duration::from_secs(30),
        jwks_refresh: std::time::Duration::from_secs(600),
        scope_claims: vec!["scope".into(), "scp".into(), "scopes".into()],
        subject_claim: "sub".into(),
        typ: None,
        introspection: None,
    };
    Arc::new(ProviderState::new(config).unwrap())
}

fn claims() -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({
        "iss": "https://id.example.com/", "aud": "api", "sub": "user-1234",
        "scope": "orders:read orders:write profile", "exp": now + 3600, "iat": now,
        "email": "user@example.com"
    })
}

fn bench_tokens(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let rule = AuthRule {
        providers: vec![0],
        scopes: vec!["orders:read".into()],
        any_scopes: vec![],
        token_sources: vec![portcullis::config::TokenSource::Header],
        monitor: false,
        claims: vec![],
        claims_read_path: false,
        resource_metadata: false,
    };
    let mut g = c.benchmark_group("token");
    std::fs::write(dir.join("hs.secret"), "bench-secret-0123456789abcdef0123456789").unwrap();
    let mut cases: Vec<(&str, Arc<ProviderState>, String)> = Vec::new();
    let hs = provider(&dir, "hs", KeySource::SecretFile(dir.join("hs.secret")));
    let hs_token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"bench-secret-0123456789abcdef0123456789"),
    )
    .unwrap();
    cases.push(("HS256", hs, hs_token));
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let s = signer(alg);
        let pem = dir.join(format!("{alg:?}.pem"));
        std::fs::write(&pem, &s.public_pem).unwrap();
        let p = provider(&dir, &format!("{alg:?}"), KeySource::PublicKeyFile(pem));
        let t = jsonwebtoken::encode(&Header::new(s.alg), &claims(), &s.key).unwrap();
        cases.push((
            match alg {
                Algorithm::RS256 => "RS256",
                Algorithm::ES256 => "ES256",
                _ => "EdDSA",
            },
            p,
            t,
        ));
    }
    for (name, p, t) in &cases {
        let keys = p.keys.load_full().unwrap();
        g.bench_function(BenchmarkId::new("verify_cold", name), |b| {
            b.iter(|| {
                let u = token::decode(black_box(t)).unwrap();
                u.verify(&p.config, &keys, 1.0).unwrap();
                u.into_claims()
            })
        });
        let providers = vec![p.clone()];
        let cache = TokenCache::default();
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        let token = |h: &HeaderMap| {
            portcullis::auth::credential::find(&rule.token_sources, h, None)
                .unwrap()
                .map(|c| c.token.to_string())
        };
        rt.block_on(portcullis::auth::authenticate(
            &providers,
            &cache,
            &rule,
            token(&h).as_deref(),
        ))
        .unwrap();
        g.bench_function(BenchmarkId::new("authenticate_cached", name), |b| {
            b.iter(|| {
                let h = black_box(&h);
                let found = portcullis::auth::credential::find(&rule.token_sources, h, None).unwrap();
                rt.block_on(portcullis::auth::authenticate(
                    &providers,
                    &cache,
                    &rule,
                    found.map(|c| c.token),
                ))
                .unwrap()
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn bench_headers(c: &mut Criterion) {
    let identity = portcullis::config::IdentitySettings {
        subject_header: http::HeaderName::from_static("x-auth-subject"),
        scopes_header: http::HeaderName::from_static("x-auth-scopes"),
        claims: vec![portcullis::config::ClaimHeader {
            header: http::HeaderName::from_static("x-auth-email"),
            claim: portcullis::policy::Pointer::parse("email").unwrap(),
            join: ",".into(),
            json: false,
        }],
        strip_incoming: vec!["x-auth-*".into()],
        forward_authorization: false,
        assertion: None,
    };
    let strip = StripRules::new(
        identity.strip_incoming.clone(),
        &[&identity.subject_header, &identity.scopes_header],
    );
    let apply = IdentityHeaders::new(&identity);
    let who = portcullis::auth::Caller {
        subject: Some("user-1234".into()),
        scopes: vec!["orders:read".into(), "profile".into()],
        claims: serde_json::json!({"email": "user@example.com"})
            .as_object()
            .unwrap()
            .clone(),
        valid_until: 0.0,
    };
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("authorization", "Bearer abc.def.ghi"),
        ("x-auth-subject", "spoofed"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "203.0.113.9"),
        ("content-type", "application/json"),
    ] {
        base.insert(http::HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let host = HeaderValue::from_static("api.example.com");
    let client = headers::client_address("127.0.0.1".parse().unwrap());
    c.bench_function("identity_header_rewrite", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                strip.strip(&mut h);
                headers::remove_hop_by_hop(&mut h);
                h.remove(http::header::AUTHORIZATION);
                apply.apply(&mut h, &who);
                headers::set_forwarded(&mut h, &client, Some(&host));
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// A local rate-limit check (one GCRA step in a DashMap) per key kind.
fn bench_rate_limits(c: &mut Criterion) {
    use portcullis::config::{LimitKey, RateLimitPolicy};
    use portcullis::limits::{check, LocalBuckets, RequestFacts};
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut g = c.benchmark_group("rate_limit");
    for (name, key) in [("client_ip", LimitKey::ClientIp), ("route", LimitKey::Route)] {
        // A rate nothing here can reach: every check passes and moves the bucket.
        let policies = vec![RateLimitPolicy {
            name: "p".into(),
            key,
            interval: std::time::Duration::from_nanos(1),
            burst: u32::MAX,
            shared: false,
            allow_on_store_error: true,
        }];
        let buckets = vec![Arc::new(LocalBuckets::default())];
        let headers = HeaderMap::new();
        let route: Arc<str> = "orders".into();
        let facts = RequestFacts {
            route: "orders",
            client: "10.1.2.3".parse().unwrap(),
            headers: &headers,
            identity: None,
        };
        g.bench_function(BenchmarkId::new("local_check", name), |b| {
            b.iter(|| {
                rt.block_on(check(&policies, &buckets, None, &[0], black_box(&facts), &route))
                    .unwrap()
            })
        });
    }
    g.finish();
}

/// The metrics of one answered request (a counter and a duration histogram),
/// from one thread and from two worker threads at once on the same route.
fn bench_metrics(c: &mut Criterion) {
    let route = portcullis::metrics::route("orders");
    let mut g = c.benchmark_group("metrics_request");
    g.bench_function("one_thread", |b| {
        b.iter(|| portcullis::metrics::request(Some(black_box(&*route)), "https", 200, black_box(0.0012)))
    });
    // Each iteration is one request on each of two threads.
    g.bench_function("two_threads", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for worker in 0..2 {
                    let route = &route;
                    s.spawn(move || {
                        portcullis::shard::become_worker(worker);
                        for _ in 0..iters {
                            portcullis::metrics::request(Some(black_box(&**route)), "https", 200, black_box(0.0012));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

/// A five-condition policy as a Keycloak deployment writes one: tenant from
/// the URL, realm and client roles, an any_of and a not (goal: under 1 µs).
fn bench_claims(c: &mut Criterion) {
    use portcullis::policy::{first_failure, Condition, Facts, Operand, Pointer, Test};
    let claim = |p: &str, t: Test| Condition::Claim(Pointer::parse(p).unwrap(), t);
    let lit = |v: serde_json::Value| Operand::Literal(v);
    let policy = vec![
        claim("/org", Test::Equals(Operand::PathParam("org".into()))),
        claim("/realm_access/roles", Test::Contains(lit("orders-reader".into()))),
        claim(
            "/resource_access/orders-api/roles",
            Test::ContainsAny(vec![lit("viewer".into()), lit("editor".into())]),
        ),
        Condition::AnyOf(vec![
            claim("/email_verified", Test::Equals(lit(true.into()))),
            claim("/amr", Test::ContainsAny(vec![lit("mfa".into()), lit("hwk".into())])),
        ]),
        Condition::Not(Box::new(claim("/act", Test::Exists(true)))),
    ];
    let token = serde_json::json!({
        "sub": "alice", "org": "acme", "email_verified": false, "amr": ["pwd", "mfa"],
        "realm_access": {"roles": ["offline_access", "uma_authorization", "orders-reader"]},
        "resource_access": {"orders-api": {"roles": ["viewer"]}, "account": {"roles": ["manage-account"]}},
    });
    let serde_json::Value::Object(token) = token else {
        unreachable!()
    };
    let params = vec![("org".to_string(), "acme".to_string())];
    let facts = Facts {
        host: Some("api.example.com"),
        path_params: &params,
    };
    assert_eq!(
        first_failure(&policy, &token, &facts),
        None,
        "the bench's token meets the policy"
    );
    c.bench_function("claims/five_conditions", |b| {
        b.iter(|| first_failure(black_box(&policy), black_box(&token), black_box(&facts)))
    });
}

criterion_group!(
    benches,
    bench_metrics,
    bench_normalize,
    bench_routes,
    bench_tokens,
    bench_headers,
    bench_rate_limits,
    bench_claims
);
criterion_main!(benches);

//! Configuration validation (docs/configuration.md) and `portcullis check` (README, Commands).

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis::config::{Config, ConfigError, Loaded};

const BASE: &str = "listen:\n  https: 127.0.0.1:8443\ntls:\n  cert: cert.pem\n  key: key.pem\n";

fn dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let (cert, key) = portcullis::tls::self_signed(&["localhost".into()]).unwrap();
    std::fs::write(d.path().join("cert.pem"), cert).unwrap();
    std::fs::write(d.path().join("key.pem"), key).unwrap();
    // The example EC key of RFC 7517 appendix A.1.
    let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"1"}]}"#;
    std::fs::write(d.path().join("jwks.json"), jwks).unwrap();
    std::fs::write(d.path().join("empty-jwks.json"), r#"{"keys":[]}"#).unwrap();
    std::fs::write(
        d.path().join("not-a-key.pem"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    d
}

fn load(d: &Path, yaml: &str) -> Result<Loaded, ConfigError> {
    Config::from_yaml(yaml, &d.join("gateway.yaml"))
}

fn err(yaml: &str) -> ConfigError {
    let d = dir();
    load(d.path(), yaml).expect_err("config should be refused")
}

/// What an error says about which field: `field: message`.
fn said(e: &ConfigError) -> String {
    match &e.field {
        Some(field) => format!("{field}: {}", e.message),
        None => e.message.clone(),
    }
}

fn with(providers: &str, routes: &str) -> String {
    format!("{BASE}providers:\n{providers}upstreams:\n  app:\n    targets: [http://127.0.0.1:9000]\nroutes:\n{routes}")
}

const PUBLIC_ROUTE: &str = "  - name: r\n    match: { path: / }\n    upstream: app\n    public: true\n";
const FILE_PROVIDER: &str =
    "  corp:\n    issuer: https://id.example.com/\n    audiences: [api]\n    jwks_file: jwks.json\n";

#[test]
fn a_full_config_loads() {
    let d = dir();
    let yaml = with(
        FILE_PROVIDER,
        "  - name: read\n    match: { path: /api/, methods: [get, HEAD], host: API.example.com:443 }\n    upstream: app\n    strip_prefix: /api\n    auth:\n      scopes: [orders:read]\n  - name: h\n    match: { path_exact: /health }\n    upstream: app\n    public: true\n",
    );
    let loaded = load(d.path(), &yaml).unwrap();
    let c = &loaded.config;
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].host.as_deref(), Some("api.example.com"));
    assert_eq!(c.routes[0].methods.as_ref().unwrap().len(), 2);
    assert_eq!(c.routes[0].path, portcullis::config::PathMatch::Prefix("/api".into()));
    assert_eq!(c.limits.max_body_bytes, 10 * 1024 * 1024, "defaults apply");
    // Relative paths resolve against the config file's directory.
    assert_eq!(c.tls.cert, d.path().join("cert.pem"));
    assert_eq!(
        c.providers[0].keys,
        portcullis::config::KeySource::JwksFile(d.path().join("jwks.json"))
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn yaml_and_schema_errors_carry_line_and_column() {
    let e = err(&format!(
        "{BASE}upstreams:\n  app:\n    targets: [http://127.0.0.1:9000]\n    conect_timeout: 2s\nroutes: []\n"
    ));
    assert_eq!(e.position.map(|p| p.0), Some(9), "{e}");
    assert!(said(&e).contains("unknown field `conect_timeout`"), "{e}");
    let shown = e.to_string();
    assert!(shown.contains("gateway.yaml:9:"), "{shown}");

    let e = err(&format!(
        "{BASE}limits:\n  idle_timeout: 30x\n{}",
        &with("", PUBLIC_ROUTE)[BASE.len()..]
    ));
    assert_eq!(e.position.map(|p| p.0), Some(7), "{e}");
    assert!(said(&e).contains("invalid duration"), "{e}");

    let e = err("listen: [\n");
    assert!(e.position.is_some(), "{e}");

    let e = err(&with("", PUBLIC_ROUTE).replace("127.0.0.1:8443", "localhost"));
    assert!(said(&e).contains("invalid listen address"), "{e}");
}

/// Errors found after parsing (a name that does not resolve, a key file that
/// does not parse) point at the field too, so an editor can jump there.
#[test]
fn validation_errors_point_at_the_field() {
    let yaml = with(
        FILE_PROVIDER,
        "  - name: a\n    match: { path: / }\n    upstream: app\n    public: true\n  - name: b\n    match: { path: /b }\n    upstream: nope\n    public: true\n",
    );
    let e = err(&yaml);
    let line = yaml.lines().position(|l| l.contains("upstream: nope")).unwrap() + 1;
    assert_eq!(e.position, Some((line, 15)), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("gateway.yaml:{line}:15: routes[1] (b).upstream")),
        "{e}"
    );

    // Key material is parsed when the snapshot is built; the error still has a place.
    let d = dir();
    let yaml = with(
        "  corp:\n    issuer: https://id.example.com/\n    audiences: [api]\n    public_key_file: not-a-key.pem\n",
        PUBLIC_ROUTE,
    );
    std::fs::write(d.path().join("gateway.yaml"), &yaml).unwrap();
    let (code, _, stderr) = portcullis(&["check", "-c", "gateway.yaml"], d.path());
    let line = yaml.lines().position(|l| l.contains("public_key_file")).unwrap() + 1;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("gateway.yaml:{line}:22: providers.corp.public_key_file: ")),
        "{stderr}"
    );
}

#[test]
fn validation_rules() {
    let cases: Vec<(String, &str)> = vec![
        (with("", "  - match: { path: / }\n    upstream: app\n"), "neither `auth:` nor `public: true`"),
        (with(FILE_PROVIDER, "  - match: { path: / }\n    upstream: app\n    public: true\n    auth: {}\n"), "both `auth` and `public: true`"),
        (with("", "  - match: { path: / }\n    upstream: nope\n    public: true\n"), "no upstream named \"nope\""),
        (with(FILE_PROVIDER, "  - match: { path: / }\n    upstream: app\n    auth: { providers: [other] }\n"), "no provider named \"other\""),
        (with("", "  - match: { path: / }\n    upstream: app\n    auth: {}\n"), "no providers are configured"),
        (with("  p:\n    issuer: https://a/\n", PUBLIC_ROUTE), "no key source"),
        (with("  p:\n    issuer: https://a/\n    jwks_file: jwks.json\n    jwks_uri: https://a/jwks\n", PUBLIC_ROUTE), "more than one key source"),
        (with("  p:\n    issuer: https://a/\n    jwks_file: jwks.json\n    algorithms: [RS256, none]\n", PUBLIC_ROUTE), "`none` is never allowed"),
        (with("  p:\n    issuer: https://a/\n    jwks_file: jwks.json\n    algorithms: [NONE]\n", PUBLIC_ROUTE), "`none` is never allowed"),
        (with("  p:\n    issuer: https://a/\n    jwks_file: jwks.json\n    algorithms: [RS256, HS256]\n", PUBLIC_ROUTE), "mixes HMAC"),
        (with("  p:\n    issuer: https://a/\n    jwks_file: jwks.json\n    algorithms: [HS256]\n", PUBLIC_ROUTE), "does not fit the key source"),
        (with("  p:\n    issuer: https://a/\n    jwks_file: jwks.json\n    algorithms: [XX999]\n", PUBLIC_ROUTE), "unknown algorithm"),
        (with("  a:\n    jwks_file: jwks.json\n  b:\n    jwks_file: jwks.json\n", PUBLIC_ROUTE), "only one provider may leave out `issuer`"),
        (with("  a:\n    issuer: https://a/\n    jwks_file: jwks.json\n  b:\n    issuer: https://a/\n    jwks_file: jwks.json\n", PUBLIC_ROUTE), "cannot share an issuer"),
        (with("  a:\n    issuer: https://a/\n    jwks_file: missing.json\n", PUBLIC_ROUTE), "missing.json"),
        (with("  a:\n    secret_env: PORTCULLIS_TEST_SURELY_UNSET\n", PUBLIC_ROUTE), "PORTCULLIS_TEST_SURELY_UNSET is not set"),
        (with("  a:\n    issuer: https://a/\n    jwks_uri: http://keys.example.com/jwks\n", PUBLIC_ROUTE), "plain http"),
        (with("  a:\n    discovery: true\n", PUBLIC_ROUTE), "discovery needs an `issuer`"),
        (with("", "  - match: { path: /a, path_exact: /a }\n    upstream: app\n    public: true\n"), "exactly one of `path`"),
        (with("", "  - match: { path: /a/../b }\n    upstream: app\n    public: true\n"), "not in normal form"),
        (with("", "  - match: { path: /a }\n    upstream: app\n    strip_prefix: /b\n    public: true\n"), "is not a leading part"),
        (with("", "  - match: { path: /a, methods: [\"G T\"] }\n    upstream: app\n    public: true\n"), "not an HTTP method"),
        (with("", "  - name: x\n    match: { path: /a }\n    upstream: app\n    public: true\n  - name: x\n    match: { path: /b }\n    upstream: app\n    public: true\n"), "used twice"),
        (format!("{BASE}upstreams:\n  app:\n    targets: []\nroutes:\n{PUBLIC_ROUTE}"), "the list is empty"),
        (format!("{BASE}upstreams:\n  app:\n    targets: [ftp://x:1]\nroutes:\n{PUBLIC_ROUTE}"), "not a valid target"),
        (format!("{BASE}upstreams:\n  app:\n    targets: [http://x:1/base]\nroutes:\n{PUBLIC_ROUTE}"), "has a path"),
        (format!("{BASE}identity:\n  subject_header: Authorization\nupstreams:\n  app:\n    targets: [http://x:1]\nroutes:\n{PUBLIC_ROUTE}"), "controls"),
        (format!("{BASE}upstreams:\n  app:\n    targets: [http://x:1]\nroutes: []\n"), "no routes"),
        (format!("listen:\n  https: 127.0.0.1:8443\n  http: 127.0.0.1:8443\n{}", &with("", PUBLIC_ROUTE)["listen:\n  https: 127.0.0.1:8443\n".len()..]), "already used"),
    ];
    for (yaml, want) in cases {
        let e = err(&yaml);
        assert!(said(&e).contains(want), "wanted {want:?}, got: {e}\n--- yaml:\n{yaml}");
    }
}

#[test]
fn warnings_for_shadowed_routes_plain_http_keys_and_missing_audiences() {
    let d = dir();
    let yaml = with(
        "  a:\n    issuer: http://127.0.0.1:5556/\n    jwks_uri: http://127.0.0.1:5556/keys\n",
        "  - name: all-api\n    match: { path: /api }\n    upstream: app\n    public: true\n  - name: orders\n    match: { path: /api/orders, methods: [GET] }\n    upstream: app\n    public: true\n  - name: get-only\n    match: { path: /x, methods: [GET] }\n    upstream: app\n    public: true\n  - name: any-x\n    match: { path_exact: /x/y }\n    upstream: app\n    public: true\n",
    );
    let w = load(d.path(), &yaml).unwrap().warnings.join("\n");
    assert!(
        w.contains("\"orders\" can never match") && w.contains("\"all-api\""),
        "{w}"
    );
    assert!(
        !w.contains("\"any-x\" can never match"),
        "a route with more methods is not shadowed: {w}"
    );
    assert!(w.contains("plain http"), "{w}");
    assert!(w.contains("no `audiences`"), "{w}");

    std::fs::write(d.path().join("short.secret"), "hunter2\n").unwrap();
    let yaml = with("  a:\n    secret_file: short.secret\n", PUBLIC_ROUTE);
    let w = load(d.path(), &yaml).unwrap().warnings.join("\n");
    assert!(w.contains("shorter than 32 bytes"), "{w}");
    // The trailing newline is not part of the secret, so it does not count.
    std::fs::write(d.path().join("short.secret"), format!("{}\n", "k".repeat(32))).unwrap();
    let w = load(d.path(), &yaml).unwrap().warnings.join("\n");
    assert!(!w.contains("shorter than 32 bytes"), "{w}");
    std::fs::write(d.path().join("short.secret"), format!("{}\n", "k".repeat(31))).unwrap();
    let w = load(d.path(), &yaml).unwrap().warnings.join("\n");
    assert!(w.contains("shorter than 32 bytes"), "{w}");
}

fn portcullis(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(dir)
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_command() {
    let d = dir();
    let good = with(
        FILE_PROVIDER,
        "  - name: orders\n    match: { path: /api/orders }\n    upstream: app\n    auth: { scopes: [orders:read] }\n",
    );
    std::fs::write(d.path().join("gateway.yaml"), &good).unwrap();
    let (code, out, err) = portcullis(&["check"], d.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("orders") && out.contains("/api/orders") && out.contains("orders:read"),
        "{out}"
    );
    // Which routes take WebSockets, have CORS, read tokens from elsewhere.
    let browser = format!(
        "{}cors:\n  web:\n    allow_origins: [https://app.example.com]\n",
        with(
            FILE_PROVIDER,
            "  - name: chat\n    match: { path: /ws }\n    upstream: app\n    auth: { token_sources: [header, \"cookie:s\"] }\n    websocket: true\n    cors: web\n"
        )
    );
    std::fs::write(d.path().join("browser.yaml"), &browser).unwrap();
    let (code, out, err) = portcullis(&["check", "-c", "browser.yaml"], d.path());
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("chat\t"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("token_sources=header,cookie:s"), "{line}");
    assert!(line.ends_with("\twebsocket(idle 300s) cors=web"), "{line}");

    let bad_path: PathBuf = d.path().join("bad.yaml");
    std::fs::write(&bad_path, good.replace("upstream: app", "upstream: app\n    bogus: 1")).unwrap();
    let (code, out, err) = portcullis(&["check", "-c", "bad.yaml"], d.path());
    assert_eq!(code, 1, "{out}{err}");
    let line = err.lines().next().unwrap_or_default();
    assert!(
        line.starts_with("bad.yaml:") && line.contains("unknown field `bogus`"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    assert!(!err.contains("panicked"), "{err}");

    // `check` parses every key file the config names.
    for (key_line, want) in [
        ("jwks_file: empty-jwks.json", "no usable signature key"),
        (
            "public_key_file: not-a-key.pem",
            "not a PEM RSA, EC or Ed25519 public key",
        ),
        (
            "jwks_file: jwks.json\n    algorithms: [RS256]",
            "no usable signature key",
        ),
    ] {
        std::fs::write(
            d.path().join("keys.yaml"),
            good.replace("jwks_file: jwks.json", key_line),
        )
        .unwrap();
        let (code, out, err) = portcullis(&["check", "-c", "keys.yaml"], d.path());
        assert_eq!(code, 1, "{key_line}: {out}{err}");
        assert!(err.contains(want), "{key_line}: {err}");
    }

    // The cause (here the OS error) is printed once, on the error's one line.
    let (code, _, err) = portcullis(&["check", "-c", "nope.yaml"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("nope.yaml") && err.contains("cannot read"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // A TLS key that does not parse: the field, its position, the cause once.
    std::fs::write(
        d.path().join("broken.key"),
        "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("tls.yaml"),
        good.replace("key: key.pem", "key: broken.key"),
    )
    .unwrap();
    let (code, _, err) = portcullis(&["check", "-c", "tls.yaml"], d.path());
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("tls.yaml:") && err.contains(": tls.key: cannot load"),
        "{err}"
    );

    let (code, _, err) = portcullis(&["check", "--frobnicate"], d.path());
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");

    // PORTCULLIS_CONFIG is the default when -c is absent.
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check"])
        .current_dir(std::env::temp_dir())
        .env("PORTCULLIS_CONFIG", d.path().join("gateway.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn run_with_a_bad_config_exits_1_with_one_line() {
    let d = dir();
    std::fs::write(
        d.path().join("gateway.yaml"),
        with("", "  - match: { path: / }\n    upstream: app\n"),
    )
    .unwrap();
    let (code, _, err) = portcullis(&["run", "-c", "gateway.yaml"], d.path());
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("neither `auth:` nor `public: true`"), "{err}");
}

#[test]
fn the_reference_config_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let loaded = Config::load(&root.join("gateway.yaml")).expect("gateway.yaml is valid");
    assert!(loaded.config.routes.len() >= 3);
    let (code, out, err) = portcullis(&["check", "-c", "gateway.yaml"], root);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn certs_command_writes_a_usable_pair() {
    let d = tempfile::tempdir().unwrap();
    let (code, out, err) = portcullis(
        &["certs", "--out", "out", "--host", "gw.test", "--host", "10.0.0.1"],
        d.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let tls = portcullis::config::Tls {
        cert: d.path().join("out/gateway.crt"),
        key: d.path().join("out/gateway.key"),
        min_version: portcullis::config::TlsVersion::Tls12,
        hsts: None,
        self_signed_if_missing: false,
    };
    portcullis::tls::server_config(&tls).expect("the written pair loads");
}

#[test]
fn upstream_protocol_must_fit_the_target_scheme() {
    for (protocol, target, says) in [
        ("h2", "http://127.0.0.1:9000", "h2 is HTTP/2 over TLS"),
        ("h2c", "https://127.0.0.1:9000", "h2c is HTTP/2 over plain TCP"),
    ] {
        let yaml = format!(
            "{BASE}upstreams:\n  app:\n    targets: [{target}]\n    protocol: {protocol}\nroutes:\n{PUBLIC_ROUTE}"
        );
        let e = err(&yaml);
        let line = yaml.lines().position(|l| l.contains("protocol:")).unwrap() + 1;
        assert_eq!(e.position, Some((line, 15)), "{e}");
        assert!(
            e.field.as_deref() == Some("upstreams.app.protocol") && said(&e).contains(says),
            "{e}"
        );
    }
    let e = err(&format!(
        "{BASE}upstreams:\n  app:\n    targets: [http://127.0.0.1:9000]\n    protocol: http3\nroutes:\n{PUBLIC_ROUTE}"
    ));
    assert!(said(&e).contains("http3"), "{e}");
    let e = err(&format!(
        "{BASE}upstreams:\n  app:\n    targets: [http://127.0.0.1:9000]\n    max_connections: 0\nroutes:\n{PUBLIC_ROUTE}"
    ));
    assert!(
        said(&e).starts_with("upstreams.app.max_connections: must be at least 1"),
        "{e}"
    );
}

#[test]
fn warns_when_a_protected_exact_path_with_a_slash_falls_to_a_public_route() {
    let d = dir();
    let routes = "  - name: admin\n    match: { path_exact: /admin }\n    upstream: app\n    auth: {}\n  - name: site\n    match: { path: / }\n    upstream: app\n    public: true\n";
    let w = load(d.path(), &with(FILE_PROVIDER, routes))
        .unwrap()
        .warnings
        .join("\n");
    assert!(
        w.contains(r#"route "admin" protects "/admin" exactly, but "/admin/" falls to the public route "site""#),
        "{w}"
    );
    // A protected prefix, or a protected catch-all behind it, is fine.
    for routes in [
        "  - name: admin\n    match: { path: /admin }\n    upstream: app\n    auth: {}\n  - name: site\n    match: { path: / }\n    upstream: app\n    public: true\n",
        "  - name: admin\n    match: { path_exact: /admin }\n    upstream: app\n    auth: {}\n  - name: rest\n    match: { path: / }\n    upstream: app\n    auth: {}\n",
    ] {
        let w = load(d.path(), &with(FILE_PROVIDER, routes)).unwrap().warnings.join("\n");
        assert!(!w.contains("exactly"), "{w}");
    }
}

#[test]
fn browser_settings_are_validated() {
    let cases = [
        (
            "cors:\n  web:\n    allow_origins: [\"*\"]\n    allow_credentials: true\n",
            "  - name: r\n    match: { path: / }\n    upstream: app\n    public: true\n    cors: web\n",
            "cors.web.allow_credentials: cannot be true with the origin \"*\"",
        ),
        (
            "cors:\n  web:\n    allow_origins: [\"https://*.*.example.com\"]\n",
            "  - name: r\n    match: { path: / }\n    upstream: app\n    public: true\n",
            "cors.web.allow_origins: \"https://*.*.example.com\"",
        ),
        (
            "cors:\n  web:\n    allow_origins: [\"app.example.com\"]\n",
            "  - name: r\n    match: { path: / }\n    upstream: app\n    public: true\n",
            "is not an origin",
        ),
        (
            "",
            "  - name: r\n    match: { path: / }\n    upstream: app\n    public: true\n    cors: web\n",
            "routes[0] (r).cors: no CORS policy named \"web\"",
        ),
        (
            "",
            "  - name: r\n    match: { path: / }\n    upstream: app\n    auth: { token_sources: [header, \"form:x\"] }\n",
            "routes[0] (r).auth.token_sources: \"form:x\" is not a token source",
        ),
        (
            "",
            "  - name: r\n    match: { path: / }\n    upstream: app\n    public: true\n    websocket: { idle_timeout: 0s }\n",
            "routes[0] (r).websocket.idle_timeout: must be longer than 0",
        ),
    ];
    for (top, routes, says) in cases {
        let yaml = format!("{}{top}", with(FILE_PROVIDER, routes));
        let e = err(&yaml);
        assert!(said(&e).contains(says), "{e}\nwanted: {says}");
        assert!(e.position.is_some(), "{e}");
    }
    // WebSockets need an HTTP/1.1 upstream.
    let yaml = format!(
        "{BASE}upstreams:\n  app:\n    targets: [http://127.0.0.1:9000]\n    protocol: h2c\nroutes:\n  - name: r\n    match: {{ path: / }}\n    upstream: app\n    public: true\n    websocket: true\n"
    );
    assert!(said(&err(&yaml)).contains("routes[0] (r).websocket: WebSockets go upstream as HTTP/1.1"));
    // A query token source loads, with a warning.
    let d = dir();
    let routes = "  - name: r\n    match: { path: / }\n    upstream: app\n    auth: { token_sources: [header, \"query:access_token\", \"cookie:session\"] }\n    websocket: true\n";
    let w = load(d.path(), &with(FILE_PROVIDER, routes))
        .unwrap()
        .warnings
        .join("\n");
    assert!(
        w.contains("tokens in the query (access_token) end up in browser histories"),
        "{w}"
    );
}

#[test]
fn shared_state_settings_are_validated() {
    let public = "  - name: r\n    match: { path: / }\n    upstream: app\n    public: true\n    rate_limits: [p]\n";
    let cases = [
        (
            "rate_limits:\n  p:\n    key: subject\n    rate: 10/s\n",
            public,
            "routes[0] (r).rate_limits: \"p\" is keyed by the token, but the route is public",
        ),
        (
            "rate_limits:\n  p:\n    key: \"claim:tenant\"\n    rate: 10/s\n",
            public,
            "is keyed by the token",
        ),
        (
            "rate_limits:\n  p:\n    key: client_ip\n    rate: 10/d\n",
            public,
            "rate_limits.p.rate: \"10/d\" has an unknown unit",
        ),
        (
            "rate_limits:\n  p:\n    key: client_ip\n    rate: 10/s\n    burst: 0\n",
            public,
            "rate_limits.p.burst: must be at least 1",
        ),
        (
            "rate_limits:\n  p:\n    key: cookie\n    rate: 10/s\n",
            public,
            "rate_limits.p.key: \"cookie\" is not a key",
        ),
        (
            "rate_limits:\n  p:\n    key: client_ip\n    rate: 10/s\n    store: redis\n",
            public,
            "rate_limits.p.store: redis needs a `store:` section",
        ),
        (
            "rate_limits:\n  p:\n    key: client_ip\n    rate: 10/s\n    on_store_error: maybe\n",
            public,
            "on_store_error: \"maybe\" is neither allow nor deny",
        ),
        (
            "",
            public,
            "routes[0] (r).rate_limits: no rate-limit policy named \"p\"",
        ),
        (
            "revocation: { store: redis }\n",
            PUBLIC_ROUTE,
            "revocation.store: redis needs a `store:` section",
        ),
        (
            "store:\n  redis: http://127.0.0.1:6379\n",
            PUBLIC_ROUTE,
            "store.redis: \"http://127.0.0.1:6379\" must start with redis://",
        ),
        (
            "store:\n  redis: redis://:secret@127.0.0.1:6379\n",
            PUBLIC_ROUTE,
            "store.redis: the URL carries credentials",
        ),
        (
            "store:\n  redis: redis://127.0.0.1:6379\n  password_env: PORTCULLIS_TEST_UNSET_VARIABLE\n",
            PUBLIC_ROUTE,
            "store.password_env: the environment variable PORTCULLIS_TEST_UNSET_VARIABLE is not set",
        ),
    ];
    for (top, routes, says) in cases {
        let yaml = format!("{}{top}", with(FILE_PROVIDER, routes));
        let e = err(&yaml);
        assert!(said(&e).contains(says), "{e}\nwanted: {says}");
    }
    let d = dir();
    let ok = "store:\n  redis: redis://10.0.0.5:6379/0\nrate_limits:\n  p:\n    key: client_ip\n    rate: 10/s\n    store: redis\nrevocation: { store: redis }\n";
    let loaded = load(d.path(), &format!("{}{ok}", with(FILE_PROVIDER, public))).unwrap();
    assert!(
        loaded.warnings.join("\n").contains("use rediss://"),
        "{:?}",
        loaded.warnings
    );
    assert_eq!(
        loaded.config.rate_limits[0].interval,
        std::time::Duration::from_millis(100)
    );
}

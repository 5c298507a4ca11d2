//! Configuration validation (docs/configuration.md) and `portcullis check` (README, Commands).

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis::config::{Config, ConfigError, Loaded};

const BASE: &str = r#"listen:
  https: 127.0.0.1:8443
tls:
  cert: cert.pem
  key: key.pem
"#;

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

/// A configuration and every warning `check` would print for it (the route
/// table's own lints included).
fn load(d: &Path, yaml: &str) -> Result<Loaded, ConfigError> {
    let mut loaded = Config::from_yaml(yaml, &d.join("gateway.yaml"))?;
    let lints = portcullis::routing::overlap::lint(&loaded.config.routes);
    loaded.warnings.extend(lints);
    Ok(loaded)
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
    format!(
        r#"{BASE}providers:
{providers}upstreams:
  app:
    targets: [http://127.0.0.1:9000]
routes:
{routes}"#
    )
}

const PUBLIC_ROUTE: &str = r#"  - name: r
    match: { path: / }
    upstream: app
    public: true
"#;
const FILE_PROVIDER: &str = r#"  corp:
    issuer: https://id.example.com/
    audiences: [api]
    jwks_file: jwks.json
"#;

#[test]
fn a_full_config_loads() {
    let d = dir();
    let yaml = with(
        FILE_PROVIDER,
        r#"  - name: read
    match: { path: /api/, methods: [get, HEAD], host: API.example.com:443 }
    upstream: app
    strip_prefix: /api
    auth:
      scopes: [orders:read]
  - name: h
    match: { path_exact: /health }
    upstream: app
    public: true
"#,
    );
    let loaded = load(d.path(), &yaml).unwrap();
    let c = &loaded.config;
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].host.as_deref(), Some("api.example.com"));
    assert_eq!(c.routes[0].methods.as_ref().unwrap().len(), 2);
    assert_eq!(c.routes[0].path, portcullis::config::PathMatch::Prefix("/api".into()));
    assert_eq!(c.limits.max_body_bytes, 10 * 1024 * 1024, "defaults apply");
    // Relative paths resolve against the config file's directory.
    assert_eq!(c.tls.as_ref().unwrap().cert, d.path().join("cert.pem"));
    assert_eq!(
        c.providers[0].keys,
        portcullis::config::KeySource::JwksFile(d.path().join("jwks.json"))
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn yaml_and_schema_errors_carry_line_and_column() {
    let e = err(&format!(
        r#"{BASE}upstreams:
  app:
    targets: [http://127.0.0.1:9000]
    conect_timeout: 2s
routes: []
"#
    ));
    assert_eq!(e.position.map(|p| p.0), Some(9), "{e}");
    assert!(said(&e).contains("unknown field `conect_timeout`"), "{e}");
    let shown = e.to_string();
    assert!(shown.contains("gateway.yaml:9:"), "{shown}");

    let e = err(&format!(
        r#"{BASE}limits:
  idle_timeout: 30x
{}"#,
        &with("", PUBLIC_ROUTE)[BASE.len()..]
    ));
    assert_eq!(e.position.map(|p| p.0), Some(7), "{e}");
    assert!(said(&e).contains("invalid duration"), "{e}");

    let e = err("listen: [\n");
    assert!(e.position.is_some(), "{e}");

    let e = err(&with("", PUBLIC_ROUTE).replace("127.0.0.1:8443", "localhost"));
    assert!(said(&e).contains("invalid listen address"), "{e}");
}

/// A name holding `.`, `(` or `[` is one key of the path: the error is placed
/// at the field inside that provider, not at its parent.
#[test]
fn names_with_dots_are_located_as_one_key() {
    let yaml = with(
        "  corp.v2 (eu) [old]:\n    issuer: https://id.example.com/\n    secret_file: no-such-secret\n",
        PUBLIC_ROUTE,
    );
    let e = err(&yaml);
    let line = yaml.lines().position(|l| l.contains("no-such-secret")).unwrap() + 1;
    assert_eq!(e.position, Some((line, 18)), "{e}");
    assert!(
        e.to_string().contains(&format!(
            "gateway.yaml:{line}:18: providers.corp.v2 (eu) [old].secret_file: cannot read"
        )),
        "{e}"
    );
}

/// Errors found after parsing (a name that does not resolve, a key file that
/// does not parse) point at the field too, so an editor can jump there.
#[test]
fn validation_errors_point_at_the_field() {
    let yaml = with(
        FILE_PROVIDER,
        r#"  - name: a
    match: { path: / }
    upstream: app
    public: true
  - name: b
    match: { path: /b }
    upstream: nope
    public: true
"#,
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
        r#"  corp:
    issuer: https://id.example.com/
    audiences: [api]
    public_key_file: not-a-key.pem
"#,
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
        (
            with(
                "",
                r#"  - match: { path: / }
    upstream: app
"#,
            ),
            "neither `auth:` nor `public: true`",
        ),
        (
            with(
                FILE_PROVIDER,
                r#"  - match: { path: / }
    upstream: app
    public: true
    auth: {}
"#,
            ),
            "both `auth` and `public: true`",
        ),
        (
            with(
                "",
                r#"  - match: { path: / }
    upstream: nope
    public: true
"#,
            ),
            "no upstream named \"nope\"",
        ),
        (
            with(
                FILE_PROVIDER,
                r#"  - match: { path: / }
    upstream: app
    auth: { providers: [other] }
"#,
            ),
            "no provider named \"other\"",
        ),
        (
            with(
                "",
                r#"  - match: { path: / }
    upstream: app
    auth: {}
"#,
            ),
            "no providers are configured",
        ),
        (
            with(
                r#"  p:
    issuer: https://a/
"#,
                PUBLIC_ROUTE,
            ),
            "no key source",
        ),
        (
            with(
                r#"  p:
    issuer: https://a/
    jwks_file: jwks.json
    jwks_uri: https://a/jwks
"#,
                PUBLIC_ROUTE,
            ),
            "more than one key source",
        ),
        (
            with(
                r#"  p:
    issuer: https://a/
    jwks_file: jwks.json
    algorithms: [RS256, none]
"#,
                PUBLIC_ROUTE,
            ),
            "`none` is never allowed",
        ),
        (
            with(
                r#"  p:
    issuer: https://a/
    jwks_file: jwks.json
    algorithms: [NONE]
"#,
                PUBLIC_ROUTE,
            ),
            "`none` is never allowed",
        ),
        (
            with(
                r#"  p:
    issuer: https://a/
    jwks_file: jwks.json
    algorithms: [RS256, HS256]
"#,
                PUBLIC_ROUTE,
            ),
            "mixes HMAC",
        ),
        (
            with(
                r#"  p:
    issuer: https://a/
    jwks_file: jwks.json
    algorithms: [HS256]
"#,
                PUBLIC_ROUTE,
            ),
            "does not fit the key source",
        ),
        (
            with(
                r#"  p:
    issuer: https://a/
    jwks_file: jwks.json
    algorithms: [XX999]
"#,
                PUBLIC_ROUTE,
            ),
            "unknown algorithm",
        ),
        (
            with(
                r#"  a:
    jwks_file: jwks.json
  b:
    jwks_file: jwks.json
"#,
                PUBLIC_ROUTE,
            ),
            "only one provider may leave out `issuer`",
        ),
        (
            with(
                r#"  a:
    issuer: https://a/
    jwks_file: jwks.json
  b:
    issuer: https://a/
    jwks_file: jwks.json
"#,
                PUBLIC_ROUTE,
            ),
            "cannot share an issuer",
        ),
        (
            with(
                r#"  a:
    issuer: https://a/
    jwks_file: missing.json
"#,
                PUBLIC_ROUTE,
            ),
            "missing.json",
        ),
        (
            with(
                r#"  a:
    secret_env: PORTCULLIS_TEST_SURELY_UNSET
"#,
                PUBLIC_ROUTE,
            ),
            "PORTCULLIS_TEST_SURELY_UNSET is not set",
        ),
        (
            with(
                r#"  a:
    issuer: https://a/
    jwks_uri: http://keys.example.com/jwks
"#,
                PUBLIC_ROUTE,
            ),
            "plain http",
        ),
        (
            with(
                r#"  a:
    discovery: true
"#,
                PUBLIC_ROUTE,
            ),
            "discovery needs an `issuer`",
        ),
        (
            with(
                "",
                r#"  - match: { path: /a, path_exact: /a }
    upstream: app
    public: true
"#,
            ),
            "exactly one of `path`",
        ),
        (
            with(
                "",
                r#"  - match: { path: /a/../b }
    upstream: app
    public: true
"#,
            ),
            "not in normal form",
        ),
        (
            with(
                "",
                r#"  - match: { path: /a }
    upstream: app
    strip_prefix: /b
    public: true
"#,
            ),
            "is not a leading part",
        ),
        (
            with(
                "",
                r#"  - match: { path: /a, methods: ["G T"] }
    upstream: app
    public: true
"#,
            ),
            "not an HTTP method",
        ),
        (
            with(
                "",
                r#"  - name: x
    match: { path: /a }
    upstream: app
    public: true
  - name: x
    match: { path: /b }
    upstream: app
    public: true
"#,
            ),
            "used twice",
        ),
        (
            format!(
                r#"{BASE}upstreams:
  app:
    targets: []
routes:
{PUBLIC_ROUTE}"#
            ),
            "the list is empty",
        ),
        (
            format!(
                r#"{BASE}upstreams:
  app:
    targets: [ftp://x:1]
routes:
{PUBLIC_ROUTE}"#
            ),
            "not a valid target",
        ),
        (
            format!(
                r#"{BASE}upstreams:
  app:
    targets: [http://x:1/base]
routes:
{PUBLIC_ROUTE}"#
            ),
            "has a path",
        ),
        (
            format!(
                r#"{BASE}identity:
  subject_header: Authorization
upstreams:
  app:
    targets: [http://x:1]
routes:
{PUBLIC_ROUTE}"#
            ),
            "controls",
        ),
        (
            format!(
                r#"{BASE}upstreams:
  app:
    targets: [http://x:1]
routes: []
"#
            ),
            "no routes",
        ),
        (
            format!(
                r#"listen:
  https: 127.0.0.1:8443
  http: 127.0.0.1:8443
{}"#,
                &with("", PUBLIC_ROUTE)[r#"listen:
  https: 127.0.0.1:8443
"#
                .len()..]
            ),
            "already used",
        ),
    ];
    for (yaml, want) in cases {
        let e = err(&yaml);
        assert!(
            said(&e).contains(want),
            r#"wanted {want:?}, got: {e}
--- yaml:
{yaml}"#
        );
    }
}

#[test]
fn warnings_for_shadowed_routes_plain_http_keys_and_missing_audiences() {
    let d = dir();
    let yaml = with(
        r#"  a:
    issuer: http://127.0.0.1:5556/
    jwks_uri: http://127.0.0.1:5556/keys
"#,
        r#"  - name: all-api
    match: { path: /api }
    upstream: app
    public: true
  - name: orders
    match: { path: /api/orders, methods: [GET] }
    upstream: app
    public: true
  - name: get-only
    match: { path: /x, methods: [GET] }
    upstream: app
    public: true
  - name: any-x
    match: { path_exact: /x/y }
    upstream: app
    public: true
"#,
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
    let yaml = with(
        r#"  a:
    secret_file: short.secret
"#,
        PUBLIC_ROUTE,
    );
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
        r#"  - name: orders
    match: { path: /api/orders }
    upstream: app
    auth: { scopes: [orders:read] }
"#,
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
        r#"{}cors:
  web:
    allow_origins: [https://app.example.com]
"#,
        with(
            FILE_PROVIDER,
            r#"  - name: chat
    match: { path: /ws }
    upstream: app
    auth: { token_sources: [header, "cookie:s"] }
    websocket: true
    cors: web
"#
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
    std::fs::write(
        &bad_path,
        good.replace(
            "upstream: app",
            r#"upstream: app
    bogus: 1"#,
        ),
    )
    .unwrap();
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
            r#"jwks_file: jwks.json
    algorithms: [RS256]"#,
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
        with(
            "",
            r#"  - match: { path: / }
    upstream: app
"#,
        ),
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
            r#"{BASE}upstreams:
  app:
    targets: [{target}]
    protocol: {protocol}
routes:
{PUBLIC_ROUTE}"#
        );
        let e = err(&yaml);
        let line = yaml.lines().position(|l| l.contains("protocol:")).unwrap() + 1;
        assert_eq!(e.position, Some((line, 15)), "{e}");
        assert!(
            e.field.as_ref().map(ToString::to_string).as_deref() == Some("upstreams.app.protocol")
                && said(&e).contains(says),
            "{e}"
        );
    }
    let e = err(&format!(
        r#"{BASE}upstreams:
  app:
    targets: [http://127.0.0.1:9000]
    protocol: http3
routes:
{PUBLIC_ROUTE}"#
    ));
    assert!(said(&e).contains("http3"), "{e}");
    let e = err(&format!(
        r#"{BASE}upstreams:
  app:
    targets: [http://127.0.0.1:9000]
    max_connections: 0
routes:
{PUBLIC_ROUTE}"#
    ));
    assert!(
        said(&e).starts_with("upstreams.app.max_connections: must be at least 1"),
        "{e}"
    );
}

#[test]
fn warns_when_a_protected_exact_path_with_a_slash_falls_to_a_public_route() {
    let d = dir();
    let routes = r#"  - name: admin
    match: { path_exact: /admin }
    upstream: app
    auth: {}
  - name: site
    match: { path: / }
    upstream: app
    public: true
"#;
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
        r#"  - name: admin
    match: { path: /admin }
    upstream: app
    auth: {}
  - name: site
    match: { path: / }
    upstream: app
    public: true
"#,
        r#"  - name: admin
    match: { path_exact: /admin }
    upstream: app
    auth: {}
  - name: rest
    match: { path: / }
    upstream: app
    auth: {}
"#,
    ] {
        let w = load(d.path(), &with(FILE_PROVIDER, routes))
            .unwrap()
            .warnings
            .join("\n");
        assert!(!w.contains("exactly"), "{w}");
    }
}

#[test]
fn browser_settings_are_validated() {
    let cases = [
        (
            r#"cors:
  web:
    allow_origins: ["*"]
    allow_credentials: true
"#,
            r#"  - name: r
    match: { path: / }
    upstream: app
    public: true
    cors: web
"#,
            "cors.web.allow_credentials: cannot be true with the origin \"*\"",
        ),
        (
            r#"cors:
  web:
    allow_origins: ["https://*.*.example.com"]
"#,
            r#"  - name: r
    match: { path: / }
    upstream: app
    public: true
"#,
            "cors.web.allow_origins: \"https://*.*.example.com\"",
        ),
        (
            r#"cors:
  web:
    allow_origins: ["app.example.com"]
"#,
            r#"  - name: r
    match: { path: / }
    upstream: app
    public: true
"#,
            "is not an origin",
        ),
        (
            "",
            r#"  - name: r
    match: { path: / }
    upstream: app
    public: true
    cors: web
"#,
            "routes[0] (r).cors: no CORS policy named \"web\"",
        ),
        (
            "",
            r#"  - name: r
    match: { path: / }
    upstream: app
    auth: { token_sources: [header, "form:x"] }
"#,
            "routes[0] (r).auth.token_sources: \"form:x\" is not a token source",
        ),
        (
            "",
            r#"  - name: r
    match: { path: / }
    upstream: app
    public: true
    websocket: { idle_timeout: 0s }
"#,
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
        r#"{BASE}upstreams:
  app:
    targets: [http://127.0.0.1:9000]
    protocol: h2c
routes:
  - name: r
    match: {{ path: / }}
    upstream: app
    public: true
    websocket: true
"#
    );
    assert!(said(&err(&yaml)).contains("routes[0] (r).websocket: WebSockets go upstream as HTTP/1.1"));
    // A query token source loads, with a warning.
    let d = dir();
    let routes = r#"  - name: r
    match: { path: / }
    upstream: app
    auth: { token_sources: [header, "query:access_token", "cookie:session"] }
    websocket: true
"#;
    let w = load(d.path(), &with(FILE_PROVIDER, routes))
        .unwrap()
        .warnings
        .join("\n");
    assert!(
        w.contains("tokens in the query (access_token) end up in browser histories"),
        "{w}"
    );
    // A cookie token source behind a "*" CORS policy: a warning (the cookie is
    // never accepted through "*"); a policy that lists its origins: none.
    for (origins, warned) in [(r#"["*"]"#, true), ("[https://app.example.com]", false)] {
        let yaml = format!(
            "{}cors:\n  web:\n    allow_origins: {origins}\n",
            with(
                FILE_PROVIDER,
                r#"  - name: r
    match: { path: / }
    upstream: app
    auth: { token_sources: [header, "cookie:session"] }
    cors: web
"#
            )
        );
        let w = load(d.path(), &yaml).unwrap().warnings.join("\n");
        assert_eq!(
            w.contains(r#"route "r" reads a token from cookie:session and its CORS policy "web" allows "*""#),
            warned,
            "{origins}: {w}"
        );
    }
}

#[test]
fn shared_state_settings_are_validated() {
    let public = r#"  - name: r
    match: { path: / }
    upstream: app
    public: true
    rate_limits: [p]
"#;
    let cases = [
        (
            r#"rate_limits:
  p:
    key: subject
    rate: 10/s
"#,
            public,
            "routes[0] (r).rate_limits: \"p\" is keyed by the token, but the route is public",
        ),
        (
            r#"rate_limits:
  p:
    key: "claim:tenant"
    rate: 10/s
"#,
            public,
            "is keyed by the token",
        ),
        (
            r#"rate_limits:
  p:
    key: client_ip
    rate: 10/d
"#,
            public,
            "rate_limits.p.rate: \"10/d\" has an unknown unit",
        ),
        (
            r#"rate_limits:
  p:
    key: client_ip
    rate: 10/s
    burst: 0
"#,
            public,
            "rate_limits.p.burst: must be at least 1",
        ),
        (
            r#"rate_limits:
  p:
    key: cookie
    rate: 10/s
"#,
            public,
            "rate_limits.p.key: \"cookie\" is not a key",
        ),
        (
            r#"rate_limits:
  p:
    key: client_ip
    rate: 10/s
    store: redis
"#,
            public,
            "rate_limits.p.store: redis needs a `store:` section",
        ),
        (
            r#"rate_limits:
  p:
    key: client_ip
    rate: 10/s
    on_store_error: maybe
"#,
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
            r#"store:
  redis: http://127.0.0.1:6379
"#,
            PUBLIC_ROUTE,
            "store.redis: \"http://127.0.0.1:6379\" must start with redis://",
        ),
        (
            r#"store:
  redis: redis://:secret@127.0.0.1:6379
"#,
            PUBLIC_ROUTE,
            "store.redis: the URL carries credentials",
        ),
        (
            r#"store:
  redis: redis://127.0.0.1:6379
  password_env: PORTCULLIS_TEST_UNSET_VARIABLE
"#,
            PUBLIC_ROUTE,
            "store.password_env: the environment variable PORTCULLIS_TEST_UNSET_VARIABLE is not set",
        ),
        (
            r#"store:
  redis: redis://127.0.0.1:6379
  ca_file: cert.pem
"#,
            PUBLIC_ROUTE,
            "store.ca_file: applies to TLS only; write the URL as rediss://",
        ),
        (
            r#"store:
  redis: rediss://localhost:6380
  ca_file: missing-ca.pem
"#,
            PUBLIC_ROUTE,
            "store.ca_file: cannot read",
        ),
    ];
    for (top, routes, says) in cases {
        let yaml = format!("{}{top}", with(FILE_PROVIDER, routes));
        let e = err(&yaml);
        assert!(said(&e).contains(says), "{e}\nwanted: {says}");
    }
    let d = dir();
    let ok = r#"store:
  redis: redis://10.0.0.5:6379/0
rate_limits:
  p:
    key: client_ip
    rate: 10/s
    store: redis
revocation: { store: redis }
"#;
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

/// `check` and `explain` validate a `store:` section without connecting to
/// Redis (the systemd unit runs `check` before every start) and never panic.
#[test]
fn check_and_explain_never_connect_to_the_store() {
    let d = dir();
    // Something listens where the store is: it must see no connection at all.
    let redis = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    redis.set_nonblocking(true).unwrap();
    let port = redis.local_addr().unwrap().port();
    let yaml = format!(
        r#"{}store:
  redis: redis://127.0.0.1:{port}/0
  timeout: 100ms
rate_limits:
  per-user: {{ key: subject, rate: 10/s, store: redis }}
revocation: {{ store: redis }}
"#,
        with(
            FILE_PROVIDER,
            r#"  - name: orders
    match: { path: /api/orders }
    upstream: app
    auth: {}
    rate_limits: [per-user]
  - name: health
    match: { path_exact: /health }
    upstream: app
    public: true
"#
        )
    );
    std::fs::write(d.path().join("gateway.yaml"), &yaml).unwrap();
    let (code, out, err) = portcullis(&["check"], d.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("orders"), "{out}");
    let (code, out, err) = portcullis(&["explain", "GET", "https://localhost/health"], d.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("forward to app"), "{out}");
    let (code, out, err) = portcullis(&["explain", "GET", "https://localhost/api/orders"], d.path());
    assert_eq!(code, 1, "{out}{err}");
    for text in [&out, &err] {
        assert!(!text.contains("panicked") && !text.contains("reactor"), "{text}");
    }
    match redis.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("check or explain connected to the store: {other:?}"),
    }

    // A store section that cannot work is still one clear line and exit 1.
    std::fs::write(
        d.path().join("bad-store.yaml"),
        yaml.replace(
            "  timeout: 100ms\n",
            "  timeout: 100ms\n  password_env: PORTCULLIS_TEST_UNSET_PASSWORD\n",
        ),
    )
    .unwrap();
    let (code, _, err) = portcullis(&["check", "-c", "bad-store.yaml"], d.path());
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("store.password_env") && err.contains("PORTCULLIS_TEST_UNSET_PASSWORD"),
        "{err}"
    );
}

/// `POST /revoke` on a non-loopback admin address without `admin.token_file`
/// is a warning; the token file must hold a usable secret.
#[test]
fn an_open_revoke_endpoint_is_warned_about() {
    let d = dir();
    let base = with(
        FILE_PROVIDER,
        "  - { name: r, match: { path: / }, upstream: app, auth: {} }\n",
    );
    let shared = "store:\n  redis: redis://127.0.0.1:6379/0\nrevocation: { store: redis }\n";
    let on = |admin: &str, extra: &str| {
        format!("{base}{shared}{extra}").replacen(
            "  https: 127.0.0.1:8443\n",
            &format!("  https: 127.0.0.1:8443\n  admin: {admin}\n"),
            1,
        )
    };
    let warned = |yaml: &str| {
        load(d.path(), yaml)
            .unwrap()
            .warnings
            .iter()
            .any(|w| w.contains("POST /revoke is reachable on") && w.contains("admin.token_file"))
    };
    assert!(warned(&on("0.0.0.0:9901", "")));
    assert!(!warned(&on("127.0.0.1:9901", "")));
    std::fs::write(d.path().join("admin.token"), "0123456789abcdef0123\n").unwrap();
    assert!(!warned(&on("0.0.0.0:9901", "admin:\n  token_file: admin.token\n")));
    std::fs::write(d.path().join("short.token"), "short\n").unwrap();
    let e = load(d.path(), &on("0.0.0.0:9901", "admin:\n  token_file: short.token\n")).unwrap_err();
    assert!(
        said(&e).contains("admin.token_file: the secret must be at least 16"),
        "{}",
        said(&e)
    );
    let e = load(d.path(), &on("0.0.0.0:9901", "admin:\n  token_file: missing.token\n")).unwrap_err();
    assert!(said(&e).starts_with("admin.token_file"), "{}", said(&e));
}

/// `auth.claims` and `source_ips` are checked at load, each error at the
/// condition's own line: unknown operators, two operators in one condition,
/// pointers that do not parse, `{path.NAME}` the template lacks, depth.
#[test]
fn claims_conditions_are_validated_where_they_are_written() {
    let route = |claims: &str| {
        with(
            FILE_PROVIDER,
            &format!(
                r#"  - name: r
    match: {{ path_template: "/orgs/{{org}}" }}
    upstream: app
    auth:
      claims:
{claims}"#
            ),
        )
    };
    let cases = [
        ("        - { claim: /org, equal: acme }\n", "unknown field `equal`"),
        (
            "        - { claim: /org, equals: acme, prefix: a }\n",
            "routes[0] (r).auth.claims[0]: one condition per entry",
        ),
        ("        - { equals: acme }\n", "routes[0] (r).auth.claims[0]: an operator needs `claim`"),
        ("        - { claim: /org }\n", "routes[0] (r).auth.claims[0]: `claim` needs an operator"),
        (
            "        - { claim: /org, any_of: [{ claim: /x, exists: true }] }\n",
            "a combinator takes no `claim`",
        ),
        ("        - { claim: /a~2b, exists: true }\n", "routes[0] (r).auth.claims[0].claim: \"/a~2b\" has a '~'"),
        (
            "        - { claim: /org, equals: \"{path.tenant}\" }\n",
            "routes[0] (r).auth.claims[0].equals: {path.tenant}: the template /orgs/{org} has no {tenant} parameter",
        ),
        (
            "        - any_of: [{ claim: /x, in: [\"{path.nope}\"] }]\n",
            "routes[0] (r).auth.claims[0].any_of[0].in: {path.nope}",
        ),
        ("        - { claim: /org, equals: [acme] }\n", "not a list or a map"),
        ("        - { claim: /org, contains_any: [] }\n", "routes[0] (r).auth.claims[0].contains_any: the list is empty"),
        ("        - any_of: []\n", "routes[0] (r).auth.claims[0].any_of: the list is empty"),
        (
            "        - not: { not: { not: { not: { not: { not: { not: { not: { claim: /x, exists: true } } } } } } } }\n",
            "nest more than 8 deep",
        ),
    ];
    for (claims, want) in cases {
        let yaml = route(claims);
        let e = err(&yaml);
        let text = format!("{}: {}", said(&e), e);
        assert!(text.contains(want), "{claims}: {text}");
        let line = yaml.lines().position(|l| l.contains("        - ")).unwrap() + 1;
        assert_eq!(e.position.map(|p| p.0), Some(line), "{claims}: {e}");
    }
    // Eight deep is fine, and so are the documented shapes.
    let d = dir();
    let ok = route(
        r#"        - { claim: org, equals: "{path.org}" }
        - { claim: /realm_access/roles, contains: orders-reader }
        - { claim: "https://example.com/org", in: [acme, "{host}"] }
        - any_of:
            - { claim: /email_verified, equals: true }
            - { claim: /amr, contains_any: [mfa, hwk] }
        - not: { claim: /act, exists: true }
        - { claim: /n, equals: null }
        - not: { not: { not: { not: { not: { not: { not: { claim: /x, exists: true } } } } } } }
"#,
    );
    let loaded = load(d.path(), &ok).unwrap_or_else(|e| panic!("{e}"));
    let portcullis::config::Access::Protected(rule) = &loaded.config.routes[0].access else {
        panic!("protected");
    };
    assert_eq!(rule.claims.len(), 7);
    assert!(rule.claims_read_path);
    // `{path.NAME}` needs a template; source_ips take addresses and CIDRs.
    let yaml = with(
        FILE_PROVIDER,
        "  - name: r\n    match: { path: /x }\n    upstream: app\n    auth: { claims: [{ claim: org, equals: \"{path.org}\" }] }\n",
    );
    assert!(said(&err(&yaml)).contains("{path.org} needs a route matched by `path_template`"));
    for (ips, want) in [
        ("[10.0.0.1/8]", "has host bits set"),
        ("[nope]", "is not an IP address or CIDR range"),
        ("[]", "the list is empty"),
        ("[\"::1/129\"]", "the prefix length must be 0 to 128"),
    ] {
        let yaml = with(
            FILE_PROVIDER,
            &format!(
                "  - name: r\n    match: {{ path: /x }}\n    upstream: app\n    public: true\n    source_ips: {ips}\n"
            ),
        );
        let e = said(&err(&yaml));
        assert!(e.contains("routes[0] (r).source_ips") && e.contains(want), "{ips}: {e}");
    }
}

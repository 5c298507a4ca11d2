//! The `token` and `demo` commands, run as the built binary (README, Commands).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use support::tokens::KeyPair;
use support::*;

fn portcullis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

fn decode(token: &str, key: &DecodingKey, alg: Algorithm) -> serde_json::Value {
    let mut v = Validation::new(alg);
    v.set_audience(&["api"]);
    jsonwebtoken::decode::<serde_json::Value>(token, key, &v)
        .unwrap()
        .claims
}

#[test]
fn token_command_signs_with_a_secret_or_a_key() {
    let out = portcullis()
        .args([
            "token",
            "--secret-env",
            "CLI_TEST_SECRET",
            "--sub",
            "bob",
            "--aud",
            "api",
            "--scope",
            "a b",
            "--ttl",
            "5m",
        ])
        .args(["--claim", "scopes=[\"x\",\"y\"]", "--claim", "team=blue"])
        .env("CLI_TEST_SECRET", "s3cret-s3cret-s3cret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let c = decode(
        token.trim(),
        &DecodingKey::from_secret(b"s3cret-s3cret-s3cret"),
        Algorithm::HS256,
    );
    assert_eq!(c["sub"], "bob");
    assert_eq!(c["scope"], "a b");
    assert_eq!(c["scopes"], serde_json::json!(["x", "y"]));
    assert_eq!(c["team"], "blue");
    let ttl = c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap();
    assert_eq!(ttl, 300);

    let dir = tempfile::tempdir().unwrap();
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let kp = KeyPair::generate(alg);
        let key_path = dir.path().join("key.pem");
        std::fs::write(&key_path, &kp.private_pem).unwrap();
        let out = portcullis()
            .args([
                "token",
                "--key",
                key_path.to_str().unwrap(),
                "--iss",
                "https://x/",
                "--aud",
                "api",
                "--kid",
                "k1",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{alg:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap();
        let header = jsonwebtoken::decode_header(token.trim()).unwrap();
        assert_eq!((header.alg, header.kid.as_deref()), (alg, Some("k1")));
        let key = match alg {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(kp.public_pem.as_bytes()).unwrap(),
            Algorithm::ES256 => DecodingKey::from_ec_pem(kp.public_pem.as_bytes()).unwrap(),
            _ => DecodingKey::from_ed_pem(kp.public_pem.as_bytes()).unwrap(),
        };
        assert_eq!(decode(token.trim(), &key, alg)["iss"], "https://x/");
    }

    // Errors are one line, never a panic.
    let out = portcullis()
        .args(["token", "--secret-env", "CLI_TEST_UNSET_VAR"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CLI_TEST_UNSET_VAR") && err.lines().count() == 1, "{err}");
}

/// The README's tour: `portcullis demo` prints tokens and curl lines that give
/// 200 / 401 / 403, and Ctrl-C stops it cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn demo_shows_200_401_403() {
    let mut child = portcullis()
        .args(["demo", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let lines = tokio::time::timeout(Duration::from_secs(20), lines)
        .await
        .expect("demo printed its tour")
        .unwrap();
    let find = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("no {prefix} in {lines:?}"))
    };
    let (valid, noscope) = (find("VALID="), find("NOSCOPE="));
    let port: u16 = lines
        .iter()
        .find_map(|l| l.split("https://127.0.0.1:").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .expect("port");
    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", child.id()));
    let cert_pem = std::fs::read(dir.join("gateway.crt")).unwrap();
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::from_pem_slice(&cert_pem).unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut c = Client::connect(addr, &cert, Proto::H1).await;
    let r = c
        .send(req(
            "GET",
            "/api/orders",
            &[("authorization", &format!("Bearer {valid}"))],
            "",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"x-auth-subject\": \"demo-user\""), "{}", r.text());
    c.send(req("GET", "/api/orders", &[], ""))
        .await
        .assert_error(401, "unauthorized");
    c.send(req(
        "GET",
        "/api/orders",
        &[("authorization", &format!("Bearer {noscope}"))],
        "",
    ))
    .await
    .assert_error(403, "insufficient_scope");

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!dir.exists(), "the demo removes its throwaway files");
}

/// `gateway.schema.json` is exactly what `portcullis schema` prints, so it
/// cannot drift from the types that parse the YAML; the reference
/// configuration names it on its first line.
#[test]
fn the_committed_schema_is_current() {
    let out = portcullis().arg("schema").output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(root.join("gateway.schema.json")).unwrap();
    assert!(
        printed == committed,
        "gateway.schema.json is stale: run `cargo run -- schema > gateway.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    // Unknown keys are errors in the schema too, and renamed fields keep their YAML names.
    let route = &schema["$defs"]["RawRoute"];
    assert_eq!(route["additionalProperties"], false);
    assert!(route["properties"]["match"].is_object());
    let yaml = std::fs::read_to_string(root.join("gateway.yaml")).unwrap();
    assert_eq!(
        yaml.lines().next(),
        Some("# yaml-language-server: $schema=gateway.schema.json")
    );
}

/// `gateway.test.schema.json` is what `portcullis schema --cases` prints, and
/// the reference configuration's own cases pass (as `.ci/run` also checks).
#[test]
fn the_case_schema_is_current_and_the_reference_cases_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = portcullis().args(["schema", "--cases"]).output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(root.join("gateway.test.schema.json")).unwrap();
    assert!(
        printed == committed,
        "gateway.test.schema.json is stale: run `cargo run -- schema --cases > gateway.test.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(schema["$defs"]["Expect"]["additionalProperties"], false);
    assert_eq!(schema["$defs"]["Expect"]["required"], serde_json::json!(["status"]));

    let dir = tempfile::tempdir().unwrap();
    for f in ["gateway.yaml", "gateway.test.yaml"] {
        std::fs::copy(root.join(f), dir.path().join(f)).unwrap();
    }
    let out = portcullis()
        .args(["test", "-c", "gateway.yaml", "gateway.test.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.lines().any(|l| l.ends_with(" passed, 0 failed")), "{text}");
    assert!(
        !text.contains("routes no case reached"),
        "every route of the reference has a case:\n{text}"
    );
}

#[test]
fn version_and_completions() {
    let out = portcullis().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef portcullis"),
        ("fish", "complete -c portcullis"),
    ] {
        let out = portcullis().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for sub in ["check", "explain", "import-openapi"] {
            assert!(script.contains(sub), "{shell} completes {sub}");
        }
    }
    let out = portcullis().args(["completions", "powershellx"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Text logs carry no colour codes when stderr is not a terminal (a file,
/// `docker logs`, the journal).
#[test]
fn text_logs_to_a_pipe_have_no_escape_codes() {
    let mut child = portcullis()
        .args(["demo", "--port", "0"])
        .env_remove("PORTCULLIS_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("the demo logs `listening`");
    assert!(line.contains("INFO") && !line.contains('\x1b'), "{line:?}");
}

/// `check` prints each warning on stderr as `warning: ...` and still
/// succeeds; `explain --token-env` reads the token from the environment,
/// decides with it, and prints no part of it.
#[test]
fn check_prints_warnings_and_explain_reads_the_token_from_the_environment() {
    let dir = GatewayDir::new();
    let secret = "a-cli-test-secret-of-32-bytes-or-more";
    std::fs::write(dir.path().join("secret"), secret).unwrap();
    let yaml = r#"listen:
  https: 127.0.0.1:8443
tls:
  cert: cert.pem
  key: key.pem
providers:
  app:
    secret_file: secret
    algorithms: [HS256]
upstreams:
  app:
    targets: [http://127.0.0.1:9000]
routes:
  - name: orders
    match: { path: /orders }
    upstream: app
    auth: { scopes: [orders:read] }
"#;
    std::fs::write(dir.path().join("gateway.yaml"), yaml).unwrap();
    let check = portcullis()
        .args(["check", "-c", "gateway.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("warning: providers.app: no `audiences`")),
        "{stderr}"
    );

    let token = support::tokens::hs_sign(
        Algorithm::HS256,
        secret.as_bytes(),
        &serde_json::json!({"sub": "erin", "scope": "orders:read", "exp": support::tokens::now() + 600}),
    );
    let explain = |scope_token: &str| {
        portcullis()
            .args([
                "explain",
                "-c",
                "gateway.yaml",
                "--token-env",
                "EXPLAIN_TOKEN",
                "GET",
                "https://localhost/orders",
            ])
            .env("EXPLAIN_TOKEN", scope_token)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = explain(&token);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("erin"), "the token's subject: {text}");
    let signature = token.rsplit('.').next().unwrap();
    assert!(!text.contains(signature) && !String::from_utf8_lossy(&out.stderr).contains(signature));
    let refused = explain("not-a-jwt");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("401"));
}

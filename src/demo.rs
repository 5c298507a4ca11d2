//! `portcullis demo`: a one-command tour. An echo upstream and the gateway on
//! loopback, a throwaway certificate and signing key, two tokens, and the curl
//! lines that show 200 / 401 / 403.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;

use crate::mint::{mint, pem_signing_key, TokenSpec};

const ISSUER: &str = "https://demo.portcullis.invalid/";
const AUDIENCE: &str = "demo-api";

/// The echo upstream: answers every request with what it received, so the
/// identity headers the gateway adds are visible in the curl output.
async fn echo(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-"))
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let body = serde_json::json!({
        "upstream": "echo",
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

async fn start_echo() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(echo))
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The first free port among `preferred`, else an ephemeral one.
/// `preferred` when it is free, else 0 (the gateway binds any free port and
/// the tour, printed once it listens, names the port it got).
fn pick_port(preferred: u16) -> u16 {
    match std::net::TcpListener::bind(("127.0.0.1", preferred)) {
        Ok(_) => preferred,
        Err(_) => 0,
    }
}

fn write_files(dir: &Path, upstream: SocketAddr, port: u16) -> Result<(String, String), String> {
    let io = |e: std::io::Error| format!("cannot write demo files in {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    let (cert, key) = crate::tls::self_signed(&crate::tls::dev_hosts())?;
    crate::tls::write_pair(&dir.join("gateway.crt"), &dir.join("gateway.key"), &cert, &key).map_err(io)?;
    let signing = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("issuer.pub.pem"), signing.public_key_pem()).map_err(io)?;
    let config = format!(
        r#"# Written by `portcullis demo`; deleted when it exits.
listen:
  https: 127.0.0.1:{port}
tls:
  cert: gateway.crt
  key: gateway.key
providers:
  demo:
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    public_key_file: issuer.pub.pem
    algorithms: [ES256]
upstreams:
  echo:
    targets: [http://{upstream}]
routes:
  - name: orders
    match: {{ path: /api/orders }}
    upstream: echo
    auth: {{ scopes: [orders:read] }}
  - name: health
    match: {{ path_exact: /health }}
    upstream: echo
    public: true
"#
    );
    std::fs::write(dir.join("gateway.yaml"), config).map_err(io)?;
    let key = pem_signing_key(Algorithm::ES256, signing.serialize_pem().as_bytes())?;
    let spec = |scope: &str| TokenSpec {
        iss: Some(ISSUER.into()),
        aud: Some(AUDIENCE.into()),
        sub: Some("demo-user".into()),
        scope: Some(scope.into()),
        ttl: Duration::from_secs(3600),
        ..TokenSpec::default()
    };
    Ok((
        mint(Algorithm::ES256, &key, &spec("orders:read profile"))?,
        mint(Algorithm::ES256, &key, &spec("profile"))?,
    ))
}

/// Run the demo until Ctrl-C / SIGTERM.
/// `port` 0 binds any free port.
pub async fn run(port: u16) -> Result<(), String> {
    let upstream = start_echo()
        .await
        .map_err(|e| format!("cannot start the echo upstream: {e}"))?;
    let port = pick_port(port);
    let dir: PathBuf = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    let (valid, lacking) = write_files(&dir, upstream, port)?;
    let tour = |port: u16| {
        let url = format!("https://127.0.0.1:{port}/api/orders");
        format!(
            r#"
Portcullis demo: gateway on https://127.0.0.1:{port}, echo upstream on http://{upstream}
Route /api/orders needs a token from the demo issuer with scope orders:read; /health is public.

  VALID={valid}
  NOSCOPE={lacking}

  curl -k {url} -H "Authorization: Bearer $VALID"     # 200: the echo shows X-Auth-Subject / X-Auth-Scopes
  curl -k {url}                                       # 401 unauthorized
  curl -k {url} -H "Authorization: Bearer $NOSCOPE"   # 403 insufficient_scope
  curl -k https://127.0.0.1:{port}/health                          # 200, no token needed

Press Ctrl-C to stop.
"#
        )
    };
    // Printed once the gateway listens, so the curl lines work at once.
    let result = crate::run(&dir.join("gateway.yaml"), |running| {
        // A closed stdout (piped into `head`) must not take the gateway down.
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            tour(running.https_addr.map_or(0, |a| a.port()))
        )
        .and_then(|()| std::io::stdout().flush());
    })
    .await
    .map_err(|e| crate::one_line(&e));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

//! `reload: { watch: true }`: the binary reloads when gateway.yaml or a file
//! it names changes — an edit in place, an atomic rename over it, a
//! Kubernetes ConfigMap's `..data` symlink swap — and keeps the running
//! configuration when the new one is invalid, as SIGHUP does.

mod support;

use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

struct Binary {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    https: std::net::SocketAddr,
    cert: rustls_pki_types::CertificateDer<'static>,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    /// `portcullis run -c CONFIG` in `dir`, JSON logs collected.
    fn start(dir: &std::path::Path, config: &str, cert: rustls_pki_types::CertificateDer<'static>) -> Binary {
        let (child, logs, listening) = support::child::spawn(dir, config, None, &[]);
        Binary {
            child,
            logs,
            https: listening["https"].as_str().unwrap().parse().unwrap(),
            cert,
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.logs.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    async fn status(&self, path: &str) -> u16 {
        let mut c = Client::connect(self.https, &self.cert, Proto::H1).await;
        c.send(req("GET", path, &[], "")).await.status.as_u16()
    }

    /// Wait for the `n`th reload outcome containing `needle`.
    async fn wait_reloads(&self, needle: &str, n: usize) {
        wait_for(
            &format!("{n} reload outcomes logged with {needle:?}"),
            Duration::from_secs(10),
            || self.count(needle) >= n,
        )
        .await;
    }
}

fn config(up: &RecordingUpstream, route: &str) -> String {
    format!(
        r#"listen: {{ https: 127.0.0.1:0 }}
tls: {{ cert: cert.pem, key: key.pem }}
reload: {{ watch: true }}
upstreams:
  app: {{ targets: ["{}"] }}
routes:
  - {{ name: r, match: {{ path: {route} }}, upstream: app, public: true }}
"#,
        up.url()
    )
}

const RELOADED: &str = "\"configuration reloaded\"";
const FAILED: &str = "reload failed";

#[tokio::test(flavor = "multi_thread")]
async fn edits_renames_and_bad_edits_of_a_plain_file() {
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, config(&up, "/a")).unwrap();
    let gw = Binary::start(dir.path(), "gateway.yaml", dir.cert.clone());
    assert_eq!(gw.status("/a").await, 200);

    // An edit in place.
    std::fs::write(&file, config(&up, "/b")).unwrap();
    gw.wait_reloads(RELOADED, 1).await;
    assert_eq!(gw.status("/b").await, 200);
    assert_eq!(gw.status("/a").await, 404);

    // An editor's save: a new file renamed over the old one.
    std::fs::write(dir.path().join(".gateway.yaml.swp"), config(&up, "/c")).unwrap();
    std::fs::rename(dir.path().join(".gateway.yaml.swp"), &file).unwrap();
    gw.wait_reloads(RELOADED, 2).await;
    assert_eq!(gw.status("/c").await, 200);

    // A broken edit: the running configuration stays.
    std::fs::write(&file, "listen: {\n").unwrap();
    gw.wait_reloads(FAILED, 1).await;
    assert_eq!(gw.status("/c").await, 200);
    // Several writes in quick succession are one reload (debounced by 1 s).
    let before = gw.count(RELOADED);
    for route in ["/d1", "/d2", "/d"] {
        std::fs::write(&file, config(&up, route)).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.wait_reloads(RELOADED, before + 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gw.count(RELOADED), before + 1, "debounced into one reload");
    assert_eq!(gw.status("/d").await, 200);

    // A file the configuration names (the certificate) counts too.
    let (pem, key) = portcullis::tls::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.path().join("key.pem"), key).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &pem).unwrap();
    gw.wait_reloads(RELOADED, before + 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_symlink_swap_reloads() {
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    let d = dir.path();
    // The layout kubelet writes: files are links through `..data`, which
    // points at a timestamped directory and is swapped atomically.
    std::fs::create_dir(d.join("..2026_12_07_v1")).unwrap();
    std::fs::write(d.join("..2026_12_07_v1/gateway.yaml"), config(&up, "/v1")).unwrap();
    std::os::unix::fs::symlink("..2026_12_07_v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/gateway.yaml", d.join("gateway.yaml")).unwrap();
    let gw = Binary::start(d, "gateway.yaml", dir.cert.clone());
    assert_eq!(gw.status("/v1").await, 200);

    std::fs::create_dir(d.join("..2026_12_07_v2")).unwrap();
    std::fs::write(d.join("..2026_12_07_v2/gateway.yaml"), config(&up, "/v2")).unwrap();
    std::os::unix::fs::symlink("..2026_12_07_v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    gw.wait_reloads(RELOADED, 1).await;
    assert_eq!(gw.status("/v2").await, 200);
    assert_eq!(gw.status("/v1").await, 404);
}

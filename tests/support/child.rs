//! The gateway binary run as a child process in a temp dir (for signals,
//! systemd notifications, and settings read from the environment at start),
//! its JSON log lines collected.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use super::*;

/// The secret in the `secret` file written next to the configuration.
pub use super::tokens::SECRET;

/// The gateway binary running in a temp dir, with its JSON log lines collected.
pub struct Gateway {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub cert: CertificateDer<'static>,
}

impl Gateway {
    pub fn start(yaml: &str, notify_socket: Option<&std::path::Path>) -> Gateway {
        Self::start_with_env(yaml, notify_socket, &[])
    }

    /// As [`Gateway::start`], with extra environment variables for the process.
    pub fn start_with_env(yaml: &str, notify_socket: Option<&std::path::Path>, env: &[(&str, &str)]) -> Gateway {
        let GatewayDir { dir, cert } = GatewayDir::new().file("secret", SECRET).file("gateway.yaml", yaml);
        let (child, logs, listening) = spawn(dir.path(), "gateway.yaml", notify_socket, env);
        Gateway {
            child,
            dir,
            logs,
            https: listening["https"].as_str().unwrap().parse().unwrap(),
            admin: listening["admin"].as_str().unwrap().parse().unwrap(),
            cert,
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn write_config(&self, yaml: &str) {
        std::fs::write(self.dir.path().join("gateway.yaml"), yaml).unwrap();
    }

    pub async fn client(&self, proto: Proto) -> Client {
        Client::connect(self.https, &self.cert, proto).await
    }

    pub async fn get(&self, path: &str) -> u16 {
        self.client(Proto::H1)
            .await
            .send(req("GET", path, &[], ""))
            .await
            .status
            .as_u16()
    }

    pub async fn admin(&self, path: &str) -> (u16, String) {
        status_and_body(&self.admin_raw(path, "").await)
    }

    pub async fn admin_raw(&self, path: &str, headers: &str) -> String {
        admin_get(self.admin, path, headers).await
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Wait until a log line contains `needle`.
    pub async fn wait_log(&self, needle: &str) -> String {
        for _ in 0..100 {
            if let Some(l) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no log line with {needle:?}: {:#?}", self.logs());
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// `portcullis run -c CONFIG` in `dir` (with `NOTIFY_SOCKET` only when
/// given, and `env`), its JSON log lines collected as they come. Returns
/// once the gateway logs `listening`, with that line parsed.
pub fn spawn(
    dir: &std::path::Path,
    config: &str,
    notify_socket: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> (Child, Arc<Mutex<Vec<String>>>, serde_json::Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(["run", "-c", config])
        .current_dir(dir)
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(sock) = notify_socket {
        cmd.env("NOTIFY_SOCKET", sock);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("\"listening\"") {
                let _ = tx.send(line.clone());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the gateway logs `listening`");
    (child, logs, serde_json::from_str(&line).unwrap())
}

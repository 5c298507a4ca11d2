//! A real `redis-server` (Debian package `redis-server`) per test, on a free
//! loopback port, with no persistence; stopped when dropped. Never a mock.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    tls: bool,
}

/// How to run the server beyond the defaults.
#[derive(Default)]
pub struct Options {
    /// `requirepass`: clients must AUTH with it.
    pub password: Option<String>,
    /// Serve TLS only, with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl RedisServer {
    /// Start on a free port.
    pub async fn start() -> RedisServer {
        let port = super::free_port().await;
        Self::start_on(port).await
    }

    /// Start on `port` (to bring a stopped server back where clients expect it).
    pub async fn start_on(port: u16) -> RedisServer {
        Self::start_with(port, Options::default()).await
    }

    /// Start on `port` with a password and/or TLS.
    pub async fn start_with(port: u16, options: Options) -> RedisServer {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        match &options.tls {
            None => cmd.args(["--port", &port.to_string()]),
            Some((cert, key)) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(cert),
        };
        if let Some(password) = &options.password {
            cmd.args(["--requirepass", password]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}); install it: apt-get install redis-server"));
        let server = RedisServer {
            port,
            child: Some(child),
            tls: options.tls.is_some(),
        };
        super::wait_for_async("redis-server to answer PING", Duration::from_secs(10), || server.ping()).await;
        server
    }

    /// `redis://127.0.0.1:PORT/0`, or `rediss://localhost:PORT/0` over TLS.
    pub fn url(&self) -> String {
        match self.tls {
            false => format!("redis://127.0.0.1:{}/0", self.port),
            true => format!("rediss://localhost:{}/0", self.port),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Whether the server answers (a TLS server: whether it accepts connections;
    /// one with a password answers NOAUTH, which is an answer).
    async fn ping(&self) -> bool {
        let Ok(mut tcp) = TcpStream::connect(self.addr()).await else {
            return false;
        };
        if self.tls {
            return true;
        }
        if tcp.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        matches!(tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await, Ok(Ok(n)) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
    }

    /// Kill the server (as a crash would) and wait until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

//! A real `redis-server` (Debian package `redis-server`) per test, on a free
//! loopback port, with no persistence; stopped when dropped. Never a mock.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Start on a free port.
    pub async fn start() -> RedisServer {
        let port = super::closed_port().await.port();
        Self::start_on(port).await
    }

    /// Start on `port` (to bring a stopped server back where clients expect it).
    pub async fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}); install it: apt-get install redis-server"));
        let server = RedisServer {
            port,
            child: Some(child),
        };
        super::wait_for_async(Duration::from_secs(10), || server.ping()).await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn ping(&self) -> bool {
        let Ok(mut tcp) = TcpStream::connect(self.addr()).await else {
            return false;
        };
        if tcp.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        matches!(tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await, Ok(Ok(n)) if buf[..n].starts_with(b"+PONG"))
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

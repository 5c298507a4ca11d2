//! One client connection's timing, after the TLS handshake: when it is idle,
//! when a request head is late, when the client stopped taking the response,
//! when it is asked to close and how long it may take, and how many HTTP/2
//! streams it has reset. [`drive`] runs the connection and enforces all of it.
//!
//! Every limit here exists because a client can otherwise hold a connection
//! (and a place in `max_connections`) for as long as it likes: a head sent a
//! byte at a time (slowloris), a response never read (an HTTP/1.1 client that
//! stops reading, an HTTP/2 client that advertises a window of 0), a GOAWAY
//! never acknowledged, or streams opened and reset in a loop (CVE-2023-44487).
//!
//! An *exchange* runs from a request head to the end of its response body;
//! the connection counts the exchanges in flight. A response body is either
//! waiting on the upstream (the gateway polled it and it had nothing yet) or
//! waiting on the client (it has data, or has not been polled at all): only
//! the second kind can be stalled by the client, and only it is timed.
//!
//! The parts: [`state`] (the exchange counter and what each exchange is
//! waiting on), [`watchdog`] ([`drive`], the loop that enforces every limit),
//! [`io`] (the I/O wrapper that reports reads and writes) and [`frames`] (the
//! HTTP/2 frame scanner that tells a partly received request head).

mod frames;
mod io;
mod state;
mod watchdog;

use std::pin::Pin;

use http_body::Body;

pub use io::Tracked;
pub use state::{ConnState, Exchange, TrackedBody};
pub(crate) use watchdog::drive;

/// A connection as [`drive`] runs it. Boxed, so that each connection's task
/// holds exactly its own protocol's state (an idle keep-alive connection costs
/// memory for as long as it is open).
pub type Connection = Pin<Box<dyn Served + Send>>;

/// A hyper server connection that can be asked to finish what it is doing
/// and close: HTTP/1.1 (with upgrades) or HTTP/2.
pub trait Served: std::future::Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Served for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B, E> Served for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self)
    }
}

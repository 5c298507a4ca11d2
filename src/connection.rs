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

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::clock::{self, sleep_until_some};

use crate::config::Limits;

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

/// With nothing in flight, a connection asked to close gets this long to
/// flush its last bytes (an HTTP/2 GOAWAY) and is then dropped, whether or
/// not the client answered: idle clients never hold up a shutdown.
const CLOSE_FLUSH: Duration = Duration::from_millis(250);

/// A connection asked to close while a response is stuck on the client is
/// dropped after this long without progress, whatever `send_timeout` says.
const CLOSE_STALL: Duration = Duration::from_secs(5);

/// The window over which HTTP/2 stream resets are counted.
const RESET_WINDOW_MS: u64 = 10_000;

/// Per-connection state shared by the I/O wrapper, the service and [`drive`].
pub struct ConnState {
    http1: bool,
    header_read_timeout_ms: u64,
    max_resets: u32,
    /// HTTP/1.1: the last byte read or written; HTTP/2: the last exchange
    /// started or finished (pings and window updates do not count).
    last_activity: AtomicU64,
    /// When the request head now being read must be complete (0: none pending).
    head_deadline: AtomicU64,
    in_flight: AtomicUsize,
    /// Response bodies waiting on the client to take data.
    awaiting_client: AtomicUsize,
    /// The last time the client took response data.
    last_progress: AtomicU64,
    reset_window_start: AtomicU64,
    resets: AtomicU32,
    too_many_resets: AtomicBool,
    /// Set by [`drive`] once the connection was asked to close: only then does
    /// the end of an exchange need to wake it.
    closing: AtomicBool,
    /// Whether [`drive`] will look for a late request head without being woken.
    head_armed: AtomicBool,
    /// Whether [`drive`] will look for a stalled response without being woken.
    stall_armed: AtomicBool,
    /// Wakes [`drive`] to look again: the last exchange ended while closing, a
    /// request head or a body waiting on the client began with no check for
    /// it armed, or the reset cap was hit.
    changed: Notify,
}

impl ConnState {
    pub fn new(limits: &Limits, http1: bool) -> Self {
        let now = clock::millis();
        let header_read_timeout_ms = limits.header_read_timeout.as_millis() as u64;
        ConnState {
            http1,
            header_read_timeout_ms,
            max_resets: limits.max_stream_resets,
            last_activity: AtomicU64::new(now),
            // The first request's head must arrive within the timeout of the
            // accept, over either protocol.
            head_deadline: AtomicU64::new(now + header_read_timeout_ms),
            in_flight: AtomicUsize::new(0),
            awaiting_client: AtomicUsize::new(0),
            last_progress: AtomicU64::new(now),
            reset_window_start: AtomicU64::new(now),
            resets: AtomicU32::new(0),
            too_many_resets: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            head_armed: AtomicBool::new(false),
            stall_armed: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn on_read(&self) {
        if !self.http1 {
            return;
        }
        let now = clock::millis();
        self.last_activity.store(now, Ordering::Relaxed);
        // Bytes with no request in flight start the next request's head.
        if self.in_flight.load(Ordering::Acquire) == 0 && self.head_deadline.load(Ordering::Acquire) == 0 {
            self.head_deadline
                .store(now + self.header_read_timeout_ms, Ordering::Release);
            if !self.head_armed.load(Ordering::Acquire) {
                self.changed.notify_one();
            }
        }
    }

    /// HTTP/2: after a read, `frames` tells whether a request head (or a
    /// frame but DATA) is partly received, and `ended` whether a partial one
    /// was completed by this read (so a partial one now is a new one). Until
    /// the first request head is complete, the deadline set at accept stands.
    fn on_h2_read(&self, frames: &FrameScan, ended: bool) {
        if !frames.first_head_done {
            return;
        }
        if frames.partial() {
            if ended || self.head_deadline.load(Ordering::Acquire) == 0 {
                self.head_deadline
                    .store(clock::millis() + self.header_read_timeout_ms, Ordering::Release);
                if !self.head_armed.load(Ordering::Acquire) {
                    self.changed.notify_one();
                }
            }
        } else if self.head_deadline.load(Ordering::Acquire) != 0 {
            self.head_deadline.store(0, Ordering::Release);
        }
    }

    fn on_write(&self) {
        if self.http1 {
            let now = clock::millis();
            self.last_activity.store(now, Ordering::Relaxed);
            self.last_progress.store(now, Ordering::Relaxed);
        }
    }

    fn last_activity(&self) -> Instant {
        clock::at_millis(self.last_activity.load(Ordering::Relaxed))
    }

    fn head_deadline(&self) -> Option<Instant> {
        match self.head_deadline.load(Ordering::Acquire) {
            0 => None,
            ms => Some(clock::at_millis(ms)),
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// When a response stuck on the client should be given up, if one is.
    fn stall_deadline(&self, patience: Duration) -> Option<Instant> {
        (self.awaiting_client.load(Ordering::Acquire) > 0)
            .then(|| clock::at_millis(self.last_progress.load(Ordering::Relaxed)) + patience)
    }

    /// A stream the client abandoned before its answer; past the cap, the
    /// connection is told to go away.
    fn count_reset(&self) {
        let now = clock::millis();
        let start = self.reset_window_start.load(Ordering::Relaxed);
        let n = if now.saturating_sub(start) > RESET_WINDOW_MS {
            self.reset_window_start.store(now, Ordering::Relaxed);
            self.resets.store(1, Ordering::Relaxed);
            1
        } else {
            self.resets.fetch_add(1, Ordering::Relaxed) + 1
        };
        if n > self.max_resets && !self.too_many_resets.swap(true, Ordering::AcqRel) {
            self.changed.notify_one();
        }
    }
}

/// One exchange from its request head until the service answers. Dropped
/// unanswered, it was abandoned by the client (an HTTP/2 reset, an HTTP/1.1
/// disconnect); answered, it becomes a [`TrackedBody`].
pub struct Exchange {
    state: Arc<ConnState>,
    answered: bool,
}

impl Exchange {
    pub fn begin(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        if state.http1 {
            state.head_deadline.store(0, Ordering::Release);
        } else {
            // The HTTP/2 head deadline follows the frames (`FrameScan`): by
            // now the next stream's head may already be half received.
            state.last_activity.store(clock::millis(), Ordering::Relaxed);
        }
        Exchange {
            state: state.clone(),
            answered: false,
        }
    }

    /// The response body, tracked until it has been sent or dropped.
    pub fn respond<B>(mut self, body: B) -> TrackedBody<B> {
        self.answered = true;
        let state = self.state.clone();
        // Not polled yet: the client's side decides when it will be.
        if state.awaiting_client.fetch_add(1, Ordering::AcqRel) == 0 {
            state.last_progress.store(clock::millis(), Ordering::Relaxed);
            if !state.stall_armed.load(Ordering::Acquire) {
                state.changed.notify_one();
            }
        }
        TrackedBody {
            inner: body,
            state,
            waiting_on: Waiting::Client,
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.answered {
            self.state.count_reset();
            end_exchange(&self.state);
        }
    }
}

fn end_exchange(state: &ConnState) {
    state.last_activity.store(clock::millis(), Ordering::Relaxed);
    if state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 && state.closing.load(Ordering::Acquire) {
        state.changed.notify_one();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Client,
    Upstream,
    Done,
}

/// A response body whose progress the connection watches.
pub struct TrackedBody<B> {
    inner: B,
    state: Arc<ConnState>,
    waiting_on: Waiting,
}

impl<B> TrackedBody<B> {
    fn wait_on(&mut self, next: Waiting) {
        let was_client = self.waiting_on == Waiting::Client;
        let is_client = next == Waiting::Client;
        if was_client && !is_client {
            self.state.awaiting_client.fetch_sub(1, Ordering::AcqRel);
        } else if is_client
            && !was_client
            && self.state.awaiting_client.fetch_add(1, Ordering::AcqRel) == 0
            && !self.state.stall_armed.load(Ordering::Acquire)
        {
            self.state.changed.notify_one();
        }
        self.waiting_on = next;
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        // Being polled means the client's side has room for more.
        this.state.last_progress.store(clock::millis(), Ordering::Relaxed);
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let next = match &polled {
            Poll::Pending => Waiting::Upstream,
            Poll::Ready(Some(Ok(_))) => Waiting::Client,
            Poll::Ready(_) => Waiting::Done,
        };
        this.wait_on(next);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        self.wait_on(Waiting::Done);
        end_exchange(&self.state);
    }
}

/// Run a connection to completion. It is closed gracefully when the gateway
/// shuts down, after `idle_timeout` without requests, or after too many
/// HTTP/2 stream resets; dropped when a request head takes longer than
/// `header_read_timeout` (slowloris) or the client takes no response data for
/// `send_timeout`. Once asked to close, it is dropped [`CLOSE_FLUSH`] after
/// its last exchange ends, or after [`CLOSE_STALL`] stuck on the client.
pub async fn drive(mut conn: Connection, limits: &Limits, state: &ConnState, mut shutdown: watch::Receiver<bool>) {
    let mut closing: Option<Instant> = None;
    let watchers = Arc::new(Watchers::default());
    let watcher_waker = Waker::from(watchers.clone());
    if *shutdown.borrow() {
        conn.as_mut().graceful_shutdown();
        closing = Some(Instant::now());
        state.closing.store(true, Ordering::Release);
    }
    loop {
        let now = Instant::now();
        let patience = match closing {
            Some(_) => limits.send_timeout.min(CLOSE_STALL),
            None => limits.send_timeout,
        };
        let stall_deadline = state.stall_deadline(patience);
        let head_deadline = state.head_deadline();
        // A request head, or a response that starts waiting on the client,
        // wakes us only when no check for it is armed. On a connection in use
        // both stay armed even while nothing is pending (a request is often
        // answered before we get to look): we look again every timeout,
        // instead of being woken twice per request. A head or a body that
        // starts meanwhile is timed from then, so it cannot be due before
        // that check.
        let in_use = |window: Duration| state.in_flight() > 0 || state.last_activity() + window > now;
        let head_check = head_deadline.or_else(|| {
            let timeout = limits.header_read_timeout;
            (closing.is_none() && in_use(timeout)).then(|| now + timeout)
        });
        let stall_check = stall_deadline.or_else(|| in_use(patience).then(|| now + patience));
        state.head_armed.store(head_check.is_some(), Ordering::Release);
        state.stall_armed.store(stall_check.is_some(), Ordering::Release);
        if head_deadline.is_some_and(|d| d <= now) {
            tracing::debug!("request head not received within header_read_timeout; closing");
            return;
        }
        if stall_deadline.is_some_and(|d| d <= now) {
            tracing::debug!(timeout = ?patience, "client took no response data; closing");
            return;
        }
        // Counted from the later of the close request and the last activity,
        // so the final response has its moment to be flushed.
        let close_deadline = closing
            .filter(|_| state.in_flight() == 0)
            .map(|at| at.max(state.last_activity()) + CLOSE_FLUSH);
        if close_deadline.is_some_and(|d| d <= now) {
            return;
        }
        let idle_deadline = state.last_activity() + limits.idle_timeout;
        if closing.is_none() && state.in_flight() == 0 && idle_deadline <= now {
            conn.as_mut().graceful_shutdown();
            closing = Some(now);
            state.closing.store(true, Ordering::Release);
            continue;
        }
        // One timer for whichever deadline comes first; everything is
        // re-checked above when it fires.
        let next = [
            closing.is_none().then_some(idle_deadline),
            head_check,
            stall_check,
            close_deadline,
        ]
        .into_iter()
        .flatten()
        .min();
        // Only the connection is polled on every wake-up of the task; these
        // only once one of them fired (see `Watchers`).
        let mut changed = pin!(state.changed.notified());
        let shutdown = &mut shutdown;
        let watch_shutdown = closing.is_none();
        let mut shutdown_asked = pin!(async move {
            match watch_shutdown {
                true => _ = shutdown.changed().await,
                false => std::future::pending().await,
            }
        });
        let mut deadline = pin!(sleep_until_some(next));
        watchers.fired.store(true, Ordering::Relaxed);
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Woke::Ended(result));
            }
            if !watchers.fired.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            watchers.task.register(cx.waker());
            let mut cx = Context::from_waker(&watcher_waker);
            if changed.as_mut().poll(&mut cx).is_ready() {
                Poll::Ready(Woke::Changed)
            } else if shutdown_asked.as_mut().poll(&mut cx).is_ready() {
                Poll::Ready(Woke::Shutdown)
            } else if deadline.as_mut().poll(&mut cx).is_ready() {
                Poll::Ready(Woke::Deadline)
            } else {
                Poll::Pending
            }
        })
        .await;
        match woke {
            Woke::Ended(result) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            Woke::Changed => {
                if closing.is_none() && state.too_many_resets.load(Ordering::Acquire) {
                    tracing::warn!(
                        max = limits.max_stream_resets,
                        "client reset too many HTTP/2 streams; closing the connection"
                    );
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                    state.closing.store(true, Ordering::Release);
                }
            }
            Woke::Shutdown => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
                state.closing.store(true, Ordering::Release);
            }
            Woke::Deadline => {}
        }
    }
}

/// What ended one wait in [`drive`].
enum Woke {
    Ended(Result<(), hyper::Error>),
    Changed,
    Shutdown,
    Deadline,
}

/// The waker [`drive`] gives the futures that watch a connection (shutdown,
/// the next deadline, [`ConnState::changed`]): it wakes the connection's task
/// and records that a watcher fired. A task wakes several times per request
/// for the connection itself; polling the watchers each time took, among
/// other things, a lock of the shutdown channel that every connection shares.
#[derive(Default)]
struct Watchers {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Watchers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// An I/O stream that reports reads and writes that move data to [`ConnState`].
pub struct Tracked<T> {
    inner: T,
    state: Arc<ConnState>,
    /// HTTP/2 only: where the client's bytes are, frame by frame.
    frames: Option<Box<FrameScan>>,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, state: Arc<ConnState>) -> Self {
        let frames = (!state.http1).then(|| Box::new(FrameScan::new()));
        Tracked { inner, state, frames }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let this = &mut *self;
            match &mut this.frames {
                None => this.state.on_read(),
                Some(frames) => frames.read(&buf.filled()[before..], &this.state),
            }
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Follows an HTTP/2 client's bytes frame by frame, far enough to see when a
/// request head is partly received: a header block (HEADERS and its
/// CONTINUATIONs) begun and not complete, or any other frame but DATA cut
/// short (all small, and sent whole by a client that is not stalling on
/// purpose). DATA payloads are request bodies, which may well arrive slowly.
/// hyper and h2 do not time a head, so without this a client could dribble
/// one for as long as `idle_timeout`.
struct FrameScan {
    /// Bytes of the client's connection preface still to come.
    preface_left: usize,
    /// The frame header being received, and how much of it has arrived.
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// Whether the current frame is DATA.
    data: bool,
    /// Whether the current frame ends its header block (END_HEADERS).
    ends_block: bool,
    /// Inside a header block: more CONTINUATION frames are due.
    in_block: bool,
    /// Whether a whole header block has been received: the first request
    /// head is timed from the accept instead.
    first_head_done: bool,
}

const FRAME_HEADER_LEN: usize = 9;
const PREFACE_LEN: usize = 24;
const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;

impl FrameScan {
    fn new() -> Self {
        FrameScan {
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload_left: 0,
            data: false,
            ends_block: false,
            in_block: false,
            first_head_done: false,
        }
    }

    /// Follow bytes just read and tell the connection.
    fn read(&mut self, bytes: &[u8], state: &ConnState) {
        let ended = self.scan(bytes);
        state.on_h2_read(self, ended);
    }

    /// Whether a head (or a frame but DATA) is partly received.
    fn partial(&self) -> bool {
        self.header_len > 0 || self.in_block || (self.payload_left > 0 && !self.data)
    }

    /// Follow the next bytes the client sent; true if a partly received head
    /// was completed among them.
    fn scan(&mut self, mut bytes: &[u8]) -> bool {
        let preface = self.preface_left.min(bytes.len());
        self.preface_left -= preface;
        bytes = &bytes[preface..];
        let mut ended = false;
        while !bytes.is_empty() {
            let was_partial = self.partial();
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
            } else {
                let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == FRAME_HEADER_LEN {
                    self.frame_header_done();
                }
            }
            ended |= was_partial && !self.partial();
        }
        ended
    }

    fn frame_header_done(&mut self) {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        self.header_len = 0;
        self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        self.data = kind == FRAME_DATA;
        self.ends_block = matches!(kind, FRAME_HEADERS | FRAME_CONTINUATION) && flags & FLAG_END_HEADERS != 0;
        if kind == FRAME_HEADERS {
            self.in_block = true;
        }
        if self.payload_left == 0 {
            self.frame_done();
        }
    }

    fn frame_done(&mut self) {
        if self.ends_block {
            self.in_block = false;
            self.ends_block = false;
            self.first_head_done = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The preface, an empty SETTINGS frame and a whole first request head.
    fn opening() -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[]));
        bytes.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS | 0x1, 1, &[0x82, 0x87, 0x84]));
        bytes
    }

    #[test]
    fn a_whole_first_head_leaves_nothing_partial() {
        let mut scan = FrameScan::new();
        assert!(scan.scan(&opening()));
        assert!(scan.first_head_done);
        assert!(!scan.partial());
    }

    #[test]
    fn the_first_head_is_not_done_before_its_last_byte() {
        let bytes = opening();
        let mut scan = FrameScan::new();
        scan.scan(&bytes[..bytes.len() - 1]);
        assert!(!scan.first_head_done);
        assert!(scan.partial());
        assert!(scan.scan(&bytes[bytes.len() - 1..]));
        assert!(scan.first_head_done && !scan.partial());
    }

    #[test]
    fn a_header_block_is_partial_until_its_end_headers() {
        let mut scan = FrameScan::new();
        scan.scan(&opening());
        assert!(!scan.scan(&frame(FRAME_HEADERS, 0, 3, &[0x82, 0x87])));
        assert!(scan.partial(), "HEADERS without END_HEADERS");
        assert!(!scan.scan(&frame(FRAME_CONTINUATION, 0, 3, &[0x84])));
        assert!(scan.partial(), "CONTINUATION without END_HEADERS");
        assert!(scan.scan(&frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 3, &[])));
        assert!(!scan.partial());
    }

    #[test]
    fn a_slow_request_body_is_not_a_partial_head() {
        let mut scan = FrameScan::new();
        scan.scan(&opening());
        let data = frame(FRAME_DATA, 0, 1, &[7; 1000]);
        scan.scan(&data[..5]);
        assert!(scan.partial(), "a frame header cut short");
        assert!(scan.scan(&data[5..100]));
        assert!(!scan.partial(), "half a DATA payload");
        assert!(!scan.scan(&data[100..]));
        assert!(!scan.partial());
    }

    #[test]
    fn other_frames_cut_short_are_partial() {
        let mut scan = FrameScan::new();
        scan.scan(&opening());
        let ping = frame(0x6, 0, 0, &[1; 8]);
        scan.scan(&ping[..12]);
        assert!(scan.partial());
        assert!(scan.scan(&ping[12..]));
        assert!(!scan.partial());
    }

    #[test]
    fn byte_at_a_time_ends_where_whole_reads_end() {
        let mut bytes = opening();
        bytes.extend(frame(FRAME_DATA, 0x1, 1, b"body"));
        bytes.extend(frame(FRAME_HEADERS, 0, 3, &[0x82]));
        bytes.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 3, &[0x84]));
        let mut whole = FrameScan::new();
        whole.scan(&bytes);
        let mut dribbled = FrameScan::new();
        let mut partial_at = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            dribbled.scan(std::slice::from_ref(b));
            if dribbled.partial() {
                partial_at.push(i);
            }
        }
        assert!(!whole.partial() && !dribbled.partial());
        assert!(whole.first_head_done && dribbled.first_head_done);
        // Never partial inside the DATA payload: the 4 body bytes after
        // the opening and DATA's frame header.
        let body = opening().len() + FRAME_HEADER_LEN;
        assert!((body..body + 4).all(|i| !partial_at.contains(&i)));
        assert!(partial_at.contains(&(body + 4)), "the next frame header");
    }
}

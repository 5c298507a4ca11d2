//! A connection's shared state: its exchanges in flight, what each response
//! body is waiting on, its activity and progress stamps, its head deadline
//! and its HTTP/2 reset count.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock;
use crate::config::Limits;

/// The window over which HTTP/2 stream resets are counted.
const RESET_WINDOW_MS: u64 = 10_000;

/// Per-connection state shared by the I/O wrapper, the service and [`drive`].
pub struct ConnState {
    pub(super) http1: bool,
    pub(super) header_read_timeout_ms: u64,
    pub(super) max_resets: u32,
    /// HTTP/1.1: the last byte read or written; HTTP/2: the last exchange
    /// started or finished (pings and window updates do not count).
    pub(super) last_activity: AtomicU64,
    /// When the request head now being read must be complete (0: none pending).
    pub(super) head_deadline: AtomicU64,
    pub(super) in_flight: AtomicUsize,
    /// Response bodies waiting on the client to take data.
    pub(super) awaiting_client: AtomicUsize,
    /// The last time the client took response data.
    pub(super) last_progress: AtomicU64,
    pub(super) reset_window_start: AtomicU64,
    pub(super) resets: AtomicU32,
    pub(super) too_many_resets: AtomicBool,
    /// Set by [`drive`] once the connection was asked to close: only then does
    /// the end of an exchange need to wake it.
    pub(super) closing: AtomicBool,
    /// Whether [`drive`] will look for a late request head without being woken.
    pub(super) head_armed: AtomicBool,
    /// Whether [`drive`] will look for a stalled response without being woken.
    pub(super) stall_armed: AtomicBool,
    /// Wakes [`drive`] to look again: the last exchange ended while closing, a
    /// request head or a body waiting on the client began with no check for
    /// it armed, or the reset cap was hit.
    pub(super) changed: Notify,
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

    pub(super) fn on_read(&self) {
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

    /// HTTP/2: after a read, the frame scanner tells whether a request head
    /// (or a frame but DATA) is `partial`ly received, and whether a partial
    /// one `ended` with this read (so a partial one now is a new one). Until
    /// the first request head is complete, the deadline set at accept stands.
    pub(super) fn on_h2_read(&self, first_head_done: bool, partial: bool, ended: bool) {
        if !first_head_done {
            return;
        }
        if partial {
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

    pub(super) fn on_write(&self) {
        if self.http1 {
            let now = clock::millis();
            self.last_activity.store(now, Ordering::Relaxed);
            self.last_progress.store(now, Ordering::Relaxed);
        }
    }

    pub(super) fn last_activity(&self) -> Instant {
        clock::at_millis(self.last_activity.load(Ordering::Relaxed))
    }

    pub(super) fn head_deadline(&self) -> Option<Instant> {
        match self.head_deadline.load(Ordering::Acquire) {
            0 => None,
            ms => Some(clock::at_millis(ms)),
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// When a response stuck on the client should be given up, if one is.
    pub(super) fn stall_deadline(&self, patience: Duration) -> Option<Instant> {
        (self.awaiting_client.load(Ordering::Acquire) > 0)
            .then(|| clock::at_millis(self.last_progress.load(Ordering::Relaxed)) + patience)
    }

    /// A stream the client abandoned before its answer; past the cap, the
    /// connection is told to go away.
    pub(super) fn count_reset(&self) {
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
    pub(crate) fn begin(state: &Arc<ConnState>) -> Self {
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
    pub(crate) fn respond<B>(mut self, body: B) -> TrackedBody<B> {
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

//! [`drive`]: runs a connection and enforces every limit on it.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{ConnState, Connection};
use crate::clock::sleep_until_some;
use crate::config::Limits;

/// With nothing in flight, a connection asked to close gets this long to
/// flush its last bytes (an HTTP/2 GOAWAY) and is then dropped, whether or
/// not the client answered: idle clients never hold up a shutdown.
const CLOSE_FLUSH: Duration = Duration::from_millis(250);

/// A connection asked to close while a response is stuck on the client is
/// dropped after this long without progress, whatever `send_timeout` says.
const CLOSE_STALL: Duration = Duration::from_secs(5);

/// Run a connection to completion. It is closed gracefully when the gateway
/// shuts down, after `idle_timeout` without requests, or after too many
/// HTTP/2 stream resets; dropped when a request head takes longer than
/// `header_read_timeout` (slowloris) or the client takes no response data for
/// `send_timeout`. Once asked to close, it is dropped [`CLOSE_FLUSH`] after
/// its last exchange ends, or after [`CLOSE_STALL`] stuck on the client.
pub(crate) async fn drive(
    mut conn: Connection,
    limits: &Limits,
    state: &ConnState,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut closing: Option<Instant> = None;
    let watchers = Arc::new(Watchers::default());
    let watcher_waker = Waker::from(watchers.clone());
    if *shutdown.borrow() {
        closing = begin_close(&mut conn, state, Instant::now());
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
            closing = begin_close(&mut conn, state, now);
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
                    closing = begin_close(&mut conn, state, Instant::now());
                }
            }
            Woke::Shutdown => {
                closing = begin_close(&mut conn, state, Instant::now());
            }
            Woke::Deadline => {}
        }
    }
}

/// Ask the connection to finish what it is doing and close (HTTP/2: GOAWAY),
/// and tell the exchanges that their end now matters; returns when that was.
fn begin_close(conn: &mut Connection, state: &ConnState, at: Instant) -> Option<Instant> {
    conn.as_mut().graceful_shutdown();
    state.closing.store(true, Ordering::Release);
    Some(at)
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

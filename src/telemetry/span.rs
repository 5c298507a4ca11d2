//! A span as the gateway records it — ids, times, a name, a few attributes
//! and events — ended into the export queue. The request's innermost span
//! is the task's [`CURRENT`] while its work runs, so code deep in `auth` or
//! `store` finds its parent without an extra argument.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::HeaderValue;
use tokio::sync::mpsc;

tokio::task_local! {
    /// The span the running work belongs to.
    pub(super) static CURRENT: Arc<Live>;
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(Cow<'static, str>),
    /// Text made once and shared by every span that records it.
    Shared(Arc<str>),
    Int(i64),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(Cow::Owned(s))
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

/// What a span stands for (OTLP's `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// A span as exported.
#[derive(Debug)]
pub(super) struct Finished {
    pub trace_id: u128,
    pub span_id: u64,
    /// 0: a root span.
    pub parent_id: u64,
    /// The parent came from the client's `traceparent`.
    pub parent_remote: bool,
    pub trace_state: Option<HeaderValue>,
    pub kind: Kind,
    pub name: Cow<'static, str>,
    /// Unix time in nanoseconds.
    pub start: u64,
    pub end: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// (time, name)
    pub events: Vec<(u64, &'static str)>,
    pub error: bool,
}

/// A span being recorded; [`Live::end`] (or the last reference going)
/// sends it to the queue once.
#[derive(Debug)]
pub(crate) struct Live {
    pub trace_id: u128,
    pub span_id: u64,
    pub trace_state: Option<HeaderValue>,
    open: Mutex<Option<Finished>>,
    queue: mpsc::Sender<Finished>,
}

/// Unix time in nanoseconds.
pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Live {
    /// Start a span; `parent` is (span id, remote) or none for a root.
    pub(super) fn start(
        queue: &mpsc::Sender<Finished>,
        trace: (u128, Option<HeaderValue>),
        parent: Option<(u64, bool)>,
        kind: Kind,
        name: Cow<'static, str>,
        attributes: Vec<(&'static str, Value)>,
    ) -> Live {
        let (trace_id, trace_state) = trace;
        let span_id = super::ids::span_id();
        let (parent_id, parent_remote) = parent.unwrap_or((0, false));
        Live {
            trace_id,
            span_id,
            trace_state: trace_state.clone(),
            open: Mutex::new(Some(Finished {
                trace_id,
                span_id,
                parent_id,
                parent_remote,
                trace_state,
                kind,
                name,
                start: now(),
                end: 0,
                attributes,
                events: Vec::new(),
                error: false,
            })),
            queue: queue.clone(),
        }
    }

    /// A child of this span.
    pub(super) fn child(&self, kind: Kind, name: Cow<'static, str>, attributes: Vec<(&'static str, Value)>) -> Live {
        let trace = (self.trace_id, self.trace_state.clone());
        Live::start(&self.queue, trace, Some((self.span_id, false)), kind, name, attributes)
    }

    /// Change the span while it is open (nothing once it has ended).
    pub(super) fn with(&self, change: impl FnOnce(&mut Finished)) {
        if let Ok(mut open) = self.open.lock() {
            if let Some(span) = open.as_mut() {
                change(span);
            }
        }
    }

    /// End the span: it goes to the export queue (full: dropped and counted).
    pub(super) fn end(&self) {
        let taken = self.open.lock().ok().and_then(|mut open| open.take());
        if let Some(mut span) = taken {
            span.end = now();
            if self.queue.try_send(span).is_err() {
                crate::metrics::trace_spans_dropped(1);
            }
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.end();
    }
}

//! Request bodies on their way upstream: streamed frame by frame, cut off at
//! `limits.max_body_bytes`, and replayable onto another target until the first
//! byte has been read (a refused connection never consumed it).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds limits.max_body_bytes")]
pub(crate) struct BodyTooLarge;

/// The client's body with a byte budget. Exceeding it fails the stream and
/// sets `exceeded`, which the forwarder turns into 413. Trailers go through
/// the header rules (`trailer_rules`) on their way.
pub struct LimitedBody {
    inner: Incoming,
    remaining: u64,
    exceeded: bool,
    trailer_rules: Option<Arc<super::headers::StripRules>>,
}

impl LimitedBody {
    /// `trailer_rules` is needed only when the body can carry trailers (it
    /// has not ended with the head).
    pub fn new(inner: Incoming, limit: u64, trailer_rules: Option<Arc<super::headers::StripRules>>) -> Self {
        LimitedBody {
            inner,
            remaining: limit,
            exceeded: false,
            trailer_rules,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.exceeded = true;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    this.remaining -= len;
                    return Poll::Ready(Some(Ok(frame)));
                }
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        match &this.trailer_rules {
                            Some(rules) => super::headers::filter_trailers(rules, &mut trailers),
                            None => trailers.clear(),
                        }
                        Frame::trailers(trailers)
                    }
                    Err(other) => other,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            other => other.map(|o| o.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that can be handed to several connection attempts in turn: whichever
/// attempt polls it first takes the real body out of the shared slot. A
/// request without a body (most of them) shares nothing and allocates nothing.
pub struct ReplayableBody {
    shared: Option<Arc<Shared>>,
    taken: Option<LimitedBody>,
    hint: SizeHint,
    end: bool,
}

/// What the attempts at sending one body share.
struct Shared {
    /// The body, until an attempt takes it.
    body: Mutex<Option<LimitedBody>>,
    /// The body went over its budget.
    exceeded: AtomicBool,
}

impl ReplayableBody {
    pub fn new(body: LimitedBody) -> Self {
        let hint = body.size_hint();
        let end = body.is_end_stream();
        let shared = (!end).then(|| {
            Arc::new(Shared {
                body: Mutex::new(Some(body)),
                exceeded: AtomicBool::new(false),
            })
        });
        ReplayableBody {
            shared,
            taken: None,
            hint,
            end,
        }
    }

    /// Another handle on the same body, for the next connection attempt.
    pub fn again(&self) -> Self {
        ReplayableBody {
            shared: self.shared.clone(),
            taken: None,
            hint: self.hint,
            end: self.end,
        }
    }

    /// Whether some attempt has started reading the body (so it cannot be resent).
    pub(crate) fn consumed(&self) -> bool {
        match &self.shared {
            Some(shared) => shared.body.lock().map(|b| b.is_none()).unwrap_or(true),
            None => false,
        }
    }

    /// Whether the body went over `limits.max_body_bytes` in some attempt.
    pub(crate) fn exceeded(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.exceeded.load(Ordering::Acquire))
    }
}

impl Body for ReplayableBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(shared) = &this.shared else {
            return Poll::Ready(None);
        };
        if this.taken.is_none() {
            this.taken = shared.body.lock().ok().and_then(|mut b| b.take());
        }
        match this.taken.as_mut() {
            Some(body) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if body.exceeded {
                    shared.exceeded.store(true, Ordering::Release);
                }
                polled
            }
            // Another attempt already consumed the body: this one has nothing to send.
            None => Poll::Ready(Some(Err("request body already consumed by another attempt".into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(b) => b.is_end_stream(),
            None => self.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

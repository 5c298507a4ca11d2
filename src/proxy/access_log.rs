//! One access-log line and one set of request metrics per request, written
//! when the answer is known, or by `Drop` with status 499 (nginx's "client
//! closed request") when the client went away first: an HTTP/2 stream reset
//! or an HTTP/1.1 disconnect drops the request's future, and an authenticated
//! write the upstream may already have executed must still be in the log.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method};

use crate::metrics::RouteMetrics;

/// The status logged for a request whose client went away before the answer.
pub(crate) const CLIENT_CLOSED: u16 = 499;

/// Facts gathered along the pipeline, written out once.
#[derive(Debug)]
pub(crate) struct AccessLog {
    started: Instant,
    request_id: HeaderValue,
    client: Arc<str>,
    method: Method,
    /// `https`, or `decision` for the decision API.
    pub listener: &'static str,
    pub path: Option<String>,
    /// The matched route, whose metrics count this request.
    pub route: Option<Arc<RouteMetrics>>,
    pub upstream_status: Option<u16>,
    pub subject: Option<String>,
    /// On a monitor-mode route: why enforcement would have refused.
    pub monitor_denied: Option<&'static str>,
    /// Why the route's policy refused the request (a reason code).
    pub refused: Option<&'static str>,
    /// Why the route's policy refused (or, in monitor mode, would have): the
    /// failed claims condition or `source_ips`, as configured; never a value
    /// the token holds.
    pub denied_by: Option<String>,
    /// The route checks tokens: its upstream's 401/403 can disagree with the gateway.
    pub protected: bool,
    /// Where the gateway and the upstream disagreed (`upstream_denied`, `gateway_denied`).
    pub drift: Option<&'static str>,
    /// The request's trace (with `telemetry`), ended with the line.
    pub trace: Option<crate::telemetry::RequestTrace>,
    written: bool,
}

impl AccessLog {
    pub fn start(request_id: HeaderValue, client: Arc<str>, method: Method) -> Self {
        AccessLog {
            started: Instant::now(),
            request_id,
            client,
            method,
            listener: "https",
            path: None,
            route: None,
            upstream_status: None,
            subject: None,
            monitor_denied: None,
            refused: None,
            denied_by: None,
            protected: false,
            drift: None,
            trace: None,
            written: false,
        }
    }

    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    pub(crate) fn route_name(&self) -> Option<&Arc<str>> {
        self.route.as_ref().map(|r| r.name())
    }

    /// Decision drift, for teams moving checks out of an app: the gateway let
    /// the request through but the upstream answered 401 or 403, or (monitor
    /// mode) the gateway would have refused but the upstream answered 2xx/3xx.
    pub fn note_upstream_answer(&mut self, status: u16) {
        if !self.protected {
            return;
        }
        let drift = match (self.monitor_denied, status) {
            (None, 401 | 403) => "upstream_denied",
            (Some(_), 200..=399) => "gateway_denied",
            _ => return,
        };
        self.drift = Some(drift);
        if let Some(route) = self.route_name() {
            crate::metrics::drift(route, drift);
        }
    }

    /// Write the line and the metrics with the gateway's own view of the
    /// status (a gRPC refusal travels as HTTP 200 but is logged as, say, 401).
    pub fn write(&mut self, status: u16) {
        if self.written {
            return;
        }
        self.written = true;
        let elapsed = self.started.elapsed();
        crate::metrics::request(self.route.as_deref(), self.listener, status, elapsed.as_secs_f64());
        let trace_id = self.trace.as_ref().and_then(|t| t.trace_id());
        if let Some(trace) = &self.trace {
            trace.finish(
                status,
                crate::telemetry::Finish {
                    path: self.path.as_deref(),
                    subject: self.subject.as_deref(),
                    refused: self.refused,
                    monitor_denied: self.monitor_denied,
                },
            );
        }
        tracing::info!(
            target: "portcullis::access",
            request_id = self.request_id.to_str().unwrap_or(""),
            client = &*self.client,
            listener = self.listener,
            method = self.method.as_str(),
            path = self.path.as_deref().unwrap_or("-"),
            route = self.route_name().map_or("-", |n| &**n),
            status,
            upstream_status = self.upstream_status,
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            subject = self.subject.as_deref(),
            auth = self.monitor_denied.map(|_| "monitor_denied"),
            reason = self.monitor_denied.or(self.refused),
            denied_by = self.denied_by.as_deref(),
            drift = self.drift,
            trace_id = trace_id.map(tracing::field::display),
        );
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.write(CLIENT_CLOSED);
    }
}

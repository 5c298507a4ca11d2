//! Getting finished spans to the collector without touching the request
//! path: a span ends into a bounded queue (full: dropped and counted), and
//! one task posts batches over OTLP/HTTP (protobuf, [`super::otlp`]),
//! bounded by a timeout (failed: the batch is dropped and counted).

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::mpsc;

use super::span::{Finished, Value};

use crate::config::ConfigError;

/// Spans waiting for export; beyond this a span is dropped (room for 50 ms
/// of 40,000 spans a second, five times the [`TICK`]).
const QUEUE: usize = 2048;
/// Spans per export request.
const BATCH: usize = 512;
/// How long a span waits for others to share its export request.
const DELAY: Duration = Duration::from_millis(500);
/// While a batch fills, the queue is looked at this often: waiting on the
/// queue itself would wake the export task (another thread) for every
/// span a request ends.
const TICK: Duration = Duration::from_millis(10);
/// The longest an export may take, collector answer included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A collector's answer is small; more is not read.
const MAX_ANSWER: usize = 64 * 1024;

/// Where and how batches go.
#[derive(Debug)]
struct Collector {
    url: http::Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `ResourceSpans.resource`, encoded once.
    resource: Vec<u8>,
}

/// The exporting side, started once inside the runtime.
#[derive(Debug)]
pub(super) struct Exporter {
    waiting: Mutex<Option<(mpsc::Receiver<Finished>, Collector)>>,
    /// Asks the export task to send what is queued now, and says when it has.
    flush: mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
    flush_requests: Mutex<Option<mpsc::Receiver<tokio::sync::oneshot::Sender<()>>>>,
}

impl Exporter {
    /// The queue and the exporter for `url`; nothing runs until [`Exporter::start`].
    pub(super) fn new(
        url: &str,
        ca_file: Option<&std::path::Path>,
        resource: &[(&'static str, Value)],
    ) -> Result<(mpsc::Sender<Finished>, Self), ConfigError> {
        let collector = Collector {
            url: url
                .parse()
                .map_err(|e| ConfigError::new("telemetry.otlp_endpoint", "is not a URL").because(e))?,
            client: crate::auth::jwks::client_with_roots(&"telemetry.ca_file".into(), ca_file, Duration::from_secs(5))?,
            resource: super::otlp::resource(resource),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let (flush, flush_requests) = mpsc::channel(4);
        Ok((
            tx,
            Exporter {
                waiting: Mutex::new(Some((rx, collector))),
                flush,
                flush_requests: Mutex::new(Some(flush_requests)),
            },
        ))
    }

    /// Start the export task (once; later calls do nothing). It ends when
    /// every sender is gone, after exporting what is queued.
    pub(super) fn start(&self) {
        let taken = self.waiting.lock().ok().and_then(|mut w| w.take());
        let flushes = self.flush_requests.lock().ok().and_then(|mut f| f.take());
        if let (Some((rx, collector)), Some(flushes)) = (taken, flushes) {
            tokio::spawn(export_loop(rx, flushes, collector));
        }
    }

    /// Export what is queued now (at shutdown), waiting at most `limit`.
    pub(super) async fn flush(&self, limit: Duration) {
        let (done, answer) = tokio::sync::oneshot::channel();
        if self.flush.try_send(done).is_ok() {
            let _ = tokio::time::timeout(limit, answer).await;
        }
    }
}

async fn export_loop(
    mut rx: mpsc::Receiver<Finished>,
    mut flushes: mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    collector: Collector,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut scratch = Vec::new();
    loop {
        let mut flushed = None;
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                let deadline = tokio::time::Instant::now() + DELAY;
                while batch.len() < BATCH && tokio::time::Instant::now() < deadline {
                    tokio::select! {
                        _ = tokio::time::sleep(TICK) => {}
                        Some(done) = flushes.recv() => {
                            flushed = Some(done);
                            break;
                        }
                    }
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(span) => batch.push(span),
                            Err(_) => break,
                        }
                    }
                }
            }
            Some(done) = flushes.recv() => flushed = Some(done),
        }
        if flushed.is_some() {
            // Everything queued goes now, in batches.
            while let Ok(span) = rx.try_recv() {
                batch.push(span);
                if batch.len() == BATCH {
                    export(&collector, &mut batch, &mut scratch).await;
                }
            }
        }
        if !batch.is_empty() {
            export(&collector, &mut batch, &mut scratch).await;
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// One export request; a failure drops the batch and counts it.
async fn export(collector: &Collector, batch: &mut Vec<Finished>, scratch: &mut Vec<u8>) {
    let n = batch.len();
    let body = super::otlp::request(&collector.resource, batch, scratch);
    batch.clear();
    let mut request = http::Request::new(Full::new(Bytes::from(body)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = collector.url.clone();
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    let exchange = async {
        let answer = collector
            .client
            .request(request)
            .await
            .map_err(|e| crate::one_line(&e))?;
        let status = answer.status();
        // Read the (small) answer so the connection can be reused.
        let _ = Limited::new(answer.into_body(), MAX_ANSWER).collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {status}"))
        }
    };
    let failure = match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(_) => "the collector did not answer in time".to_owned(),
    };
    tracing::warn!(spans = n, error = %failure, "trace export failed; spans dropped");
    crate::metrics::trace_spans_dropped(n);
}

//! `telemetry`: where traces go (OTLP over HTTP), how many are kept, and
//! whether a client's `traceparent` is continued.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

use super::ctx::Ctx;
use super::ConfigError;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTelemetry {
    /// The collector's OTLP/HTTP base URL; spans are posted to `/v1/traces` under it.
    #[serde(default = "default_endpoint")]
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of new traces recorded (0 to 1); a sampled incoming trace
    /// that is trusted is always recorded (parent-based sampling).
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    /// Continue a client's W3C trace context; `false` starts a new trace at
    /// the gateway for every request (an edge facing the internet).
    #[serde(default = "default_true")]
    pub trust_incoming_traceparent: bool,
    /// CA bundle for an `https` collector with a private CA.
    pub ca_file: Option<PathBuf>,
}

fn default_endpoint() -> String {
    "http://127.0.0.1:4318".into()
}

fn default_service_name() -> String {
    "portcullis".into()
}

fn default_ratio() -> f64 {
    1.0
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// Where spans are posted: the endpoint with `/v1/traces`.
    pub traces_url: String,
    pub service_name: String,
    pub sample_ratio: f64,
    pub trust_incoming_traceparent: bool,
    pub ca_file: Option<PathBuf>,
}

pub(super) fn validate(ctx: &Ctx, raw: RawTelemetry) -> Result<Telemetry, ConfigError> {
    let url: http::Uri = raw.otlp_endpoint.parse().map_err(|_| {
        ctx.err(
            "telemetry.otlp_endpoint",
            format!(
                "{:?} is not a URL; write the collector's OTLP/HTTP address, such as http://127.0.0.1:4318",
                raw.otlp_endpoint
            ),
        )
    })?;
    if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() || url.query().is_some() {
        return Err(ctx.err(
            "telemetry.otlp_endpoint",
            "must be an http:// or https:// URL with a host and no query, such as http://127.0.0.1:4318",
        ));
    }
    let base = raw.otlp_endpoint.trim_end_matches('/');
    let traces_url = if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    };
    if !(0.0..=1.0).contains(&raw.sample_ratio) {
        return Err(ctx.err(
            "telemetry.sample_ratio",
            "must be a number from 0 (no new traces) to 1 (every request)",
        ));
    }
    if raw.service_name.is_empty() || raw.service_name.chars().any(char::is_control) {
        return Err(ctx.err(
            "telemetry.service_name",
            "must be a non-empty name without control characters",
        ));
    }
    let ca_file = match &raw.ca_file {
        Some(p) => Some(ctx.existing_file("telemetry.ca_file", p)?),
        None => None,
    };
    Ok(Telemetry {
        traces_url,
        service_name: raw.service_name,
        sample_ratio: raw.sample_ratio,
        trust_incoming_traceparent: raw.trust_incoming_traceparent,
        ca_file,
    })
}

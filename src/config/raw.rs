//! The serde mirror of `gateway.yaml` (docs/configuration.md). Every struct denies unknown
//! keys: a typo such as `scopse:` must fail loudly, never disable a check.
//! Values that can be checked in isolation (durations, addresses, header names)
//! are parsed here so their errors carry the YAML line and column.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub listen: RawListen,
    /// Required with `listen.https`.
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub paths: RawPaths,
    #[serde(default)]
    pub cors: BTreeMap<String, RawCors>,
    pub store: Option<RawStore>,
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RawRateLimit>,
    pub revocation: Option<RawRevocation>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub reload: RawReload,
    /// OpenTelemetry traces; left out, none are made.
    pub telemetry: Option<super::telemetry::RawTelemetry>,
}

/// How the configuration is reloaded besides SIGHUP.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReload {
    /// Reload when gateway.yaml or a file it names changes (a Kubernetes
    /// ConfigMap's symlink swap included), debounced by 1 s.
    #[serde(default)]
    pub watch: bool,
}

/// The admin listener's settings (its address is `listen.admin`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    /// A file holding a secret every admin `POST` must carry as
    /// `Authorization: Bearer <secret>`.
    pub token_file: Option<PathBuf>,
}

/// The shared store several instances use (Redis).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub redis: String,
    pub password_env: Option<String>,
    pub timeout: Option<Dur>,
    pub key_prefix: Option<String>,
    /// For `rediss://`: trust this CA (PEM) instead of the public web PKI roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub key: String,
    pub rate: String,
    pub burst: Option<u32>,
    pub store: Option<String>,
    pub on_store_error: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRevocation {
    pub store: String,
    pub max_token_lifetime: Option<Dur>,
    /// `refuse` (default): protected routes answer 503 until the revocation
    /// list has been loaded once; `allow`: serve meanwhile.
    pub until_loaded: Option<String>,
}

/// A named CORS policy, referenced by routes.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCors {
    pub allow_origins: Vec<String>,
    pub allow_methods: Option<Vec<String>>,
    #[serde(default)]
    pub allow_headers: Vec<HeaderNameStr>,
    #[serde(default)]
    pub expose_headers: Vec<HeaderNameStr>,
    #[serde(default)]
    pub allow_credentials: bool,
    pub max_age: Option<Dur>,
}

/// How request paths are treated before routing.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPaths {
    /// Accept `;` in paths. Off by default: Tomcat, Spring and Jetty read
    /// `;...` as path parameters (`/public/..;/admin`), the route table does not.
    #[serde(default)]
    pub allow_semicolons: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    /// Required unless `decision` is set.
    pub https: Option<Addr>,
    pub http: Option<Addr>,
    pub admin: Option<Addr>,
    /// The decision API (forward auth) for a proxy in front: plain HTTP.
    pub decision: Option<Addr>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub min_version: TlsVersion,
    pub hsts: Option<String>,
    #[serde(default)]
    pub self_signed_if_missing: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

impl<'de> Deserialize<'de> for TlsVersion {
    /// `"1.2"` / `"1.3"`, quoted or not (unquoted, YAML reads them as numbers).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Text(String),
            Number(f64),
        }
        let text = match Written::deserialize(d)? {
            Written::Text(s) => s,
            Written::Number(n) => format!("{n:.1}"),
        };
        match text.as_str() {
            "1.2" => Ok(TlsVersion::Tls12),
            "1.3" => Ok(TlsVersion::Tls13),
            other => Err(serde::de::Error::custom(format!(
                "tls.min_version {other:?} is not supported: write \"1.2\" or \"1.3\""
            ))),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLimits {
    pub header_read_timeout: Dur,
    pub idle_timeout: Dur,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub max_connections: usize,
    pub shutdown_grace: Dur,
    pub send_timeout: Dur,
    pub max_concurrent_streams: u32,
    pub max_stream_resets: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            header_read_timeout: Dur(Duration::from_secs(10)),
            idle_timeout: Dur(Duration::from_secs(60)),
            max_header_bytes: 16384,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 10_000,
            shutdown_grace: Dur(Duration::from_secs(30)),
            send_timeout: Dur(Duration::from_secs(60)),
            max_concurrent_streams: 100,
            max_stream_resets: 200,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProvider {
    pub issuer: Option<String>,
    pub audiences: Option<Vec<String>>,
    #[serde(default)]
    pub discovery: bool,
    pub jwks_uri: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub public_key_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub algorithms: Option<Vec<String>>,
    pub leeway: Option<Dur>,
    pub jwks_refresh: Option<Dur>,
    pub scope_claims: Option<Vec<String>>,
    pub subject_claim: Option<String>,
    pub typ: Option<String>,
    /// Opaque tokens: ask the provider (RFC 7662).
    pub introspection: Option<super::introspection::RawIntrospection>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdentity {
    pub subject_header: Option<HeaderNameStr>,
    pub scopes_header: Option<HeaderNameStr>,
    #[serde(default)]
    pub claims: BTreeMap<HeaderNameStr, RawClaimHeader>,
    pub strip_incoming: Option<Vec<String>>,
    #[serde(default)]
    pub forward_authorization: bool,
    /// A JWT signed by the gateway on each forwarded request with a verified identity.
    pub assertion: Option<super::assertion::RawAssertion>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub targets: Vec<String>,
    pub connect_timeout: Option<Dur>,
    pub request_timeout: Option<Dur>,
    pub host: Option<String>,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    pub max_connections: Option<usize>,
    /// WebSocket tunnels open at once per target (default: half of
    /// `max_connections`); each also holds one of `max_connections`.
    pub max_tunnels: Option<usize>,
}

/// How the gateway speaks to an upstream's targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over keep-alive connections, one request at a time per connection.
    #[default]
    #[serde(rename = "http1")]
    Http1,
    /// HTTP/2 over TLS, negotiated with ALPN `h2` (for `https://` targets).
    #[serde(rename = "h2")]
    H2,
    /// HTTP/2 over plain TCP with prior knowledge (for `http://` targets).
    #[serde(rename = "h2c")]
    H2c,
}

impl UpstreamProtocol {
    pub(crate) fn is_http2(self) -> bool {
        self != UpstreamProtocol::Http1
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    /// Required unless `listen.decision` is set (a route only decided on).
    pub upstream: Option<String>,
    pub strip_prefix: Option<String>,
    pub auth: Option<RawAuth>,
    #[serde(default)]
    pub public: bool,
    pub websocket: Option<RawWebSocket>,
    pub cors: Option<String>,
    pub rate_limits: Option<Vec<String>>,
    /// Client address ranges allowed on the route (the TCP peer).
    pub source_ips: Option<Vec<String>>,
}

/// `websocket: true` or `websocket: { idle_timeout, close_at_token_expiry }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawWebSocket {
    Enabled(bool),
    Settings(RawWebSocketSettings),
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWebSocketSettings {
    pub idle_timeout: Option<Dur>,
    pub close_at_token_expiry: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub path: Option<String>,
    pub path_exact: Option<String>,
    pub path_template: Option<String>,
    pub methods: Option<Vec<String>>,
    pub host: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub providers: Option<Vec<String>>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub any_scopes: Vec<String>,
    pub token_sources: Option<Vec<String>>,
    pub mode: Option<String>,
    /// Conditions on the verified claims; every one must hold.
    pub claims: Option<Vec<RawCondition>>,
    /// Serve RFC 9728 protected-resource metadata for the route.
    #[serde(default)]
    pub resource_metadata: bool,
}

/// An identity header from a claim: `X-Auth-Email: email`, or
/// `{ claim: /realm_access/roles, join: ",", format: plain | json }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum RawClaimHeader {
    Claim(String),
    Settings(RawClaimHeaderSettings),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClaimHeaderSettings {
    /// A JSON Pointer (`/realm_access/roles`) or a top-level claim name.
    pub claim: String,
    /// Separator for an array of strings (default `,`).
    pub join: Option<String>,
    /// `plain` (default) or `json` (compact JSON, non-ASCII escaped).
    pub format: Option<String>,
}

/// One `auth.claims` condition: `claim` and one operator, or one combinator.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    /// A JSON Pointer (`/realm_access/roles`) or a top-level claim name.
    pub claim: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub equals: Option<serde_json::Value>,
    #[serde(rename = "in")]
    pub in_: Option<Vec<serde_json::Value>>,
    #[serde(default, deserialize_with = "present")]
    pub contains: Option<serde_json::Value>,
    pub contains_any: Option<Vec<serde_json::Value>>,
    pub contains_all: Option<Vec<serde_json::Value>>,
    pub exists: Option<bool>,
    pub prefix: Option<String>,
    pub any_of: Option<Vec<RawCondition>>,
    pub all_of: Option<Vec<RawCondition>>,
    pub not: Option<Box<RawCondition>>,
}

/// A key that is present, even with the value `null` (which `equals: null` means).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// A string schema for the value types parsed by hand below.
fn string_schema(description: &str, pattern: Option<&str>) -> Schema {
    match pattern {
        Some(p) => json_schema!({ "type": "string", "description": description, "pattern": p }),
        None => json_schema!({ "type": "string", "description": description }),
    }
}

impl JsonSchema for TlsVersion {
    fn schema_name() -> Cow<'static, str> {
        "TlsVersion".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "The lowest TLS version accepted: \"1.2\" (default) or \"1.3\"",
            "enum": ["1.2", "1.3", 1.2, 1.3]
        })
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "A duration: a whole number and ms, s, m or h",
            Some("^[0-9]+(ms|s|m|h)$"),
        )
    }
}

impl JsonSchema for Addr {
    fn schema_name() -> Cow<'static, str> {
        "ListenAddress".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema("IP:port, e.g. 0.0.0.0:8443 or [::1]:8443", None)
    }
}

impl JsonSchema for HeaderNameStr {
    fn schema_name() -> Cow<'static, str> {
        "HeaderName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema("An HTTP header name", Some("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))
    }
}

/// The JSON Schema (2020-12) of `gateway.yaml`, generated from these types.
pub fn schema() -> String {
    let schema = schemars::schema_for!(RawConfig);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// A duration written as `250ms`, `30s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Dur).map_err(serde::de::Error::custom)
    }
}

/// Parse `<integer><unit>` with unit `ms`, `s`, `m` or `h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let hint = || format!("invalid duration {s:?}: write a whole number and a unit, e.g. 250ms, 30s, 5m, 1h");
    let n: u64 = digits.parse().map_err(|_| hint())?;
    let per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(hint()),
    };
    n.checked_mul(per_unit).map(Duration::from_millis).ok_or_else(hint)
}

/// A listener address, `IP:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addr(pub SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Addr).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid listen address {s:?}: write IP:port, e.g. 0.0.0.0:8443 or [::1]:8443"
            ))
        })
    }
}

/// An HTTP header name, checked for syntax where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderNameStr(pub http::HeaderName);

impl Ord for HeaderNameStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_str().cmp(other.0.as_str())
    }
}

impl PartialOrd for HeaderNameStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<'de> Deserialize<'de> for HeaderNameStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        http::HeaderName::from_bytes(s.as_bytes())
            .map(HeaderNameStr)
            .map_err(|_| serde::de::Error::custom(format!("invalid header name {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_versions_quoted_or_not() {
        let v = |y: &str| serde_yaml::from_str::<TlsVersion>(y);
        assert_eq!(v("\"1.2\"").unwrap(), TlsVersion::Tls12);
        assert_eq!(v("1.3").unwrap(), TlsVersion::Tls13);
        assert!(v("1.1").is_err());
        assert!(v("\"1.0\"").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "30", "s", "1.5s", "-1s", "10 s", "3d", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }
}

//! Configuration: `gateway.yaml` parsed ([`raw`]), then checked and resolved
//! ([`validate`]) into the typed [`Config`] the rest of the gateway uses.
//! Loading never touches the network; key material and certificates are read
//! and parsed when the config is compiled into a snapshot.

mod assertion;
mod browser;
mod claims;
mod ctx;
mod field;
mod files;
mod introspection;
mod locate;
mod provider;
pub mod raw;
mod route;
mod shared_state;
mod telemetry;
mod validate;

pub use assertion::Assertion;
pub(crate) use browser::origin_pattern;
pub use field::Field;
pub use introspection::{ClientAuth, Introspection, Secret};
pub(crate) use provider::is_loopback_host;
pub use provider::ALGORITHMS;
pub use route::RESOURCE_METADATA_PREFIX;
pub use telemetry::Telemetry;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

pub use raw::{TlsVersion, UpstreamProtocol};

/// A validated configuration. Paths are absolute or relative to the working
/// directory (already resolved against the config file's directory).
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub listen: Listen,
    /// `None` only without `listen.https`.
    pub tls: Option<Tls>,
    pub limits: Limits,
    pub providers: Vec<Provider>,
    pub identity: IdentitySettings,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
    /// `paths.allow_semicolons`: whether a `;` in a request path is accepted.
    pub allow_semicolons: bool,
    /// Named CORS policies; routes refer to them by index.
    pub cors: Vec<CorsPolicy>,
    pub store: Option<StoreConfig>,
    /// Named rate-limit policies; routes refer to them by index.
    pub rate_limits: Vec<RateLimitPolicy>,
    pub revocation: Option<RevocationConfig>,
    /// `admin.token_file`'s secret: what every admin `POST` must carry.
    pub admin_token: Option<AdminToken>,
    /// `reload.watch`: reload when this file or one it names changes.
    pub watch: bool,
    /// `telemetry`: OpenTelemetry traces.
    pub telemetry: Option<Telemetry>,
}

/// The admin listener's bearer secret. Never printed, compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub file: PathBuf,
    secret: Vec<u8>,
}

impl AdminToken {
    pub fn new(file: PathBuf, secret: Vec<u8>) -> Self {
        AdminToken { file, secret }
    }

    /// Whether an `Authorization` header value is `Bearer <the secret>`.
    pub(crate) fn admits(&self, authorization: &[u8]) -> bool {
        let Some(given) = authorization
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| &authorization[7..])
        else {
            return false;
        };
        aws_lc_rs::constant_time::verify_slices_are_equal(given, &self.secret).is_ok()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// `store:`: the Redis that instances share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `redis://` or `rediss://` URL, without the password.
    pub url: String,
    pub password_env: Option<String>,
    /// Bound on every command.
    pub timeout: Duration,
    pub key_prefix: String,
    /// CA for `rediss://`; `None`: the public web PKI roots.
    pub ca_file: Option<PathBuf>,
}

/// A rate-limit policy: a GCRA bucket per key value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    pub name: String,
    pub key: LimitKey,
    /// Sustained rate: one request per `interval`.
    pub interval: Duration,
    /// Requests allowed at once.
    pub burst: u32,
    /// Shared by every instance (Redis), or this instance only.
    pub shared: bool,
    /// What to do when the store cannot answer: allow (true) or 503.
    pub allow_on_store_error: bool,
}

/// What a rate-limit bucket is kept per.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    Subject,
    ClientIp,
    Route,
    Header(HeaderName),
    Claim(String),
}

/// `revocation:`: a shared deny-list of tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationConfig {
    /// How long a subject revocation is kept after its `before` time: the
    /// longest a token lives.
    pub max_token_lifetime: Duration,
    /// `until_loaded: refuse`: protected routes answer 503 until the list
    /// has been loaded once, so a fresh instance never serves a revoked token.
    pub refuse_until_loaded: bool,
}

/// A CORS policy (which browser origins may call a route, and how).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    pub name: String,
    pub origins: Vec<OriginPattern>,
    /// `None`: the route's own methods.
    pub allow_methods: Option<Vec<Method>>,
    /// Lower-case header names.
    pub allow_headers: Vec<HeaderName>,
    pub expose_headers: Vec<HeaderName>,
    pub allow_credentials: bool,
    pub max_age: Option<Duration>,
}

/// One entry of `allow_origins`, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `*`: any origin.
    Any,
    /// `scheme://host[:port]` exactly.
    Exact(String),
    /// `scheme://*.suffix[:port]`: one or more labels in front of `.suffix`.
    Subdomains {
        scheme: String,
        suffix: String,
        port: Option<u16>,
    },
}

/// WebSocket upgrades allowed on a route, and how long a tunnel may live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketPolicy {
    pub idle_timeout: Duration,
    pub close_at_token_expiry: bool,
}

/// Where a route's bearer token may come from, in order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer ...`
    Header,
    /// A query parameter of this name.
    Query(String),
    /// A cookie of this name.
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// `None` only for a decision-only gateway.
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The decision API (plain HTTP, for a proxy in front).
    pub decision: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub min_version: TlsVersion,
    /// `None` when `hsts: ""` turns the header off.
    pub hsts: Option<HeaderValue>,
    pub self_signed_if_missing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// A connection that makes no progress sending to the client this long is closed.
    pub send_timeout: Duration,
    /// HTTP/2 streams one client connection may have open at once.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset within ten seconds before it gets a
    /// GOAWAY (CVE-2023-44487, "rapid reset").
    pub max_stream_resets: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    pub issuer: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub keys: KeySource,
    pub ca_file: Option<PathBuf>,
    /// Upper-case JWS names (`RS256`); `None` means "what the keys support".
    pub algorithms: Option<Vec<String>>,
    pub leeway: Duration,
    pub jwks_refresh: Duration,
    pub scope_claims: Vec<String>,
    pub subject_claim: String,
    pub typ: Option<String>,
    /// Opaque tokens are introspected (RFC 7662) when this is set.
    pub introspection: Option<Introspection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// No keys: the provider only introspects opaque tokens.
    IntrospectionOnly,
    Discovery,
    JwksUri(String),
    JwksFile(PathBuf),
    PublicKeyFile(PathBuf),
    SecretEnv(String),
    SecretFile(PathBuf),
}

impl KeySource {
    /// Shared-secret sources carry HMAC keys; all others asymmetric ones.
    pub(crate) fn is_hmac(&self) -> bool {
        matches!(self, KeySource::SecretEnv(_) | KeySource::SecretFile(_))
    }

    /// Keys fetched over the network, rather than read from disk or the environment.
    pub(crate) fn is_remote(&self) -> bool {
        matches!(self, KeySource::Discovery | KeySource::JwksUri(_))
    }
}

#[derive(Debug, Clone)]
pub struct IdentitySettings {
    pub subject_header: HeaderName,
    pub scopes_header: HeaderName,
    pub claims: Vec<ClaimHeader>,
    /// Glob patterns, lower-cased with `_` folded to `-`.
    pub strip_incoming: Vec<String>,
    pub forward_authorization: bool,
    /// `assertion`: the gateway signs a JWT for the upstream.
    pub assertion: Option<Assertion>,
}

/// An identity header taken from a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub header: HeaderName,
    pub claim: crate::policy::Pointer,
    /// Separator for an array of strings.
    pub join: String,
    /// `format: json`: always compact JSON with non-ASCII escaped.
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub targets: Vec<Target>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub host: HostPolicy,
    pub ca_file: Option<PathBuf>,
    pub protocol: UpstreamProtocol,
    /// Open connections per target, idle ones included.
    pub max_connections: usize,
    /// WebSocket tunnels open at once per target (each also counts in
    /// `max_connections`).
    pub max_tunnels: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// `host:port` as written (port always present after validation).
    pub authority: http::uri::Authority,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    Preserve,
    Literal(HeaderValue),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub path: PathMatch,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    /// Lower-case host without port; `None`: any host.
    pub host: Option<String>,
    /// Index into [`Config::upstreams`]; `None`: decided on only (the
    /// decision API), answered 404 on the HTTPS listener.
    pub upstream: Option<usize>,
    pub strip_prefix: Option<String>,
    pub access: Access,
    /// `source_ips`: the client address must be in one (empty: any address).
    pub source_ips: Vec<crate::policy::Cidr>,
    pub websocket: Option<WebSocketPolicy>,
    /// Index into [`Config::cors`].
    pub cors: Option<usize>,
    /// Indexes into [`Config::rate_limits`], checked in this order.
    pub rate_limits: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Segment-boundary prefix, without a trailing `/` (except the root `/`).
    Prefix(String),
    Exact(String),
    /// `{name}` segments match one non-empty segment; the rest is exact.
    Template(crate::routing::template::PathTemplate),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Public,
    Protected(AuthRule),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRule {
    /// Indexes into [`Config::providers`] allowed for this route.
    pub providers: Vec<usize>,
    pub scopes: Vec<String>,
    pub any_scopes: Vec<String>,
    pub token_sources: Vec<TokenSource>,
    /// `mode: monitor`: a request that fails the checks is forwarded anyway
    /// (and logged and counted), for moving checks out of an app safely.
    pub monitor: bool,
    /// `claims`: conditions on the verified claims, checked after the scopes.
    pub claims: Vec<crate::policy::Condition>,
    /// Whether a condition reads `{path.NAME}` (the template's parameters are
    /// then extracted from the request path).
    pub claims_read_path: bool,
    /// `resource_metadata: true`: RFC 9728 metadata is served for the route
    /// and its 401 challenges point at it.
    pub resource_metadata: bool,
}

/// A configuration error: the field it is about, where that field is written,
/// what is wrong with it, and the underlying cause when there is one.
///
/// Printed as one line, `file:line:column: field: message`; the cause is not
/// part of that text but is the error's [`source`](std::error::Error::source),
/// so a reporter that walks the chain prints it once (see [`crate::one_line`]).
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column of the field (or of the YAML syntax error).
    pub position: Option<(usize, usize)>,
    /// The field, shown as a path: `routes[2] (orders).match.path`. `None`
    /// for an error about the whole file (unreadable, not YAML).
    pub field: Option<Field>,
    pub message: String,
    pub cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl ConfigError {
    /// An error about `field`, not yet placed in a file: code that compiles a
    /// validated config (keys, certificates, pools) returns these and
    /// [`ConfigError::in_file`] places them.
    pub fn new(field: impl Into<Field>, message: impl Into<String>) -> Self {
        ConfigError {
            file: PathBuf::new(),
            position: None,
            field: Some(field.into()),
            message: message.into(),
            cause: None,
        }
    }

    /// The same error, caused by `cause`.
    pub(crate) fn because(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    /// Placed in `file`, whose text is `text`: the position is where the field is written.
    pub fn at(mut self, file: &Path, text: &str) -> Self {
        self.file = file.to_path_buf();
        if let Some(field) = &self.field {
            self.position = locate::locate(text, &field.steps());
        }
        self
    }

    /// As [`ConfigError::at`], reading the text from `file`.
    pub(crate) fn in_file(self, file: &Path) -> Self {
        match std::fs::read_to_string(file) {
            Ok(text) => self.at(file, &text),
            Err(_) => ConfigError {
                file: file.to_path_buf(),
                ..self
            },
        }
    }

    /// An error about the whole file.
    fn whole_file(file: &Path, position: Option<(usize, usize)>, message: String) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            position,
            field: None,
            message,
            cause: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A loaded configuration and the warnings found while validating it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// Read and validate `path`. Relative paths inside resolve against its directory.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::whole_file(path, None, "cannot read the configuration file".into()).because(e))?;
        Self::from_yaml(&text, path)
    }

    /// Validate YAML text as if it had been read from `path`.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
        let raw: raw::RawConfig = serde_yaml::from_str(text).map_err(|e| yaml_error(path, &e))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        validate::validate(raw, text, path, &base)
    }
}

fn yaml_error(path: &Path, e: &serde_yaml::Error) -> ConfigError {
    let mut message = e.to_string();
    let position = e.location().map(|l| (l.line(), l.column()));
    // The parser appends "at line L column C"; we print that as file:line:column.
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    ConfigError::whole_file(path, position, message)
}

/// Lower-case a header name and fold `_` into `-`: WSGI/ASGI servers read
/// `X_Auth_Subject` as `X-Auth-Subject`, so both spellings must be stripped.
pub(crate) fn fold_header_name(name: &str) -> String {
    name.bytes()
        .map(|b| if b == b'_' { '-' } else { b.to_ascii_lowercase() as char })
        .collect()
}

/// A secret file's contents, less one trailing newline (`echo secret > file`).
pub(crate) fn read_secret_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}

/// Where a field (`routes[2]`) is written in a configuration file: line and column.
pub(crate) fn position_of(file: &Path, field: &Field) -> Option<(usize, usize)> {
    let text = std::fs::read_to_string(file).ok()?;
    locate::locate(&text, &field.steps())
}

/// The route table as `portcullis check` prints it: one line per route.
pub fn describe_routes(config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::from("ROUTE\tMETHODS\tHOST\tPATH\tUPSTREAM\tACCESS\tBROWSER\n");
    for r in &config.routes {
        let methods = r.methods.as_ref().map_or("*".to_string(), |ms| {
            ms.iter().map(Method::as_str).collect::<Vec<_>>().join(",")
        });
        let path = match &r.path {
            PathMatch::Prefix(p) => format!("{p} (prefix)"),
            PathMatch::Exact(p) => format!("{p} (exact)"),
            PathMatch::Template(t) => format!("{t} (template)"),
        };
        let access = match &r.access {
            Access::Public => "public".to_string(),
            Access::Protected(a) => {
                let providers: Vec<&str> = a.providers.iter().map(|&i| config.providers[i].name.as_str()).collect();
                let mut s = format!("auth providers={}", providers.join(","));
                if !a.scopes.is_empty() {
                    let _ = write!(s, " scopes={}", a.scopes.join(","));
                }
                if !a.any_scopes.is_empty() {
                    let _ = write!(s, " any_scopes={}", a.any_scopes.join(","));
                }
                if a.monitor {
                    s.push_str(" mode=monitor");
                }
                if a.token_sources != [TokenSource::Header] {
                    let sources: Vec<String> = a
                        .token_sources
                        .iter()
                        .map(|t| match t {
                            TokenSource::Header => "header".to_string(),
                            TokenSource::Query(n) => format!("query:{n}"),
                            TokenSource::Cookie(n) => format!("cookie:{n}"),
                        })
                        .collect();
                    let _ = write!(s, " token_sources={}", sources.join(","));
                }
                if !a.claims.is_empty() {
                    let _ = write!(s, " claims={}", a.claims.len());
                }
                if let Some(p) = a
                    .providers
                    .iter()
                    .find(|&&i| config.providers[i].introspection.is_some())
                {
                    let _ = write!(s, " introspect={}", config.providers[*p].name);
                }
                if let Some(path) = r.resource_metadata_path() {
                    let _ = write!(s, " metadata={path}");
                }
                s
            }
        };
        let access = if r.source_ips.is_empty() {
            access
        } else {
            let ranges: Vec<String> = r.source_ips.iter().map(ToString::to_string).collect();
            format!("{access} source_ips={}", ranges.join(","))
        };
        let mut browser = Vec::new();
        if let Some(ws) = &r.websocket {
            browser.push(format!("websocket(idle {}s)", ws.idle_timeout.as_secs()));
        }
        if let Some(c) = r.cors {
            browser.push(format!("cors={}", config.cors[c].name));
        }
        let browser = if browser.is_empty() {
            "-".to_string()
        } else {
            browser.join(" ")
        };
        let _ = writeln!(
            out,
            "{}\t{methods}\t{}\t{path}\t{}\t{access}\t{browser}",
            r.name,
            r.host.as_deref().unwrap_or("*"),
            r.upstream.map_or("-", |u| config.upstreams[u].name.as_str())
        );
    }
    out
}

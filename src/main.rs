//! The `portcullis` command line (README, Commands).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[path = "cli/inspect.rs"]
mod inspect;
use inspect::{check, explain, import_openapi, test};

// mimalloc: per-thread free lists instead of glibc's arenas, whose locking and
// chunk consolidation took ~12 % of the CPU of a proxied request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages (`always` on many distributions) turn the allocator's
/// reserved regions into 2 MiB pages at the first touch: 13 MB more at start and
/// ~8 KB more per idle connection, for no measured gain in throughput.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag on
    // this process; no memory is passed to the kernel.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A TLS-terminating API gateway that checks OAuth2 / OIDC bearer tokens"
)]
struct Cli {
    /// Configuration file [default: $PORTCULLIS_CONFIG, else ./gateway.yaml]
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default)
    Run,
    /// Validate the configuration and everything it names; print the route table
    Check,
    /// Start an echo upstream and the gateway on loopback, and print tokens and curl lines
    Demo {
        /// HTTPS port on 127.0.0.1; another free port is used when it is taken, 0 for any
        #[arg(long, default_value_t = 8443)]
        port: u16,
    },
    /// Mint a test token and print it
    Token(Box<TokenArgs>),
    /// What the gateway would do with a request, step by step, without sending it
    Explain(Box<ExplainArgs>),
    /// Print `routes:` for an OpenAPI 3.0/3.1 document (JSON or YAML), e.g. FastAPI's /openapi.json
    ImportOpenapi {
        /// The OpenAPI document
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The upstream the routes send to
        #[arg(long, value_name = "NAME", default_value = "app")]
        upstream: String,
        /// The provider protected routes accept [default: any configured provider]
        #[arg(long, value_name = "NAME")]
        provider: Option<String>,
        /// Make operations without any `security` public (by default they are
        /// protected: apps often check those in their own code)
        #[arg(long)]
        public_when_unsecured: bool,
        /// Also write a starting `portcullis test` case file here (tokens are minted for --provider)
        #[arg(long, value_name = "FILE", requires = "provider")]
        cases: Option<PathBuf>,
    },
    /// Run request → expected-decision cases offline through the gateway's decision code
    Test {
        /// Case files (YAML)
        #[arg(value_name = "CASES.yaml", required = true)]
        files: Vec<PathBuf>,
        /// Print the results as one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of gateway.yaml (for editors and CI linters)
    Schema {
        /// The schema of `portcullis test` case files instead
        #[arg(long)]
        cases: bool,
    },
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write a self-signed development certificate and key
    Certs {
        /// Directory to write gateway.crt and gateway.key into
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Host name or IP the certificate covers (repeatable) [default: localhost, 127.0.0.1, ::1]
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// The request method, e.g. GET
    method: String,
    /// The request URL, e.g. https://api.example.com/orders/7
    url: String,
    /// The bearer token (sent as `Authorization: Bearer ...`)
    #[arg(long, conflicts_with = "token_env")]
    token: Option<String>,
    /// Environment variable holding the bearer token (keeps it out of shell history)
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
    /// A request header, 'Name: value'; repeatable
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// Print the explanation as one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// Signing algorithm [default: HS256 with --secret-env, else from the key type]
    #[arg(long)]
    alg: Option<String>,
    /// PEM private key (RSA, EC or Ed25519)
    #[arg(
        long,
        value_name = "PEM",
        conflicts_with = "secret_env",
        required_unless_present = "secret_env"
    )]
    key: Option<PathBuf>,
    /// Environment variable holding the HMAC secret
    #[arg(long, value_name = "VAR")]
    secret_env: Option<String>,
    #[arg(long)]
    iss: Option<String>,
    #[arg(long)]
    aud: Option<String>,
    #[arg(long)]
    sub: Option<String>,
    /// Space-separated scopes, written to the `scope` claim
    #[arg(long)]
    scope: Option<String>,
    /// Lifetime, e.g. 15m
    #[arg(long, default_value = "15m")]
    ttl: String,
    /// JOSE `kid` header
    #[arg(long)]
    kid: Option<String>,
    /// JOSE `typ` header, e.g. at+jwt
    #[arg(long)]
    typ: Option<String>,
    /// Extra claim name=value (value parsed as JSON when it can be); repeatable
    #[arg(long = "claim", value_name = "K=V")]
    claims: Vec<String>,
    /// Print this many tokens, one per line, each with its own `jti` (for load tests)
    #[arg(long, default_value_t = 1)]
    count: usize,
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("PORTCULLIS_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("gateway.yaml"))
}

/// Logs go to stderr from a thread of their own: a worker formats its line
/// and hands it over, and the writer thread writes whatever has queued up in
/// one go, so that a busy gateway makes one write per batch, not per request.
/// Lines are never dropped: a writer that falls behind slows the workers
/// down. The returned guard flushes what is queued when dropped.
fn init_tracing() -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("PORTCULLIS_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // Colours only for a person at a terminal: in a file, `docker logs` or
    // the journal, escape codes are noise (journalctl shows "[blob data]").
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // 8,192 queued lines (~2.5 MB) is a fraction of a second at full load.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(8192)
        .thread_name("portcullis-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(portcullis::log_format::Rfc3339Micros)
        .with_writer(writer);
    if json {
        builder.event_format(portcullis::log_format::JsonLines).init();
    } else {
        builder.init();
    }
    guard
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One clear line instead of clap's usage block.
            let first = e.to_string().lines().next().unwrap_or("invalid arguments").to_string();
            eprintln!("{first} (see 'portcullis --help')");
            return ExitCode::from(2);
        }
    };
    let path = config_path(&cli);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&path),
        Command::Check => check(&path),
        Command::Certs { out, hosts } => certs(&out, hosts),
        Command::Token(args) => match token(*args) {
            Ok(tokens) => {
                use std::io::Write;
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let written = tokens
                    .iter()
                    .try_for_each(|t| writeln!(out, "{t}"))
                    .and_then(|()| out.flush());
                if written.is_err() {
                    return ExitCode::FAILURE;
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { port } => demo(port),
        Command::Explain(args) => explain(&path, *args),
        Command::Schema { cases } => {
            if cases {
                print!("{}", portcullis::cases::file::schema());
            } else {
                print!("{}", portcullis::config::raw::schema());
            }
            ExitCode::SUCCESS
        }
        Command::Test { files, json } => test(&path, &files, json),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "portcullis", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::ImportOpenapi {
            file,
            upstream,
            provider,
            public_when_unsecured,
            cases,
        } => import_openapi(
            &file,
            cases.as_deref(),
            portcullis::openapi::ImportOptions {
                upstream,
                provider,
                public_when_unsecured,
                cases: cases.is_some(),
            },
        ),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn demo(port: u16) -> ExitCode {
    let log = init_tracing();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(portcullis::demo::run(port));
    drop(log);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token(args: TokenArgs) -> Result<Vec<String>, String> {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let ttl = portcullis::config::raw::parse_duration(&args.ttl).map_err(|e| format!("--ttl: {e}"))?;
    let parse_alg = |a: &str| {
        a.parse::<Algorithm>()
            .map_err(|_| format!("--alg {a:?}: use one of {}", portcullis::config::ALGORITHMS.join(", ")))
    };
    let (alg, key) = match (&args.key, &args.secret_env) {
        (_, Some(var)) => {
            let secret = std::env::var(var)
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("--secret-env: {var} is not set or is empty"))?;
            let alg = parse_alg(args.alg.as_deref().unwrap_or("HS256"))?;
            if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(format!("--alg {alg:?} needs --key, not a shared secret"));
            }
            (alg, EncodingKey::from_secret(secret.as_bytes()))
        }
        (Some(path), None) => {
            let pem = std::fs::read(path).map_err(|e| format!("--key: cannot read {}: {e}", path.display()))?;
            let alg = match &args.alg {
                Some(a) => parse_alg(a)?,
                None => [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
                    .into_iter()
                    .find(|a| portcullis::mint::pem_signing_key(*a, &pem).is_ok())
                    .ok_or_else(|| format!("--key: {} is not an RSA, EC or Ed25519 private key", path.display()))?,
            };
            (alg, portcullis::mint::pem_signing_key(alg, &pem)?)
        }
        (None, None) => return Err("give --key PEM or --secret-env VAR".into()),
    };
    let claims = args
        .claims
        .iter()
        .map(|c| portcullis::mint::parse_claim(c))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = portcullis::mint::TokenSpec {
        kid: args.kid,
        typ: args.typ,
        iss: args.iss,
        aud: args.aud,
        sub: args.sub,
        scope: args.scope,
        ttl,
        claims,
    };
    if args.count <= 1 {
        return Ok(vec![portcullis::mint::mint(alg, &key, &spec)?]);
    }
    (0..args.count)
        .map(|i| {
            let mut spec = spec.clone();
            spec.claims
                .push(("jti".into(), serde_json::Value::String(format!("t{i}"))));
            portcullis::mint::mint(alg, &key, &spec)
        })
        .collect()
}

fn run(path: &std::path::Path) -> ExitCode {
    let log = init_tracing();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(portcullis::run(path, |_| {}));
    // What is still queued comes before the last word.
    drop(log);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", portcullis::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn certs(out: &std::path::Path, hosts: Vec<String>) -> ExitCode {
    let hosts = if hosts.is_empty() {
        portcullis::tls::dev_hosts()
    } else {
        hosts
    };
    let (cert, key) = match portcullis::tls::self_signed(&hosts) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: cannot create a certificate for {hosts:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (cert_path, key_path) = (out.join("gateway.crt"), out.join("gateway.key"));
    if let Err(e) = portcullis::tls::write_pair(&cert_path, &key_path, &cert, &key) {
        eprintln!("error: cannot write into {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    println!(
        "wrote {} and {} for {}",
        cert_path.display(),
        key_path.display(),
        hosts.join(", ")
    );
    ExitCode::SUCCESS
}

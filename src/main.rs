//! The `portcullis` command line (SPEC §1).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("PORTCULLIS_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("gateway.yaml"))
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("PORTCULLIS_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
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
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(portcullis::run(path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let (snapshot, warnings) = match portcullis::load(path) {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", portcullis::config::describe_routes(&snapshot.config));
    println!("{}: OK", path.display());
    ExitCode::SUCCESS
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

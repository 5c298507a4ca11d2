//! The commands that read a configuration without serving it: `check`,
//! `explain`, `test` and `import-openapi`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::{runtime, ExplainArgs};

/// Exit 0 when the gateway would forward, 1 when it would refuse, 2 when the
/// request or the configuration cannot be explained.
pub(crate) fn explain(path: &std::path::Path, args: ExplainArgs) -> ExitCode {
    let usage = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(2)
    };
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let Some((name, value)) = h.split_once(':') else {
            return usage(format!("-H {h:?}: write 'Name: value'"));
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.trim().as_bytes()),
            http::HeaderValue::from_str(value.trim()),
        ) else {
            return usage(format!("-H {h:?}: not a valid header"));
        };
        headers.append(name, value);
    }
    let token = match (&args.token, &args.token_env) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(t) if !t.is_empty() => Some(t),
            _ => return usage(format!("--token-env: {var} is not set or is empty")),
        },
        (None, None) => None,
    };
    if let Some(t) = token {
        match http::HeaderValue::from_str(&format!("Bearer {}", t.trim())) {
            Ok(v) => {
                headers.insert(http::header::AUTHORIZATION, v);
            }
            Err(_) => return usage("--token: not a valid header value".into()),
        }
    }
    let (snapshot, runtime) = match loaded_with_runtime(path) {
        Ok(both) => both,
        Err(code) => return code,
    };
    // Remote keys are fetched, and an opaque token introspected, as the gateway would.
    let explained = runtime.block_on(async {
        for p in snapshot.providers.iter().filter(|p| p.remote.is_some()) {
            if let Ok(Err(e)) = tokio::time::timeout(std::time::Duration::from_secs(10), p.refresh()).await {
                eprintln!("warning: providers.{}: cannot fetch keys: {e}", p.config.name);
            }
        }
        portcullis::explain::explain(&snapshot, &args.method, &args.url, headers).await
    });
    let explanation = match explained {
        Ok(x) => x,
        Err(e) => return usage(e),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation).unwrap_or_default());
    } else {
        print!("{}", explanation.to_text());
    }
    if explanation.forwards() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The configuration as `check` loads it and a runtime to ask the network
/// with (`explain`, `test`); exit 2 when either cannot be had.
fn loaded_with_runtime(
    path: &std::path::Path,
) -> Result<(portcullis::snapshot::Snapshot, tokio::runtime::Runtime), ExitCode> {
    let (snapshot, _warnings) = portcullis::load_config(path).map_err(|e| {
        eprintln!("{}", portcullis::one_line(&e));
        ExitCode::from(2)
    })?;
    let runtime = runtime().map_err(|_| ExitCode::from(2))?;
    Ok((snapshot, runtime))
}

/// `portcullis test`: exit 0 when every case passes, 1 when one fails, 2 when
/// the configuration or a case file is wrong.
pub(crate) fn test(path: &std::path::Path, files: &[PathBuf], json: bool) -> ExitCode {
    let (snapshot, runtime) = match loaded_with_runtime(path) {
        Ok(both) => both,
        Err(code) => return code,
    };
    let report = match runtime.block_on(portcullis::cases::run(&snapshot, files)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("{}", portcullis::one_line(&e));
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", report.to_text());
    }
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub(crate) fn import_openapi(
    file: &std::path::Path,
    cases_file: Option<&std::path::Path>,
    options: portcullis::openapi::ImportOptions,
) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    match portcullis::openapi::import(&text, &options) {
        Ok(out) => {
            for note in &out.notes {
                eprintln!("note: {note}");
            }
            print!("{}", out.yaml);
            if let (Some(path), Some(cases)) = (cases_file, &out.cases) {
                if let Err(e) = std::fs::write(path, cases) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("cases for `portcullis test` written to {}", path.display());
            }
            eprintln!(
                "{} routes from {}; review them with `portcullis check` before use",
                out.routes,
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn check(path: &std::path::Path) -> ExitCode {
    let (snapshot, warnings) = match portcullis::load_config(path) {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("{}", portcullis::one_line(&e));
            return ExitCode::FAILURE;
        }
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", portcullis::config::describe_routes(&snapshot.config));
    if let Some(t) = &snapshot.config.telemetry {
        let incoming = if t.trust_incoming_traceparent {
            "continued"
        } else {
            "replaced"
        };
        println!(
            "traces: {} (sample_ratio {}, incoming traceparent {incoming})",
            t.traces_url, t.sample_ratio
        );
    }
    println!("{}: OK", path.display());
    ExitCode::SUCCESS
}

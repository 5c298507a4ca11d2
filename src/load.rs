//! The one way a configuration file becomes a [`Snapshot`]: read, validate,
//! create the development certificate when asked to, read and parse every
//! file named, compile. `check`, startup and SIGHUP all come through here, so
//! what `check` accepts is exactly what the gateway runs.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::snapshot::Snapshot;

/// What the load is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `portcullis check`: nothing is written to disk.
    Check,
    /// Startup or reload: `tls.self_signed_if_missing` may create the certificate.
    Serve,
}

/// Load `path` into a snapshot. `previous` (on reload) lends what is unchanged:
/// upstream connection pools, fetched provider keys, rate-limit buckets, the store.
/// Returns the snapshot and the configuration's warnings.
pub fn load(
    path: &Path,
    previous: Option<&Snapshot>,
    purpose: Purpose,
) -> Result<(Snapshot, Vec<String>), ConfigError> {
    let mut loaded = Config::load(path)?;
    loaded
        .warnings
        .extend(crate::routing::overlap::lint(&loaded.config.routes));
    if purpose == Purpose::Serve {
        if let Some(tls) = &loaded.config.tls {
            crate::tls::ensure_self_signed(tls).map_err(|e| e.in_file(path))?;
        }
    }
    let snapshot = Snapshot::build(loaded.config, previous)?;
    Ok((snapshot, loaded.warnings))
}

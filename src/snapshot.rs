//! The compiled, immutable form of one configuration: everything a request
//! needs, built once per load or reload and swapped in atomically.

use std::sync::Arc;

use rustls::ServerConfig;

use crate::config::{Config, ConfigError};
use crate::proxy::forward::{SharedPool, UpstreamPool};
use crate::proxy::headers::StripRules;
use crate::routing::table::RouteTable;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub tls: Arc<ServerConfig>,
    pub routes: RouteTable,
    /// Indexed like `config.upstreams`.
    pub upstreams: Vec<SharedPool>,
    pub strip: StripRules,
}

impl Snapshot {
    /// Read and parse everything the configuration names. Upstream pools whose
    /// configuration is unchanged from `previous` are carried over.
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
        let fail = |message: String| ConfigError {
            file: config.source.clone(),
            position: None,
            message,
        };
        let tls = crate::tls::server_config(&config.tls).map_err(fail)?;
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            let reused = previous.and_then(|p| p.upstreams.iter().find(|old| old.config == *u).cloned());
            let pool = match reused {
                Some(pool) => pool,
                None => Arc::new(UpstreamPool::new(u).map_err(|e| fail(format!("upstreams.{}: {e}", u.name)))?),
            };
            upstreams.push(pool);
        }
        let identity = &config.identity;
        let mut identity_names = vec![&identity.subject_header, &identity.scopes_header];
        identity_names.extend(identity.claims.iter().map(|(h, _)| h));
        let strip = StripRules::new(identity.strip_incoming.clone(), &identity_names);
        let routes = RouteTable::new(config.routes.clone());
        Ok(Snapshot {
            config,
            tls,
            routes,
            upstreams,
            strip,
        })
    }
}

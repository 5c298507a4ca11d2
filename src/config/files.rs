//! Every file a configuration names, for `reload.watch`.

use std::path::PathBuf;

use super::{Config, KeySource};

impl Config {
    /// The configuration file and every file it names (certificate, keys,
    /// secrets, key sets, CA bundles), so that a change to any of them reloads.
    pub fn named_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.source.clone()];
        if let Some(tls) = &self.tls {
            files.extend([tls.cert.clone(), tls.key.clone()]);
        }
        for p in &self.providers {
            match &p.keys {
                KeySource::JwksFile(f) | KeySource::PublicKeyFile(f) | KeySource::SecretFile(f) => {
                    files.push(f.clone())
                }
                _ => {}
            }
            files.extend(p.ca_file.clone());
            files.extend(p.introspection.as_ref().and_then(|i| i.secret_file.clone()));
        }
        files.extend(self.upstreams.iter().filter_map(|u| u.ca_file.clone()));
        files.extend(self.store.as_ref().and_then(|s| s.ca_file.clone()));
        files.extend(self.admin_token.as_ref().map(|t| t.file.clone()));
        if let Some(a) = &self.identity.assertion {
            files.extend(a.key_files.iter().cloned());
        }
        files.extend(self.telemetry.as_ref().and_then(|t| t.ca_file.clone()));
        files
    }
}

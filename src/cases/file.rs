//! The case file of `portcullis test`: requests and the decision each must
//! get. Unknown keys are errors, as in gateway.yaml, and every error is placed
//! at `file:line:column`.

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::ConfigError;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    pub cases: Vec<Case>,
}

/// One request and the decision it must get.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub request: CaseRequest,
    /// A token the runner mints for a provider, or a literal one; sent as
    /// `Authorization: Bearer ...`.
    pub token: Option<CaseToken>,
    /// The answer an introspecting provider gives about the case's opaque token.
    pub introspection: Option<Map<String, Value>>,
    pub expect: Expect,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    #[serde(default = "get")]
    pub method: String,
    /// An absolute URL: `https://api.example.com/orders?x=1` (the host routes).
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CaseToken {
    /// A literal bearer string (an expired token, a forged one, an opaque one).
    Raw { raw: String },
    /// Minted for `provider`, signed with a key that stands in for its keys
    /// during the run: `iss` and `aud` (its first audience) unless `claims`
    /// sets them, `exp` an hour ahead unless set.
    Minted {
        provider: String,
        #[serde(default)]
        claims: Map<String, Value>,
    },
}

/// What the case expects; only `status` is required.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub status: u16,
    /// The JSON `error` of a refusal.
    pub error: Option<String>,
    /// The reason code (docs/errors.md); on a monitor route, what enforcement would refuse for.
    pub reason: Option<String>,
    pub route: Option<String>,
    pub upstream: Option<String>,
    /// The path as forwarded (after `strip_prefix`); with `?`, the query too.
    pub path: Option<String>,
    /// Headers the upstream would get; `null`: absent.
    pub headers: Option<BTreeMap<String, Option<String>>>,
}

/// Read and parse a case file.
pub fn load(path: &Path) -> Result<(CaseFile, String), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("cases", format!("cannot read {}: {e}", path.display())))?;
    let file: CaseFile = serde_yaml::from_str(&text).map_err(|e| {
        let mut message = e.to_string();
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        let mut err = ConfigError::new("cases", message);
        err.file = path.to_path_buf();
        err.position = e.location().map(|l| (l.line(), l.column()));
        err.field = None;
        err
    })?;
    Ok((file, text))
}

/// JSON Schema of the case file, for editors (`portcullis schema --cases`).
pub fn schema() -> String {
    let schema = schemars::schema_for!(CaseFile);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

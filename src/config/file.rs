//! The config file's schema (serde, `deny_unknown_fields`), read key by key so that every unknown
//! key and ill-typed value is reported in one run, never with a value that could be a secret.
//!
//! serde stops at the first error, and its messages quote the offending value. So each key is
//! first checked alone against its section's struct ([`probe`]); the ones that fail become
//! [`Problem`](super::Problem)s with the value left out, and only the good ones are deserialized.

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use super::Problems;

/// The top-level tables of the file, in the order they are documented.
pub(super) const SECTIONS: [&str; 14] = [
    "component",
    "accounts",
    "upstream",
    "listen",
    "store",
    "refresh",
    "admin",
    "proxy",
    "server",
    "clients",
    "messages",
    "events",
    "quota",
    "releases",
];

/// What the file (with the environment applied) said, before any value is checked. Absent keys
/// are `None`, so that `validate` can tell "not set" (take the default) from "set".
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileConfig {
    pub component: ComponentFile,
    pub accounts: Vec<AccountFile>,
    pub upstream: UpstreamFile,
    pub listen: ListenFile,
    pub store: StoreFile,
    pub refresh: RefreshFile,
    pub admin: AdminFile,
    pub proxy: ProxyFile,
    pub server: ServerFile,
    pub clients: Vec<ClientFile>,
    pub messages: MessagesFile,
    pub events: EventsFile,
    pub quota: QuotaFile,
    pub releases: ReleasesFile,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ReleasesFile {
    pub audit_poll_secs: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct QuotaFile {
    pub guard: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ComponentFile {
    pub appid: Option<String>,
    pub appsecret: Option<String>,
    pub token: Option<String>,
    pub encoding_aes_key: Option<String>,
}

/// One `[[accounts]]`: an account the company owns, by its appid and AppSecret.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct AccountFile {
    pub appid: Option<String>,
    pub secret: Option<String>,
    pub secret_env: Option<String>,
    pub token: Option<String>,
    pub encoding_aes_key: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct UpstreamFile {
    pub base_url: Option<String>,
    pub timeout_ms: Option<i64>,
    pub mp_base_url: Option<String>,
    pub fallback_urls: Option<Vec<String>>,
    pub ca_file: Option<String>,
    pub proxy: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ListenFile {
    pub proxy: Option<String>,
    pub admin: Option<String>,
    pub public_base_url: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct StoreFile {
    pub backend: Option<String>,
    pub path: Option<String>,
    pub redis_url: Option<String>,
    pub key_prefix: Option<String>,
    pub redis_timeout_ms: Option<i64>,
    pub redis_wait_replicas: Option<i64>,
    pub redis_wait_timeout_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RefreshFile {
    pub ahead_secs: Option<i64>,
    pub reconcile_hours: Option<i64>,
    pub budget_per_minute: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct AdminFile {
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ProxyFile {
    pub max_body_bytes: Option<i64>,
    pub replay_body_bytes: Option<i64>,
    pub access_log: Option<bool>,
    pub access_log_format: Option<String>,
    pub keepalive_timeout_secs: Option<i64>,
    pub header_timeout_secs: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ServerFile {
    pub threads: Option<i64>,
    pub shutdown_grace_secs: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ClientFile {
    pub name: Option<String>,
    pub key: Option<String>,
    pub authorizers: Option<Vec<String>>,
    pub component: Option<bool>,
    pub reveal_tokens: Option<bool>,
    pub rate_per_second: Option<f64>,
    pub daily_share: Option<f64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct MessagesFile {
    pub reply_timeout_ms: Option<i64>,
    pub max_age_hours: Option<i64>,
    pub release_check: Option<bool>,
    /// Last, so that TOML writes the scalar keys before the `[[messages.routes]]` tables.
    pub routes: Vec<RouteFile>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct EventsFile {
    pub routes: Vec<EventRouteFile>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct EventRouteFile {
    pub name: Option<String>,
    pub info_types: Option<Vec<String>>,
    pub url: Option<String>,
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RouteFile {
    pub name: Option<String>,
    pub authorizers: Option<Vec<String>>,
    pub msg_types: Option<Vec<String>>,
    pub events: Option<Vec<String>>,
    pub url: Option<String>,
    pub token: Option<String>,
    pub mode: Option<String>,
}

/// Why one key was refused by its section's struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyError {
    UnknownSection,
    UnknownKey {
        known: Vec<String>,
    },
    /// `expected` and `found` are type names ("an integer"), never values.
    WrongType {
        expected: String,
        found: String,
    },
}

impl KeyError {
    pub fn message(&self, value: &Value) -> String {
        match self {
            Self::UnknownSection => "unknown section".to_owned(),
            Self::UnknownKey { known } => format!("unknown key (known keys: {})", known.join(", ")),
            Self::WrongType { expected, found } if value.is_array() && expected != "an array" => {
                format!("every entry must be {expected}, not {found}")
            }
            Self::WrongType { expected, found } => format!("must be {expected}, not {found}"),
        }
    }

    /// Reads serde's message, whose wording is serde's own (`Error::unknown_field` and
    /// `Error::invalid_type`), keeping only key and type names.
    fn from_serde(message: &str) -> Self {
        if let Some(rest) = message.strip_prefix("unknown field `") {
            // "..., expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, `c`".
            let names = rest.split_once(", expected ").map_or("", |(_, names)| names);
            let known = names.split('`').skip(1).step_by(2).map(str::to_owned).collect();
            return Self::UnknownKey { known };
        }
        let (found, expected) = message
            .strip_prefix("invalid type: ")
            .and_then(|rest| rest.rsplit_once(", expected "))
            .unwrap_or(("another type", "a different type"));
        Self::WrongType { expected: type_name(expected), found: type_name(found) }
    }
}

/// serde's name of a type (or of an unexpected value, "integer `5`") as the TOML user knows it.
fn type_name(serde_name: &str) -> String {
    let word = serde_name.trim_start_matches("a ").split([' ', '`', '"']).next().unwrap_or("");
    let name = match word {
        "i64" | "u64" | "integer" => "an integer",
        "string" => "a string",
        "boolean" => "a boolean (true or false)",
        "floating" => "a float",
        "sequence" => "an array",
        "map" => "a table",
        _ => "another type",
    };
    name.to_owned()
}

/// Checks one key against its section's struct, by deserializing a table that holds only it.
pub(super) fn probe(section: &str, key: &str, value: &Value) -> Result<(), KeyError> {
    let one = Value::Table(Table::from_iter([(key.to_owned(), value.clone())]));
    let result = match section {
        "component" => ComponentFile::deserialize(one).map(drop),
        "accounts" => AccountFile::deserialize(one).map(drop),
        "upstream" => UpstreamFile::deserialize(one).map(drop),
        "listen" => ListenFile::deserialize(one).map(drop),
        "store" => StoreFile::deserialize(one).map(drop),
        "refresh" => RefreshFile::deserialize(one).map(drop),
        "admin" => AdminFile::deserialize(one).map(drop),
        "proxy" => ProxyFile::deserialize(one).map(drop),
        "server" => ServerFile::deserialize(one).map(drop),
        "clients" => ClientFile::deserialize(one).map(drop),
        "messages" => MessagesFile::deserialize(one).map(drop),
        "messages.routes" => RouteFile::deserialize(one).map(drop),
        "events" => EventsFile::deserialize(one).map(drop),
        "events.routes" => EventRouteFile::deserialize(one).map(drop),
        "quota" => QuotaFile::deserialize(one).map(drop),
        "releases" => ReleasesFile::deserialize(one).map(drop),
        _ => return Err(KeyError::UnknownSection),
    };
    result.map_err(|e| KeyError::from_serde(e.message()))
}

/// Parses the text as TOML. A syntax error is reported by position and message only: toml's own
/// `Display` quotes the offending line, which may hold a secret.
pub(super) fn parse(text: &str, problems: &mut Problems) -> Option<Table> {
    let error = match text.parse::<Table>() {
        Ok(table) => return Some(table),
        Err(error) => error,
    };
    let offset = error.span().map_or(0, |span| span.start);
    let (line, column, key) = locate(text, offset);
    let message = error.message().trim().replace('\n', "; ");
    problems.push(key, format!("TOML syntax error at line {line}, column {column}: {message}"));
    None
}

/// The line and column of byte `offset`, and the key written on that line (`section.key`), or
/// "file" when the line holds none.
fn locate(text: &str, offset: usize) -> (usize, usize, String) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    let mut section = String::new();
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    let headers = text.lines().take(line).map(|l| l.split('#').next().unwrap_or("").trim());
    for header in headers.filter(|l| l.starts_with('[')) {
        let name = header.trim_matches(|c| c == '[' || c == ']').trim();
        if header.starts_with("[[") && ARRAYS.contains(&name) {
            let count = seen.entry(name).or_default();
            section = format!("{name}[{count}]");
            *count += 1;
        } else {
            section = name.to_owned();
        }
    }
    let key = text.lines().nth(line - 1).and_then(|l| l.split_once('=')).map(|(k, _)| k.trim());
    let key = match key.filter(|k| !k.is_empty() && !k.contains(['"', '\'', '[', ' '])) {
        Some(key) if !section.is_empty() => format!("{section}.{key}"),
        Some(key) => key.to_owned(),
        None => "file".to_owned(),
    };
    (line, column, key)
}

/// Turns the table into the schema, reporting and setting aside every unknown section, unknown
/// key and ill-typed value.
pub(super) fn read(table: Table, problems: &mut Problems) -> FileConfig {
    let mut kept = Table::new();
    for (name, value) in table {
        if let Some(value) = read_section(&name, value, problems) {
            kept.insert(name, value);
        }
    }
    FileConfig::deserialize(Value::Table(kept)).unwrap_or_else(|e| {
        // Unreachable: every key left was accepted by `probe`. Report rather than panic.
        problems.push("file", KeyError::from_serde(e.message()).message(&Value::Boolean(false)));
        FileConfig::default()
    })
}

fn read_section(name: &str, value: Value, problems: &mut Problems) -> Option<Value> {
    match (name, value) {
        (_, Value::Array(items)) if ARRAYS.contains(&name) => Some(Value::Array(read_array(name, items, problems))),
        (_, _) if ARRAYS.contains(&name) => {
            problems.push(name, format!("must be an array of tables: write each as [[{name}]]"));
            None
        }
        ("messages" | "events", Value::Table(table)) => Some(Value::Table(read_routed(name, table, problems))),
        (_, Value::Table(table)) if SECTIONS.contains(&name) => {
            Some(Value::Table(read_keys(name, name, table, problems)))
        }
        (_, Value::Table(_)) => {
            problems.push(name, format!("unknown section (known: {})", SECTIONS.join(", ")));
            None
        }
        (_, _) if SECTIONS.contains(&name) => {
            problems.push(name, format!("must be a table: write it as [{name}]"));
            None
        }
        (_, _) => {
            problems.push(name, "unknown key: every key belongs in a [section]");
            None
        }
    }
}

/// The top-level arrays of tables.
const ARRAYS: [&str; 2] = ["clients", "accounts"];

/// Keeps every item, so that `clients[i]` in a message is the file's i-th client; an item that
/// is not a table is reported and kept as an empty one.
fn read_array(name: &str, items: Vec<Value>, problems: &mut Problems) -> Vec<Value> {
    let read = |(i, item): (usize, Value)| {
        let at = format!("{name}[{i}]");
        let table = match item {
            Value::Table(table) => read_keys(&at, name, table, problems),
            _ => {
                problems.push(&at, "must be a table");
                Table::new()
            }
        };
        Value::Table(table)
    };
    items.into_iter().enumerate().map(read).collect()
}

/// `[messages]` or `[events]`: its own keys, then each `[[{section}.routes]]` table as
/// `{section}.routes[i]`.
fn read_routed(section: &str, mut table: Table, problems: &mut Problems) -> Table {
    let routes = table.remove("routes");
    let mut kept = read_keys(section, section, table, problems);
    let table_name = format!("{section}.routes");
    match routes {
        Some(Value::Array(items)) => {
            let read = |(i, item): (usize, Value)| {
                let at = format!("{table_name}[{i}]");
                let table = match item {
                    Value::Table(table) => read_keys(&at, &table_name, table, problems),
                    _ => {
                        problems.push(&at, "must be a table");
                        Table::new()
                    }
                };
                Value::Table(table)
            };
            kept.insert("routes".to_owned(), Value::Array(items.into_iter().enumerate().map(read).collect()));
        }
        Some(_) => {
            problems.push(&table_name, format!("must be an array of tables: write each route as [[{table_name}]]"))
        }
        None => {}
    }
    kept
}

fn read_keys(at: &str, section: &str, table: Table, problems: &mut Problems) -> Table {
    let mut kept = Table::new();
    for (key, value) in table {
        match probe(section, &key, &value) {
            Ok(()) => {
                kept.insert(key, value);
            }
            Err(e) => problems.push(format!("{at}.{key}"), e.message(&value)),
        }
    }
    kept
}

#[cfg(test)]
mod tests;

//! SIGHUP: the config file read again. The parts that may change without a restart are swapped
//! in whole; a file with any error, or one that changes a key that needs a restart, is refused
//! whole and the running config stays.
//!
//! Each reloadable part is held in an [`ArcSwap`] where it is used: a request loads the current
//! value (a few atomic operations), a reload stores a new one, and no connection notices.
//!
//! # Making a part reloadable
//!
//! 1. In `app.rs`, take it from the [`Live`] instead of building it from the config, e.g.
//!    `let routes = live.part(config, |c| Routes::new(&c.messages));` (an `Arc<ArcSwap<Routes>>`),
//!    and read it with `routes.load()` where it is used.
//! 2. Add its key or section (`"messages"`) to [`RELOADABLE`]; until then a change to it is
//!    refused by name, never accepted and ignored.
//!
//! Which keys changed is decided on the file's keys (with the environment applied), not on the
//! validated `Config`: a key added to the schema later needs a restart until someone says
//! otherwise here, rather than being silently ignored by a reload.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use toml::{Table, Value};

use super::{Config, ConfigError};
use crate::metrics;

/// The keys a reload may change, each with everything under it; every other key needs a
/// restart. Each is taken from [`Live::part`] in `app.rs`.
/// `messages.max_age_hours` is not among them: the outbox takes it at start-up.
pub const RELOADABLE: [&str; 7] = [
    "clients",
    "quota.guard",
    "admin.token",
    "messages.routes",
    "messages.reply_timeout_ms",
    "messages.release_check",
    "events.routes",
];

/// Every key a config's sources set (the file with the environment applied), by dotted path.
/// Tables are walked; arrays (`[[clients]]`, `fallback_urls`) are one value each.
#[derive(Clone, Default, PartialEq)]
pub struct Keys(BTreeMap<String, Value>);

/// The values may be secrets.
impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys({} set)", self.0.len())
    }
}

impl Keys {
    pub(super) fn of(table: &Table) -> Self {
        let mut keys = BTreeMap::new();
        walk("", table, &mut keys);
        Self(keys)
    }

    /// The keys whose value differs in `next` (set, changed or removed) and that a reload
    /// cannot change, sorted.
    pub fn restart_only_changes(&self, next: &Keys) -> Vec<String> {
        let names = self.0.keys().chain(next.0.keys().filter(|k| !self.0.contains_key(*k)));
        let mut changed: Vec<String> =
            names.filter(|k| !is_reloadable(k) && self.0.get(*k) != next.0.get(*k)).cloned().collect();
        changed.sort();
        changed
    }
}

fn walk(prefix: &str, table: &Table, keys: &mut BTreeMap<String, Value>) {
    for (name, value) in table {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        match value {
            Value::Table(inner) => walk(&path, inner, keys),
            other => {
                keys.insert(path, other.clone());
            }
        }
    }
}

fn is_reloadable(key: &str) -> bool {
    RELOADABLE.iter().any(|r| key.strip_prefix(r).is_some_and(|rest| rest.is_empty() || rest.starts_with('.')))
}

/// Where the running config came from: the file to read again, and the keys it had.
pub struct Source {
    path: PathBuf,
    keys: Keys,
}

impl Source {
    pub(super) fn new(path: PathBuf, keys: Keys) -> Self {
        Self { path, keys }
    }
}

/// What one reload did.
#[derive(Debug)]
pub enum Outcome {
    Applied,
    /// The file did not load; nothing changed.
    Invalid(ConfigError),
    /// These keys changed and need a restart; nothing changed.
    RestartRequired(Vec<String>),
    /// The config did not come from a file (`wxgate demo`).
    NoFile,
}

impl Outcome {
    /// The `result` label of `wxgate_config_reloads_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Applied => "ok",
            Self::Invalid(_) | Self::NoFile => "invalid",
            Self::RestartRequired(_) => "refused",
        }
    }
}

type Apply = Box<dyn Fn(&Config) + Send + Sync>;

/// The reloadable parts of the running config, and the file they came from.
pub struct Live {
    source: Option<Mutex<Source>>,
    parts: Vec<Apply>,
}

impl Live {
    /// `source` is `None` for a config that did not come from a file: it never reloads.
    pub fn new(source: Option<Source>) -> Self {
        Self { source: source.map(Mutex::new), parts: Vec::new() }
    }

    pub fn has_file(&self) -> bool {
        self.source.is_some()
    }

    /// A part of the config that reloads replace: built now from `config`, and again from every
    /// file a reload accepts.
    pub fn part<T, F>(&mut self, config: &Config, build: F) -> Arc<ArcSwap<T>>
    where
        T: Send + Sync + 'static,
        F: Fn(&Config) -> T + Send + Sync + 'static,
    {
        let held = Arc::new(ArcSwap::from_pointee(build(config)));
        let target = Arc::clone(&held);
        self.parts.push(Box::new(move |next| target.store(Arc::new(build(next)))));
        held
    }

    /// Reads the file again and, when it is valid and changes only reloadable keys, swaps every
    /// part in. One reload at a time: the lock is held while the file is read.
    pub fn reload(&self) -> Outcome {
        let Some(source) = &self.source else { return Outcome::NoFile };
        let mut running = source.lock().unwrap_or_else(|p| p.into_inner());
        let (config, next) = match Config::load_reloadable(&running.path) {
            Ok(loaded) => loaded,
            Err(e) => return Outcome::Invalid(e),
        };
        let refused = running.keys.restart_only_changes(&next.keys);
        if !refused.is_empty() {
            return Outcome::RestartRequired(refused);
        }
        for apply in &self.parts {
            apply(&config);
        }
        *running = next;
        Outcome::Applied
    }

    /// [`Live::reload`], logged and counted in `wxgate_config_reloads_total`. The log names
    /// keys and problems, never a value.
    pub fn reload_and_report(&self) -> Outcome {
        let outcome = self.reload();
        metrics::CONFIG_RELOADS.with_label_values(&[outcome.label()]).inc();
        match &outcome {
            Outcome::Applied => tracing::info!(reloaded = %RELOADABLE.join(", "), "config reloaded"),
            Outcome::Invalid(e) => {
                let problems = e.to_string().replace('\n', "; ");
                tracing::warn!(%problems, "config reload refused: the file has errors; the running config stays");
            }
            Outcome::RestartRequired(keys) => tracing::warn!(
                keys = %keys.join(", "),
                "config reload refused: these keys change only with a restart; the running config stays"
            ),
            Outcome::NoFile => tracing::warn!("config reload ignored: this config did not come from a file"),
        }
        outcome
    }

    /// Reloads on every SIGHUP, on `rt`, for the life of the process. The handler is in place
    /// when this returns: a SIGHUP's default action would end the process.
    pub fn reload_on_sighup(self: Arc<Self>, rt: &tokio::runtime::Runtime) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = {
            let _entered = rt.enter();
            signal(SignalKind::hangup())?
        };
        rt.spawn(async move {
            while hangups.recv().await.is_some() {
                // A small file read and a parse: brief enough for this runtime's thread.
                self.reload_and_report();
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Keys {
        Keys::of(&text.parse::<Table>().unwrap())
    }

    #[test]
    fn names_the_restart_only_keys_that_changed() {
        let running = keys(
            "[listen]\nproxy = \"127.0.0.1:1\"\n[admin]\ntoken = \"a\"\n[upstream]\nfallback_urls = [\"http://a/\"]\n\
             [[clients]]\nname = \"a\"",
        );
        let next = keys(
            "[listen]\nproxy = \"127.0.0.1:2\"\n[admin]\ntoken = \"b\"\n[upstream]\nfallback_urls = [\"http://b/\"]\n\
             [store]\nbackend = \"memory\"\n[[clients]]\nname = \"b\"\n[admin.token_file]\ny = 1",
        );
        let named = ["admin.token_file.y", "listen.proxy", "store.backend", "upstream.fallback_urls"];
        assert_eq!(running.restart_only_changes(&next), named);
        assert_eq!(next.restart_only_changes(&running), named);
        assert!(running.restart_only_changes(&running).is_empty());
    }

    #[test]
    fn a_reloadable_prefix_covers_only_its_own_keys() {
        assert!(is_reloadable("clients"));
        assert!(is_reloadable("admin.token"));
        assert!(is_reloadable("clients.key"));
        assert!(is_reloadable("events.routes"));
        assert!(!is_reloadable("admin.token_file"));
        assert!(!is_reloadable("clientsx"));
        assert!(!is_reloadable("admin"));
    }

    #[test]
    fn keys_never_print_their_values() {
        let k = keys("[admin]\ntoken = \"admin-token-0123456789\"");
        assert_eq!(format!("{k:?}"), "Keys(1 set)");
    }
}

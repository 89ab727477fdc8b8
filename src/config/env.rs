//! `WXGATE_<SECTION>_<KEY>` environment overrides, written into the parsed file before it is read.

use std::collections::BTreeMap;

use toml::{Table, Value};

use super::file::{probe, KeyError};
use super::{Problems, NON_KEY_ENV_VARS};

const PREFIX: &str = "WXGATE_";

/// Which keys (`section.key`) the environment set, and by which variable, so that a problem
/// with such a key can name the variable to fix.
pub(super) type Origins = BTreeMap<String, String>;

/// The process's `WXGATE_*` variables. Read with `vars_os`, since `std::env::vars` panics on any
/// variable that is not UTF-8, ours or not; a value of ours that is not UTF-8 keeps a U+FFFD
/// marker, which [`apply`] reports.
pub(super) fn process_vars() -> Vec<(String, String)> {
    let ours = std::env::vars_os().filter_map(|(name, value)| {
        let name = name.into_string().ok().filter(|n| n.starts_with(PREFIX))?;
        Some((name, value.to_string_lossy().into_owned()))
    });
    ours.collect()
}

/// Writes every `WXGATE_*` variable into `table` over the file's value, reporting variables that
/// name no key and values of the wrong type. Other variables are ignored.
pub(super) fn apply(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Problems,
) -> Origins {
    let mut origins = Origins::new();
    for (var, raw) in env {
        if !var.starts_with(PREFIX) || NON_KEY_ENV_VARS.contains(&var.as_str()) {
            continue;
        }
        match parse_var(&var, &raw) {
            Ok((section, key, value)) => {
                set(table, &section, &key, value);
                origins.insert(format!("{section}.{key}"), var);
            }
            Err((key, message)) => problems.push(key, message),
        }
    }
    origins
}

type VarError = (String, String);

/// The section, key and typed value a variable sets, or the problem to report (keyed by the
/// variable when it names no key, else by the key). Never quotes the value.
fn parse_var(var: &str, raw: &str) -> Result<(String, String, Value), VarError> {
    let name = var[PREFIX.len()..].to_ascii_lowercase();
    let unknown = || (var.to_owned(), unknown_message(None));
    let (section, key) = name.split_once('_').ok_or_else(unknown)?;
    if section == "clients" {
        let message = "clients cannot be set from the environment: list them as [[clients]] in the file";
        return Err((var.to_owned(), message.to_owned()));
    }
    if matches!(section, "messages" | "events") && key == "routes" {
        let message = format!(
            "{section}.routes cannot be set from the environment: list them as [[{section}.routes]] in the file"
        );
        return Err((var.to_owned(), message));
    }
    if raw.contains('\u{FFFD}') {
        return Err((format!("{section}.{key}"), format!("{var} is not valid UTF-8")));
    }
    let value = typed(section, key, raw).map_err(|e| match e {
        KeyError::UnknownSection => unknown(),
        KeyError::UnknownKey { known } => (var.to_owned(), unknown_message(Some((section, &known)))),
        KeyError::WrongType { expected, .. } => (format!("{section}.{key}"), format!("{var} must be {expected}")),
    })?;
    Ok((section.to_owned(), key.to_owned(), value))
}

/// The variable's text as whichever TOML type its key takes: a string, else an integer, else a
/// boolean. The error is the first refusal, which names the type the key wants.
fn typed(section: &str, key: &str, raw: &str) -> Result<Value, KeyError> {
    let candidates = [
        Some(Value::from(raw)),
        raw.trim().parse::<i64>().ok().map(Value::Integer),
        raw.trim().parse::<bool>().ok().map(Value::Boolean),
    ];
    let mut first_refusal = None;
    for value in candidates.into_iter().flatten() {
        match probe(section, key, &value) {
            Ok(()) => return Ok(value),
            Err(e @ (KeyError::UnknownSection | KeyError::UnknownKey { .. })) => return Err(e),
            Err(e) => {
                first_refusal.get_or_insert(e);
            }
        }
    }
    Err(first_refusal.unwrap_or(KeyError::UnknownSection))
}

fn unknown_message(section: Option<(&str, &[String])>) -> String {
    let others = NON_KEY_ENV_VARS.join(" or ");
    match section {
        None => format!("unknown variable: it names no config key (WXGATE_<SECTION>_<KEY>) and is not {others}"),
        Some((section, known)) => {
            let vars: Vec<String> = known.iter().map(|k| env_name(section, k)).collect();
            format!("unknown variable: the [{section}] ones are {}", vars.join(", "))
        }
    }
}

/// The variable that overrides `section.key`.
pub(super) fn env_name(section: &str, key: &str) -> String {
    format!("{PREFIX}{section}_{key}").to_ascii_uppercase()
}

/// Sets `section.key`, creating the section if the file had none. A section that is not a table
/// has already been reported by the file reader, so the value is dropped.
fn set(table: &mut Table, section: &str, key: &str, value: Value) {
    let entry = table.entry(section).or_insert_with(|| Value::Table(Table::new()));
    if let Value::Table(section) = entry {
        section.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn sets_typed_values_over_the_file() {
        let mut table: Table = "[upstream]\ntimeout_ms = 5\n".parse().unwrap();
        let mut problems = Problems::default();
        let env = vars(&[
            ("WXGATE_UPSTREAM_TIMEOUT_MS", "2500"),
            ("WXGATE_LISTEN_PUBLIC_BASE_URL", "https://gw.example.com"),
            ("WXGATE_CONFIG", "conf/x.toml"),
            ("WXGATE_LOG", "debug"),
            ("PATH", "/bin"),
        ]);
        let origins = apply(&mut table, env, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(table["upstream"]["timeout_ms"], Value::Integer(2500));
        assert_eq!(table["listen"]["public_base_url"], Value::from("https://gw.example.com"));
        assert_eq!(origins["upstream.timeout_ms"], "WXGATE_UPSTREAM_TIMEOUT_MS");
        assert_eq!(origins.len(), 2);
    }

    #[test]
    fn reports_unknown_variables_and_bad_numbers() {
        let mut problems = Problems::default();
        let env = vars(&[
            ("WXGATE_UPSTREAM_TIMEOUT", "1"),
            ("WXGATE_NOPE_X", "1"),
            ("WXGATE_VERBOSE", "1"),
            ("WXGATE_CLIENTS_KEY", "secretsecretsecret"),
            ("WXGATE_SERVER_THREADS", "many"),
        ]);
        apply(&mut Table::new(), env, &mut problems);
        let lines: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
        assert!(lines[0].starts_with("WXGATE_UPSTREAM_TIMEOUT: unknown variable: the [upstream] ones are WXGATE_UPSTREAM_BASE_URL, WXGATE_UPSTREAM_TIMEOUT_MS, "), "{}", lines[0]);
        assert!(lines[1].starts_with("WXGATE_NOPE_X: unknown variable"), "{}", lines[1]);
        assert!(lines[2].starts_with("WXGATE_VERBOSE: unknown variable"), "{}", lines[2]);
        assert!(lines[3].starts_with("WXGATE_CLIENTS_KEY: clients cannot be set"), "{}", lines[3]);
        assert_eq!(lines[4], "server.threads: WXGATE_SERVER_THREADS must be an integer");
        assert!(!lines.concat().contains("secretsecretsecret"));
    }

    #[test]
    fn env_names_match_keys() {
        assert_eq!(env_name("component", "encoding_aes_key"), "WXGATE_COMPONENT_ENCODING_AES_KEY");
    }
}

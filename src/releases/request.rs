//! `POST /admin/releases`: the body, checked field by field; a bad one is named.

use crate::store::releases::ReleaseMode;
use crate::AppId;
use serde_json::{Map, Value};

/// Accounts at once between their commit and their verdict, unless the body says.
pub const DEFAULT_CONCURRENCY: u32 = 10;
pub const DEFAULT_MAX_FAILURES: u32 = 10;
const MAX_CONCURRENCY: u64 = 1000;
const MAX_TEXT: usize = 1024;

/// Which accounts a job is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// Every active mini program.
    All,
    Only(Vec<AppId>),
}

/// A job as asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub template_id: i64,
    pub user_version: String,
    pub user_desc: String,
    pub ext_json: Option<Value>,
    pub audit: Option<Value>,
    pub targets: Targets,
    pub release: ReleaseMode,
    pub concurrency: u32,
    pub max_failures: u32,
    pub reserve_audit_quota: u64,
}

/// A bad body, naming its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct BadField {
    pub field: &'static str,
    pub why: String,
}

fn bad(field: &'static str, why: impl Into<String>) -> BadField {
    BadField { field, why: why.into() }
}

const FIELDS: [&str; 11] = [
    "template_id",
    "user_version",
    "user_desc",
    "ext_json",
    "authorizers",
    "audit",
    "release",
    "concurrency",
    "max_failures",
    "reserve_audit_quota",
    "comment",
];

impl NewJob {
    pub fn parse(body: &[u8]) -> Result<Self, BadField> {
        let value: Value = serde_json::from_slice(body).map_err(|_| bad("body", "must be a JSON object"))?;
        let Value::Object(map) = value else { return Err(bad("body", "must be a JSON object")) };
        if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(BadField { field: "body", why: format!("unknown field {unknown:?}") });
        }
        Ok(Self {
            template_id: template_id(&map)?,
            user_version: text(&map, "user_version", true)?,
            user_desc: text(&map, "user_desc", false)?,
            ext_json: object(&map, "ext_json")?,
            audit: object(&map, "audit")?,
            targets: targets(&map)?,
            release: match map.get("release") {
                None => ReleaseMode::Auto,
                Some(Value::String(s)) if s == "auto" => ReleaseMode::Auto,
                Some(Value::String(s)) if s == "manual" => ReleaseMode::Manual,
                Some(_) => return Err(bad("release", "must be \"auto\" or \"manual\"")),
            },
            concurrency: number(&map, "concurrency", DEFAULT_CONCURRENCY.into(), 1..=MAX_CONCURRENCY)? as u32,
            max_failures: number(&map, "max_failures", DEFAULT_MAX_FAILURES.into(), 1..=u32::MAX.into())? as u32,
            reserve_audit_quota: number(&map, "reserve_audit_quota", 0, 0..=u64::MAX)?,
        })
    }
}

fn template_id(map: &Map<String, Value>) -> Result<i64, BadField> {
    match map.get("template_id") {
        None => Err(bad("template_id", "is required")),
        Some(v) => v.as_i64().filter(|n| *n >= 0).ok_or_else(|| bad("template_id", "must be a whole number")),
    }
}

fn text(map: &Map<String, Value>, field: &'static str, required: bool) -> Result<String, BadField> {
    match map.get(field) {
        None if required => Err(bad(field, "is required")),
        None => Ok(String::new()),
        Some(Value::String(s)) if required && s.trim().is_empty() => Err(bad(field, "must not be empty")),
        Some(Value::String(s)) if s.chars().count() > MAX_TEXT => {
            Err(bad(field, format!("must be at most {MAX_TEXT} characters")))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(field, "must be a string")),
    }
}

fn object(map: &Map<String, Value>, field: &'static str) -> Result<Option<Value>, BadField> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(_) => Err(bad(field, "must be a JSON object")),
    }
}

fn targets(map: &Map<String, Value>) -> Result<Targets, BadField> {
    const WHY: &str = "must be \"*\" or a non-empty list of appids (\"wx\" + 16 lowercase hex digits)";
    match map.get("authorizers") {
        None => Err(bad("authorizers", "is required")),
        Some(Value::String(s)) if s == "*" => Ok(Targets::All),
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut appids = Vec::with_capacity(items.len());
            for item in items {
                let appid = item.as_str().and_then(|s| AppId::parse(s).ok()).ok_or_else(|| bad("authorizers", WHY))?;
                appids.push(appid);
            }
            appids.sort();
            appids.dedup();
            Ok(Targets::Only(appids))
        }
        Some(_) => Err(bad("authorizers", WHY)),
    }
}

fn number(
    map: &Map<String, Value>,
    field: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, BadField> {
    match map.get(field) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|n| range.contains(n))
            .ok_or_else(|| bad(field, format!("must be a whole number from {} to {}", range.start(), range.end()))),
    }
}

/// `ext_json` for one account: `$APPID$` in any string value replaced by its appid, as the JSON
/// string `wxa/commit` takes.
pub fn ext_json_for(ext: &Value, appid: &AppId) -> String {
    fn walk(v: &Value, appid: &str) -> Value {
        match v {
            Value::String(s) => Value::String(s.replace("$APPID$", appid)),
            Value::Array(items) => Value::Array(items.iter().map(|i| walk(i, appid)).collect()),
            Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), walk(v, appid))).collect()),
            other => other.clone(),
        }
    }
    walk(ext, &appid.as_str()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contracts_example_is_taken() {
        let body = br#"{"template_id": 42, "user_version": "1.4.0", "user_desc": "spring menu",
            "ext_json": {"extAppid": "$APPID$", "ext": {"theme": "red"}},
            "authorizers": ["wx2222222222222222", "wx1111111111111111"],
            "audit": {"version_desc": "menu update", "item_list": []},
            "release": "auto", "concurrency": 10, "max_failures": 10, "reserve_audit_quota": 0}"#;
        let job = NewJob::parse(body).unwrap();
        assert_eq!((job.template_id, job.concurrency, job.release), (42, 10, ReleaseMode::Auto));
        let Targets::Only(appids) = &job.targets else { panic!("a list") };
        assert_eq!(appids[0].to_string(), "wx1111111111111111", "sorted");
        let ext = ext_json_for(job.ext_json.as_ref().unwrap(), &appids[0]);
        assert_eq!(ext, r#"{"ext":{"theme":"red"},"extAppid":"wx1111111111111111"}"#);
    }

    #[test]
    fn a_bad_body_names_its_field() {
        let cases: [(&[u8], &str); 9] = [
            (b"[]", "body"),
            (br#"{"user_version":"1","authorizers":"*"}"#, "template_id"),
            (br#"{"template_id":-1,"user_version":"1","authorizers":"*"}"#, "template_id"),
            (br#"{"template_id":1,"authorizers":"*"}"#, "user_version"),
            (br#"{"template_id":1,"user_version":"1"}"#, "authorizers"),
            (br#"{"template_id":1,"user_version":"1","authorizers":["wxNOPE"]}"#, "authorizers"),
            (br#"{"template_id":1,"user_version":"1","authorizers":"*","release":"later"}"#, "release"),
            (br#"{"template_id":1,"user_version":"1","authorizers":"*","concurrency":0}"#, "concurrency"),
            (br#"{"template_id":1,"user_version":"1","authorizers":"*","ext_json":"{}"}"#, "ext_json"),
        ];
        for (body, field) in cases {
            assert_eq!(NewJob::parse(body).unwrap_err().field, field, "{}", String::from_utf8_lossy(body));
        }
    }
}

//! What operators load next to the gateway: the alert rules pass `promtool check rules`, and the
//! dashboard and the rules name only metrics a running gateway exposes at `/metrics`.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use wxgate::AppId;

const RULES: &str = "conf/prometheus/wxgate-alerts.yml";
const DASHBOARD: &str = "conf/grafana/wxgate.json";

/// Metrics Prometheus makes itself, not the gateway.
const PROMETHEUS_OWN: &[&str] = &["up"];

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(RULES))
        .output()
        .expect("promtool (Debian package prometheus; `bash scripts/setup test` installs it)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("SUCCESS"), "{said}");
}

/// The metric names in a PromQL expression: identifiers outside braces (label matchers),
/// brackets (ranges) and quotes, not followed by `(` (a function), not a keyword, and not in
/// the label list of `by (...)`, `on (...)` and the like (nor the aggregation before a `by`);
/// Grafana's `$variables` skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let (mut depth, mut quote, mut i) = (0i32, None::<char>, 0);
    while i < chars.len() {
        let c = chars[i];
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{' | '[') => depth += 1,
            (None, '}' | ']') => depth -= 1,
            (None, '$') => {
                while i + 1 < chars.len() && word_char(chars[i + 1]) {
                    i += 1;
                }
            }
            (None, c) if depth == 0 && (c.is_ascii_alphabetic() || c == '_') => {
                let start = i;
                while i + 1 < chars.len() && word_char(chars[i + 1]) {
                    i += 1;
                }
                let word: String = chars[start..=i].iter().collect();
                let next = (i + 1..chars.len()).find(|&j| !chars[j].is_whitespace());
                // `sum by (x) (...)`: an aggregation, whose `(` comes after the label list
                let next_word: String =
                    next.map(|j| chars[j..].iter().take_while(|c| word_char(**c)).collect()).unwrap_or_default();
                let called = next.is_some_and(|j| chars[j] == '(') || ["by", "without"].contains(&next_word.as_str());
                if GROUPING.contains(&word.as_str()) && called {
                    // the label list: skip to its `)`
                    i = (next.unwrap()..chars.len()).find(|&j| chars[j] == ')').unwrap_or(chars.len());
                } else if !called && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                    names.insert(word);
                }
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// Every `expr:` of the rules file (single-line or a `>-` block).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let lines: Vec<&str> = yaml.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            let indent = line.len() - line.trim_start().len();
            let rest = rest.trim();
            if rest.starts_with('>') || rest.starts_with('|') {
                let mut block = Vec::new();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty() || lines[i + 1].len() - lines[i + 1].trim_start().len() > indent)
                {
                    i += 1;
                    block.push(lines[i].trim());
                }
                exprs.push(block.join(" "));
            } else {
                exprs.push(rest.to_owned());
            }
        }
        i += 1;
    }
    exprs
}

fn dashboard_exprs(json: &str) -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    exprs
}

/// The families `/metrics` lists, from its `# TYPE` lines.
fn exposed_families(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next().map(str::to_owned)).collect()
}

fn family_of(name: &str) -> &str {
    ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

#[test]
fn the_expression_scanner_finds_metrics_and_skips_labels_functions_and_variables() {
    let names = metric_names(
        r#"sum by (instance, le) (rate(wxgate_x_bucket{job=~"$job", status=~"5.."}[$__rate_interval])) / on (instance) wxgate_y > bool 3 unless up == 0"#,
    );
    assert_eq!(names, ["up", "wxgate_x_bucket", "wxgate_y"].iter().map(|s| s.to_string()).collect());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_the_alerts_use_only_metrics_the_gateway_exposes() {
    let rules = rule_exprs(&read(RULES));
    let panels = dashboard_exprs(&read(DASHBOARD));
    assert!(rules.len() >= 6 && panels.len() >= 8, "{rules:?} {panels:?}");

    // A gateway that has done a bit of everything, so that every labelled family has a sample.
    let mut setup = Setup::new();
    let sandbox = setup.sandbox(7200).await;
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    let account = AppId::parse("wx1111111111111111").unwrap();
    sandbox.authorize(&account).await.unwrap();
    eventually(Duration::from_secs(10), "the account is active", || async {
        let a: serde_json::Value = gw.admin_get(&format!("/admin/authorizers/{account}")).await.json().await.unwrap();
        a["state"] == "active"
    })
    .await;
    let url = gw.proxy_url(&format!("/{account}/cgi-bin/user/info?openid=o1&access_token={CLIENT_KEY}"));
    let answer: serde_json::Value = gw.http.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["errcode"], 0, "{answer}");
    assert_eq!(gw.post_callback("timestamp=1&nonce=n", "not xml").await.status(), 400);
    // A message with no route for it: counted, and answered so that WeChat does not retry.
    let text =
        wxgate::sandbox::MessageSpec { msg_type: "text".into(), content: Some("hello".into()), ..Default::default() };
    sandbox.push_message(&account, &text).await.unwrap();
    let exposed = exposed_families(&gw.metrics().await);

    let mut unknown = Vec::new();
    for (source, exprs) in [(RULES, &rules), (DASHBOARD, &panels)] {
        for expr in exprs.iter() {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{source}: no metric in {expr}");
            for name in names {
                if !exposed.contains(family_of(&name)) && !PROMETHEUS_OWN.contains(&name.as_str()) {
                    unknown.push(format!("{source}: {name} in {expr}"));
                }
            }
        }
    }
    assert!(unknown.is_empty(), "not exposed by the gateway:\n{}\nexposed: {exposed:?}", unknown.join("\n"));
}

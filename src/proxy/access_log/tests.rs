use super::*;

fn line<'a>(path: &'a str, client: Option<&'a str>) -> Line<'a> {
    Line {
        method: "GET",
        path,
        query: "openid=o1&access_token=...",
        status: 200,
        errcode: Some(0),
        scope: "authorizer",
        authorizer: Some("wx1111111111111111"),
        client,
        upstream_ms: Some(3),
        total_ms: 4,
        retried: false,
    }
}

#[test]
fn the_access_log_never_shows_a_token_or_key() {
    assert_eq!(
        redacted_query("openid=o&access_token=SECRET&component_access_token=C&key=K"),
        "openid=...&access_token=...&component_access_token=...&key=..."
    );
}

#[test]
fn a_json_line_is_one_object_with_every_field() {
    let mut out = Vec::new();
    json(&mut out, "2026-12-06T01:02:03", 7, &line("/cgi-bin/a\"b\n", None));
    assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["time"], "2026-12-06T01:02:03.007Z");
    assert_eq!(v["path"], "/cgi-bin/a\"b\n");
    assert_eq!((v["status"].as_u64(), v["errcode"].as_i64(), v["client"].is_null()), (Some(200), Some(0), true));
    for field in ["method", "query", "scope", "authorizer", "upstream_ms", "total_ms", "retried"] {
        assert!(v.get(field).is_some(), "{field}");
    }
}

#[test]
fn a_text_line_stays_one_line() {
    let mut out = Vec::new();
    text(&mut out, "2026-12-06T01:02:03", 7, &line("/a\nb", Some("shop")));
    let s = String::from_utf8(out).unwrap();
    assert_eq!(s.matches('\n').count(), 1);
    assert!(s.starts_with("2026-12-06T01:02:03.007Z  INFO wxgate::access: method=GET path=/a b "), "{s}");
    assert!(s.contains(" client=shop ") && s.contains(" errcode=0 "), "{s}");
}

#[test]
fn seconds_are_civil_utc_times() {
    assert_eq!(utc_second(0), "1970-01-01T00:00:00");
    assert_eq!(utc_second(951_782_400), "2000-02-29T00:00:00");
    assert_eq!(utc_second(1_796_518_923), "2026-12-06T01:02:03");
}

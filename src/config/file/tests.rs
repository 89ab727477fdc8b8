use super::*;

fn table(text: &str) -> Table {
    text.parse().unwrap()
}

#[test]
fn probe_names_unknown_keys_and_types_without_values() {
    let unknown = probe("component", "app_id", &Value::from("wx")).unwrap_err();
    assert_eq!(
        unknown.message(&Value::from("wx")),
        "unknown key (known keys: appid, appsecret, token, encoding_aes_key)"
    );
    let secret = Value::Integer(987654321);
    let wrong = probe("component", "appsecret", &secret).unwrap_err();
    assert_eq!(wrong.message(&secret), "must be a string, not an integer");
    let wrong = probe("upstream", "timeout_ms", &Value::from("soon")).unwrap_err();
    assert_eq!(wrong.message(&Value::from("soon")), "must be an integer, not a string");
    let list = Value::Array(vec![Value::from("*"), Value::Integer(1)]);
    let wrong = probe("clients", "authorizers", &list).unwrap_err();
    assert_eq!(wrong.message(&list), "every entry must be a string, not an integer");
    let wrong = probe("clients", "component", &Value::from("yes")).unwrap_err();
    assert_eq!(wrong.message(&Value::from("yes")), "must be a boolean (true or false), not a string");
    assert_eq!(probe("nope", "x", &Value::Integer(1)), Err(KeyError::UnknownSection));
    assert_eq!(probe("server", "threads", &Value::Integer(4)), Ok(()));
}

#[test]
fn read_reports_every_bad_key_and_keeps_the_good_ones() {
    let text = "top = 1\n[component]\nappid = 'wx0123456789abcdef'\napp_id = 1\ntoken = 5\n\
                [nope]\nx = 1\n[[clients]]\nname = 'a'\nkey = 7\n[[clients]]\nnom = 'b'\n";
    let mut problems = Problems::default();
    let file = read(table(text), &mut problems);
    // Sorted: the table keeps the file's order only when toml's `preserve_order` is on.
    let mut keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["clients[0].key", "clients[1].nom", "component.app_id", "component.token", "nope", "top"]);
    assert_eq!(file.component.appid.as_deref(), Some("wx0123456789abcdef"));
    assert_eq!(file.clients.len(), 2);
    assert_eq!(file.clients[0].name.as_deref(), Some("a"));
}

#[test]
fn read_rejects_sections_of_the_wrong_shape() {
    let mut problems = Problems::default();
    read(table("component = 1\n[clients]\nname = 'a'\n"), &mut problems);
    let mut text: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
    text.sort();
    assert_eq!(
        text,
        [
            "clients: must be an array of tables: write each as [[clients]]",
            "component: must be a table: write it as [component]",
        ]
    );
}

#[test]
fn syntax_errors_give_position_and_key_but_not_the_line() {
    let text = "[admin]\ntoken = \"0123456789abcdefSECRET\n";
    let mut problems = Problems::default();
    assert!(parse(text, &mut problems).is_none());
    let problem = &problems.0[0];
    assert_eq!(problem.key, "admin.token");
    assert!(problem.message.starts_with("TOML syntax error at line 2, column"), "{problem}");
    assert!(!problem.to_string().contains("SECRET"), "{problem}");

    let mut problems = Problems::default();
    parse("[[clients]]\nname = 'a'\n[[clients]]\nkey = verysecretbare\n", &mut problems);
    assert_eq!(problems.0[0].key, "clients[1].key");
    assert!(!problems.0[0].to_string().contains("verysecretbare"));
}

use super::*;

#[test]
fn defaults_are_valid() {
    assert!(http_url(DEFAULT_UPSTREAM_BASE_URL).is_ok());
    assert!(socket_addr(DEFAULT_LISTEN_PROXY).is_ok());
    assert!(socket_addr(DEFAULT_LISTEN_ADMIN).is_ok());
    assert!(redis_url(DEFAULT_STORE_REDIS_URL).is_ok());
    assert!((1..=256).contains(&default_threads()));
}

#[test]
fn urls() {
    assert_eq!(http_url("https://wx.example.com").unwrap().as_str(), "https://wx.example.com/");
    assert_eq!(http_url("http://127.0.0.1:8080/gw").unwrap().as_str(), "http://127.0.0.1:8080/gw/");
    for bad in
        ["wx.example.com", "ftp://x.com", "https://x.com/?a=1", "https://x.com/#f", "https://u:p@x.com", "file:///etc"]
    {
        assert!(http_url(bad).is_err(), "{bad}");
    }
    assert!(redis_url("rediss://:pw@redis.internal:6380/2").is_ok());
    assert!(redis_url("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster/1").is_ok());
    assert!(redis_url("redis+sentinel://10.0.0.1:26379").is_err(), "a Sentinel URL names its service");
    for bad in ["http://redis", "redis://", "127.0.0.1:6379"] {
        assert!(redis_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn numbers_in_range() {
    assert_eq!(int_in(None, 7, 1..=10), Ok(7));
    assert_eq!(int_in(Some(10), 7, 1..=10), Ok(10));
    assert_eq!(int_in(Some(0), 7, 1..=10), Err("must be between 1 and 10".to_owned()));
    assert!(int_in(Some(-1), 7, 0..=10).is_err());
}

#[test]
fn tokens_and_secrets() {
    assert!(message_token("abc").is_ok());
    assert!(message_token(&"a".repeat(32)).is_ok());
    for bad in ["ab", "has space", "dash-ed", &"a".repeat(33)] {
        assert!(message_token(bad).is_err(), "{bad}");
    }
    let sixteen = secret_of_length(16);
    assert!(sixteen("0123456789abcdef").is_ok());
    assert_eq!(sixteen("short").unwrap_err(), "must be at least 16 characters");
    assert!(sixteen(" 0123456789abcdef").is_err());
    assert_eq!(secret_of_length(1)("").unwrap_err(), "must not be empty");
}

#[test]
fn scopes() {
    let star = ["*".to_owned()];
    assert_eq!(scope(&star), Ok(AuthorizerScope::All));
    assert_eq!(scope(&[]), Ok(AuthorizerScope::Only(vec![])));
    let two = ["wx2222222222222222".to_owned(), "wx1111111111111111".to_owned(), "wx2222222222222222".to_owned()];
    let AuthorizerScope::Only(appids) = scope(&two).unwrap() else { panic!() };
    assert_eq!(appids.iter().map(AppId::as_str).collect::<Vec<_>>(), ["wx1111111111111111", "wx2222222222222222"]);
    assert!(scope(&["*".to_owned(), "wx1111111111111111".to_owned()]).unwrap_err().contains("stand alone"));
    assert!(scope(&["wx1".to_owned()]).unwrap_err().ends_with("unlike \"wx1\""));
}

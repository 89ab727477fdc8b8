//! The command line: `wxgate check` names every bad key and exits non-zero; it never prints a secret.

mod common;

use common::*;
use std::process::Command;

fn check(config: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxgate.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxgate"));
    cmd.arg("check").arg("--config").arg(&path).env_remove("WXGATE_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_prints_the_effective_config_with_secrets_masked() {
    let setup = Setup::new();
    let (code, stdout, stderr) = check(&setup.config_toml(), &[("WXGATE_UPSTREAM_TIMEOUT_MS", "2500")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(COMPONENT_APPID));
    assert!(stdout.contains("2500"), "the environment override is shown: {stdout}");
    assert_no_secrets(&stdout, &[]);
    assert_no_secrets(&stderr, &[]);
}

#[test]
fn check_names_every_bad_key_and_exits_non_zero() {
    let setup = Setup::new();
    let config = setup
        .config_toml()
        .replace(COMPONENT_APPID, "wx-not-an-appid")
        .replace(AES_KEY, "too-short")
        .replace("threads = 1", "threads = 1\ncolour = \"blue\"");
    let (code, _, stderr) = check(&config, &[("WXGATE_LISTEN_ADMIN", "not-an-address")]);
    assert_eq!(code, 64, "{stderr}");
    for key in ["component.appid", "component.encoding_aes_key", "server.colour", "listen.admin"] {
        assert!(stderr.contains(key), "{key} is named in:\n{stderr}");
    }
    assert!(!stderr.contains("too-short"), "a secret's value is never echoed:\n{stderr}");
}

#[test]
fn a_missing_config_file_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_wxgate"))
        .args(["check", "--config", "/nonexistent/wxgate.toml"])
        .env_remove("WXGATE_CONFIG")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/wxgate.toml"));
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_copies_an_sqlite_store_into_redis_and_back() {
    use wxgate::store::{AuthorizerRecord, AuthorizerState, RedisStore, SqliteStore, Store, StoredAccess};
    use wxgate::{AppId, Secret};
    let setup = Setup::new();
    let component = AppId::parse(COMPONENT_APPID).unwrap();
    let appid = AppId::parse("wx1111111111111111").unwrap();
    let record = AuthorizerRecord {
        appid,
        state: AuthorizerState::Active,
        refresh_token: Some(Secret::new("refreshtoken@@@keep-me")),
        access: Some(StoredAccess { value: Secret::new("access"), expires_at_ms: 1 }),
        authorized_at_ms: 2,
        last_refresh_at_ms: Some(3),
        last_error: None,
        auth_code_sha1: None,
    };
    SqliteStore::open(&setup.db_path()).unwrap().save_authorizer(&component, &record).await.unwrap();
    let config = setup.write_config();
    let prefix = format!("wxgate-migrate-{}:", hex::encode(rand::random::<[u8; 6]>()));
    let run = |args: Vec<String>| {
        let out = Command::new(env!("CARGO_BIN_EXE_wxgate")).args(args).env_remove("WXGATE_CONFIG").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = run(vec![
        "migrate".into(),
        "--config".into(),
        config.display().to_string(),
        "--to".into(),
        "redis://127.0.0.1:6379/0".into(),
        "--to-key-prefix".into(),
        prefix.clone(),
    ]);
    assert!(said.contains("1 authorizers"), "{said}");
    let redis = RedisStore::connect(&Secret::new("redis://127.0.0.1:6379/0"), &prefix, &component, &Default::default())
        .await
        .unwrap();
    assert_eq!(redis.load_authorizer(&component, &appid).await.unwrap(), Some(record.clone()));

    // And back, from a gateway configured on that Redis into a new SQLite file.
    let mut on_redis = Setup::new();
    on_redis.store_toml = Some(format!(
        "[store]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\nkey_prefix = \"{prefix}\""
    ));
    let back = on_redis.dir.path().join("back.sqlite3");
    run(vec![
        "migrate".into(),
        "--config".into(),
        on_redis.write_config().display().to_string(),
        "--to".into(),
        format!("sqlite:{}", back.display()),
    ]);
    assert_eq!(SqliteStore::open(&back).unwrap().load_authorizer(&component, &appid).await.unwrap(), Some(record));
    redis.delete_authorizer(&component, &appid).await.unwrap();
}

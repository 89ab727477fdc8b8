//! HTTPS on the proxy listener (`listen.tls_cert`, `listen.tls_key`) against the real binary:
//! calls over TLS and none in plain HTTP; a new pair taken on SIGHUP while a kept-alive
//! connection goes on; a pair whose key does not match refused at reload and by `wxgate check`,
//! naming the key.

mod common;

use common::tls::ca_and_pair;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .pool_idle_timeout(Duration::from_secs(60))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A call the gateway answers itself (no key: 401), over HTTPS.
async fn status_over_https(client: &reqwest::Client, gw: &Gateway) -> Result<u16, reqwest::Error> {
    let url = format!("https://127.0.0.1:{}/cgi-bin/user/info", gw.proxy.port());
    client.get(url).send().await.map(|r| r.status().as_u16())
}

async fn reload(gw: &Gateway, result: &str) {
    let sample = format!("wxgate_config_reloads_total{{result=\"{result}\"}}");
    let before = gw.metric(&sample).await.unwrap_or(0.0);
    assert!(Command::new("kill").arg("-HUP").arg(gw.pid().to_string()).status().unwrap().success());
    eventually(Duration::from_secs(10), &format!("a reload counted as {result}"), || async {
        gw.metric(&sample).await.unwrap_or(0.0) >= before + 1.0
    })
    .await;
}

fn write_pair(dir: &Path, cert: &str, key: &str) {
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_listener_speaks_https_and_takes_a_new_pair_on_sighup() {
    let mut setup = Setup::new();
    let dir = setup.dir.path().to_owned();
    let (ca1, cert1, key1) = ca_and_pair("127.0.0.1");
    write_pair(&dir, &cert1, &key1);
    setup.env.push(("WXGATE_LISTEN_TLS_CERT".into(), dir.join("cert.pem").display().to_string()));
    setup.env.push(("WXGATE_LISTEN_TLS_KEY".into(), dir.join("key.pem").display().to_string()));
    let gw = setup.start().await;

    let kept = trusting(&ca1);
    assert_eq!(status_over_https(&kept, &gw).await.unwrap(), 401, "the gateway answers over HTTPS");
    let plain = gw.http.get(gw.proxy_url("/cgi-bin/user/info")).send().await;
    assert!(plain.is_err() || plain.unwrap().status().as_u16() >= 400, "no plain HTTP on an HTTPS listener");

    // A new pair from another CA: new connections get it, the kept-alive one goes on.
    let (ca2, cert2, key2) = ca_and_pair("127.0.0.1");
    write_pair(&dir, &cert2, &key2);
    reload(&gw, "ok").await;
    assert_eq!(status_over_https(&trusting(&ca2), &gw).await.unwrap(), 401, "the new certificate");
    assert!(status_over_https(&trusting(&ca1), &gw).await.is_err(), "the old certificate is gone");
    assert_eq!(status_over_https(&kept, &gw).await.unwrap(), 401, "a connection made before goes on");

    // A key that is not the certificate's: refused whole, named; the running pair stays.
    let (_, _, other_key) = ca_and_pair("127.0.0.1");
    write_pair(&dir, &cert2, &other_key);
    reload(&gw, "invalid").await;
    assert!(setup.log().contains("listen.tls_key"), "the key is named");
    assert_eq!(status_over_https(&trusting(&ca2), &gw).await.unwrap(), 401, "the running pair stays");

    let check = Command::new(env!("CARGO_BIN_EXE_wxgate"))
        .args(["check", "--config"])
        .arg(setup.dir.path().join("wxgate.toml"))
        .envs(setup.env.iter().map(|(k, v)| (k, v)))
        .env_remove("WXGATE_CONFIG")
        .output()
        .unwrap();
    assert!(!check.status.success());
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(said.contains("listen.tls_key") && said.contains("not the key of the certificate"), "{said}");
    assert!(!said.contains("PRIVATE KEY"), "{said}");
    assert_no_secrets(&setup.log(), &[]);
}

//! WeChat over HTTPS signed by a CA of the operator's own (`upstream.ca_file`), as behind a
//! TLS-inspecting egress proxy: the WeChat client (tokens) and the proxy (calls) both trust it,
//! and a gateway without it refuses the host with the contract's 502.

mod common;

use common::tls::{ca_and_server, tls_in_front_of};
use common::*;
use std::time::Duration;
use wxgate::AppId;

const A: &str = "wx1111111111111111";

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_signed_by_the_ca_file_is_trusted_and_without_it_calls_get_502() {
    let (ca_pem, server) = ca_and_server("127.0.0.1");
    let mut setup = Setup::new();
    let sandbox = setup.sandbox(7200).await;
    let front = tls_in_front_of(sandbox.addr(), server).await;
    setup.upstream = format!("https://{front}");
    let ca_path = setup.dir.path().join("egress-ca.pem");
    std::fs::write(&ca_path, &ca_pem).unwrap();
    setup.env.push(("WXGATE_UPSTREAM_CA_FILE".into(), ca_path.display().to_string()));

    // The WeChat client: the component token and the authorizer's come over HTTPS.
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    sandbox.authorize(&AppId::parse(A).unwrap()).await.unwrap();
    eventually(Duration::from_secs(10), "the authorizer active", || async {
        let list: serde_json::Value = gw.admin_get("/admin/authorizers").await.json().await.unwrap();
        list["authorizers"].as_array().is_some_and(|a| a.len() == 1 && a[0]["state"] == "active")
    })
    .await;
    // The proxy: a call on the authorizer's behalf.
    let call = format!("/{A}/cgi-bin/user/info?openid=o1&access_token={CLIENT_KEY}");
    let r = gw.http.get(gw.proxy_url(&call)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errcode"], 0, "{body}");
    // The release check's customer-service message leaves by the same client, trusting the CA.
    let report = sandbox.release_check(&AppId::parse("wx570bc396a51b8ff8").unwrap()).await;
    assert!(report.passed, "{report:?}; log:\n{}", setup.log());
    drop(gw);

    // The same store and host, without the CA: the host's certificate is refused.
    let mut without = setup.sibling();
    without.store_toml = Some(format!("[store]\nbackend = \"sqlite\"\npath = \"{}\"", setup.db_path().display()));
    let gw = without.start().await;
    let r = gw.http.get(gw.proxy_url(&call)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["errmsg"].as_str().is_some_and(|m| m.starts_with("wxgate: ")), "{body}");
    assert!(body["errcode"].as_i64().is_some_and(|c| c != 0), "{body}");
    assert_no_secrets(&setup.log(), &[]);
    assert_no_secrets(&without.log(), &[]);
}

//! A graceful stop under load (issue 25): with `server.threads = 2` and keep-alive calls from many
//! connections, SIGTERM mid-load answers or refuses every call cleanly, and nothing panics.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SHOP: &str = "wx1111111111111111";

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_keep_alive_load_on_two_workers_answers_or_refuses_every_call() {
    let mut setup = Setup::new();
    setup.env =
        vec![("WXGATE_SERVER_THREADS".into(), "2".into()), ("WXGATE_SERVER_SHUTDOWN_GRACE_SECS".into(), "2".into())];
    let sandbox = setup.sandbox(7200).await;
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    sandbox.authorize(&wxgate::AppId::parse(SHOP).unwrap()).await.unwrap();
    eventually(Duration::from_secs(10), "the authorizer active", || async {
        let a: serde_json::Value = gw.admin_get(&format!("/admin/authorizers/{SHOP}")).await.json().await.unwrap();
        a["state"] == "active"
    })
    .await;
    let mut gw = gw;
    let url = gw.proxy_url(&format!("/{SHOP}/cgi-bin/user/info?openid=o1&access_token={CLIENT_KEY}"));
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, refused, broken) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut callers = Vec::new();
    for _ in 0..32 {
        // One keep-alive connection per caller.
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let (url, stop) = (url.clone(), Arc::clone(&stop));
        let (answered, refused, broken) = (Arc::clone(&answered), Arc::clone(&refused), Arc::clone(&broken));
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => match r.json::<serde_json::Value>().await {
                        Ok(v) if v["errcode"] == 0 => answered.fetch_add(1, Ordering::Relaxed),
                        // An answer cut short by the stop is not a clean one.
                        _ => broken.fetch_add(1, Ordering::Relaxed),
                    },
                    Ok(_) => broken.fetch_add(1, Ordering::Relaxed),
                    // The listener closed: the call was refused before it was taken.
                    Err(e) if e.is_connect() => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        0
                    }
                    // A keep-alive connection closed between calls: reqwest sends again on a new one.
                    Err(e) if e.is_request() => refused.fetch_add(1, Ordering::Relaxed),
                    Err(_) => broken.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    eventually(Duration::from_secs(10), "the load is running", || async { answered.load(Ordering::Relaxed) > 500 })
        .await;
    let status = tokio::task::spawn_blocking(move || {
        let status = gw.signal_and_wait("TERM", Duration::from_secs(10));
        (gw, status)
    });
    let (_gw, status) = status.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let status = status.expect("the gateway stops within the grace period and a margin");
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    let (answered, refused, broken) =
        (answered.load(Ordering::Relaxed), refused.load(Ordering::Relaxed), broken.load(Ordering::Relaxed));
    assert_eq!(
        broken, 0,
        "every call answered whole or refused before it was taken ({answered} answered, {refused} refused)"
    );
    assert!(refused > 0, "calls kept coming after the stop ({answered} answered)");
    eprintln!("{answered} calls answered, {refused} refused after the stop");
    let log = setup.log();
    assert!(
        !log.contains("panicked"),
        "no panic in the log:\n{}",
        log.lines().filter(|l| l.contains("panic")).collect::<Vec<_>>().join("\n")
    );
}

//! Release-job stories' shared steps: a fleet of mini programs, and the admin calls on a job.

use super::*;
use serde_json::Value;
use std::time::Duration;
use wxgate::sandbox::Sandbox;
use wxgate::AppId;

pub fn appid(n: u32) -> AppId {
    AppId::parse(&format!("wx{n:016x}")).unwrap()
}

/// A gateway (with `extra` in its config) before a sandbox whose audits end in 100 ms, and
/// `accounts` mini programs authorized and known to the gateway as mini programs.
pub async fn fleet(accounts: u32, extra: &str) -> (Setup, Sandbox, Gateway) {
    let mut setup = Setup::new();
    setup.extra_toml = format!("\n[releases]\naudit_poll_secs = 5\n{extra}");
    fleet_on(setup, accounts).await
}

/// [`fleet`] on a setup of the caller's (another store, say).
pub async fn fleet_on(mut setup: Setup, accounts: u32) -> (Setup, Sandbox, Gateway) {
    let config = setup.sandbox_config(7200).quick_audits();
    let sandbox = setup.sandbox_from(config).await;
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    for i in 1..=accounts {
        let a = appid(i);
        sandbox.issue_auth_code(&a);
        assert!(sandbox.set_account(&a, 1, true));
        sandbox.authorize(&a).await.unwrap();
    }
    eventually(Duration::from_secs(20), "every account held as a mini program", || async {
        let list: Value = gw.admin_get("/admin/authorizers").await.json().await.unwrap();
        let minis = list["authorizers"].as_array().unwrap().iter().filter(|a| a.to_string().contains("mini_program"));
        minis.count() == accounts as usize
    })
    .await;
    (setup, sandbox, gw)
}

pub async fn start_job(gw: &Gateway, body: Value) -> String {
    let r = gw.http.post(gw.admin_url("/admin/releases")).bearer_auth(ADMIN_TOKEN).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

pub async fn job(gw: &Gateway, id: &str) -> Value {
    gw.admin_get(&format!("/admin/releases/{id}")).await.json().await.unwrap()
}

pub async fn act(gw: &Gateway, id: &str, action: &str) -> Value {
    let url = gw.admin_url(&format!("/admin/releases/{id}/{action}"));
    gw.http.post(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap()
}

pub async fn until_state(gw: &Gateway, id: &str, state: &str, within: Duration) -> Value {
    let mut last = Value::Null;
    let found = tokio::time::timeout(within, async {
        loop {
            last = job(gw, id).await;
            if last["state"] == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "job {id} never {state}: {last}");
    last
}

pub fn states(job: &Value) -> Vec<(String, String)> {
    let accounts = job["accounts"].as_array().unwrap();
    accounts
        .iter()
        .map(|a| (a["appid"].as_str().unwrap().to_owned(), a["state"].as_str().unwrap().to_owned()))
        .collect()
}

pub fn list(n: u32) -> Vec<String> {
    (1..=n).map(|i| appid(i).to_string()).collect()
}

//! The web console in a real browser: headless Chromium (Debian's `chromium`, which .ci/run
//! installs) driven over the DevTools protocol against the real gateway and the sandbox. It
//! signs in, sees the accounts, searches, creates authorization links with their QR code,
//! refreshes an account and sees its time change, and shows nothing without the token.
//! A screenshot is kept under the target directory (the path is printed).

mod common;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::Page;
use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wxgate::AppId;

const ACCOUNTS: [&str; 3] = ["wx1111111111111111", "wx2222222222222222", "wx3333333333333333"];
/// The company's own account ([[accounts]]), beside the authorized ones.
const OWNED: &str = wxgate::sandbox::DEMO_OWNED_APPID;

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("Chromium is needed for this test: apt-get install chromium (.ci/run installs it)")
}

/// The value of a JavaScript expression in the page.
async fn js(page: &Page, expression: &str) -> Value {
    let result = page.evaluate(expression).await.unwrap_or_else(|e| panic!("evaluating {expression}: {e}"));
    result.into_value().unwrap_or(Value::Null)
}

/// Polls `expression` until it is `true`, for at most 15 s.
async fn until(page: &Page, expression: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if js(page, expression).await == Value::Bool(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = js(page, "document.body.innerText").await;
    panic!("timed out waiting for `{expression}`; the page reads:\n{}", text.as_str().unwrap_or_default());
}

async fn page_text(page: &Page) -> String {
    js(page, "document.body.innerText").await.as_str().unwrap_or_default().to_owned()
}

async fn click(page: &Page, selector: &str) {
    page.find_element(selector).await.unwrap_or_else(|e| panic!("{selector}: {e}")).click().await.unwrap();
}

async fn type_into(page: &Page, selector: &str, text: &str) {
    let input = page.find_element(selector).await.unwrap_or_else(|e| panic!("{selector}: {e}"));
    input.click().await.unwrap();
    input.type_str(text).await.unwrap();
}

async fn screenshot(page: &Page, path: &Path) {
    let params = ScreenshotParams::builder().full_page(true).build();
    page.save_screenshot(params, path).await.unwrap();
    println!("console screenshot: {}", path.display());
}

/// A gateway with the sandbox and three authorized accounts, whose `authorized` events wait in
/// the outbox for a platform handler that is down.
async fn gateway() -> (Setup, wxgate::sandbox::Sandbox, Gateway) {
    let mut setup = Setup::new();
    let sandbox = setup.sandbox(7200).await;
    setup.extra_toml = format!(
        "rate_per_second = 7\n\n[[events.routes]]\nname = \"tenants\"\nurl = \"http://127.0.0.1:{}/events\"\ntoken = \"routetoken42\"\n\n\
         [[accounts]]\nappid = \"{OWNED}\"\nsecret = \"{}\"\n",
        free_port(),
        wxgate::sandbox::OwnedAccount::demo().secret.expose()
    );
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    for a in ACCOUNTS {
        sandbox.authorize(&AppId::parse(a).unwrap()).await.unwrap();
    }
    eventually(Duration::from_secs(10), "three accounts authorized", || async {
        let list: Value = gw.admin_get("/admin/authorizers").await.json().await.unwrap();
        list["total"] == 3
    })
    .await;
    eventually(Duration::from_secs(10), "three platform events in the outbox", || async {
        let listed: Value = gw.admin_get("/admin/messages").await.json().await.unwrap();
        listed["total"] == 3
    })
    .await;
    (setup, sandbox, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_a_real_browser() {
    let (setup, _sandbox, gw) = gateway().await;
    let profile = tempfile::tempdir().unwrap();
    let config = BrowserConfig::builder()
        .chrome_executable(chromium())
        .no_sandbox()
        .user_data_dir(profile.path())
        .window_size(1280, 1000)
        .viewport(chromiumoxide::handler::viewport::Viewport { width: 1280, height: 1000, ..Default::default() })
        .arg("--disable-dev-shm-usage")
        .launch_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (mut browser, mut handler) = Browser::launch(config).await.expect("Chromium starts");
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });

    let story = tokio::time::timeout(Duration::from_secs(90), story(&browser, &gw, &setup)).await;

    let _ = browser.close().await;
    if tokio::time::timeout(Duration::from_secs(5), browser.wait()).await.is_err() {
        let _ = browser.kill().await;
    }
    events.abort();
    story.expect("the browser story takes less than 90 s");
}

async fn story(browser: &Browser, gw: &Gateway, setup: &Setup) {
    let page = browser.new_page(gw.admin_url("/")).await.unwrap();
    until(&page, "!document.getElementById('signin').hidden").await;

    // Without the token: a sign-in form, and no account anywhere on the page.
    let text = page_text(&page).await;
    assert!(ACCOUNTS.iter().all(|a| !text.contains(a)), "{text}");
    let refused = gw.http.get(gw.admin_url("/admin/authorizers")).send().await.unwrap();
    assert_eq!(refused.status(), 401, "the page's data needs the token");
    type_into(&page, "#token", "not-the-admin-token-0000").await;
    click(&page, "#signin-form button[type=submit]").await;
    until(&page, "document.getElementById('signin-error').textContent.includes('refused')").await;
    let text = page_text(&page).await;
    assert!(ACCOUNTS.iter().all(|a| !text.contains(a)), "{text}");

    // Signed in: readiness, the component, the three accounts.
    type_into(&page, "#token", ADMIN_TOKEN).await;
    click(&page, "#signin-form button[type=submit]").await;
    until(&page, "document.querySelectorAll('#authorizers tbody tr').length === 3").await;
    until(&page, "document.getElementById('ready').textContent === 'ready'").await;
    let text = page_text(&page).await;
    assert!(ACCOUNTS.iter().all(|a| text.contains(a)), "{text}");
    assert!(text.contains(COMPONENT_APPID), "{text}");
    assert_eq!(js(&page, "document.cookie").await, "", "no cookie");
    assert_eq!(js(&page, "sessionStorage.getItem('wxgate.admin.token')").await, ADMIN_TOKEN);
    assert_eq!(js(&page, "localStorage.length").await, 0, "nothing kept beyond the tab");

    // Search by appid.
    type_into(&page, "#search", "2222").await;
    until(&page, "document.querySelectorAll('#authorizers tbody tr').length === 1").await;
    let found = js(&page, "document.querySelector('#authorizers tbody tr').dataset.appid").await;
    assert_eq!(found, ACCOUNTS[1]);
    js(&page, "(() => { const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input')); return true })()").await;
    until(&page, "document.querySelectorAll('#authorizers tbody tr').length === 3").await;

    // The new-authorization panel: the PC link and the QR code of the mobile link, drawn.
    click(&page, "#authorize-form button[type=submit]").await;
    until(&page, "!document.getElementById('links').hidden").await;
    until(&page, "(() => { const q = document.getElementById('qr'); return q.complete && q.naturalWidth > 100 })()")
        .await;
    let pc = js(&page, "document.getElementById('pc-link').href").await;
    assert!(pc.as_str().unwrap().contains("componentloginpage"), "{pc}");
    let mobile = js(&page, "document.getElementById('mobile-link').value").await;
    assert!(mobile.as_str().unwrap().contains("bindcomponent"), "{mobile}");

    // The outbox panel shows exactly when the gateway has one.
    let outbox = gw.admin_get("/admin/messages").await.status();
    let hidden = js(&page, "document.getElementById('outbox-panel').hidden").await;
    assert_eq!(hidden, Value::Bool(outbox == 404), "outbox route answers {outbox}");
    // Platform events waiting for their handler show with their InfoType and route.
    until(&page, "document.getElementById('outbox').innerText.split('platform: authorized').length === 4").await;
    until(&page, "document.getElementById('outbox').innerText.includes('tenants')").await;

    // The quota guard's panel shows the limited client.
    until(&page, "!document.getElementById('quota-panel').hidden").await;
    until(&page, "document.getElementById('quota-use').innerText.includes('shop-backend')").await;
    let rate =
        js(&page, "document.querySelector('#quota-use tr[data-client=\"shop-backend\"] td:nth-child(2)').textContent")
            .await;
    assert_eq!(rate, Value::String("7".into()));

    // The company's own account, beside the authorized ones, refreshed from its row.
    until(&page, "!document.getElementById('owned-panel').hidden").await;
    until(&page, &format!("document.querySelector('#owned tr[data-owned=\"{OWNED}\"]') !== null")).await;
    let state =
        js(&page, &format!("document.querySelector('#owned tr[data-owned=\"{OWNED}\"] .state').textContent")).await;
    assert_eq!(state, Value::String("active".into()));
    click(&page, &format!("#owned tr[data-owned=\"{OWNED}\"] button.refresh")).await;
    until(&page, &format!("document.getElementById('toast').textContent === 'Refreshed {OWNED}.'")).await;

    // A release job in the Releases panel: its row and counts, then its accounts (an official
    // account is skipped: WeChat manages no code for it).
    let created = gw
        .http
        .post(gw.admin_url("/admin/releases"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"template_id": 42, "user_version": "1.0.0", "authorizers": [ACCOUNTS[0]]}))
        .send()
        .await
        .unwrap();
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    click(&page, "#reload").await;
    until(&page, &format!("document.querySelector('#releases tr[data-job=\"{id}\"]') !== null")).await;
    until(&page, "document.getElementById('releases').innerText.includes('skipped 1')").await;
    click(&page, &format!("#releases tr[data-job=\"{id}\"] button.job-accounts")).await;
    until(&page, &format!("document.querySelector('#release-accounts tr[data-appid=\"{}\"]') !== null", ACCOUNTS[0]))
        .await;

    // Refresh one account: its last-refresh time moves on.
    let cell = format!("document.querySelector('tr[data-appid=\"{}\"] td.last-refresh').dataset.ms", ACCOUNTS[0]);
    let before: i64 = js(&page, &cell).await.as_str().unwrap().parse().unwrap();
    assert!(before > 0, "an authorized account has a refresh time");
    click(&page, &format!("tr[data-appid=\"{}\"] button.refresh", ACCOUNTS[0])).await;
    until(&page, &format!("Number({cell}) > {before}")).await;
    until(&page, "document.getElementById('toast').textContent.startsWith('Refreshed')").await;

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    screenshot(&page, &dir.join("console.png")).await;
    // The same page on a phone.
    page.execute(SetDeviceMetricsOverrideParams::new(390, 844, 2.0, true)).await.unwrap();
    until(&page, "document.documentElement.clientWidth === 390").await;
    screenshot(&page, &dir.join("console-phone.png")).await;

    // Signed out: nothing read with the token stays.
    page.execute(SetDeviceMetricsOverrideParams::new(1280, 1000, 1.0, false)).await.unwrap();
    click(&page, "#signout").await;
    until(&page, "!document.getElementById('signin').hidden").await;
    let text = page_text(&page).await;
    assert!(ACCOUNTS.iter().all(|a| !text.contains(a)), "{text}");
    assert_eq!(js(&page, "sessionStorage.length").await, 0);
    assert_no_secrets(&setup.log(), &[]);
}

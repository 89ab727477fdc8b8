//! `wxgate demo`, as README.md tells a newcomer to run it: it prints the lines to try, and they work.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_authorizes_an_account_and_its_curl_lines_work() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, admin, sandbox) = (listener(), listener(), listener());
    let admin_addr = admin.local_addr().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_wxgate"));
    command
        .args(["demo", "--data-dir"])
        .arg(dir.path())
        .env_remove("WXGATE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("demo.log")).unwrap());
    pass_sockets(&mut command, &[("proxy", &proxy), ("admin", &admin), ("sandbox", &sandbox)]);
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Reads on to the end, so that the demo never writes into a closed pipe.
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line.contains("Ctrl-C stops it");
            lines.push(line);
            if done {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(lines.join("\n"));
                }
            }
        }
    });
    let printed = async { rx.await.unwrap_or_default() };
    let printed = tokio::time::timeout(Duration::from_secs(60), printed)
        .await
        .expect("the demo prints the lines to try within 60 s");
    assert!(printed.contains("has authorized"), "{printed}");
    assert!(printed.contains("events route heard `authorized"), "the demo's events route heard it: {printed}");
    // The first curl line of the tour: an SDK-style call through the gateway.
    let url = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("curl -s '")?.strip_suffix('\'').filter(|u| u.contains("user/info")))
        .unwrap();
    let answer: serde_json::Value = client().get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        answer["errcode"],
        0,
        "{answer}\n{}",
        std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default()
    );
    // A message round trip: the push, the demo handler's answer, the decrypted passive reply.
    let message = printed
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix("curl -s -X POST '")?.strip_suffix('\'').filter(|u| u.contains("/sandbox/message"))
        })
        .unwrap();
    let pushed: serde_json::Value = client().post(message).send().await.unwrap().json().await.unwrap();
    assert_eq!(pushed["reply_content"], "you said: hello", "{pushed}");
    let check = printed
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix("curl -s -X POST '")?.strip_suffix('\'').filter(|u| u.contains("release-check"))
        })
        .unwrap();
    let report: serde_json::Value = client().post(check).send().await.unwrap().json().await.unwrap();
    assert_eq!(report["passed"], true, "{report}");
    let ready = client().get(format!("http://{admin_addr}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let pid = child.0.id();
    let sent = Command::new("kill").arg("-INT").arg(pid.to_string()).status();
    assert!(sent.as_ref().is_ok_and(|s| s.success()), "kill -INT {pid}: {sent:?}");
    let exited = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        child.0.try_wait().ok().flatten().is_some()
    });
    assert!(
        exited,
        "Ctrl-C stops the demo; its threads:\n{}\nits log:\n{}",
        threads_of(pid),
        std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default()
    );
}

/// Each thread of a process, its state and where it waits in the kernel: what a hang is stuck on.
fn threads_of(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return "(gone)".into() };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat.rsplit(')').next().and_then(|s| s.split_whitespace().next()).unwrap_or("?").to_owned();
        out.push(format!("{} {} {state} {}", task.file_name().to_string_lossy(), read("comm").trim(), read("wchan")));
    }
    out.join("\n")
}

/// The demo process, killed whatever happens to the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! Redis processes of a test's own on loopback ports: a server (with AOF, so that it can be
//! killed and started again), replicas, and Sentinels (`redis-server --sentinel`). Every process
//! is killed when its handle is dropped.

use super::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct OwnRedis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// `--replicaof` and the like, given again on every start.
    extra: Vec<String>,
    sentinel: bool,
}

impl OwnRedis {
    pub fn start() -> Self {
        Self::with_args(&[])
    }

    /// A server started with `args` appended to the defaults.
    pub fn with_args(args: &[&str]) -> Self {
        let mut redis = OwnRedis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: args.iter().map(|a| a.to_string()).collect(),
            sentinel: false,
        };
        redis.spawn();
        redis
    }

    /// A replica of `master`.
    pub fn replica_of(master: &OwnRedis) -> Self {
        Self::with_args(&["--replicaof", "127.0.0.1", &master.port.to_string()])
    }

    /// A Sentinel watching `master` as service `service`, quorum 2, quick to act (down after
    /// 1 s), so that a test's failover takes a few seconds.
    pub fn sentinel(master: &OwnRedis, service: &str) -> Self {
        let mut s = OwnRedis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: Vec::new(),
            sentinel: true,
        };
        let config = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {service} 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds {service} 1000\n\
             sentinel failover-timeout {service} 5000\n\
             sentinel parallel-syncs {service} 1\n",
            port = s.port,
            dir = s.dir.path().display(),
            master = master.port,
        );
        std::fs::write(s.config_path(), config).unwrap();
        s.spawn();
        s
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("sentinel.conf")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        if self.sentinel {
            command.arg(self.config_path()).arg("--sentinel");
        } else {
            let port = self.port.to_string();
            command.args(["--bind", "127.0.0.1", "--port", &port, "--appendonly", "yes"]);
            command.args(["--appendfsync", "always", "--save", ""]).arg("--dir").arg(self.dir.path());
            command.args(&self.extra);
        }
        let child =
            command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("redis-server (.ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.answers_ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub fn answers_ping(&self) -> bool {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_millis(200))
            .is_ok_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok())
    }

    /// A synchronous connection, for a test's own commands.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection_with_timeout(Duration::from_secs(2)).unwrap()
    }

    /// SIGKILL, as a crash or a host failing would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

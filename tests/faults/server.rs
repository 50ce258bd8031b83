//! The ledger as a real OS process (so it can be killed with SIGKILL and its memory read), and
//! the embedded cluster's immediate restart.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::test_key_specs;

/// How long a started server may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A `token-ledger serve` child process on an ephemeral port.
pub struct ServerProcess {
    child: Child,
    pub addr: String,
}

impl ServerProcess {
    /// Starts `serve` on `database_url` with the test keys and `extra` arguments, and waits for
    /// its "listening" log line (which names the port the OS gave it).
    pub async fn start(database_url: &str, extra: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_token-ledger"));
        command
            .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "info,sqlx=warn")
            .env_remove("TOKEN_LEDGER_API_KEYS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for key in test_key_specs() {
            command.arg("--api-key").arg(key);
        }
        let mut child = command.spawn().expect("starting token-ledger serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("gRPC server listening") {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    return v["local_addr"].as_str().unwrap().to_string();
                }
            }
            panic!("the server exited before listening");
        })
        .await
        .expect("the server did not listen in time");
        // Keep draining its log so it never blocks on a full pipe; keep the warnings visible.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("\"ERROR\"") {
                    eprintln!("server: {line}");
                }
            }
        });
        Self { child, addr }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill_9(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, and wait for a clean exit.
    pub async fn terminate(mut self) {
        let pid = self.child.id().unwrap() as i32;
        // SAFETY: sending a signal to our own child has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the server did not stop on SIGTERM")
            .unwrap();
        assert!(status.success(), "serve exited with {status}");
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }
}

/// A temporary directory for a cluster of the test's own, reachable by the `postgres` user (the
/// cluster runs as that user when the test runs as root).
pub fn cluster_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("tl-faults-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `pg_ctl restart -m immediate` of the cluster in `dir`: every backend is killed without a
/// checkpoint, and the server comes back through crash recovery. Returns how long it took.
pub fn restart_immediate(dir: &Path) -> Duration {
    let bin = token_ledger::embedded_pg::find_binaries().unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join("pg_ctl"));
        c
    } else {
        std::process::Command::new(bin.join("pg_ctl"))
    };
    command
        .current_dir("/")
        .arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-m", "immediate", "-w", "-t", "60", "restart"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "pg_ctl restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

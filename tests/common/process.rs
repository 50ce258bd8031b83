//! The ledger as a real OS process: `token-ledger serve` started as a child (so it can be killed
//! with SIGKILL, its memory read, or several of it run on one database), and one that must refuse
//! to start.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::test_key_specs;

/// How long a started server may take to say where it listens (or why it will not).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A `token-ledger serve` child process on an ephemeral port.
pub struct ServerProcess {
    child: Child,
    pub addr: String,
    /// The hosted Stripe webhook's address, when started with `--stripe-webhook-listen`.
    pub webhook_addr: Option<String>,
    /// Its ERROR log lines and anything not JSON (the `error: …` it exits with), as they come.
    pub errors: Arc<Mutex<Vec<String>>>,
}

fn serve_command(database_url: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_token-ledger"));
    command
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info,sqlx=warn")
        .env_remove("TOKEN_LEDGER_API_KEYS")
        .env_remove("TOKEN_LEDGER_BALANCE_CACHE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for key in test_key_specs() {
        command.arg("--api-key").arg(key);
    }
    command
}

impl ServerProcess {
    /// Starts `serve` on `database_url` with the test keys and `extra` arguments, and waits for
    /// its "listening" log line (which names the port the OS gave it; with
    /// `--stripe-webhook-listen`, also for the webhook's).
    pub async fn start(database_url: &str, extra: &[&str]) -> Self {
        let webhook = extra.contains(&"--stripe-webhook-listen");
        let mut child = serve_command(database_url, extra)
            .spawn()
            .expect("starting token-ledger serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (addr, webhook_addr) = tokio::time::timeout(START_TIMEOUT, async {
            let (mut addr, mut webhook_addr) = (None, None);
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("gRPC server listening") {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    addr = Some(v["local_addr"].as_str().unwrap().to_string());
                } else if line.contains("Stripe webhook listening") {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    webhook_addr = Some(v["addr"].as_str().unwrap().to_string());
                }
                match &addr {
                    Some(a) if webhook_addr.is_some() || !webhook => {
                        return (a.clone(), webhook_addr);
                    }
                    _ => {}
                }
            }
            panic!("the server exited before listening");
        })
        .await
        .expect("the server did not listen in time");
        // Keep draining its log so it never blocks on a full pipe; keep the errors visible.
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = errors.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("\"ERROR\"") || !line.starts_with('{') {
                    eprintln!("server: {line}");
                    seen.lock().unwrap().push(line);
                }
            }
        });
        Self {
            child,
            addr,
            webhook_addr,
            errors,
        }
    }

    /// Runs `serve` expecting it to refuse to start: it must exit with a failure status before
    /// listening. Answers what it wrote on stderr.
    pub async fn refused(database_url: &str, extra: &[&str]) -> String {
        let child = serve_command(database_url, extra)
            .spawn()
            .expect("starting token-ledger serve");
        let out = tokio::time::timeout(START_TIMEOUT, child.wait_with_output())
            .await
            .expect("serve was expected to refuse to start, and is still running")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "serve was expected to refuse to start; it exited with {}: {stderr}",
            out.status
        );
        assert!(
            !stderr.contains("gRPC server listening"),
            "serve listened before refusing: {stderr}"
        );
        stderr
    }

    /// The gRPC endpoint, for a client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit status.
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .map(Result::unwrap)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
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

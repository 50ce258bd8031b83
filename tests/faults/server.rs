//! The ledger as a real OS process (so it can be killed with SIGKILL and its memory read:
//! `common::process`), and the embedded cluster's immediate restart.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The process wrapper itself is shared with the replicas suite (`tests/common/process.rs`).
pub use crate::common::process::ServerProcess;

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

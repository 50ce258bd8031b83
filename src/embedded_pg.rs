//! A private PostgreSQL cluster started from the locally installed binaries, for the one-command
//! local run (no `DATABASE_URL`) and for tests on a machine without a configured database.
//!
//! The cluster listens on a Unix socket inside its own data directory and on no TCP port, so
//! nothing else on the machine can reach it (the directory is mode 0700). PostgreSQL refuses to
//! run as root; when we are root, the cluster runs as the `postgres` system user via `runuser`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

/// The database created inside the cluster for the ledger.
pub const EMBEDDED_DATABASE_NAME: &str = "token_ledger";
/// The port number only names the socket file (`.s.PGSQL.5432`); no TCP port is opened.
const SOCKET_PORT: u16 = 5432;
/// Unix socket paths are limited to 107 bytes; the data directory must leave room for the
/// socket's file name.
const SOCKET_DIR_LEN_MAX: usize = 90;
/// How long `pg_ctl` may take to start or stop the server.
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// A running private cluster. Stop it with [`EmbeddedPostgres::stop`].
#[derive(Debug)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<String>,
    /// Whether this process started the server (and so must stop it).
    started_here: bool,
}

/// Where `initdb`, `pg_ctl` and `postgres` live: on `PATH`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian and Ubuntu keep them there, off `PATH`).
pub fn find_binaries() -> anyhow::Result<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_all(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_all(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        anyhow::anyhow!(
            "no PostgreSQL binaries found (initdb, pg_ctl, postgres on PATH or under /usr/lib/postgresql/*/bin): \
             install PostgreSQL (e.g. `apt-get install postgresql`) or set DATABASE_URL"
        )
    })
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl EmbeddedPostgres {
    /// Starts (initialising on first use) the cluster in `data_dir`, creating the ledger database.
    /// A cluster already running in `data_dir` is reused and left running on stop.
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let bin_dir = find_binaries()?;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("resolving {}", data_dir.display()))?;
        if data_dir.as_os_str().len() > SOCKET_DIR_LEN_MAX {
            bail!(
                "data directory path {} is longer than {SOCKET_DIR_LEN_MAX} bytes, too long for the cluster's Unix socket; \
                 choose a shorter --data-dir",
                data_dir.display()
            );
        }
        let run_as = running_as_root().then(|| "postgres".to_string());
        let mut pg = EmbeddedPostgres {
            data_dir,
            bin_dir,
            run_as,
            started_here: false,
        };
        let (pg, started_here) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            pg.prepare_and_start()?;
            let started = pg.started_here;
            Ok((pg, started))
        })
        .await??;
        tracing::info!(
            data_dir = %pg.data_dir.display(),
            started_here,
            "embedded PostgreSQL is running"
        );
        pg.create_database().await?;
        Ok(pg)
    }

    fn prepare_and_start(&mut self) -> anyhow::Result<()> {
        if let Some(user) = &self.run_as {
            // The cluster's files must belong to the user it runs as.
            run(Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(&self.data_dir))
            .with_context(|| {
                format!(
                    "giving {} to the {user} user (PostgreSQL will not run as root)",
                    self.data_dir.display()
                )
            })?;
        }
        if !self.data_dir.join("PG_VERSION").exists() {
            tracing::info!(data_dir = %self.data_dir.display(), "initialising a new PostgreSQL cluster");
            let mut initdb = self.command("initdb");
            initdb.arg("-D").arg(&self.data_dir).args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ]);
            run(&mut initdb).context("initdb failed")?;
        }
        if self.is_running() {
            return Ok(());
        }
        let options = format!(
            "-c listen_addresses='' -k {} -p {SOCKET_PORT} -c unix_socket_permissions=0700",
            self.data_dir.display()
        );
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(self.data_dir.join("server.log"))
            .args([
                "-w",
                "-t",
                &PG_CTL_TIMEOUT.as_secs().to_string(),
                "-o",
                &options,
                "start",
            ]);
        run(&mut pg_ctl).with_context(|| {
            format!(
                "pg_ctl start failed; see {}",
                self.data_dir.join("server.log").display()
            )
        })?;
        self.started_here = true;
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let binary = self.bin_dir.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(binary);
                c
            }
            None => Command::new(binary),
        }
    }

    fn is_running(&self) -> bool {
        let mut status = self.command("pg_ctl");
        status.arg("-D").arg(&self.data_dir).arg("status");
        status.output().map(|o| o.status.success()).unwrap_or(false)
    }

    /// A URL for `database` on this cluster, over its Unix socket.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost:{SOCKET_PORT}/{database}?host={}",
            self.data_dir.display()
        )
    }

    /// The URL of the ledger database.
    pub fn database_url(&self) -> String {
        self.url_for(EMBEDDED_DATABASE_NAME)
    }

    async fn create_database(&self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url_for("postgres"))
            .await
            .context("connecting to the embedded PostgreSQL")?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(EMBEDDED_DATABASE_NAME)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            sqlx::query(&format!("CREATE DATABASE {EMBEDDED_DATABASE_NAME}"))
                .execute(&mut conn)
                .await?;
        }
        conn.close().await?;
        Ok(())
    }

    /// Stops the server if this process started it; a fast shutdown (open sessions are ended,
    /// committed work is durable).
    pub fn stop_blocking(&self) -> anyhow::Result<()> {
        if !self.started_here {
            return Ok(());
        }
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("-D").arg(&self.data_dir).args([
            "-m",
            "fast",
            "-w",
            "-t",
            &PG_CTL_TIMEOUT.as_secs().to_string(),
            "stop",
        ]);
        run(&mut pg_ctl).context("pg_ctl stop failed")?;
        tracing::info!(data_dir = %self.data_dir.display(), "embedded PostgreSQL stopped");
        Ok(())
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        tokio::task::spawn_blocking(move || self.stop_blocking()).await?
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

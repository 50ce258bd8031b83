//! A private PostgreSQL cluster started from the locally installed binaries, for the one-command
//! local run (no `DATABASE_URL`) and for tests on a machine without a configured database.
//!
//! The cluster listens on a Unix socket inside its own data directory and on no TCP port, so
//! nothing else on the machine can reach it (the directory is mode 0700). PostgreSQL refuses to
//! run as root; when we are root, the cluster runs as the `postgres` system user via `runuser`,
//! which must be able to traverse every parent of the data directory. The default directory moves
//! under [`FALLBACK_ROOT`] when it cannot (a checkout in root's mode-700 home); an explicit one is
//! refused with the fix. Nothing half-made is left behind: `initdb` writes to a scratch directory
//! that is renamed into place, and what a failed start created is removed.
//!
//! Every process using a cluster holds a shared `flock` on a lock file beside the data directory
//! for its life, and the last one to exit stops the cluster. The kernel drops a killed process's
//! locks, so a cluster left running by a `kill -9` has no holder: the next process adopts it, and
//! stops it when it exits.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// The database created inside the cluster for the ledger.
pub const EMBEDDED_DATABASE_NAME: &str = "token_ledger";
/// The data directory `serve`, `migrate` and `verify` use without `--data-dir`, relative to the
/// current directory (the checkout, for `cargo run`).
pub const DEFAULT_DATA_DIR: &str = "./data/postgres";
/// Where a default data directory the `postgres` user cannot reach is kept instead, one
/// subdirectory per checkout (see [`fallback_data_dir`]).
pub const FALLBACK_ROOT: &str = "/var/lib/token-ledger";
/// The system user the cluster runs as when we are root.
const RUN_AS_USER: &str = "postgres";
/// The port number only names the socket file (`.s.PGSQL.5432`); no TCP port is opened.
const SOCKET_PORT: u16 = 5432;
/// Unix socket paths are limited to 107 bytes; the data directory must leave room for the
/// socket's file name.
const SOCKET_DIR_LEN_MAX: usize = 90;
/// How long `pg_ctl` may take to start or stop the server.
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process waits for another one that is starting or stopping the cluster (holding
/// the lock exclusively): an `initdb` and a start or a stop, with room to spare. Beyond it, start
/// fails naming the lock file.
const LOCK_WAIT_MAX: Duration = Duration::from_secs(180);
/// How often a waiting process tries the lock again.
const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of `server.log` quoted when the server does not start.
const SERVER_LOG_TAIL_LINES: usize = 20;

/// Where the embedded cluster keeps its data.
#[derive(Debug, Clone)]
pub enum DataDir {
    /// Given by the operator (`--data-dir`): used as given, or refused with the fix when the
    /// `postgres` user cannot reach it.
    Explicit(PathBuf),
    /// A built-in default (relative to the current directory): moved to
    /// [`fallback_data_dir`] when the `postgres` user cannot reach it.
    Default(PathBuf),
}

impl DataDir {
    /// `--data-dir` if given, else [`DEFAULT_DATA_DIR`].
    pub fn from_option(explicit: Option<PathBuf>) -> Self {
        match explicit {
            Some(path) => DataDir::Explicit(path),
            None => DataDir::Default(PathBuf::from(DEFAULT_DATA_DIR)),
        }
    }

    fn path(&self) -> &Path {
        match self {
            DataDir::Explicit(p) | DataDir::Default(p) => p,
        }
    }
}

/// Where a default data directory (absolute and canonical) is kept when the `postgres` user
/// cannot reach it: `/var/lib/token-ledger/<16 hex digits of its SHA-256>/<its name>`, so each
/// checkout keeps its own cluster across runs.
pub fn fallback_data_dir(default_dir: &Path) -> PathBuf {
    let hash = hex::encode(Sha256::digest(default_dir.as_os_str().as_encoded_bytes()));
    let name = default_dir
        .file_name()
        .map(|n| n.to_owned())
        .unwrap_or_else(|| "postgres".into());
    Path::new(FALLBACK_ROOT).join(&hash[..16]).join(name)
}

/// `path` made absolute with its longest existing prefix canonicalised, so one checkout always
/// names its default directory the same way, whether or not the directory exists yet.
fn absolute_canonical(path: &Path) -> anyhow::Result<PathBuf> {
    let absolute =
        std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let components: Vec<Component> = absolute.components().collect();
    let mut existing = components.len();
    while existing > 1 && !components[..existing].iter().collect::<PathBuf>().exists() {
        existing -= 1;
    }
    let prefix: PathBuf = components[..existing].iter().collect();
    let mut resolved = prefix
        .canonicalize()
        .with_context(|| format!("resolving {}", prefix.display()))?;
    for component in &components[existing..] {
        match component {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::CurDir => {}
            other => resolved.push(other),
        }
    }
    Ok(resolved)
}

/// The cluster's data directory, once it is known where it can live.
struct Located {
    data_dir: PathBuf,
    /// The default directory this one replaces, when it moved under [`FALLBACK_ROOT`].
    moved_from: Option<PathBuf>,
}

/// Decides where the cluster lives: the requested directory, or (for the default, when `run_as`
/// cannot reach it) its fallback. Creates nothing.
fn locate(dir: &DataDir, run_as: Option<&str>) -> anyhow::Result<Located> {
    let wanted = absolute_canonical(dir.path())?;
    let Some(user) = run_as else {
        return Ok(Located {
            data_dir: wanted,
            moved_from: None,
        });
    };
    if can_reach(user, &wanted)? {
        return Ok(Located {
            data_dir: wanted,
            moved_from: None,
        });
    }
    match dir {
        DataDir::Explicit(_) => bail!(
            "the {user} user (the embedded cluster runs as it, as PostgreSQL refuses root) cannot reach {}: \
             choose a --data-dir under a directory it can traverse, such as {FALLBACK_ROOT}, or set DATABASE_URL",
            wanted.display()
        ),
        DataDir::Default(_) => {
            let fallback = fallback_data_dir(&wanted);
            if !can_reach(user, &fallback)? {
                bail!(
                    "the {user} user can reach neither {} nor {}: choose a --data-dir it can traverse, or set DATABASE_URL",
                    wanted.display(),
                    fallback.display()
                );
            }
            tracing::info!(
                "the {user} user cannot reach {} (a parent directory is closed to it): this checkout's cluster lives in {} instead",
                wanted.display(),
                fallback.display()
            );
            Ok(Located {
                data_dir: fallback,
                moved_from: Some(wanted),
            })
        }
    }
}

/// Whether `user` can traverse every parent of `data_dir`. It probes the deepest parent that
/// exists: the directories start creates below it are made traversable, and the data directory
/// itself is given to `user`.
fn can_reach(user: &str, data_dir: &Path) -> anyhow::Result<bool> {
    let mut probe = data_dir.parent().unwrap_or(Path::new("/"));
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    let status = Command::new("runuser")
        .args(["-u", user, "--", "test", "-x"])
        .arg(probe)
        .current_dir("/")
        .status()
        .context("running runuser (needed to run PostgreSQL as a non-root user)")?;
    Ok(status.success())
}

/// Creates the missing directories down to `dir`, traversable by everyone when `traversable`
/// (whatever the umask). Returns the topmost directory it created, for removal on failure.
fn create_parents(dir: &Path, traversable: bool) -> anyhow::Result<Option<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = dir;
    while !p.exists() {
        missing.push(p.to_path_buf());
        p = p.parent().unwrap_or(Path::new("/"));
    }
    let mut topmost = None;
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {
                topmost.get_or_insert_with(|| d.clone());
                if traversable {
                    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                if let Some(top) = &topmost {
                    let _ = std::fs::remove_dir_all(top);
                }
                return Err(e).with_context(|| format!("creating {}", d.display()));
            }
        }
    }
    Ok(topmost)
}

/// Takes `operation` (`LOCK_SH` or `LOCK_EX`) on `file` if no other process prevents it.
fn try_flock(file: &File, operation: libc::c_int) -> anyhow::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor we own; it has no memory effects.
        if unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err).context("flock on the embedded cluster's lock file"),
        }
    }
}

/// A running private cluster. Stop it with [`EmbeddedPostgres::stop`].
#[derive(Debug)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<String>,
    /// `<data dir>.token-ledger.lock`, locked shared for the life of this value: while any
    /// process holds it, the cluster is in use and stays up.
    lock: File,
    lock_path: PathBuf,
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

fn user_exists(user: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(user) else {
        return false;
    };
    // SAFETY: a NUL-terminated name; the returned record is only compared with null.
    !unsafe { libc::getpwnam(name.as_ptr()) }.is_null()
}

impl EmbeddedPostgres {
    /// Starts the cluster in `dir` (initialising it on first use), or joins the one already
    /// running there, or adopts one left running by a process that is gone; then creates the
    /// ledger database. The last process to stop its `EmbeddedPostgres` stops the server.
    pub async fn start(dir: &DataDir) -> anyhow::Result<Self> {
        let dir = dir.clone();
        let pg = tokio::task::spawn_blocking(move || Self::start_blocking(&dir)).await??;
        if let Err(err) = pg.create_database().await {
            let _ = pg.stop().await;
            return Err(err);
        }
        Ok(pg)
    }

    fn start_blocking(dir: &DataDir) -> anyhow::Result<Self> {
        let bin_dir = find_binaries()?;
        let run_as = if running_as_root() {
            if !user_exists(RUN_AS_USER) {
                bail!(
                    "running as root, the embedded cluster needs the {RUN_AS_USER} system user (PostgreSQL refuses to run as root): \
                     install PostgreSQL's server package, or set DATABASE_URL"
                );
            }
            Some(RUN_AS_USER.to_string())
        } else {
            None
        };
        let Located {
            data_dir,
            moved_from,
        } = locate(dir, run_as.as_deref())?;
        if data_dir.as_os_str().len() > SOCKET_DIR_LEN_MAX {
            bail!(
                "data directory path {} is longer than {SOCKET_DIR_LEN_MAX} bytes, too long for the cluster's Unix socket; \
                 choose a shorter --data-dir",
                data_dir.display()
            );
        }
        let (Some(parent), Some(name)) = (data_dir.parent(), data_dir.file_name()) else {
            bail!("{} cannot be a data directory", data_dir.display());
        };
        let created = create_parents(parent, run_as.is_some())?;
        let mut lock_created = false;
        let mut lock_path = PathBuf::new();
        let result = (|| {
            if let Some(default) = &moved_from {
                // Says which checkout a directory under FALLBACK_ROOT belongs to.
                let note = parent.join("checkout");
                if !note.exists() {
                    std::fs::write(&note, format!("{}\n", default.display()))
                        .with_context(|| format!("writing {}", note.display()))?;
                }
            }
            let mut lock_name = name.to_owned();
            lock_name.push(".token-ledger.lock");
            lock_path = parent.join(lock_name);
            lock_created = !lock_path.exists();
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .with_context(|| format!("opening {}", lock_path.display()))?;
            let pg = EmbeddedPostgres {
                data_dir: data_dir.clone(),
                bin_dir,
                run_as,
                lock,
                lock_path: lock_path.clone(),
            };
            pg.join_or_start()?;
            Ok(pg)
        })();
        if result.is_err() {
            // Remove what this run created. The lock file goes only if no cluster exists: it
            // is what keeps the cluster's users apart.
            if let Some(top) = created {
                let _ = std::fs::remove_dir_all(top);
            } else if lock_created && !data_dir.exists() {
                let _ = std::fs::remove_file(&lock_path);
            }
        }
        result
    }

    /// Joins the running cluster, or (when no other process uses it) adopts it or starts it.
    fn join_or_start(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + LOCK_WAIT_MAX;
        loop {
            if try_flock(&self.lock, libc::LOCK_EX)? {
                // No live process uses the cluster.
                if self.is_running() {
                    tracing::warn!(
                        data_dir = %self.data_dir.display(),
                        "adopting an embedded PostgreSQL left running by a process that is gone; it stops when this process exits"
                    );
                } else {
                    self.init_and_start()?;
                }
                // SAFETY: flock on a descriptor we own. Downgrading cannot conflict: we hold
                // the only lock.
                if unsafe { libc::flock(self.lock.as_raw_fd(), libc::LOCK_SH) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .context("flock on the embedded cluster's lock file");
                }
                tracing::info!(data_dir = %self.data_dir.display(), "embedded PostgreSQL is running");
                return Ok(());
            }
            if try_flock(&self.lock, libc::LOCK_SH)? {
                if self.is_running() {
                    tracing::info!(
                        data_dir = %self.data_dir.display(),
                        "joining the embedded PostgreSQL another token-ledger process runs; the last one to exit stops it"
                    );
                    return Ok(());
                }
                // Users are alive but the server was stopped behind their backs: start it. A
                // joiner racing us may win; then the cluster runs and that is all we need.
                if !self.data_dir.join("PG_VERSION").exists() {
                    bail!(
                        "{} is in use by another token-ledger process but holds no cluster",
                        self.data_dir.display()
                    );
                }
                return match self.pg_ctl_start() {
                    Err(_) if self.is_running() => Ok(()),
                    other => other,
                };
            }
            // Another process is starting or stopping the cluster.
            if Instant::now() >= deadline {
                bail!(
                    "another process has held {} for {LOCK_WAIT_MAX:?} while starting or stopping the embedded PostgreSQL",
                    self.lock_path.display()
                );
            }
            std::thread::sleep(LOCK_POLL_INTERVAL);
        }
    }

    /// Initialises the cluster if there is none yet, and starts it. Holds the lock exclusively.
    /// Removes what it made if the server does not start.
    fn init_and_start(&self) -> anyhow::Result<()> {
        let fresh = !self.data_dir.join("PG_VERSION").exists();
        let existed = self.data_dir.exists();
        if fresh {
            self.initdb()?;
        } else if let Some(user) = &self.run_as {
            // The cluster's files must belong to the user it runs as.
            run(Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(&self.data_dir))
            .with_context(|| format!("giving {} to the {user} user", self.data_dir.display()))?;
        }
        let started = self.pg_ctl_start();
        if started.is_err() && fresh {
            // A cluster made by this run that never started holds nothing: do not leave it in
            // the way of the next start. A directory the operator made stays, emptied.
            if existed {
                for entry in std::fs::read_dir(&self.data_dir)?.flatten() {
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        std::fs::remove_dir_all(path)
                    } else {
                        std::fs::remove_file(path)
                    };
                }
            } else {
                let _ = std::fs::remove_dir_all(&self.data_dir);
            }
        }
        started
    }

    /// Creates the cluster. `initdb` writes to a scratch directory beside the data directory,
    /// renamed into place once complete, so a failed or interrupted `initdb` never leaves a
    /// half-made data directory that the next start would refuse.
    fn initdb(&self) -> anyhow::Result<()> {
        let parent = self
            .data_dir
            .parent()
            .expect("located data dir has a parent");
        let name = self
            .data_dir
            .file_name()
            .expect("located data dir has a name")
            .to_string_lossy()
            .into_owned();
        let scratch_prefix = format!(".{name}.initdb-");
        // Scratch directories of runs that died mid-initdb; we hold the lock exclusively, so
        // none is in use.
        for entry in std::fs::read_dir(parent)?.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&scratch_prefix)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let in_place = self.data_dir.exists();
        if in_place && std::fs::read_dir(&self.data_dir)?.next().is_some() {
            bail!(
                "{} is neither empty nor a PostgreSQL cluster: remove it or choose another --data-dir",
                self.data_dir.display()
            );
        }
        let target = if in_place {
            self.data_dir.clone()
        } else {
            parent.join(format!("{scratch_prefix}{}", std::process::id()))
        };
        tracing::info!(data_dir = %self.data_dir.display(), "initialising a new PostgreSQL cluster");
        let made = (|| {
            if !in_place {
                std::fs::create_dir(&target)
                    .with_context(|| format!("creating {}", target.display()))?;
            }
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700))?;
            if let Some(user) = &self.run_as {
                run(Command::new("chown").arg(format!("{user}:")).arg(&target))
                    .with_context(|| format!("giving {} to the {user} user", target.display()))?;
            }
            let mut initdb = self.command("initdb");
            initdb.arg("-D").arg(&target).args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ]);
            run(&mut initdb).context("initdb failed")?;
            if !in_place {
                std::fs::rename(&target, &self.data_dir).with_context(|| {
                    format!(
                        "renaming {} to {}",
                        target.display(),
                        self.data_dir.display()
                    )
                })?;
            }
            anyhow::Ok(())
        })();
        if made.is_err() && !in_place {
            let _ = std::fs::remove_dir_all(&target);
        }
        made
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let log = self.data_dir.join("server.log");
        let options = format!(
            "-c listen_addresses='' -k {} -p {SOCKET_PORT} -c unix_socket_permissions=0700",
            self.data_dir.display()
        );
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .args([
                "-w",
                "-t",
                &PG_CTL_TIMEOUT.as_secs().to_string(),
                "-o",
                &options,
                "start",
            ])
            // Its own process group: a Ctrl-C meant for us does not reach the server, which we
            // stop ourselves after draining.
            .process_group(0);
        run(&mut pg_ctl).map_err(|err| {
            let tail = std::fs::read_to_string(&log)
                .map(|text| {
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(SERVER_LOG_TAIL_LINES)..].join("\n")
                })
                .unwrap_or_default();
            err.context(format!(
                "pg_ctl start failed; {} ends:\n{tail}",
                log.display()
            ))
        })
    }

    /// A command for one of the PostgreSQL binaries, run as the cluster's user from `/` (a
    /// `runuser` keeps our working directory, which that user may not be able to enter).
    fn command(&self, program: &str) -> Command {
        let binary = self.bin_dir.join(program);
        let mut c = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        c.current_dir("/");
        c
    }

    fn is_running(&self) -> bool {
        let mut status = self.command("pg_ctl");
        status.arg("-D").arg(&self.data_dir).arg("status");
        status.output().map(|o| o.status.success()).unwrap_or(false)
    }

    /// Where the cluster lives (under [`FALLBACK_ROOT`] when the default moved there).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
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

    /// Stops the server if no other process uses it (a fast shutdown: open sessions are ended,
    /// committed work is durable); otherwise leaves it to the last user.
    pub fn stop_blocking(&self) -> anyhow::Result<()> {
        // Held exclusively from here until the lock file is closed, so no process joins a
        // server that is stopping.
        if !try_flock(&self.lock, libc::LOCK_EX)? {
            tracing::info!(
                data_dir = %self.data_dir.display(),
                "embedded PostgreSQL left running: another token-ledger process uses it"
            );
            return Ok(());
        }
        if !self.is_running() {
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

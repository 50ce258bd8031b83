//! Multi-host database URLs, libpq's form: `postgres://user@h1:p1,h2:p2/db?target_session_attrs=read-write`,
//! as `pg_autoctl show uri` prints them for a pg_auto_failover formation.
//!
//! sqlx 0.8 cannot parse them (launchbadge/sqlx#3333: its URL parser takes one host, and
//! `PgConnectOptions` holds one), so this module owns them: it splits the host list into one
//! `PgConnectOptions` per host (each parsed by sqlx, so every other parameter means what it
//! always did), finds the node to write to (with `target_session_attrs=read-write`, the first
//! host, in the order given, that is not in recovery and not read-only; with `primary`, not in
//! recovery; with `any`, the first that answers), and switches the store's pools to another
//! node when that one fails. The pools stay sqlx pools: a switch is `Pool::set_connect_options`
//! (future connections go to the new node) plus a `before_acquire` hook that discards
//! connections opened before the switch, and, unless `any`, an `after_connect` hook that refuses
//! a node that does not qualify, so no pool ever hands a writer a standby. A URL with one host
//! never comes here: sqlx parses it exactly as before.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, PgConnection, PgPool};

/// The most hosts a URL may list: a formation is a primary and a few standbys.
pub const HOSTS_MAX: usize = 16;

/// How long one host may take to connect and say whether it is in recovery, so a host that
/// does not answer at all (a dead VM, a dropped route) costs this much per search, not the
/// operating system's TCP timeout.
pub const HOST_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Which node a session may use (libpq's `target_session_attrs`, the values a writer needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    /// The first host that answers (libpq's default).
    Any,
    /// The first host that is not in recovery and whose sessions are not read-only (libpq's
    /// `read-write`). The second half matters: a freshly promoted pg_auto_failover node stays
    /// `default_transaction_read_only` until the old primary is known to be demoted
    /// (`stop_replication`), and writes there fail with 25006.
    ReadWrite,
    /// The first host that is not in recovery (libpq's `primary`).
    Primary,
}

/// A parsed multi-host URL: one set of connect options per host, in the order given.
#[derive(Debug, Clone)]
pub struct HostList {
    hosts: Vec<PgConnectOptions>,
    attrs: SessionAttrs,
}

impl HostList {
    /// `Ok(None)` for a URL with a single host (sqlx parses it, as it always did); the hosts of
    /// a URL that lists several, comma-separated, each with its own optional port.
    pub fn parse(url: &str) -> Result<Option<Self>, String> {
        // Not a URL at all: sqlx says what is wrong with it, as it always did.
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(None);
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (user_info, host_list) = match authority.rsplit_once('@') {
            Some((user_info, hosts)) => (Some(user_info), hosts),
            None => (None, authority),
        };
        if !host_list.contains(',') {
            return Ok(None);
        }
        let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
        let mut attrs = SessionAttrs::Any;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("target_session_attrs", value)) => attrs = parse_attrs(value)?,
                Some(("host" | "hostaddr" | "port", _)) => {
                    return Err(format!(
                        "`{pair}` cannot be combined with a host list: give each host as host:port"
                    ))
                }
                _ => kept.push(pair),
            }
        }
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        let user_info = user_info.map(|u| format!("{u}@")).unwrap_or_default();
        let hosts = host_list
            .split(',')
            .map(|host| {
                if host.is_empty() {
                    return Err("an empty host in the host list".to_string());
                }
                format!("{scheme}://{user_info}{host}{path}{query}")
                    .parse::<PgConnectOptions>()
                    .map_err(|e| format!("host `{host}`: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if hosts.len() > HOSTS_MAX {
            return Err(format!(
                "{} hosts; at most {HOSTS_MAX} are accepted",
                hosts.len()
            ));
        }
        Ok(Some(Self { hosts, attrs }))
    }

    pub fn attrs(&self) -> SessionAttrs {
        self.attrs
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// `host:port` of host `i`, for messages.
    pub fn label(&self, i: usize) -> String {
        let o = &self.hosts[i];
        format!("{}:{}", o.get_host(), o.get_port())
    }

    /// Sets the application name on every host's options.
    pub fn application_name(mut self, name: &str) -> Self {
        self.hosts = self
            .hosts
            .into_iter()
            .map(|o| o.application_name(name))
            .collect();
        self
    }
}

fn parse_attrs(value: &str) -> Result<SessionAttrs, String> {
    match value {
        "any" => Ok(SessionAttrs::Any),
        "read-write" => Ok(SessionAttrs::ReadWrite),
        "primary" => Ok(SessionAttrs::Primary),
        other => Err(format!(
            "target_session_attrs={other} is not supported: the ledger writes, so use read-write (or primary, or any)"
        )),
    }
}

/// Whether the node behind `conn` may serve a session with `attrs`.
async fn qualifies(conn: &mut PgConnection, attrs: SessionAttrs) -> Result<bool, sqlx::Error> {
    match attrs {
        SessionAttrs::Any => sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map(|_| true),
        SessionAttrs::ReadWrite => sqlx::query_scalar::<_, bool>(
            "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'",
        )
        .fetch_one(&mut *conn)
        .await,
        SessionAttrs::Primary => {
            sqlx::query_scalar::<_, bool>("SELECT NOT pg_is_in_recovery()")
                .fetch_one(&mut *conn)
                .await
        }
    }
}

/// The hosts of a multi-host URL and which of them the store's pools use now. Shared by every
/// clone of a store.
#[derive(Debug)]
pub struct Failover {
    hosts: HostList,
    /// The host the pools connect to.
    current: AtomicUsize,
    /// Origin of `switched_at_micros`.
    started: Instant,
    /// When the pools last switched host (micros since `started`); connections older than that
    /// are discarded rather than handed out.
    switched_at_micros: AtomicU64,
    /// Every pool that connects to the current host (the ledger's, the LISTEN pool, the webhook
    /// lane), each switched with the others.
    pools: Mutex<Vec<PgPool>>,
}

impl Failover {
    pub fn new(hosts: HostList) -> Self {
        Self {
            hosts,
            current: AtomicUsize::new(0),
            started: Instant::now(),
            switched_at_micros: AtomicU64::new(0),
            pools: Mutex::default(),
        }
    }

    /// The connect options of the host the pools use now.
    pub fn current_options(&self) -> PgConnectOptions {
        self.hosts.hosts[self.current.load(Ordering::Relaxed)].clone()
    }

    /// `host:port` of the host the pools use now.
    pub fn current_label(&self) -> String {
        self.hosts.label(self.current.load(Ordering::Relaxed))
    }

    pub fn attrs(&self) -> SessionAttrs {
        self.hosts.attrs
    }

    /// A pool that follows this failover: connects to the current host (with `application_name`),
    /// switches when the others do, and never hands out a connection opened before a switch or
    /// (read-write) to a node in recovery.
    /// With `ping`, also pings each connection it asks for before use ([`checked`]).
    pub fn pool(
        self: &std::sync::Arc<Self>,
        options: PgPoolOptions,
        application_name: &str,
        ping: Option<PingWhen>,
    ) -> PgPool {
        let attrs = self.attrs();
        let mut options = checked(options, Some(self.clone()), ping);
        if attrs != SessionAttrs::Any {
            // A node that no longer qualifies (a demoted primary, a promoted one not yet open for
            // writes) is refused; the pool retries until its acquire timeout (UNAVAILABLE,
            // retryable), by when the health probe has found the node that does.
            options = options.after_connect(move |conn, _| {
                Box::pin(async move {
                    if qualifies(conn, attrs).await? {
                        Ok(())
                    } else {
                        Err(sqlx::Error::Configuration(
                            "connected to a node that does not take writes; looking for the one that does".into(),
                        ))
                    }
                })
            });
        }
        let pool =
            options.connect_lazy_with(self.current_options().application_name(application_name));
        let mut pools = self
            .pools
            .lock()
            .expect("no panics while holding the pool list");
        // A pool closed since (an abandoned listener's) needs no more switching.
        pools.retain(|p| !p.is_closed());
        pools.push(pool.clone());
        drop(pools);
        pool
    }

    /// Whether a connection opened `age` ago predates the last switch.
    fn opened_before_switch(&self, age: Duration) -> bool {
        let switched = self.switched_at_micros.load(Ordering::Relaxed);
        if switched == 0 {
            return false;
        }
        let since_switch = self
            .started
            .elapsed()
            .saturating_sub(Duration::from_micros(switched));
        age > since_switch
    }

    /// Searches the hosts in the order given (as libpq does) for one that qualifies; returns its
    /// index and the open connection, or why each host was passed over.
    pub async fn search(&self) -> Result<(usize, PgConnection), String> {
        let mut reasons = Vec::with_capacity(self.hosts.len());
        for (i, options) in self.hosts.hosts.iter().enumerate() {
            let tried = tokio::time::timeout(HOST_CONNECT_TIMEOUT, async {
                let mut conn = options.connect().await?;
                let ok = qualifies(&mut conn, self.attrs()).await?;
                Ok::<_, sqlx::Error>((conn, ok))
            })
            .await;
            let reason = match tried {
                Ok(Ok((conn, true))) => return Ok((i, conn)),
                Ok(Ok((conn, false))) => {
                    let _ = sqlx::Connection::close(conn).await;
                    "a standby, or read-only".to_string()
                }
                Ok(Err(err)) => crate::error::one_line(&err),
                Err(_) => format!("no answer within {HOST_CONNECT_TIMEOUT:?}"),
            };
            reasons.push(format!("{}: {reason}", self.hosts.label(i)));
        }
        Err(format!("no usable host ({})", reasons.join("; ")))
    }

    /// Points every pool at host `i` (a no-op when they already use it).
    pub fn switch_to(&self, i: usize) {
        let previous = self.current.swap(i, Ordering::Relaxed);
        if previous == i {
            return;
        }
        let micros = u64::try_from(self.started.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.switched_at_micros.store(micros, Ordering::Relaxed);
        for pool in self
            .pools
            .lock()
            .expect("no panics while holding the pool list")
            .iter()
        {
            let name = pool
                .connect_options()
                .get_application_name()
                .map(str::to_owned);
            let mut options = self.hosts.hosts[i].clone();
            if let Some(name) = name {
                options = options.application_name(&name);
            }
            pool.set_connect_options(options);
        }
        tracing::warn!(
            from = %self.hosts.label(previous),
            to = %self.hosts.label(i),
            "database host switched"
        );
    }

    /// Whether the node behind `conn` still qualifies (the health probe's question).
    pub async fn still_qualifies(&self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        qualifies(conn, self.attrs()).await
    }
}

/// Builds the pool for a URL: sqlx's own for one host, a [`Failover`]'s for several.
/// When a pool pings a connection before handing it out (the ledger's policy: see
/// `Store::connect_lazy`); a pool given none leaves it to sqlx's `test_before_acquire`.
pub type PingWhen = std::sync::Arc<dyn Fn(&PoolConnectionMetadata) -> bool + Send + Sync>;

/// `options` with the one `before_acquire` hook sqlx keeps (a second would replace the first):
/// with a `failover`, refuses a connection opened before its last host switch; with `ping`,
/// pings a connection it asks for (a dead one is then closed and another taken).
fn checked(
    options: PgPoolOptions,
    failover: Option<std::sync::Arc<Failover>>,
    ping: Option<PingWhen>,
) -> PgPoolOptions {
    if failover.is_none() && ping.is_none() {
        return options;
    }
    options.before_acquire(move |conn, meta| {
        let fresh = failover
            .as_ref()
            .is_none_or(|f| !f.opened_before_switch(meta.age));
        let ping = fresh && ping.as_ref().is_some_and(|p| p(&meta));
        Box::pin(async move {
            if ping {
                sqlx::Connection::ping(conn).await?;
            }
            Ok(fresh)
        })
    })
}

pub fn pool_for(
    url: &str,
    options: PgPoolOptions,
    application_name: &str,
    ping: Option<PingWhen>,
) -> Result<(PgPool, Option<std::sync::Arc<Failover>>), String> {
    match HostList::parse(url)? {
        None => {
            let parsed: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| e.to_string())?;
            Ok((
                checked(options, None, ping)
                    .connect_lazy_with(parsed.application_name(application_name)),
                None,
            ))
        }
        Some(hosts) => {
            let failover = std::sync::Arc::new(Failover::new(hosts));
            let pool = failover.pool(options, application_name, ping);
            Ok((pool, Some(failover)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(url: &str) -> HostList {
        HostList::parse(url)
            .expect("parses")
            .expect("several hosts")
    }

    #[test]
    fn sqlx_itself_cannot_parse_a_host_list() {
        // Why this module exists (launchbadge/sqlx#3333): if sqlx learns the form, use it.
        assert!("postgres://u@a:5432,b:5433/db"
            .parse::<PgConnectOptions>()
            .is_err());
    }

    #[test]
    fn a_single_host_url_is_left_to_sqlx() {
        for url in [
            "postgres://bob:pw@db:5432/ledger",
            "postgres://bob@db/ledger?target_session_attrs=read-write",
            "postgres://localhost/ledger?host=/var/run/postgresql",
        ] {
            assert!(HostList::parse(url).unwrap().is_none(), "{url}");
        }
    }

    #[test]
    fn each_host_keeps_its_port_and_the_shared_parameters() {
        let list = hosts(
            "postgres://bob:pw@10.0.0.1:55432,db2,[::1]:6000/ledger?sslmode=disable&target_session_attrs=read-write&application_name=x",
        );
        assert_eq!(list.len(), 3);
        assert_eq!(list.attrs(), SessionAttrs::ReadWrite);
        assert_eq!(list.label(0), "10.0.0.1:55432");
        assert_eq!(list.label(1), "db2:5432");
        assert_eq!(list.label(2), "[::1]:6000");
        for o in &list.hosts {
            assert_eq!(o.get_username(), "bob");
            assert_eq!(o.get_database(), Some("ledger"));
            assert_eq!(o.get_application_name(), Some("x"));
        }
    }

    #[test]
    fn target_session_attrs_defaults_to_any_and_refuses_what_a_writer_cannot_use() {
        assert_eq!(hosts("postgres://a,b/db").attrs(), SessionAttrs::Any);
        assert_eq!(
            hosts("postgres://a,b/db?target_session_attrs=any").attrs(),
            SessionAttrs::Any
        );
        assert_eq!(
            hosts("postgres://a,b/db?target_session_attrs=primary").attrs(),
            SessionAttrs::Primary
        );
        for bad in ["read-only", "standby", "prefer-standby", "nonsense"] {
            let err = HostList::parse(&format!("postgres://a,b/db?target_session_attrs={bad}"))
                .unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn malformed_host_lists_are_refused_with_the_reason() {
        assert!(HostList::parse("postgres://a,,b/db")
            .unwrap_err()
            .contains("empty host"));
        assert!(HostList::parse("postgres://a:x,b/db")
            .unwrap_err()
            .contains("host `a:x`"));
        assert!(HostList::parse("postgres://a,b/db?port=5433")
            .unwrap_err()
            .contains("port=5433"));
        let many = vec!["h"; HOSTS_MAX + 1].join(",");
        assert!(HostList::parse(&format!("postgres://{many}/db"))
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn only_connections_opened_before_a_switch_are_discarded() {
        let failover = Failover::new(hosts("postgres://a,b/db"));
        let meta = Duration::from_millis;
        assert!(
            !failover.opened_before_switch(meta(60_000)),
            "no switch yet"
        );
        std::thread::sleep(Duration::from_millis(20));
        failover.switch_to(1);
        assert_eq!(failover.current_label(), "b:5432");
        assert!(failover.opened_before_switch(meta(60_000)));
        assert!(!failover.opened_before_switch(meta(0)));
    }
}

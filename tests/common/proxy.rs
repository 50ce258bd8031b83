//! A TCP proxy in front of PostgreSQL that a test can cut and restore, to make "the database is
//! down" real without stopping the shared server. The listener stays bound for the proxy's
//! whole life (no test re-binds a released port). While cut, it has dropped the connections it
//! was forwarding and holds every new one open without a byte of answer: a database that does
//! not answer, the case where a client would otherwise wait out its whole timeout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};

/// Where the real PostgreSQL listens.
#[derive(Clone, Debug)]
pub enum Upstream {
    Tcp(String, u16),
    Unix(PathBuf),
}

impl Upstream {
    pub fn of(options: &sqlx::postgres::PgConnectOptions) -> Self {
        match options.get_socket() {
            Some(dir) => Upstream::Unix(dir.join(format!(".s.PGSQL.{}", options.get_port()))),
            None => Upstream::Tcp(options.get_host().to_string(), options.get_port()),
        }
    }

    async fn forward(&self, mut client: TcpStream, silence: Arc<Notify>) {
        match self {
            Upstream::Tcp(host, port) => {
                if let Ok(mut server) = TcpStream::connect((host.as_str(), *port)).await {
                    pass(&mut client, &mut server, &silence).await;
                }
            }
            Upstream::Unix(path) => {
                if let Ok(mut server) = UnixStream::connect(path).await {
                    pass(&mut client, &mut server, &silence).await;
                }
            }
        }
    }
}

/// Copies both ways until either side closes, or, once `silence` fires, keeps both sockets open
/// and passes nothing more: a peer that went silent without a reset.
async fn pass<S>(client: &mut TcpStream, server: &mut S, silence: &Notify)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::select! {
        _ = tokio::io::copy_bidirectional(client, server) => {}
        _ = silence.notified() => std::future::pending::<()>().await,
    }
}

#[derive(Default)]
struct State {
    cut: bool,
    forwarding: Vec<AbortHandle>,
    /// Connections accepted while cut, held unanswered until `restore` closes them.
    unanswered: Vec<TcpStream>,
}

/// A running proxy; `cut` drops every open connection and refuses new ones until `restore`.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    silence: Arc<Notify>,
    _tasks: JoinSet<()>,
}

impl Proxy {
    pub async fn start(upstream: Upstream) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let mut tasks = JoinSet::new();
        let shared = state.clone();
        let silence = Arc::new(Notify::new());
        let silencer = silence.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut state = shared.lock().unwrap();
                if state.cut {
                    state.unanswered.push(client);
                    continue;
                }
                let up = upstream.clone();
                let silence = silencer.clone();
                let handle = conns.spawn(async move { up.forward(client, silence).await });
                state.forwarding.retain(|h| !h.is_finished());
                state.forwarding.push(handle);
            }
            // Dropping `conns` (when the proxy is dropped) aborts every forwarded connection.
        });
        Self {
            addr,
            state,
            silence,
            _tasks: tasks,
        }
    }

    /// Stops forwarding: every open connection is dropped; new ones are held without answer.
    pub fn cut(&mut self) {
        let mut state = self.state.lock().unwrap();
        state.cut = true;
        for handle in state.forwarding.drain(..) {
            handle.abort();
        }
    }

    /// Every connection open now stops passing bytes but stays open (no reset, no close); new
    /// connections are forwarded as usual.
    pub fn silence_open_connections(&self) {
        self.silence.notify_waiters();
    }

    /// The URL of `db` through this proxy.
    pub fn url_of(&self, db: &super::TestDb) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            db.options.get_username(),
            self.addr.port(),
            db.name
        )
    }

    /// Forwards new connections again.
    pub fn restore(&mut self) {
        let mut state = self.state.lock().unwrap();
        state.cut = false;
        state.unanswered.clear();
    }
}

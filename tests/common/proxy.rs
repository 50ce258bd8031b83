//! A TCP proxy in front of PostgreSQL that a test can cut and restore, to make "the database is
//! down" real without stopping the shared server.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinSet;

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
}

/// A running proxy; `cut` closes the listener and every open connection.
pub struct Proxy {
    pub addr: SocketAddr,
    upstream: Upstream,
    tasks: Option<JoinSet<()>>,
}

impl Proxy {
    pub async fn start(upstream: Upstream) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), upstream).await
    }

    pub async fn start_on(addr: SocketAddr, upstream: Upstream) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        let up = upstream.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let up = up.clone();
                conns.spawn(async move {
                    match up {
                        Upstream::Tcp(host, port) => {
                            if let Ok(mut server) = TcpStream::connect((host.as_str(), port)).await
                            {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        }
                        Upstream::Unix(path) => {
                            if let Ok(mut server) = UnixStream::connect(path).await {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        }
                    }
                });
            }
            // Dropping `conns` (when this task is aborted) aborts every forwarded connection.
        });
        Self {
            addr,
            upstream,
            tasks: Some(tasks),
        }
    }

    /// Stops forwarding: the listener closes and every open connection is dropped.
    pub async fn cut(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.shutdown().await;
        }
    }

    /// Starts forwarding again on the same address.
    pub async fn restore(&mut self) {
        let fresh = Proxy::start_on(self.addr, self.upstream.clone()).await;
        *self = fresh;
    }
}

//! The one listener skeleton every connection-oriented transport runs on (the HTTP API, the gRPC
//! API, the admin listener, MQTT, QUIC): accept with backoff, admission (the connection limits), a handshake
//! phase and a session phase as tasks the listener owns, and shutdown (stop accepting, ask open
//! connections to end, wait at most the drain timeout, then abort what is left).
//!
//! A transport says only what is its own, by implementing [`Protocol`]: whom it admits and how it
//! refuses the others, how a connection is greeted and authenticated (the handshake, which may
//! fail), how an authenticated connection is served (the session), and how open sessions are
//! told to end. mini-redis's `server.rs` is the model. The handshake and the session are separate
//! tasks so that a long-lived session's task is no bigger than the session needs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::backoff::Backoff;

/// A session: serves one connection until it ends (the peer leaves, or shutdown asks it to).
pub type Session = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The shutdown signal every transport watches: `true` once the gateway is stopping.
pub type Stop = watch::Receiver<bool>;

/// Where connections come from: a TCP listener, a QUIC endpoint.
pub trait Acceptor: Send {
    /// A connection (attempt) as accepted.
    type Conn: Send + 'static;
    /// The next connection; `None` once the acceptor is closed for good.
    fn accept(
        &mut self,
    ) -> impl Future<Output = Option<io::Result<(Self::Conn, SocketAddr)>>> + Send;
}

impl Acceptor for tokio::net::TcpListener {
    type Conn = tokio::net::TcpStream;

    async fn accept(&mut self) -> Option<io::Result<(Self::Conn, SocketAddr)>> {
        Some(tokio::net::TcpListener::accept(self).await)
    }
}

impl Acceptor for quinn::Endpoint {
    type Conn = quinn::Incoming;

    async fn accept(&mut self) -> Option<io::Result<(Self::Conn, SocketAddr)>> {
        let incoming = quinn::Endpoint::accept(self).await?;
        let peer = incoming.remote_address();
        Some(Ok((incoming, peer)))
    }
}

/// What admission decided for a new connection.
pub enum Admission<C, P> {
    /// Serve it, holding `P` (a connection slot) for as long as the transport decides.
    Accept(C, P),
    /// Refused; the future (if any) answers it politely first (a 503, a close code). It runs as
    /// a task the listener owns, so it must end on its own, and soon.
    Refuse(Option<Session>),
}

/// What a transport does with the connections its listener accepts.
pub trait Protocol: Send + Sync + Sized + 'static {
    /// What the acceptor yields.
    type Conn: Send + 'static;
    /// What admission hands the handshake (a slot, a permit), released when dropped.
    type Permit: Send + 'static;

    /// The listener's name in logs.
    fn name(&self) -> &'static str;

    /// Whether to serve a new connection from `peer`, by the transport's limits. Runs on the
    /// accept loop: it must not wait.
    fn admit(&self, conn: Self::Conn, peer: SocketAddr) -> Admission<Self::Conn, Self::Permit>;

    /// Greets and authenticates a connection; `None` if it was refused or gave up (the transport
    /// has said why, to the peer and in the log). Bounded by the transport's own timeouts.
    fn handshake(
        self: Arc<Self>,
        conn: Self::Conn,
        peer: SocketAddr,
        permit: Self::Permit,
        stop: Stop,
    ) -> impl Future<Output = Option<Session>> + Send + 'static;

    /// Shutdown has begun and nothing new is accepted: ask open sessions to end.
    fn stopping(&self) {}
}

/// Accepts connections from `acceptor` for `proto` until `stop` turns true (or the acceptor
/// closes), then drains: open sessions get `drain` to end before they are aborted.
pub async fn serve<A, P>(mut acceptor: A, proto: Arc<P>, mut stop: Stop, drain: Duration)
where
    A: Acceptor<Conn = P::Conn>,
    P: Protocol,
{
    // Handshakes hand back their session; sessions and refusals hand back nothing.
    let mut tasks: JoinSet<Option<Session>> = JoinSet::new();
    // After a failed accept (usually EMFILE): 5 ms doubling up to 1 s, so a descriptor shortage
    // is not a busy loop; from 5 ms again after the next success.
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
    loop {
        tokio::select! {
            accepted = acceptor.accept() => {
                let (conn, peer) = match accepted {
                    None => break,
                    Some(Ok(a)) => a,
                    Some(Err(e)) => {
                        let wait = backoff.next_wait();
                        warn!(transport = proto.name(), error = %e, retry_in = ?wait, "accept failed");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                };
                backoff.reset();
                match proto.admit(conn, peer) {
                    Admission::Accept(conn, permit) => {
                        let shake = proto.clone().handshake(conn, peer, permit, stop.clone());
                        tasks.spawn(shake);
                    }
                    Admission::Refuse(Some(answer)) => {
                        tasks.spawn(async move {
                            answer.await;
                            None
                        });
                    }
                    Admission::Refuse(None) => {}
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(Some(session)) = done {
                    tasks.spawn(async move {
                        session.await;
                        None
                    });
                }
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    drop(acceptor);
    debug!(
        transport = proto.name(),
        open = tasks.len(),
        "listener closed; draining"
    );
    proto.stopping();
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(drain, all_done).await.is_err() {
        warn!(transport = proto.name(), timeout = ?drain, "connections did not end within the drain timeout; closing them");
    }
    tasks.abort_all();
}

/// Runs a served connection (hyper's HTTP/1 or HTTP/2) until it ends, or until `stop`: then has
/// it finish what is in progress and close (`graceful`: HTTP/1 ends after the current request,
/// HTTP/2 sends GOAWAY), and waits for that.
pub async fn until_stopped<C, E>(
    conn: C,
    mut stop: Stop,
    graceful: fn(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = async { drop(stop.wait_for(|s| *s).await) } => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{OwnedSemaphorePermit, Semaphore};

    /// Echoes one line per connection after a greeting; at most `slots` at once.
    struct Echo {
        slots: Arc<Semaphore>,
        refused: AtomicUsize,
        stopped: AtomicUsize,
    }

    impl Protocol for Echo {
        type Conn = TcpStream;
        type Permit = OwnedSemaphorePermit;
        fn name(&self) -> &'static str {
            "echo"
        }

        fn admit(&self, conn: TcpStream, _: SocketAddr) -> Admission<TcpStream, Self::Permit> {
            match self.slots.clone().try_acquire_owned() {
                Ok(p) => Admission::Accept(conn, p),
                Err(_) => {
                    self.refused.fetch_add(1, Ordering::SeqCst);
                    Admission::Refuse(Some(Box::pin(async move {
                        let mut conn = conn;
                        let _ = conn.write_all(b"busy\n").await;
                    })))
                }
            }
        }

        async fn handshake(
            self: Arc<Self>,
            mut conn: TcpStream,
            _: SocketAddr,
            permit: Self::Permit,
            mut stop: Stop,
        ) -> Option<Session> {
            conn.write_all(b"hello\n").await.ok()?;
            Some(Box::pin(async move {
                let _permit = permit;
                let mut buf = [0u8; 64];
                tokio::select! {
                    n = conn.read(&mut buf) => {
                        if let Ok(n) = n {
                            let _ = conn.write_all(&buf[..n]).await;
                        }
                    }
                    () = async { drop(stop.wait_for(|s| *s).await) } => {}
                }
            }))
        }

        fn stopping(&self) {
            self.stopped.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn line(c: &mut TcpStream) -> String {
        let mut buf = vec![0u8; 16];
        let n = c.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn admits_to_its_limit_refuses_politely_and_drains_on_stop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proto = Arc::new(Echo {
            slots: Arc::new(Semaphore::new(1)),
            refused: AtomicUsize::new(0),
            stopped: AtomicUsize::new(0),
        });
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, proto.clone(), rx, Duration::from_secs(5)));
        let mut a = TcpStream::connect(addr).await.unwrap();
        assert_eq!(line(&mut a).await, "hello\n");
        let mut b = TcpStream::connect(addr).await.unwrap();
        assert_eq!(line(&mut b).await, "busy\n", "over the limit");
        assert_eq!(proto.refused.load(Ordering::SeqCst), 1);
        a.write_all(b"ping").await.unwrap();
        assert_eq!(line(&mut a).await, "ping");
        // The slot is free again once the session ended.
        let mut c = loop {
            let mut c = TcpStream::connect(addr).await.unwrap();
            if line(&mut c).await == "hello\n" {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // Stop: the open session is asked to end, and the listener returns.
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("drained in time")
            .unwrap();
        assert_eq!(proto.stopped.load(Ordering::SeqCst), 1);
        let mut buf = [0u8; 4];
        assert_eq!(c.read(&mut buf).await.unwrap(), 0, "the session closed");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer accepting"
        );
    }
}

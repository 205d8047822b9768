//! A user-space TCP proxy between a host and its database that misbehaves on demand, the way
//! real networks do: it delays each direction, stops forwarding silently (no FIN, no RST: a
//! cut cable, a power loss), or cuts a connection exactly between a `COMMIT` and its reply.
//! tc/netem and iptables are not needed (nor available in every kernel).
//!
//! ```no_run
//! use tally_test_support::proxy::{Cut, FaultProxy};
//! let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap(), "127.0.0.1:0".parse().unwrap());
//! proxy.set_delay(std::time::Duration::from_millis(100));
//! proxy.cut_at_next_commit(Cut::AfterCommit); // the next COMMIT reaches the server, its reply never arrives
//! proxy.blackhole(); // from now on nothing passes, and nobody is told
//! ```
//!
//! It runs on a tokio runtime of its own (the tests are synchronous); dropping it stops it and
//! closes every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Where a connection is cut around a `COMMIT` (PostgreSQL's simple query `COMMIT`, as
/// tokio-postgres sends it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The `COMMIT` reaches the server; the connection is then closed both ways, so its reply
    /// never reaches the host (the outcome is unknown to the host; the server commits).
    AfterCommit,
    /// The `COMMIT` is dropped and the connection closed both ways (the server rolls back).
    BeforeCommit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mode {
    delay: Duration,
    blackhole: bool,
    cut: Option<Cut>,
}

/// The `Query` message of `COMMIT`: 'Q', length 11, "COMMIT\0".
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
/// The server's `CommandComplete` for it: 'C', length 11, "COMMIT\0".
const COMMIT_REPLY: &[u8] = b"C\0\0\0\x0bCOMMIT\0";

/// A running proxy; see the module docs.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    cuts: Arc<AtomicU64>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Listens on `listen` (port 0: a free one) and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr, listen: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("proxy runtime: {e}"));
        let listener = runtime
            .block_on(TcpListener::bind(listen))
            .unwrap_or_else(|e| panic!("proxy bind {listen}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy address: {e}"));
        let (mode, _) = watch::channel(Mode {
            delay: Duration::ZERO,
            blackhole: false,
            cut: None,
        });
        let cuts = Arc::new(AtomicU64::new(0));
        let (rx, counter) = (mode.subscribe(), Arc::clone(&cuts));
        let modes = mode.clone();
        runtime.spawn(async move {
            while let Ok((host, _)) = listener.accept().await {
                let (rx, modes, counter) = (rx.clone(), modes.clone(), Arc::clone(&counter));
                tokio::spawn(async move {
                    let Ok(db) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = host.set_nodelay(true);
                    let _ = db.set_nodelay(true);
                    let (hr, hw) = host.into_split();
                    let (dr, dw) = db.into_split();
                    let (stop, stopped) = watch::channel(false);
                    let cut: Flag = Arc::default();
                    let awaiting: Flag = Arc::default();
                    let up = pump(
                        hr,
                        dw,
                        rx.clone(),
                        (Arc::clone(&cut), Arc::clone(&awaiting), stop.clone()),
                        Some((modes, counter)),
                    );
                    let down = pump(dr, hw, rx, (cut, awaiting, stop), None);
                    let mut stopped = stopped;
                    tokio::select! {
                        _ = async { tokio::join!(up, down) } => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Self {
            addr,
            mode,
            cuts,
            runtime: Mutex::new(Some(runtime)),
        }
    }

    /// The address hosts connect to instead of the database's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Delays every chunk, each direction, by `delay` from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.mode.send_modify(|m| m.delay = delay);
    }

    /// Stops forwarding anything, on every connection and new ones, without telling either
    /// side: no FIN, no RST. Bytes already read are held.
    pub fn blackhole(&self) {
        self.mode.send_modify(|m| m.blackhole = true);
    }

    /// Forwards again (held bytes go on, as a link that comes back delivers retransmissions).
    pub fn restore(&self) {
        self.mode.send_modify(|m| m.blackhole = false);
    }

    /// Cuts the connection that carries the next `COMMIT`, as `cut` says (once).
    pub fn cut_at_next_commit(&self, cut: Cut) {
        self.mode.send_modify(|m| m.cut = Some(cut));
    }

    /// How many connections were cut at a `COMMIT` so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            rt.shutdown_background();
        }
    }
}

type Cutter = (watch::Sender<Mode>, Arc<AtomicU64>);
type Flag = Arc<std::sync::atomic::AtomicBool>;

/// Copies `from` to `to` as the mode says. `cutter` is set on the host-to-database direction,
/// which looks for `COMMIT`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    (cut_done, awaiting, stop): (Flag, Flag, watch::Sender<bool>),
    cutter: Option<Cutter>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A blackhole does not even read: the sender's window fills, as on a dead link.
        if mode.wait_for(|m| !m.blackhole).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let now = *mode.borrow();
        if !now.delay.is_zero() {
            tokio::time::sleep(now.delay).await;
        }
        // Held while blackholed; forwarded if the link comes back.
        if mode.wait_for(|m| !m.blackhole).await.is_err() {
            return;
        }
        if let (Some((modes, counter)), Some(cut)) = (&cutter, now.cut)
            && find(chunk, COMMIT).is_some()
        {
            modes.send_modify(|m| m.cut = None);
            if cut == Cut::BeforeCommit {
                // Nothing more reaches either side; the server sees EOF before any COMMIT.
                counter.fetch_add(1, Ordering::SeqCst);
                cut_done.store(true, Ordering::SeqCst);
                let _ = stop.send(true);
                return;
            }
            // The COMMIT goes on; the other direction cuts at its reply.
            if to.write_all(chunk).await.is_err() {
                return;
            }
            awaiting.store(true, Ordering::SeqCst);
            if let Some((_, counter)) = &cutter {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            continue;
        }
        if cut_done.load(Ordering::SeqCst) {
            return;
        }
        if awaiting.load(Ordering::SeqCst)
            && cutter.is_none()
            && let Some(at) = find(chunk, COMMIT_REPLY)
        {
            // What came before the COMMIT's reply goes on; the reply and everything after are
            // dropped, and the connection closed both ways.
            let _ = to.write_all(&chunk[..at]).await;
            cut_done.store(true, Ordering::SeqCst);
            let _ = stop.send(true);
            return;
        }
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn echo_server() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&b[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn forwards_delays_blackholes_and_cuts_at_commit() {
        let proxy = FaultProxy::start(echo_server(), "127.0.0.1:0".parse().expect("addr"));
        let mut c = std::net::TcpStream::connect(proxy.addr()).expect("connect");
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut b = [0u8; 64];
        c.write_all(b"ping").expect("write");
        assert_eq!(c.read(&mut b).expect("echo"), 4);
        proxy.blackhole();
        c.write_all(b"lost").expect("write is accepted");
        assert!(c.read(&mut b).is_err(), "nothing comes back, and no EOF");
        proxy.restore();
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(c.read(&mut b).expect("held bytes go on"), 4);
        assert_eq!(&b[..4], b"lost");
        proxy.cut_at_next_commit(Cut::BeforeCommit);
        c.write_all(COMMIT).expect("write");
        assert_eq!(c.read(&mut b).unwrap_or(0), 0, "closed at the COMMIT");
        assert_eq!(proxy.cuts(), 1);
    }
}

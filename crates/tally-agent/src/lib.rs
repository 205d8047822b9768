//! The agent: the long-running client service behind `tally agent run`.
//!
//! It activates and renews on the lifecycle's timers (R7–R10), checks the hardware (R12), and
//! serves the local socket protocol of `tally_client::agent`. It sleeps until the next thing is
//! due (no busy loop), wakes early when asked over the socket, and stops on the shutdown token.
//!
//! Socket permissions are `0666` so any local user can ask for the status or an activation
//! (R13); privileged requests are checked against the peer's uid (root or the agent's owner).
//! X4: each non-root user holds at most [`MAX_CONNECTIONS_PER_USER`] connections (all of them
//! together [`MAX_CONNECTIONS_NON_ROOT`]); more are closed at once; a request must arrive within
//! [`REQUEST_DEADLINE`]; root is never capped. At start the state directory's modes are
//! tightened (`Agent::tighten_modes`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::{Duration, Instant};

use tally_client::agent::{AgentRequest, MAX_REQUEST_LINE, machine_name};
use tally_client::codes;
use tally_client::fsmode;
use tally_client::ops::{Client, OpResult, TRUST_FILE};
use tally_client::platform::{AgentListener, AgentStream};
use tally_client::state::{ClientState, LOCK_FILE, STATE_FILE, StateError};
use tally_core::lifecycle::{License, LicenseStatus};
use tally_core::time::{Clock, Timestamp};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Longest the agent sleeps between checks (the hardware check and clock jumps need a look now
/// and then even when nothing is due).
pub const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// How soon the agent looks again when it cannot read its state.
const STATE_RETRY: Duration = Duration::from_secs(60);

/// Connections one non-root user may hold open on the agent socket at once (X4). Beyond it a
/// new connection from that user is closed at once, unread; root is never capped, so a user
/// holding idle connections cannot delay root's status or activation.
pub const MAX_CONNECTIONS_PER_USER: usize = 16;

/// Connections all non-root users together may hold open (X4): bounds the agent's file
/// descriptors against many accounts; root's connections are not counted and never refused.
pub const MAX_CONNECTIONS_NON_ROOT: usize = 256;

/// How long a connection may take to send its request line before it is closed (X4: an idle
/// connection holds its slot at most this long).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// A user whose connections are refused is logged at most once per this period.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(60);

/// Whether the agent attempts an activation now: when one is due (R8), and at the agent's
/// start for an installation with a key that is not licensed (in grace, in notification, or out
/// of tolerance), even before its next attempt. A machine that asked while the count was below
/// the threshold (R2) learns at boot whether the threshold has been reached since, instead of
/// waiting up to one activation interval; a licensed one renews on its interval as before.
fn attempt_now(license: &License, now: Timestamp, first: bool) -> bool {
    license.is_due(now)
        || (first
            && !matches!(
                license.status_at(now),
                LicenseStatus::Licensed | LicenseStatus::Unlicensed
            ))
}

/// Shortest sleep between two looks (an overdue attempt waits this long, no busy loop).
const MIN_SLEEP: Duration = Duration::from_millis(50);

/// How long to sleep at `now` before `next` (due now or past: [`MIN_SLEEP`]; nothing ahead:
/// [`MAX_SLEEP`]).
fn sleep_for(next: Option<Timestamp>, now: Timestamp) -> Duration {
    next.map_or(MAX_SLEEP, |t| {
        Duration::from_millis(u64::try_from(t.0.saturating_sub(now.0)).unwrap_or(0))
    })
    .clamp(MIN_SLEEP, MAX_SLEEP)
}

/// Agent errors.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The socket could not be set up.
    #[error(
        "cannot listen on {path}: {source} (is another agent running on this state directory? pass --socket PATH, or fix the directory's permissions)"
    )]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another agent already answers on the socket.
    #[error("an agent already runs on {path}: stop it first (nothing was changed)")]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// A file or directory more open than the agent makes it could not be narrowed (X4).
    #[error("cannot tighten the mode of {path}: {source}")]
    Modes {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The start-up change of the state (the `--host` given, clearing the generalized mark)
    /// failed; the agent did not start.
    #[error("{0}")]
    Start(String),
}

/// What the agent needs.
pub struct Agent {
    client: Client,
    socket: PathBuf,
    clock: Arc<dyn Clock>,
    machine: String,
    wake: Notify,
    attempt: Mutex<()>,
    host: Option<String>,
    peers: StdMutex<Peers>,
}

impl Agent {
    /// An agent for `client`'s state directory, listening on `socket`.
    pub fn new(client: Client, socket: PathBuf, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            socket,
            clock,
            machine: machine_name(),
            wake: Notify::new(),
            attempt: Mutex::new(()),
            host: None,
            peers: StdMutex::new(Peers::default()),
        }
    }

    /// Sets this host by hand (R20) once the agent holds its socket: a start that fails
    /// (another agent runs, the socket cannot be made) changes nothing.
    pub fn with_host(mut self, host: String) -> Self {
        self.host = Some(host);
        self
    }

    /// Reports this machine name to hosts instead of the host name.
    pub fn with_machine_name(mut self, name: String) -> Self {
        self.machine = name;
        self
    }

    /// Runs until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), AgentError> {
        let listener = self.bind()?;
        if let Err(error) = self.tighten_modes().and_then(|()| self.on_start()) {
            let _ = std::fs::remove_file(&self.socket);
            return Err(error);
        }
        let owner = std::fs::metadata(&self.socket)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap_or(0);
        info!(socket = %self.socket.display(), state_dir = %self.client.dir().display(), "agent started");
        let server = {
            let agent = Arc::clone(&self);
            let shutdown = shutdown.clone();
            tokio::spawn(async move { agent.serve(listener, owner, shutdown).await })
        };
        let mut first = true;
        loop {
            let sleep = self.tick(first).await;
            first = false;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
            }
        }
        server.abort();
        let _ = std::fs::remove_file(&self.socket);
        info!("agent stopped");
        Ok(())
    }

    /// The state changes of a start, made only once the socket is ours: the `--host` given,
    /// and the end of the generalized mark (R11: this start is the deployed copy's first).
    fn on_start(&self) -> Result<(), AgentError> {
        let now = self.clock.now();
        if let Some(host) = &self.host {
            let r = self.client.set_host(host, now);
            if !r.ok {
                return Err(AgentError::Start(r.message));
            }
        }
        if self.generalized() {
            ClientState::update(self.client.dir(), now, |s| -> Result<(), StateError> {
                s.generalized = false;
                Ok(())
            })
            .map_err(|e| AgentError::Start(e.to_string()))?;
            info!("generalized installation started: activating with its new CMID");
        }
        Ok(())
    }

    /// Whether generalize marked this installation as an image being prepared (R11).
    fn generalized(&self) -> bool {
        ClientState::load(self.client.dir(), self.clock.now()).is_ok_and(|s| s.generalized)
    }

    /// X4: what an older Tally or a loose umask left more open than this agent makes it is
    /// narrowed now, each change logged with the path and both modes: the state directory
    /// (0755: others may enter to reach the socket, only the owner writes), the state (0600),
    /// the trust file (0644). Run once the socket is ours, before anything else is changed. A
    /// lock file others could open is replaced by a fresh 0600 one, so a
    /// descriptor opened on the old one before the upgrade locks nothing the agent uses.
    fn tighten_modes(&self) -> Result<(), AgentError> {
        let dir = self.client.dir();
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| AgentError::Modes { path, source }
        };
        let lock = dir.join(LOCK_FILE);
        if let Some(old) = fsmode::mode_of(&lock).filter(|m| m & !fsmode::PRIVATE_FILE != 0) {
            fsmode::write_atomic(&lock, b"", fsmode::PRIVATE_FILE).map_err(err(&lock))?;
            warn!(
                path = %lock.display(),
                old_mode = %format!("{old:04o}"),
                new_mode = "0600",
                "lock file others could open was replaced by a new one (X4)"
            );
        }
        // Only the state directory: a socket given elsewhere (`--socket /run/...`) sits in a
        // directory that is not Tally's to change.
        fsmode::tighten(dir, fsmode::SHARED_DIR).map_err(err(dir))?;
        for (name, max) in [
            (STATE_FILE, fsmode::PRIVATE_FILE),
            (TRUST_FILE, fsmode::PUBLIC_FILE),
        ] {
            let path = dir.join(name);
            fsmode::tighten(&path, max).map_err(err(&path))?;
        }
        Ok(())
    }

    fn bind(&self) -> Result<AgentListener, AgentError> {
        let err = |source| AgentError::Socket {
            path: self.socket.clone(),
            source,
        };
        if let Some(parent) = self.socket.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Reachable by every local user, who may talk to the agent (R13); writable by its
            // owner only, so nobody else can replace the socket or the trust file (X4).
            fsmode::create_dir(parent, fsmode::SHARED_DIR).map_err(err)?;
        }
        // A socket file left by a crashed agent: remove it if nothing answers on it.
        if self.socket.exists() {
            if tally_client::platform::agent_answers(&self.socket) {
                return Err(AgentError::AlreadyRunning {
                    path: self.socket.clone(),
                });
            }
            let _ = std::fs::remove_file(&self.socket);
        }
        // Any local user may connect (R13); who asks is checked per request.
        tally_client::platform::bind_agent(&self.socket).map_err(err)
    }

    /// Does whatever is due now (at the agent's start, also an attempt for an installation
    /// that is not licensed: [`attempt_now`]); returns how long to sleep.
    async fn tick(&self, first: bool) -> Duration {
        let now = self.clock.now();
        match self.client.check_hardware(now) {
            Ok(true) => warn!("hardware changed past tolerance (R12): reactivation needed"),
            Ok(false) => {}
            Err(error) => warn!(%error, "cannot check the hardware (R12)"),
        }
        let (state, attempted) = {
            // Decided under the attempt lock: an activation asked on the socket meanwhile has
            // already renewed, and this tick then finds nothing due.
            let _one = self.attempt.lock().await;
            let now = self.clock.now();
            let Some(state) = self.state(now) else {
                return STATE_RETRY;
            };
            // X5: due on trusted time (a clock set back past the tolerance: due now).
            let view = self.client.view(&state, now);
            // R11: a generalized image makes no attempt until the deployed copy's first start.
            let due = attempt_now(&view.license, view.now, first) && !state.generalized;
            if due {
                let result = self.client.activate(None, &self.machine, now).await;
                log_attempt(&result);
            }
            (view, due)
        };
        let now = self.clock.now();
        let Some(after) = self.state(now) else {
            return STATE_RETRY;
        };
        let generalized = after.generalized;
        let after = self.client.view(&after, now);
        let next = if generalized {
            None
        } else if attempted {
            if after.license.is_due(after.now)
                && after.license.next_attempt == state.license.next_attempt
            {
                warn!("the attempt was not recorded; will retry on the activation interval");
            }
            after.license.next_event_after_attempt(after.now)
        } else {
            after.license.next_event(after.now)
        };
        sleep_for(next, after.now)
    }

    /// The saved state, or `None` (logged) when it cannot be read.
    fn state(&self, now: Timestamp) -> Option<ClientState> {
        match ClientState::load(self.client.dir(), now) {
            Ok(s) => Some(s),
            Err(error) => {
                warn!(%error, retry_in_secs = STATE_RETRY.as_secs(), "cannot read the client state; will look again");
                None
            }
        }
    }

    async fn activate(&self, host: Option<&str>) -> OpResult {
        // One attempt at a time, whether from the timer or the socket.
        let _one = self.attempt.lock().await;
        self.client
            .activate(host, &self.machine, self.clock.now())
            .await
    }

    async fn serve(
        self: Arc<Self>,
        listener: AgentListener,
        owner: u32,
        shutdown: CancellationToken,
    ) {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(error) => {
                        warn!(%error, "agent socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(uid) = tally_client::platform::peer_uid(&stream) else {
                continue;
            };
            // X4: over the user's cap the connection is closed at once, unread.
            let Some(slot) = Slot::take(&self, uid) else {
                continue;
            };
            let agent = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(error) = agent.handle(stream, uid, owner).await {
                    warn!(%error, "agent socket request failed");
                }
                drop(slot);
            });
        }
    }

    async fn handle(&self, stream: AgentStream, uid: u32, owner: u32) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(read.take(MAX_REQUEST_LINE as u64));
        tokio::time::timeout(REQUEST_DEADLINE, reader.read_line(&mut line))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "request not received in time")
            })??;
        let reply = match serde_json::from_str::<AgentRequest>(&line) {
            Err(e) => denied(codes::PROTOCOL_ERROR, format!("not a valid request: {e}")),
            // R13: activating needs no rights; key, rearm, generalize and host changes do.
            Ok(req) if req.privileged() && uid != 0 && uid != owner => {
                warn!(uid, op = ?req, "privileged request refused (R13)");
                denied(
                    codes::ACCESS_DENIED,
                    "this needs root or the agent's owner (R13)".into(),
                )
            }
            Ok(req) => self.execute(req).await,
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_default();
        out.push(b'\n');
        // A peer that never reads its answer holds the slot no longer than one that never asks.
        tokio::time::timeout(REQUEST_DEADLINE, write.write_all(&out))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "answer not taken in time")
            })?
    }

    async fn execute(&self, req: AgentRequest) -> OpResult {
        let now = self.clock.now();
        let result = match &req {
            AgentRequest::Status => match self.client.status(now) {
                Ok(s) => OpResult {
                    ok: true,
                    code: 0,
                    result: "status".into(),
                    message: format!("{}", s.status),
                    count: None,
                    threshold: None,
                    status: Some(s),
                },
                Err(e) => denied(e.code(), e.to_string()),
            },
            AgentRequest::Activate {
                authority: Some(url),
                ..
            } => {
                let _one = self.attempt.lock().await;
                self.client.activate_mak(Some(url), now).await
            }
            AgentRequest::Activate { .. } if self.generalized() => denied(
                codes::STATE_UNAVAILABLE,
                "this installation was generalized: it activates at the next agent start (restart the service or boot the deployed copy)".into(),
            ),
            AgentRequest::Activate { host, .. } => {
                let r = self.activate(host.as_deref()).await;
                log_attempt(&r);
                r
            }
            AgentRequest::InstallKey { key, confirm } => {
                self.client.install_key(key, *confirm, now)
            }
            AgentRequest::UninstallKey => self.client.uninstall_key(now),
            AgentRequest::Rearm => self.client.rearm(now),
            AgentRequest::Generalize => self.client.generalize(now),
            AgentRequest::SetHost { host } => self.client.set_host(host, now),
            AgentRequest::ClearHost => self.client.clear_host(now),
        };
        if req.privileged() {
            info!(op = ?req, ok = result.ok, result = %result.result, "state changed on request");
            // Timers may have moved (new key, rearm): look again now.
            self.wake.notify_one();
        }
        result
    }
}

/// Open connections per non-root user, and when each refused user was last logged.
#[derive(Default)]
struct Peers {
    open: HashMap<u32, usize>,
    non_root: usize,
    logged: HashMap<u32, Instant>,
}

/// One admitted connection's place in [`Peers`], given back when dropped.
struct Slot {
    agent: Arc<Agent>,
    uid: u32,
}

impl Slot {
    /// Admits a connection from `uid`, or refuses it (logged once per user per minute). Root is
    /// never capped (X4: root's status is answered whatever others hold).
    fn take(agent: &Arc<Agent>, uid: u32) -> Option<Self> {
        if uid == 0 {
            return Some(Self {
                agent: Arc::clone(agent),
                uid,
            });
        }
        let mut peers = agent.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let open = peers.open.get(&uid).copied().unwrap_or(0);
        if open >= MAX_CONNECTIONS_PER_USER || peers.non_root >= MAX_CONNECTIONS_NON_ROOT {
            let now = Instant::now();
            let due = peers
                .logged
                .get(&uid)
                .is_none_or(|t| now.duration_since(*t) >= REFUSAL_LOG_PERIOD);
            if due {
                peers.logged.insert(uid, now);
                warn!(
                    uid,
                    open,
                    per_user = MAX_CONNECTIONS_PER_USER,
                    non_root_open = peers.non_root,
                    non_root = MAX_CONNECTIONS_NON_ROOT,
                    "agent socket connections over the cap refused (X4); logged once a minute per user"
                );
            }
            return None;
        }
        peers.open.insert(uid, open + 1);
        peers.non_root += 1;
        Some(Self {
            agent: Arc::clone(agent),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.uid == 0 {
            return;
        }
        let mut peers = self
            .agent
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        peers.non_root = peers.non_root.saturating_sub(1);
        if let Some(n) = peers.open.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                peers.open.remove(&self.uid);
            }
        }
        // Forget old refusals, so the map stays as small as the set of recent offenders.
        peers.logged.retain(|_, t| t.elapsed() < REFUSAL_LOG_PERIOD);
    }
}

fn denied(code: u32, message: String) -> OpResult {
    OpResult {
        ok: false,
        code,
        result: codes::name(code).to_owned(),
        message,
        count: None,
        threshold: None,
        status: None,
    }
}

fn log_attempt(r: &OpResult) {
    let next = r
        .status
        .as_ref()
        .and_then(|s| s.next_attempt)
        .map(|t| t.to_string())
        .unwrap_or_default();
    if r.ok || r.code == codes::BELOW_THRESHOLD {
        info!(result = %r.result, count = ?r.count, next_attempt = %next, "activation attempt");
    } else {
        warn!(result = %r.result, code = %format!("0x{:08X}", r.code), error = %r.message, next_attempt = %next, "activation attempt failed; will retry");
    }
}

/// The default socket path for a state directory.
pub fn default_socket(state_dir: &Path) -> PathBuf {
    state_dir.join(tally_client::agent::SOCKET_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_800_000_000_000);

    // R2, R8: at its start the agent asks for an installation that is not licensed, even
    // before the next attempt is due; a licensed or keyless one waits as before.
    #[test]
    fn r8_an_unlicensed_installation_attempts_at_agent_start() {
        let mut license = License::default();
        assert!(!attempt_now(&license, NOW, true), "no key: nothing to ask");
        license.install(NOW);
        license.next_attempt = Some(Timestamp(NOW.0 + 7_200_000));
        assert!(attempt_now(&license, NOW, true));
        assert!(!attempt_now(&license, NOW, false));
        license.status = LicenseStatus::Licensed;
        license.validity_end = Some(Timestamp(NOW.0 + 86_400_000));
        assert!(!attempt_now(&license, NOW, true));
        license.next_attempt = Some(NOW);
        assert!(attempt_now(&license, NOW, false));
    }

    // R8: an attempt already due (the agent woke late, or the attempt outlasted the interval)
    // is looked at again almost at once, never after the next period end.
    #[test]
    fn r8_an_overdue_event_is_looked_at_soon() {
        assert_eq!(sleep_for(Some(Timestamp(NOW.0 - 5_000)), NOW), MIN_SLEEP);
        assert_eq!(sleep_for(Some(NOW), NOW), MIN_SLEEP);
        assert_eq!(
            sleep_for(Some(Timestamp(NOW.0 + 2_000)), NOW),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn nothing_ahead_or_far_ahead_sleeps_the_longest() {
        assert_eq!(sleep_for(None, NOW), MAX_SLEEP);
        assert_eq!(sleep_for(Some(NOW.plus_days(180)), NOW), MAX_SLEEP);
    }
}

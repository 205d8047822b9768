//! The local agent protocol and the embeddable [`Licensing`] API.
//!
//! The agent (`tally agent run`) listens on a Unix socket, `STATE_DIR/agent.sock` by default.
//! One JSON object per line each way: an [`AgentRequest`] in, an [`OpResult`] out. Any local
//! user may ask for the status or an activation (R13: activating needs no administrator
//! rights); installing or removing a key, rearm, generalize and host changes need root or the
//! agent's owner, checked from the socket peer's credentials.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tally_core::catalog::Catalog;
use tally_core::time::{Clock, SystemClock};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::ops::{Client, OpResult, StatusReport};
use crate::state::StateError;

/// Default socket file name in the state directory.
pub const SOCKET_FILE: &str = "agent.sock";
/// Longest request line the agent reads.
pub const MAX_REQUEST_LINE: usize = 4096;

/// A request to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AgentRequest {
    /// The license status.
    Status,
    /// Activate now (optionally at a given host).
    Activate {
        /// HOST[:PORT] for this attempt only.
        #[serde(default)]
        host: Option<String>,
        /// The authority URL, for a MAK client (R25); remembered.
        #[serde(default)]
        authority: Option<String>,
    },
    /// Install a setup key (privileged, R13).
    InstallKey {
        /// The key.
        key: String,
        /// Confirms installing a host key on a client (R22).
        #[serde(default)]
        confirm: bool,
    },
    /// Remove the key (privileged).
    UninstallKey,
    /// Rearm (privileged, R11).
    Rearm,
    /// Generalize (privileged, R11).
    Generalize,
    /// Set the host by hand (privileged, R20).
    SetHost {
        /// HOST[:PORT].
        host: String,
    },
    /// Clear the manual host (privileged, R20).
    ClearHost,
}

impl AgentRequest {
    /// R13: whether the request needs root or the agent's owner. Any local user may ask for the
    /// status or an activation as configured; an activation that names a host or an authority is
    /// privileged, since the agent would send the machine's key (a MAK) where the caller says
    /// (X4: no local user without rights can redirect key material).
    pub fn privileged(&self) -> bool {
        !matches!(
            self,
            Self::Status
                | Self::Activate {
                    host: None,
                    authority: None
                }
        )
    }
}

/// Why the agent could not be asked.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AgentError {
    /// No agent listens on the socket.
    #[error("no agent is running (socket {0})")]
    NotRunning(PathBuf),
    /// The exchange failed.
    #[error("agent socket: {0}")]
    Io(#[from] std::io::Error),
    /// The agent answered something unreadable.
    #[error("agent sent an invalid reply: {0}")]
    BadReply(#[from] serde_json::Error),
    /// The state could not be read directly either.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Sends one request to the agent at `socket`.
pub async fn call(socket: &Path, request: &AgentRequest) -> Result<OpResult, AgentError> {
    let stream = match crate::platform::connect_agent(socket).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(AgentError::NotRunning(socket.to_owned()));
        }
        Err(e) => return Err(e.into()),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut reply = String::new();
    BufReader::new(read).read_line(&mut reply).await?;
    Ok(serde_json::from_str(&reply)?)
}

/// This machine's name, as the client reports it to hosts (R27).
pub use crate::platform::machine_name;

/// The API the vendor's application embeds: "am I licensed?", "activate now", through the
/// agent when it runs and directly on the state directory when it does not.
///
/// ```no_run
/// # async fn f() -> Result<(), tally_client::agent::AgentError> {
/// let licensing = tally_client::Licensing::new("/var/lib/tally/client");
/// let status = licensing.status().await?;
/// if !status.licensed {
///     println!("{} days left in {}", status.days_left, status.status);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Licensing {
    socket: PathBuf,
    client: Client,
}

impl Licensing {
    /// Licensing for the installation whose state is in `state_dir`, with the built-in catalog.
    pub fn new(state_dir: impl AsRef<Path>) -> Self {
        Self::with_catalog(state_dir, Arc::new(Catalog::demo()))
    }

    /// As [`Licensing::new`] with the vendor's catalog.
    pub fn with_catalog(state_dir: impl AsRef<Path>, catalog: Arc<Catalog>) -> Self {
        let dir = state_dir.as_ref();
        Self {
            socket: dir.join(SOCKET_FILE),
            client: Client::new(dir, catalog, None),
        }
    }

    /// Talks to the agent on another socket path.
    pub fn with_socket(mut self, socket: impl AsRef<Path>) -> Self {
        self.socket = socket.as_ref().to_owned();
        self
    }

    /// Whether an agent answers on the socket.
    pub async fn agent_running(&self) -> bool {
        call(&self.socket, &AgentRequest::Status).await.is_ok()
    }

    /// The license status: from the agent, or read from the state file.
    pub async fn status(&self) -> Result<StatusReport, AgentError> {
        match call(&self.socket, &AgentRequest::Status).await {
            Ok(OpResult {
                status: Some(s), ..
            }) => Ok(s),
            Ok(_) | Err(AgentError::NotRunning(_)) => Ok(self.client.status(SystemClock.now())?),
            Err(e) => Err(e),
        }
    }

    /// Activates now: through the agent, or directly at the configured host.
    pub async fn activate(&self) -> Result<OpResult, AgentError> {
        match call(
            &self.socket,
            &AgentRequest::Activate {
                host: None,
                authority: None,
            },
        )
        .await
        {
            Err(AgentError::NotRunning(_)) => Ok(self
                .client
                .activate(None, &machine_name(), SystemClock.now())
                .await),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // R13, X4: an activation that chooses where the key goes is privileged.
    #[test]
    fn activation_naming_a_host_or_authority_is_privileged() {
        assert!(!AgentRequest::Status.privileged());
        let plain = AgentRequest::Activate {
            host: None,
            authority: None,
        };
        assert!(!plain.privileged());
        let host = AgentRequest::Activate {
            host: Some("10.0.0.9:1688".into()),
            authority: None,
        };
        assert!(host.privileged());
        let authority = AgentRequest::Activate {
            host: None,
            authority: Some("http://evil.example".into()),
        };
        assert!(authority.privileged());
        assert!(AgentRequest::Rearm.privileged());
    }
}

//! One verified activation exchange with a host.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::RngExt;
use tally_core::catalog::Edition;
use tally_core::host::Intervals;
use tally_core::revocation::{Held, Offer, VerifiedList, describe};
use tally_core::rollover::Chain;
use tally_core::time::Timestamp;
use tally_core::trust::{TrustAnchor, TrustError, VerifiedHost, sha256};
use tally_proto::DocumentKind;
use tally_proto::document::Assembler;
use tally_proto::{
    ActivationRequest, DecodeError, Frame, HostCertificate, LicenseState, MAX_FRAME, MachineName,
    Message, RequestExt, ResultCode,
};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use uuid::Uuid;

use crate::codes;

/// The longest a client spends fetching one revocation list from a host (X7).
const FETCH_DEADLINE: Duration = Duration::from_secs(30);

/// Why an activation attempt failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The host name did not resolve.
    #[error("cannot resolve host '{host}': {source}")]
    Resolve {
        /// What was looked up.
        host: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// No address of the host accepted a connection.
    #[error("cannot connect to {host}: {source} (is the host running and the port open?)")]
    Connect {
        /// The host.
        host: String,
        /// The last error.
        source: std::io::Error,
    },
    /// The host did not answer in time.
    #[error("host {host} did not answer within {seconds} s")]
    Timeout {
        /// The host.
        host: String,
        /// The timeout.
        seconds: u64,
    },
    /// The connection failed mid-exchange.
    #[error("connection to {host} failed: {source}")]
    Io {
        /// The host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// The host sent bytes that are not a valid message.
    #[error("host sent an invalid message: {0}")]
    Protocol(#[from] DecodeError),
    /// The host sent a valid message of the wrong kind.
    #[error("host sent an unexpected {0} message")]
    Unexpected(&'static str),
    /// The host could not read the request (unsigned error frame).
    #[error("host rejected the request: {0}")]
    Rejected(ResultCode),
    /// The response failed verification (R16): forged, replayed, or from an untrusted host.
    #[error("response rejected: {0}")]
    Trust(#[from] TrustError),
    /// X7: the answering host's certificate is on the vendor's revocation list.
    #[error("host {host} is on the vendor's revocation list: {reason}; its answer is refused")]
    Revoked {
        /// The host.
        host: String,
        /// The entry, in words.
        reason: String,
    },
}

impl ClientError {
    /// A stable code for this failure (see `docs/PROTOCOL.md`).
    pub fn code(&self) -> u32 {
        match self {
            Self::Resolve { .. } | Self::Connect { .. } => codes::HOST_UNREACHABLE,
            Self::Timeout { .. } | Self::Io { .. } => codes::HOST_TIMEOUT,
            Self::Protocol(_) | Self::Unexpected(_) => codes::PROTOCOL_ERROR,
            Self::Rejected(code) => code.0,
            Self::Trust(_) => codes::UNTRUSTED_RESPONSE,
            Self::Revoked { .. } => ResultCode::HOST_REVOKED.0,
        }
    }

    /// The snake_case name of [`ClientError::code`].
    pub fn code_name(&self) -> &'static str {
        codes::name(self.code())
    }
}

/// What the client says about itself.
#[derive(Clone, Debug)]
pub struct ActivationParams {
    /// Its CMID.
    pub cmid: Uuid,
    /// Its edition.
    pub edition: Edition,
    /// Its machine name.
    pub machine_name: MachineName,
    /// Its license state.
    pub license_state: LicenseState,
    /// Minutes left of grace or validity.
    pub grace_remaining_minutes: u32,
    /// Version 2's installation fields (X6); `None` sends a version-1 request.
    pub installation: Option<Installation>,
}

/// What identifies one installation beyond its CMID (X6): sequence numbers reserved (and saved)
/// before any request is sent, one per request, and the hardware digest.
#[derive(Clone, Debug)]
pub struct Installation {
    next: Arc<AtomicU32>,
    last: u32,
    /// First 8 bytes of SHA-256 over the hardware fingerprint.
    pub hardware_digest: [u8; 8],
}

impl Installation {
    /// Numbers `first..=last`, reserved in the state before use.
    pub fn new(first: u32, last: u32, hardware_digest: [u8; 8]) -> Self {
        Self {
            next: Arc::new(AtomicU32::new(first)),
            last,
            hardware_digest,
        }
    }

    /// The next reserved number; the last one again if a single attempt used them all (it
    /// tried more hosts than numbers were reserved for).
    fn take(&self) -> u32 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        n.min(self.last)
    }
}

/// A verified answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The address that answered.
    pub host: SocketAddr,
    /// The host's result (success, or a signed refusal such as `edition_not_covered`).
    pub result: ResultCode,
    /// The pool count, requester included.
    pub count: u32,
    /// The edition's threshold (R1).
    pub threshold: u16,
    /// R2: whether the count reached the threshold.
    pub activated: bool,
    /// The host's intervals (R9).
    pub intervals: Intervals,
    /// The host's clock: trusted time (X5).
    pub host_time: Timestamp,
    /// The request frame sent, kept with the response as evidence (X5).
    pub request_frame: Vec<u8>,
    /// The response frame received (signed by the host).
    pub response_frame: Vec<u8>,
}

/// Activates against hosts, trusting one authority; remembers host certificates it verified.
#[derive(Debug)]
pub struct Connector {
    anchor: std::sync::RwLock<TrustAnchor>,
    /// The rollover chain from the root this client trusts (X8), when the caller gave it: a
    /// host certified by a newer root hands over the statements that lead to it.
    chain: Mutex<Option<Chain>>,
    timeout: Duration,
    hosts: Mutex<HashMap<[u8; 32], (HostCertificate, VerifiedHost)>>,
    revocations: Mutex<Held>,
}

impl Connector {
    /// A connector trusting `anchor`, giving each exchange `timeout`.
    pub fn new(anchor: TrustAnchor, timeout: Duration) -> Self {
        Self {
            anchor: std::sync::RwLock::new(anchor),
            chain: Mutex::new(None),
            timeout,
            hosts: Mutex::new(HashMap::new()),
            revocations: Mutex::new(Held::default()),
        }
    }

    /// The same connector extending trust through `chain` (X8): when a host's certificate
    /// names a root this client does not trust yet, it asks that host for the rollover
    /// statements that lead to it and accepts those signed by a root it trusts.
    pub fn with_chain(self, chain: Chain) -> Self {
        *self.anchor.write().unwrap_or_else(PoisonError::into_inner) = chain.anchor().clone();
        *self.chain.lock().unwrap_or_else(PoisonError::into_inner) = Some(chain);
        self
    }

    /// The rollover chain, when it grew from a host's statements (to persist).
    pub fn grown_chain(&self) -> Option<Chain> {
        self.chain
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// X8: fetches the host's rollover statements and accepts those that extend the chain;
    /// whether any did.
    async fn fetch_rollover(&self, stream: &mut TcpStream, host: &str) -> bool {
        if self
            .chain
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
        {
            return false;
        }
        let Some((_, bytes)) = self
            .fetch_document(stream, host, DocumentKind::RootRollover)
            .await
        else {
            return false;
        };
        let statements: Vec<_> = bytes
            .chunks(tally_core::rollover::STATEMENT_LEN)
            .filter_map(|c| tally_core::rollover::RootRollover::from_bytes(c).ok())
            .collect();
        let mut guard = self.chain.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(chain) = guard.as_mut() else {
            return false;
        };
        let (added, refused) = chain.accept_all(&statements);
        for (_, error) in refused {
            tracing::warn!(%host, %error, "host relayed a rollover statement that is refused");
        }
        if added > 0 {
            tracing::info!(%host, added, "root rollover accepted from the host (X8)");
            *self.anchor.write().unwrap_or_else(PoisonError::into_inner) = chain.anchor().clone();
        }
        added > 0
    }

    /// Fetches document `doc` from the host on this connection; `None` (logged) when it fails.
    async fn fetch_document(
        &self,
        stream: &mut TcpStream,
        host: &str,
        doc: DocumentKind,
    ) -> Option<(u32, Vec<u8>)> {
        let fetch = async {
            let mut assembler = Assembler::new(doc);
            loop {
                let frame = Message::DocumentRequest(assembler.next_request()).encode();
                let chunk = match self.exchange(stream, host, &frame).await? {
                    (Message::DocumentChunk(c), _) => c,
                    (Message::Error(e), _) => return Err(ClientError::Rejected(e.result)),
                    _ => return Err(ClientError::Unexpected("non-document")),
                };
                match assembler.push(chunk) {
                    Ok(Some(done)) => return Ok(done),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(%host, error = %e, doc = doc.name(), "document transfer refused");
                        return Err(ClientError::Unexpected("document"));
                    }
                }
            }
        };
        match timeout(FETCH_DEADLINE, fetch).await {
            Ok(Ok((serial, bytes))) if serial > 0 => Some((serial, bytes)),
            Ok(Ok(_)) => None,
            Ok(Err(error)) => {
                tracing::warn!(%host, %error, doc = doc.name(), "could not fetch the host's document");
                None
            }
            Err(_) => {
                tracing::warn!(%host, doc = doc.name(), "the host's document did not arrive in time");
                None
            }
        }
    }

    /// The same connector holding `held` (X7): it refuses answers of hosts the list revokes,
    /// and fetches a newer list from any host that names one.
    pub fn with_revocations(self, held: Held) -> Self {
        *self
            .revocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = held;
        self
    }

    /// The newest revocation list seen (to persist).
    pub fn revocations(&self) -> Held {
        self.revocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn held_serial(&self) -> u32 {
        self.revocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .serial()
    }

    /// X7: fetches the host's revocation list on this connection and keeps it if it verifies
    /// and is newer. A failure is logged, never fatal: the list is signed by the authority, so
    /// the next host can give it.
    async fn fetch_revocations(&self, stream: &mut TcpStream, host: &str) {
        let Some((_, bytes)) = self
            .fetch_document(stream, host, DocumentKind::RevocationList)
            .await
        else {
            return;
        };
        let mut verified = VerifiedList::verify(&bytes, &self.anchor());
        if matches!(
            verified,
            Err(tally_core::revocation::RevocationError::UnknownAuthority)
        ) && self.fetch_rollover(stream, host).await
        {
            // Signed by a newer root: the host handed over the rollover that leads to it.
            verified = VerifiedList::verify(&bytes, &self.anchor());
        }
        match verified {
            Ok(list) => {
                let serial = list.serial();
                let mut held = self
                    .revocations
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match held.offer(list) {
                    Ok(Offer::Newer) => {
                        tracing::info!(%host, serial, "newer revocation list received (X7)")
                    }
                    Ok(Offer::Same) => {}
                    Err(error) => {
                        tracing::info!(%host, %error, "host relayed an older revocation list")
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%host, %error, "host relayed a revocation list that does not verify")
            }
        }
    }

    /// X7: the entry revoking the host certificate with fingerprint `fp`, as an error.
    fn check_revoked(&self, host: &str, fp: &[u8; 32]) -> Result<(), ClientError> {
        let cert = self.lock().get(fp).map(|(c, _)| c.clone());
        let entry = cert.and_then(|c| {
            self.revocations
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .revokes_certificate(&c)
        });
        match entry {
            Some(e) => Err(ClientError::Revoked {
                host: host.to_owned(),
                reason: describe(&e),
            }),
            None => Ok(()),
        }
    }

    /// The authority this connector trusts.
    pub fn anchor(&self) -> TrustAnchor {
        self.anchor
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Adds a certificate seen before (e.g. from the state file), if it still verifies.
    pub fn remember(&self, cert: HostCertificate, now: Timestamp) -> Result<(), TrustError> {
        let verified = self.anchor().verify_certificate(&cert, now)?;
        self.lock().insert(verified.fingerprint(), (cert, verified));
        Ok(())
    }

    /// The certificates verified so far, to persist.
    pub fn certificates(&self) -> Vec<HostCertificate> {
        self.lock().values().map(|(c, _)| c.clone()).collect()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (HostCertificate, VerifiedHost)>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Activates (or renews) at `host` (`name:port`, `ip:port` or `[ipv6]:port`).
    pub async fn activate(
        &self,
        host: &str,
        params: &ActivationParams,
        now: Timestamp,
    ) -> Result<Answer, ClientError> {
        let (mut stream, addr) = self.connect(host).await?;
        let request = ActivationRequest {
            nonce: rand::rng().random(),
            cmid: params.cmid,
            pool: params.edition.pool,
            sku: params.edition.sku,
            threshold: params.edition.threshold,
            license_state: params.license_state,
            grace_remaining_minutes: params.grace_remaining_minutes,
            client_time: now.millis(),
            ext: params.installation.as_ref().map(|i| RequestExt {
                sequence: i.take(),
                hardware_digest: i.hardware_digest,
            }),
            machine_name: params.machine_name.clone(),
        };
        let frame = Message::ActivationRequest(request.clone()).encode();
        let (response, response_frame) = match self.exchange(&mut stream, host, &frame).await? {
            (Message::ActivationResponse(r), bytes) => (r, bytes),
            (Message::Error(e), _) => {
                if e.result == ResultCode::HOST_REVOKED {
                    // A revoked host that knows it still relays the list that revokes it.
                    self.fetch_revocations(&mut stream, host).await;
                }
                return Err(ClientError::Rejected(e.result));
            }
            _ => return Err(ClientError::Unexpected("non-activation")),
        };
        let known = self
            .lock()
            .get(&response.host_fingerprint)
            .map(|(_, v)| v.clone());
        let verified = match known {
            Some(v) => v,
            None => {
                // First contact with this host: fetch its certificate on the same connection.
                let cert = match self
                    .exchange(&mut stream, host, &Message::CertificateRequest.encode())
                    .await?
                {
                    (Message::CertificateResponse(c), _) => c,
                    (Message::Error(e), _) => return Err(ClientError::Rejected(e.result)),
                    _ => return Err(ClientError::Unexpected("non-certificate")),
                };
                let v = match self.anchor().verify_certificate(&cert, now) {
                    // X8: a host certified by a newer root: ask it for the rollover that
                    // leads there, then check again.
                    Err(TrustError::UnknownAuthority)
                        if self.fetch_rollover(&mut stream, host).await =>
                    {
                        self.anchor().verify_certificate(&cert, now)?
                    }
                    other => other?,
                };
                self.lock().insert(v.fingerprint(), (cert, v.clone()));
                v
            }
        };
        verified.verify_response(&response, &sha256(&frame), &request.nonce, &params.edition)?;
        // X7: a host that names a newer list than ours gives it on this connection; then no
        // answer of a revoked host is taken, whoever relayed the list.
        if response.revocation_serial.unwrap_or(0) > self.held_serial() {
            self.fetch_revocations(&mut stream, host).await;
        }
        self.check_revoked(host, &response.host_fingerprint)?;
        let threshold = params.edition.threshold;
        Ok(Answer {
            host: addr,
            result: response.result,
            count: response.count,
            threshold,
            // R2: activated once the count reaches the edition's threshold.
            activated: response.result.is_success() && response.count >= u32::from(threshold),
            intervals: Intervals {
                activation_secs: response.activation_interval_secs,
                renewal_secs: response.renewal_interval_secs,
            },
            host_time: Timestamp(response.host_time),
            request_frame: frame,
            response_frame,
        })
    }

    async fn connect(&self, host: &str) -> Result<(TcpStream, SocketAddr), ClientError> {
        let seconds = self.timeout.as_secs();
        let addrs: Vec<SocketAddr> =
            match timeout(self.timeout, tokio::net::lookup_host(host)).await {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(source)) => {
                    return Err(ClientError::Resolve {
                        host: host.to_owned(),
                        source,
                    });
                }
                Err(_) => {
                    return Err(ClientError::Timeout {
                        host: host.to_owned(),
                        seconds,
                    });
                }
            };
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses");
        for addr in addrs {
            match timeout(self.timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    s.set_nodelay(true).map_err(|source| ClientError::Io {
                        host: host.to_owned(),
                        source,
                    })?;
                    return Ok((s, addr));
                }
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                }
            }
        }
        Err(ClientError::Connect {
            host: host.to_owned(),
            source: last,
        })
    }

    async fn exchange(
        &self,
        stream: &mut TcpStream,
        host: &str,
        frame: &[u8],
    ) -> Result<(Message, Vec<u8>), ClientError> {
        let io = |source| ClientError::Io {
            host: host.to_owned(),
            source,
        };
        let work = async {
            stream.write_all(frame).await.map_err(io)?;
            read_frame(stream).await.map_err(io)
        };
        let bytes = match timeout(self.timeout, work).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ClientError::Timeout {
                    host: host.to_owned(),
                    seconds: self.timeout.as_secs(),
                });
            }
        };
        Ok((Message::decode(&bytes)?, bytes))
    }
}

/// Reads one frame, refusing an oversized length before reading further.
///
/// Reads whatever has arrived (one syscall in the common case) until a whole frame is
/// buffered. The protocol is strictly request/response, so the peer never sends bytes past the
/// frame we wait for; any excess is a protocol error.
pub async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = [0u8; MAX_FRAME];
    let mut have = 0;
    loop {
        match Frame::check(&buf[..have]) {
            Ok(Some(total)) if total == have => return Ok(buf[..have].to_vec()),
            Ok(Some(_)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "unexpected bytes after the frame",
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        let n = stream.read(&mut buf[have..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
    }
}

//! Activation with a host (R2, R16–R20): the host given or discovered in DNS, certificates
//! checked on trusted time (X5), a CMID taken anew on a copied state or a reported clone (X6),
//! the revocation list and root rollovers a host hands over kept (X7, X8).

use tally_dns::discover::{Found, order};
use tally_proto::MachineName;

use super::{Client, OpResult, TRUST_FILE, with_default_port};
use crate::codes;
use crate::connect::{ActivationParams, Answer, ClientError, Connector, Installation};
use crate::hardware;
use crate::state::{ClientState, StateError};
use tally_core::time::Timestamp;

/// Sequence numbers reserved (and saved) per activation attempt (X6): one per host tried.
const SEQUENCE_BLOCK: u32 = 64;

impl Client {
    /// X8: keeps the rollover statements a host handed over (verified by the connector from
    /// the root trusted) in `DIR/authority.rollover`.
    fn keep_rollover(&self, connector: &Connector) {
        let (Some(root), Some(chain)) = (self.root(), connector.grown_chain()) else {
            return;
        };
        if chain.statements().len() == crate::rollover::chain(&self.dir, &root).statements().len() {
            return;
        }
        if let Err(error) = crate::rollover::import(&self.dir, &root, &chain.to_text()) {
            tracing::warn!(%error, "cannot keep the root rollover a host handed over");
        }
    }

    /// X5: the evidence in the state is verified against the trusted authority key. A key the
    /// caller passed (`--trust FILE`, the embedding API's trust argument) is kept as
    /// `DIR/authority.pub` after the first verified answer when that file does not exist, so a
    /// later status, which is given no key, can still check the evidence. An existing file is
    /// never replaced.
    fn keep_trust(&self, connector: &Connector) {
        let path = self.dir.join(TRUST_FILE);
        if path.exists() {
            return;
        }
        let text = tally_core::trust::armor(
            tally_core::trust::labels::AUTHORITY_PUBLIC,
            connector.anchor().key().as_bytes(),
        );
        if let Err(error) =
            crate::fsmode::write_new(&path, text.as_bytes(), crate::fsmode::PUBLIC_FILE)
        {
            tracing::warn!(path = %path.display(), %error, "cannot keep the trusted authority key");
        }
    }

    /// Activates (or renews) now: at `host` if given, else the manual or cached host. `now`
    /// is the local reading; the lifecycle runs on trusted time (X5). A state copied to other
    /// hardware takes a new CMID first; a host that reports a clone (another installation
    /// presents this CMID) makes it take a new CMID and ask once more (X6).
    pub async fn activate(
        &self,
        host: Option<&str>,
        machine_name: &str,
        now: Timestamp,
    ) -> OpResult {
        self.offer_update_file(now);
        let state = match ClientState::load(&self.dir, now) {
            Ok(s) => s,
            Err(e) => return OpResult::from_error(&e),
        };
        if state.is_mak() {
            // R25: a MAK client activates with the authority, never with a host.
            return self.activate_mak(None, now).await;
        }
        let Some(edition) = state.edition(&self.catalog).cloned() else {
            return OpResult::from_error(&StateError::Key(
                "no key installed: run `tally client install-key SETUP_KEY` first (see `tally catalog list`)".into(),
            ));
        };
        let Some(trust) = self.anchor() else {
            return self.done(
                now,
                codes::NO_TRUST,
                format!(
                    "no trusted authority key: pass --trust FILE or copy it to {} with `tally client trust FILE`",
                    self.dir.join(TRUST_FILE).display()
                ),
            );
        };
        let mut connector = Connector::new(trust.clone(), self.timeout)
            .with_revocations(state.held_revocations(Some(&trust)));
        if let Some(root) = self.root() {
            connector = connector.with_chain(crate::rollover::chain(&self.dir, &root));
        }
        // X5: certificates are checked at trusted time (a clock set back does not make a
        // host's certificate "not yet valid"; one set forward does not keep an expired one).
        let trusted = self.trusted_now(&state, now);
        for cert in state.certificates() {
            // A remembered certificate that no longer verifies is simply fetched again.
            let _ = connector.remember(cert, trusted);
        }
        let hw = hardware::probe();
        let explicit = host
            .map(with_default_port)
            .or_else(|| state.manual_host.clone());
        let mut rounds = 0;
        let (outcome, host) = loop {
            rounds += 1;
            // X6: claim the hardware (a copied state takes a new CMID) and reserve sequence
            // numbers, saved before any request carries one.
            let prepared = ClientState::update(&self.dir, now, |s| -> Result<_, StateError> {
                let t = self.trusted_now(s, now);
                if s.claim_hardware(&hw, t) {
                    tracing::warn!(previous = ?s.cmid_change.as_ref().map(|c| c.previous), cmid = %s.cmid,
                        "this state directory now runs on other hardware: took a new CMID");
                }
                let first = s.reserve_sequence(SEQUENCE_BLOCK);
                let view = self.view(s, now);
                Ok((
                    s.cmid,
                    first,
                    view.status(),
                    view.minutes_left(),
                    s.cached_host.clone(),
                    view.now,
                ))
            });
            let (cmid, first, status, minutes_left, cached, trusted) = match prepared {
                Ok(p) => p,
                Err(e) => return OpResult::from_error(&e),
            };
            let params = ActivationParams {
                cmid,
                edition: edition.clone(),
                machine_name: MachineName::lossy(machine_name),
                license_state: status.wire(),
                grace_remaining_minutes: minutes_left,
                installation: Some(Installation::new(
                    first,
                    first.wrapping_add(SEQUENCE_BLOCK - 1),
                    hw.digest(),
                )),
            };
            let (outcome, host) = match &explicit {
                // R20: a host given by hand is the only one tried.
                Some(h) => (connector.activate(h, &params, trusted).await, h.clone()),
                None => {
                    self.activate_discovered(&connector, &params, cached, trusted)
                        .await
                }
            };
            let clone =
                matches!(&outcome, Ok(a) if a.result == tally_proto::ResultCode::CLONE_DETECTED);
            let certs = connector.certificates();
            let saved = ClientState::update(&self.dir, now, |s| -> Result<(), StateError> {
                s.set_certificates(&certs);
                // X7: the newest list any host gave, kept (never an older one).
                if let Some(list) = connector.revocations().list() {
                    let _ = s.offer_revocations(&trust, list.clone());
                }
                // A generalize that ran meanwhile made a new CMID: this answer is not for it.
                if s.cmid != cmid {
                    return Ok(());
                }
                match &outcome {
                    Ok(answer) => {
                        s.apply_answer(answer, Some(&hw), now);
                        if clone {
                            // X6: another installation presents this CMID: count apart.
                            s.new_cmid("clone_detected", answer.host_time);
                            s.cmid_hardware = Some(hw.clone());
                        }
                    }
                    Err(e) => {
                        let t = self.trusted_now(s, now);
                        s.record_failure(Some(host.clone()), e.code_name(), e.code(), t);
                    }
                }
                Ok(())
            });
            if let Err(e) = saved {
                return OpResult::from_error(&e);
            }
            if outcome.is_ok() {
                self.keep_trust(&connector);
            }
            // Whatever the outcome: a list kept above may need these statements to verify.
            self.keep_rollover(&connector);
            if clone && rounds < 2 {
                tracing::warn!(host = %host, previous = %cmid,
                    "the host saw another installation present this CMID: took a new CMID, asking again");
                continue;
            }
            break (outcome, host);
        };
        let _ = host;
        let status = self.status(now).ok();
        match outcome {
            Ok(a) => {
                let code = if !a.result.is_success() {
                    a.result.0
                } else if a.activated {
                    0
                } else {
                    codes::BELOW_THRESHOLD
                };
                let message = if a.activated {
                    format!(
                        "activated {} (count {} of {} needed)",
                        edition.name, a.count, a.threshold
                    )
                } else if a.result.is_success() {
                    format!(
                        "not activated yet: the host counts {} machine(s), {} needs {}; still in grace, retrying later",
                        a.count, edition.name, a.threshold
                    )
                } else {
                    format!("the host refused: {}", a.result)
                };
                OpResult {
                    ok: a.activated,
                    code,
                    result: codes::name(code).to_owned(),
                    message,
                    count: Some(a.count),
                    threshold: Some(a.threshold),
                    status,
                }
            }
            Err(e) => OpResult {
                ok: false,
                code: e.code(),
                result: e.code_name().to_owned(),
                message: e.to_string(),
                count: None,
                threshold: Some(edition.threshold),
                status,
            },
        }
    }

    /// R19: the cached host first; if it does not answer, DNS in RFC 2782 order, dropping each
    /// host that does not answer; the first that answers is used (and cached by the caller).
    async fn activate_discovered(
        &self,
        connector: &Connector,
        params: &ActivationParams,
        cached: Option<String>,
        now: Timestamp,
    ) -> (Result<Answer, ClientError>, String) {
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<(ClientError, String)> = None;
        if let Some(c) = cached {
            match connector.activate(&c, params, now).await {
                Ok(a) => return (Ok(a), c),
                Err(e) => {
                    tracing::info!(host = %c, error = %e, "cached host failed; asking DNS again");
                    tried.push(c.clone());
                    last = Some((e, c));
                }
            }
        }
        let found = match self.discovery.lookup().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "DNS discovery failed");
                Found::default()
            }
        };
        // The thread-local RNG must not live across an await: order first, then try.
        let ordered = order(found.candidates, &mut rand::rng());
        for candidate in ordered {
            for addr in &candidate.addresses {
                let a = addr.to_string();
                if tried.contains(&a) {
                    continue;
                }
                tried.push(a.clone());
                match connector.activate(&a, params, now).await {
                    Ok(answer) => return (Ok(answer), a),
                    Err(e) => {
                        tracing::info!(host = %candidate.target, address = %a, error = %e, "host did not answer; trying the next");
                        last = Some((e, a));
                    }
                }
            }
        }
        match last {
            Some((e, h)) => (Err(e), h),
            None => (
                Err(ClientError::Connect {
                    host: "(none)".into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                            "no host set and none found in DNS ({})",
                            found.notes.join("; ")
                        ),
                    ),
                }),
                String::new(),
            ),
        }
    }
}

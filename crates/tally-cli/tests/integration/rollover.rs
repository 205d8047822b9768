//! X8 root rollover with real processes: a vendor moves its root from a key file (root A) into
//! a SoftHSM2 token (root B) with `tally authority rollover`, as docs/OPERATIONS.md says; keys
//! issued under A still activate at B; clients and hosts that trust A accept what B signs once
//! they have the rollover file, and not before; a forged rollover is refused with its message;
//! A's certificates stay valid.

use std::path::Path;

use tally_test_support::softhsm::{MODULE, SoftHsm};
use tally_test_support::{Process, tally_env};

use crate::bin;

const SERVER_DATACENTER: &str = "F7R4D-6HMTK-PVWRM-DXKYV-FFDH6";
const PIN: &str = "48151623";
const NOT_SIGNED: &str = "rollover statement is not signed by the root this client trusts";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Env(Vec<(&'static str, String)>);

impl Env {
    fn vars(&self) -> Vec<(&str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        tally_env(bin(), args, &self.vars())
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> (Option<i32>, serde_json::Value) {
        let out = self.run(args);
        let v = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out)));
        (out.status.code(), v)
    }

    fn listen(&self, args: &[&str], prefix: &str) -> (Process, std::net::SocketAddr) {
        Process::spawn_listening(bin(), args, &self.vars(), prefix)
    }

    fn authority(&self, dir: &Path) -> (Process, String) {
        let (p, addr) = self.listen(
            &[
                "authority",
                "run",
                "--dir",
                s(dir),
                "--listen",
                "127.0.0.1:0",
            ],
            "tally authority listening on ",
        );
        (p, format!("http://{addr}"))
    }

    fn host(&self, dir: &Path) -> (Process, String) {
        let (p, addr) = self.listen(
            &[
                "host",
                "run",
                "--data-dir",
                s(dir),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            "tally host listening on ",
        );
        (p, addr.to_string())
    }

    fn issue(&self, adir: &Path) -> String {
        let (code, v) = self.json(&[
            "authority",
            "issue-host-key",
            "--dir",
            s(adir),
            "--group",
            "server-c",
            "--json",
        ]);
        assert_eq!(code, Some(0), "{v}");
        v["key"].as_str().expect("key").to_owned()
    }

    /// `tally client` on `state` (plus `extra` options) activating against `host`.
    fn activate(
        &self,
        state: &Path,
        extra: &[&str],
        host: &str,
    ) -> (Option<i32>, serde_json::Value) {
        let mut args = vec!["client", "--state-dir", s(state), "--no-agent"];
        args.extend(extra);
        args.extend(["--json", "activate", "--host", host]);
        self.json(&args)
    }
}

// X8: the whole rollover, from the vendor's commands to clients and hosts on both sides of it.
#[test]
fn x8_clients_trusting_root_a_follow_a_rollover_to_root_b_in_a_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let Some(hsm) = SoftHsm::new(&t.join("softhsm")) else {
        return;
    };
    hsm.init_token("new-root", PIN);
    let pin = t.join("pin");
    std::fs::write(&pin, format!("{PIN}\n")).expect("pin");
    let env = Env(hsm.env());

    // Root A, a key file; two host keys issued under it; host 1 activated by A.
    let a = t.join("authority-a");
    env.ok(&["authority", "init", "--dir", s(&a)]);
    let (k1, k2) = (env.issue(&a), env.issue(&a));
    let trust_a = a.join("authority.pub");
    let host1 = t.join("host1");
    {
        let (_authority_a, url) = env.authority(&a);
        env.ok(&["host", "install-key", "--data-dir", s(&host1), &k1]);
        env.ok(&[
            "host",
            "activate",
            "--data-dir",
            s(&host1),
            "--online",
            &url,
            "--trust",
            s(&trust_a),
        ]);
    }
    // A client that trusts A.
    let c1 = t.join("client1");
    env.ok(&["client", "--state-dir", s(&c1), "trust", s(&trust_a)]);
    env.ok(&[
        "client",
        "--state-dir",
        s(&c1),
        "install-key",
        SERVER_DATACENTER,
    ]);

    // The vendor moves the root into the token: B signs with the token, A hands trust to it.
    let b = t.join("authority-b");
    let rollover = t.join("rollover.tally");
    let (code, v) = env.json(&[
        "authority",
        "rollover",
        "--dir",
        s(&a),
        "--new-dir",
        s(&b),
        "--pkcs11-module",
        MODULE,
        "--token-label",
        "new-root",
        "--pin-file",
        s(&pin),
        "--out",
        s(&rollover),
        "--json",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["chain_length"], 1, "{v}");
    assert_eq!(v["previous_mac_keys"], 1, "{v}");
    assert!(v["database_copied"].is_string(), "{v}");
    assert!(!b.join("authority.key").exists());
    let rollover_text = std::fs::read_to_string(&rollover).expect("rollover file");
    assert!(
        rollover_text.starts_with("tally-root-rollover-v1 "),
        "{rollover_text}"
    );

    // Host 2 activates key 2 (issued under A) at B. Trusting A without the rollover file, it
    // refuses B's certificate; with the file beside its trust file it accepts it.
    let (_authority_b, url_b) = env.authority(&b);
    let vendor = t.join("vendor");
    std::fs::create_dir(&vendor).expect("mkdir");
    std::fs::copy(&trust_a, vendor.join("authority.pub")).expect("copy");
    let vendor_trust = vendor.join("authority.pub");
    let host2 = t.join("host2");
    env.ok(&["host", "install-key", "--data-dir", s(&host2), &k2]);
    let activate_host2 = || {
        env.run(&[
            "host",
            "activate",
            "--data-dir",
            s(&host2),
            "--online",
            &url_b,
            "--trust",
            s(&vendor_trust),
        ])
    };
    let out = activate_host2();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("does not verify"), "{}", text(&out));
    std::fs::copy(&rollover, vendor.join("authority.rollover")).expect("copy");
    let out = activate_host2();
    assert!(out.status.success(), "{}", text(&out));
    assert!(host2.join("authority.rollover").exists());
    let (_h2, addr2) = env.host(&host2);

    // Over the wire (PROTOCOL.md, document 2): a client that trusts only A meets host 2
    // (certified by B); host 2 hands over the rollover its certificate chains through, the
    // client verifies it from A, keeps it, and takes host 2's answer.
    let c0 = t.join("client0");
    env.ok(&["client", "--state-dir", s(&c0), "trust", s(&trust_a)]);
    env.ok(&[
        "client",
        "--state-dir",
        s(&c0),
        "install-key",
        SERVER_DATACENTER,
    ]);
    assert!(!c0.join("authority.rollover").exists());
    let (code, v) = env.activate(&c0, &[], &addr2);
    assert_eq!((code, v["count"].as_u64()), (Some(2), Some(1)), "{v}");
    assert!(
        c0.join("authority.rollover").exists(),
        "the statement the host handed over is kept"
    );

    // A forged rollover (root M handing trust to X) is refused by the client and by host 1.
    let m = t.join("authority-m");
    env.ok(&["authority", "init", "--dir", s(&m)]);
    let forged = t.join("forged.tally");
    env.ok(&[
        "authority",
        "rollover",
        "--dir",
        s(&m),
        "--new-dir",
        s(&t.join("authority-x")),
        "--out",
        s(&forged),
    ]);
    let out = env.run(&[
        "client",
        "--state-dir",
        s(&c1),
        "import-rollover",
        s(&forged),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(NOT_SIGNED), "{}", text(&out));
    let out = env.run(&[
        "host",
        "import-rollover",
        "--data-dir",
        s(&host1),
        s(&forged),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(NOT_SIGNED), "{}", text(&out));
    assert!(!c1.join("authority.rollover").exists());

    // With the real rollover the client verifies host 2's answer.
    let (code, v) = env.json(&[
        "client",
        "--state-dir",
        s(&c1),
        "--json",
        "import-rollover",
        s(&rollover),
    ]);
    assert_eq!((code, v["added"].as_u64()), (Some(0), Some(1)), "{v}");
    let (code, v) = env.activate(&c1, &[], &addr2);
    assert_eq!((code, v["count"].as_u64()), (Some(2), Some(2)), "{v}");
    // A client given the vendor's trust file with the rollover beside it verifies at once.
    let c2 = t.join("client2");
    let trust_args = ["--trust", s(&vendor_trust)];
    env.ok(&[
        "client",
        "--state-dir",
        s(&c2),
        "install-key",
        SERVER_DATACENTER,
    ]);
    let (code, v) = env.activate(&c2, &trust_args, &addr2);
    assert_eq!((code, v["count"].as_u64()), (Some(2), Some(3)), "{v}");

    // The old root still verifies (no --old-root-until): host 1, certified by A, serves both.
    let (_h1, addr1) = env.host(&host1);
    let (code, v) = env.activate(&c1, &[], &addr1);
    assert_eq!(code, Some(2), "{v}");

    // Host 1 (trusting A) refuses a catalog signed by B until it imports the rollover.
    let plain = t.join("catalog-v2.toml");
    std::fs::write(
        &plain,
        tally_core::catalog::DEMO_CATALOG.replace("version = 1", "version = 2"),
    )
    .expect("write");
    let signed = t.join("catalog-v2.signed.toml");
    env.ok(&[
        "authority",
        "sign-catalog",
        "--dir",
        s(&b),
        s(&plain),
        "--out",
        s(&signed),
    ]);
    let import = || {
        env.run(&[
            "host",
            "catalog",
            "import",
            "--data-dir",
            s(&host1),
            s(&signed),
        ])
    };
    let out = import();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("does not verify"), "{}", text(&out));
    env.ok(&[
        "host",
        "import-rollover",
        "--data-dir",
        s(&host1),
        s(&rollover),
    ]);
    let out = import();
    assert!(out.status.success(), "{}", text(&out));
}

/// The lines of the ```sh blocks of `doc` marked `<!-- not-run: MARKER...` (e.g. `X8 runbook`),
/// in order.
pub(crate) fn runbook_lines(doc: &str, marker: &str) -> Vec<crate::readme::Line> {
    let marker = format!("<!-- not-run: {marker}");
    let mut out = Vec::new();
    let (mut in_block, mut wanted, mut block) = (false, false, 0);
    let mut previous = "";
    for line in doc.lines() {
        let trimmed = line.trim();
        if !in_block && trimmed.starts_with("```sh") {
            in_block = true;
            block += 1;
            wanted = previous.starts_with(&marker);
        } else if in_block && trimmed.starts_with("```") {
            in_block = false;
        } else if in_block && wanted && !trimmed.is_empty() && !trimmed.starts_with('#') {
            out.push(crate::readme::Line {
                block,
                text: trimmed.to_owned(),
            });
        }
        if !trimmed.is_empty() {
            previous = trimmed;
        }
    }
    out
}

// X8: OPERATIONS.md's runbook for moving a root into an HSM runs as written (on SoftHSM2), and
// leaves what it promises: no key file for the new root, the host certified by the new root
// with a key issued under the old one, the client and the host following the rollover.
#[test]
fn x8_operations_runbook_runs_as_written() {
    let scratch = tempfile::tempdir().expect("tempdir");
    if SoftHsm::new(scratch.path()).is_none() {
        return;
    }
    let ops = crate::readme::doc("docs/OPERATIONS.md");
    let lines = runbook_lines(&ops, "X8 runbook");
    assert!(
        lines.len() >= 15,
        "the runbook has its blocks: {}",
        lines.len()
    );
    let mut runner = crate::readme::Runner::new(&[]);
    for line in &lines {
        runner.run(line, "docs/OPERATIONS.md");
    }
    assert!(!runner.path("vendor-b/authority.key").exists());
    assert!(runner.path("vendor-b/pkcs11.toml").exists());
    assert!(runner.path("pc-r/authority.rollover").exists());
    assert!(runner.path("host-r/authority.rollover").exists());
    let cert = std::fs::read_to_string(runner.path("host-r/host.cert")).expect("cert");
    let cert = tally_core::trust::parse_certificate(&cert).expect("parse");
    let b = std::fs::read_to_string(runner.path("vendor-b/authority.pub")).expect("pub");
    let b = tally_core::trust::parse_authority_public(&b).expect("parse");
    assert_eq!(
        cert.body.authority_id,
        tally_core::trust::authority_id(b.key()),
        "the host's certificate is the new root's"
    );
}

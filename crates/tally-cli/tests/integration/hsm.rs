//! X8 with real processes and a real SoftHSM2 token: the root key in a PKCS#11 token (init,
//! issue, online and offline certification, certify, catalog signing; no key file ever), a
//! wrong PIN, and a root rollover that clients and hosts trusting the old root follow, while a
//! forged rollover is refused.

use std::path::{Path, PathBuf};

use tally_test_support::softhsm::{MODULE, SoftHsm};
use tally_test_support::{Process, tally_env};

use crate::bin;

const PIN: &str = "73915028";

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

/// Runs `tally` with the token's environment.
struct Env {
    vars: Vec<(&'static str, String)>,
}

impl Env {
    fn run(&self, args: &[&str]) -> std::process::Output {
        let vars: Vec<(&str, &str)> = self.vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        tally_env(bin(), args, &vars)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    fn spawn_listening(&self, args: &[&str], prefix: &str) -> (Process, std::net::SocketAddr) {
        let vars: Vec<(&str, &str)> = self.vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Process::spawn_listening(bin(), args, &vars, prefix)
    }
}

/// A token labelled `label` and a PIN file for it.
fn token(tmp: &Path, label: &str) -> Option<(SoftHsm, PathBuf)> {
    let hsm = SoftHsm::new(&tmp.join("softhsm"))?;
    hsm.init_token(label, PIN);
    let pin = tmp.join("pin");
    std::fs::write(&pin, format!("{PIN}\n")).expect("pin file");
    Some((hsm, pin))
}

/// Every file under `dir`, relative names, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn issue(env: &Env, adir: &Path, group: &str) -> String {
    env.json(&[
        "authority",
        "issue-host-key",
        "--dir",
        s(adir),
        "--group",
        group,
        "--json",
    ])["key"]
        .as_str()
        .expect("key")
        .to_owned()
}

// X8: a token-backed authority issues keys, certifies hosts online (`authority run`) and
// offline (confirmation ID) and with `certify`, and signs a catalog a host imports; the root
// key exists only in the token (never extractable), no authority.key or PIN is written, and a
// wrong PIN is one clear error.
#[test]
fn x8_root_key_in_a_softhsm2_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some((hsm, pin)) = token(tmp.path(), "vendor-root") else {
        return;
    };
    let env = Env { vars: hsm.env() };
    let adir = tmp.path().join("authority");
    let token_args = |pin: &Path| {
        vec![
            "--pkcs11-module".to_owned(),
            MODULE.to_owned(),
            "--token-label".to_owned(),
            "vendor-root".to_owned(),
            "--pin-file".to_owned(),
            s(pin).to_owned(),
        ]
    };
    let init = |pin: &Path, extra: &[&str]| {
        let t = token_args(pin);
        let mut args = vec!["authority", "init", "--dir", s(&adir)];
        args.extend(t.iter().map(String::as_str));
        args.extend(extra);
        env.run(&args)
    };

    // A wrong PIN: one clear error, nothing written.
    let bad_pin = tmp.path().join("bad-pin");
    std::fs::write(&bad_pin, "11112222\n").expect("write");
    let out = init(&bad_pin, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(
            "the token refused the PIN (CKR_PIN_INCORRECT) for token 'vendor-root': check --pin-file"
        ),
        "{}",
        text(&out)
    );
    assert!(!adir.join("pkcs11.toml").exists());
    // A token that is not there: named, with what to check.
    let out = env.run(&[
        "authority",
        "init",
        "--dir",
        s(&tmp.path().join("other")),
        "--pkcs11-module",
        MODULE,
        "--token-label",
        "no-such-token",
        "--pin-file",
        s(&pin),
    ]);
    assert!(
        text(&out).contains("no PKCS#11 token labelled 'no-such-token'")
            && text(&out).contains("SOFTHSM2_CONF"),
        "{}",
        text(&out)
    );

    let out = init(&pin, &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        v["root_key"]
            .as_str()
            .is_some_and(|k| k.contains("vendor-root")),
        "{v}"
    );
    // A second init on the same token refuses to make a second root under the label; with
    // --use-existing it takes the same key.
    let again = tmp.path().join("authority-again");
    let t = token_args(&pin);
    let mut args = vec!["authority", "init", "--dir", s(&again)];
    args.extend(t.iter().map(String::as_str));
    let out = env.run(&args);
    assert!(text(&out).contains("--use-existing"), "{}", text(&out));
    args.extend(["--use-existing", "--json"]);
    let same = env.json(&args);
    assert_eq!(same["public_key"], v["public_key"]);

    // The key is in the token, sensitive and never extractable.
    let objects = hsm.pkcs11_tool(&[
        "--login",
        "--pin",
        PIN,
        "--token-label",
        "vendor-root",
        "--list-objects",
    ]);
    let listing = text(&objects);
    assert!(
        listing.contains("Private Key Object; EC_EDWARDS")
            && listing.contains("never extractable")
            && listing.contains(&hex_from(&v, "public_key")),
        "{listing}"
    );

    // Issue, certify online through `authority run`, offline by confirmation ID, and with
    // `certify`; all with the token.
    let key_online = issue(&env, &adir, "server-c");
    let key_offline = issue(&env, &adir, "server-a");
    let (authority, addr) = env.spawn_listening(
        &[
            "authority",
            "run",
            "--dir",
            s(&adir),
            "--listen",
            "127.0.0.1:0",
        ],
        "tally authority listening on ",
    );
    let trust = adir.join("authority.pub");
    let host1 = tmp.path().join("host1");
    env.ok(&["host", "install-key", "--data-dir", s(&host1), &key_online]);
    let v = env.json(&[
        "host",
        "activate",
        "--data-dir",
        s(&host1),
        "--online",
        &format!("http://{addr}"),
        "--trust",
        s(&trust),
        "--json",
    ]);
    assert_eq!(v["key_group"], "server-c", "{v}");

    let host2 = tmp.path().join("host2");
    env.ok(&["host", "install-key", "--data-dir", s(&host2), &key_offline]);
    let id = env.json(&[
        "host",
        "activate",
        "--data-dir",
        s(&host2),
        "--offline",
        "--json",
    ])["installation_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let confirmation =
        env.json(&["authority", "confirm", "--dir", s(&adir), &id, "--json"])["confirmation_id"]
            .as_str()
            .expect("confirmation")
            .to_owned();
    let v = env.json(&[
        "host",
        "activate",
        "--data-dir",
        s(&host2),
        "--confirmation",
        &confirmation,
        "--trust",
        s(&trust),
        "--json",
    ]);
    assert_eq!(v["key_group"], "server-a", "{v}");

    let host3 = tmp.path().join("host3");
    env.ok(&["host", "init", "--data-dir", s(&host3)]);
    let cert = tmp.path().join("host3.cert");
    env.ok(&[
        "authority",
        "certify",
        "--dir",
        s(&adir),
        "--host-key",
        &issue(&env, &adir, "server-b"),
        "--host-pub",
        s(&host3.join("host.pub")),
        "--out",
        s(&cert),
    ]);
    env.ok(&[
        "host",
        "install-cert",
        "--data-dir",
        s(&host3),
        s(&cert),
        "--trust",
        s(&trust),
    ]);

    // A catalog signed with the token is imported by a host that trusts the root.
    let plain = tmp.path().join("catalog-v2.toml");
    std::fs::write(
        &plain,
        tally_core::catalog::DEMO_CATALOG.replace("version = 1", "version = 2"),
    )
    .expect("write");
    let signed = tmp.path().join("catalog-v2.signed.toml");
    env.ok(&[
        "authority",
        "sign-catalog",
        "--dir",
        s(&adir),
        s(&plain),
        "--out",
        s(&signed),
    ]);
    env.ok(&[
        "host",
        "catalog",
        "import",
        "--data-dir",
        s(&host1),
        s(&signed),
    ]);

    // A wrong PIN on a signing command is the same clear error.
    let mut wrong = Env { vars: hsm.env() };
    wrong.vars.push(("TALLY_PKCS11_PIN", "99990000".into()));
    let out = wrong.run(&[
        "authority",
        "sign-catalog",
        "--dir",
        s(&adir),
        s(&plain),
        "--out",
        s(&tmp.path().join("x")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .contains("the token refused the PIN (CKR_PIN_INCORRECT) for token 'vendor-root'"),
        "{}",
        text(&out)
    );
    drop(authority);

    // Only public data, the token configuration, the operator token and the database: no key
    // file, and the PIN is nowhere in the directory.
    let kept: Vec<String> = files(&adir)
        .into_iter()
        .filter(|n| !n.starts_with("authority.db-")) // SQLite's WAL and shared memory
        .collect();
    assert_eq!(
        kept,
        [
            "authority.db",
            "authority.pub",
            "operator.token",
            "pkcs11.toml"
        ]
    );
    for name in files(&adir) {
        let bytes = std::fs::read(adir.join(&name)).expect("read");
        assert!(
            !bytes.windows(PIN.len()).any(|w| w == PIN.as_bytes()),
            "{name} holds the PIN"
        );
    }
}

fn hex_from(v: &serde_json::Value, field: &str) -> String {
    v[field].as_str().expect("hex").to_owned()
}

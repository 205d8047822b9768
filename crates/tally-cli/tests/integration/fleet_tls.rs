//! Issue 21 part 5, TLS to PostgreSQL with real processes: a real PostgreSQL that accepts TLS
//! connections only (`hostssl`; CA and a certificate for `localhost` made by the test), the
//! `tally` binary configured by libpq's URL parameters `sslmode` and `sslrootcert`.
//!
//! - X1 over TLS: a host on `sslmode=verify-full&sslrootcert=CA` activates a client, and every
//!   session it holds is encrypted (`pg_stat_ssl`).
//! - X3: a wrong CA, a host name the certificate does not list (verify-full), and a plain
//!   connection (`sslmode=disable`) are each refused with one clear error, printed once, that
//!   says what to check and never shows the password; `verify-ca` accepts the name mismatch.

use std::path::Path;

use tally_test_support::postgres::PgServer;
use tally_test_support::postgres::tls::{CERT_HOST, write_unrelated_ca};
use tally_test_support::{HostProcess, tally, tally_json};

use crate::bin;

/// A server edition (threshold 5) of the demo catalog.
const SERVER_WEB: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";
const PASSWORD: &str = "Sw0rdfish";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn with_password(url: &str) -> String {
    url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{PASSWORD}@"),
        1,
    )
}

/// `tally host run --dev` on `url` that must fail at start: its stderr.
fn host_run_fails(dir: &Path, url: &str) -> String {
    let out = tally(
        bin(),
        &[
            "host",
            "run",
            "--dev",
            "--data-dir",
            s(dir),
            "--database",
            url,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        !text.contains(PASSWORD),
        "the password is never printed: {text}"
    );
    text
}

// X1 over TLS: verify-full with the CA and the certificate's name; the host counts a client,
// and every session of the host's pool is encrypted. verify-ca accepts 127.0.0.1, a name the
// certificate does not list (`tally host check`).
#[test]
fn x1_a_host_on_verify_full_activates_a_client_over_tls() {
    let Some(pg) = PgServer::start_tls() else {
        return;
    };
    pg.create_database("fleet");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("host");
    let url = with_password(&pg.tls_url(CERT_HOST, "fleet", "verify-full"));
    let host = HostProcess::start_dev(bin(), &dir, &["--database", &url]);
    let state = tmp.path().join("client");
    let out = tally(
        bin(),
        &[
            "client",
            "--state-dir",
            s(&state),
            "install-key",
            SERVER_WEB,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let (_, v) = tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            s(&state),
            "--trust",
            s(&dir.join("authority.pub")),
            "--json",
            "activate",
            "--host",
            &host.addr.to_string(),
            "--machine-name",
            "pc1",
        ],
    );
    assert_eq!(v["count"].as_u64(), Some(1), "{v}");
    assert_eq!(
        pg.psql(
            "fleet",
            "SELECT count(*) FROM registry WHERE machine_name = 'pc1'"
        ),
        "1"
    );
    let (plain, encrypted) = (
        pg.psql(
            "fleet",
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = 'fleet' AND a.application_name = 'tally' AND NOT s.ssl",
        ),
        pg.psql(
            "fleet",
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = 'fleet' AND a.application_name = 'tally' AND s.ssl",
        ),
    );
    assert_eq!(plain, "0", "no plain session");
    assert_ne!(encrypted, "0", "the host's sessions are TLS");

    // verify-ca: the chain is checked, the name is not; 127.0.0.1 is not in the certificate.
    let ca_url = with_password(&pg.tls_url("127.0.0.1", "fleet", "verify-ca"));
    let (code, v) = tally_json(
        bin(),
        &[
            "host",
            "check",
            "--data-dir",
            s(&dir),
            "--database",
            &ca_url,
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    assert!(!v.to_string().contains(PASSWORD), "{v}");
}

// X3: every way TLS can be wrong is one error, printed once, that names what to check.
#[test]
fn x3_a_wrong_ca_a_wrong_name_or_no_tls_is_one_clear_error() {
    let Some(pg) = PgServer::start_tls() else {
        return;
    };
    pg.create_database("fleet");
    let port = pg.port();
    let tmp = tempfile::tempdir().expect("tempdir");

    // A CA that did not sign the server's certificate.
    let other = tmp.path().join("other-ca.pem");
    write_unrelated_ca(&other);
    let url = format!(
        "postgres://postgres:{PASSWORD}@{CERT_HOST}:{port}/fleet?sslmode=verify-full&sslrootcert={}",
        other.display()
    );
    let text = host_run_fails(&tmp.path().join("h1"), &url);
    assert_eq!(
        text.matches("is not issued by the CA in sslrootcert")
            .count(),
        1,
        "printed once: {text}"
    );
    assert!(text.contains(s(&other)), "names the file: {text}");
    assert!(text.contains("UnknownIssuer"), "{text}");

    // verify-full to an address the certificate does not list.
    let url = with_password(&pg.tls_url("127.0.0.1", "fleet", "verify-full"));
    let text = host_run_fails(&tmp.path().join("h2"), &url);
    assert_eq!(
        text.matches("does not name 127.0.0.1").count(),
        1,
        "printed once: {text}"
    );
    assert!(text.contains("subjectAltName"), "says what to do: {text}");

    // No TLS at all: the server refuses (hostssl), and the error says to turn TLS on.
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/fleet?sslmode=disable");
    let text = host_run_fails(&tmp.path().join("h3"), &url);
    assert_eq!(
        text.matches("refused an unencrypted connection").count(),
        1,
        "printed once: {text}"
    );
    assert!(text.contains("sslmode=verify-full&sslrootcert="), "{text}");

    // verify-full without a CA file: refused before connecting, naming the parameter.
    let url =
        format!("postgres://postgres:{PASSWORD}@{CERT_HOST}:{port}/fleet?sslmode=verify-full");
    let text = host_run_fails(&tmp.path().join("h4"), &url);
    assert_eq!(text.matches("needs sslrootcert=FILE").count(), 1, "{text}");

    // The authority's store reports the same way.
    let adir = tmp.path().join("vendor");
    let out = tally(bin(), &["authority", "init", "--dir", s(&adir)]);
    assert!(out.status.success(), "{out:?}");
    let url = with_password(&pg.tls_url("127.0.0.1", "fleet", "verify-full"));
    let out = tally(
        bin(),
        &[
            "authority",
            "run",
            "--dir",
            s(&adir),
            "--database",
            &url,
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        text.matches("does not name 127.0.0.1").count(),
        1,
        "printed once: {text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
}

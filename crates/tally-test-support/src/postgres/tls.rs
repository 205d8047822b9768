//! A throwaway PostgreSQL that accepts TLS connections only (issue 21 part 5), with a CA and a
//! server certificate this module makes (rcgen): the certificate names `localhost` only, not
//! `127.0.0.1`, so a test can show `verify-full` refusing an address the certificate does not
//! name while `verify-ca` accepts it. Every `host` line of `pg_hba.conf` becomes `hostssl`, so a
//! plain-TCP client is refused by the server itself.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::{PgServer, postgres_ids, running_as_root};

/// The host name the server certificate names (and the only one).
pub const CERT_HOST: &str = "localhost";

/// A CA: its certificate (PEM) and its issuer for signing.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn make_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap_or_else(|e| panic!("CA key: {e}"));
    let mut params =
        CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("CA params: {e}"));
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params
        .self_signed(&key)
        .unwrap_or_else(|e| panic!("CA certificate: {e}"));
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// Writes the certificate of a CA that signed nothing the test server presents, to show a wrong
/// `sslrootcert`.
pub fn write_unrelated_ca(path: &Path) {
    let ca = make_ca("Unrelated test CA");
    std::fs::write(path, ca.pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes `text` to `path` owned by the `postgres` user when we are root, mode 0600.
fn write_for_postgres(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    if running_as_root() {
        let (uid, gid) = postgres_ids().unwrap_or_else(|| panic!("no `postgres` user"));
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

impl PgServer {
    /// Starts a server (as [`PgServer::start`], `None` when skipped) that accepts TCP
    /// connections over TLS only: `ssl = on` with a server certificate for `localhost` signed by
    /// a CA whose certificate is [`PgServer::ca_file`]; `hostssl` in `pg_hba.conf`.
    pub fn start_tls() -> Option<Self> {
        let server = Self::start()?;
        let ca = make_ca("Tally test PostgreSQL CA");
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("server key: {e}"));
        let mut params = CertificateParams::new(vec![CERT_HOST.to_owned()])
            .unwrap_or_else(|e| panic!("server params: {e}"));
        params
            .distinguished_name
            .push(DnType::CommonName, CERT_HOST);
        let cert = params
            .signed_by(&key, &ca.issuer)
            .unwrap_or_else(|e| panic!("server certificate: {e}"));
        let data = server.data();
        write_for_postgres(&data.join("server.crt"), &cert.pem());
        write_for_postgres(&data.join("server.key"), &key.serialize_pem());
        std::fs::write(server.ca_file(), &ca.pem).unwrap_or_else(|e| panic!("write CA: {e}"));
        super::append(
            &data.join("postgresql.conf"),
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        );
        let hba = data.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap_or_else(|e| panic!("read hba: {e}"));
        let text: String = text
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&hba, text).unwrap_or_else(|e| panic!("write hba: {e}"));
        server.restart();
        Some(server)
    }

    /// The CA certificate (PEM) that signed a [`PgServer::start_tls`] server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// `postgres://postgres@HOST:PORT/DB?sslmode=MODE&sslrootcert=CA` for a TLS server.
    pub fn tls_url(&self, host: &str, db: &str, mode: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/{db}?sslmode={mode}&sslrootcert={}",
            self.port,
            self.ca_file().display()
        )
    }
}

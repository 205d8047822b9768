//! A real BIND9 `named` for tests: started from a temporary directory on 127.0.0.1 and a free
//! port, serving one zone that accepts updates signed with a fresh TSIG key; stopped on drop.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rand::RngExt;

/// Where Debian's `bind9` package puts the server.
pub const NAMED: &str = "/usr/sbin/named";

/// A running `named`.
pub struct Named {
    child: Child,
    /// The port it listens on (UDP and TCP, 127.0.0.1).
    pub port: u16,
    /// The zone it serves.
    pub zone: String,
    /// The TSIG key name.
    pub key_name: String,
    /// The key file in BIND format (what a host's config points at).
    pub key_file: PathBuf,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    for _ in 0..50 {
        let Ok(tcp) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else { continue };
        // named uses SO_REUSEPORT: a busy port would be shared silently, so check UDP too.
        if UdpSocket::bind(addr).is_ok() {
            return addr.port();
        }
    }
    panic!("no free port for named");
}

/// Writes a BIND key file for `name` with a random secret.
pub fn write_key(path: &Path, name: &str) {
    let secret: [u8; 32] = rand::rng().random();
    let text = format!(
        "key \"{name}\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{}\";\n}};\n",
        data_encoding::BASE64.encode(&secret)
    );
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl Named {
    /// Starts `named` serving `zone`, or returns `None` (after saying why) when BIND is not
    /// installed and we are not in CI. In CI a missing BIND fails the test.
    pub fn start(zone: &str) -> Option<Self> {
        if !Path::new(NAMED).exists() {
            crate::skip(
                &crate::test_name(),
                &format!(
                    "BIND9 ({NAMED}) is not installed; `apt-get install bind9 bind9-dnsutils`"
                ),
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let d = dir.path().display().to_string();
        let port = free_port();
        let key_name = "tally-key".to_owned();
        let key_file = dir.path().join("tsig.key");
        write_key(&key_file, &key_name);
        let zone_file = dir.path().join(format!("{zone}.zone"));
        std::fs::write(
            &zone_file,
            format!(
                "$TTL 300\n@ IN SOA ns.{zone}. admin.{zone}. 1 3600 600 86400 300\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
            ),
        )
        .unwrap_or_else(|e| panic!("zone file: {e}"));
        let conf = format!(
            "include \"{d}/tsig.key\";\n\
             options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; session-keyfile \"{d}/session.key\";\n\
               managed-keys-directory \"{d}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n\
               recursion no; dnssec-validation no; notify no; }};\n\
             controls {{ }};\n\
             zone \"{zone}\" {{ type primary; file \"{}\"; update-policy {{ grant {key_name} zonesub ANY; }}; }};\n",
            zone_file.display()
        );
        let conf_path = dir.path().join("named.conf");
        std::fs::write(&conf_path, conf).unwrap_or_else(|e| panic!("named.conf: {e}"));
        let log = std::fs::File::create(dir.path().join("named.log"))
            .unwrap_or_else(|e| panic!("log: {e}"));
        let child = Command::new(NAMED)
            .args(["-g", "-4", "-c"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start named: {e}"));
        let named = Self {
            child,
            port,
            zone: zone.to_owned(),
            key_name,
            key_file,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while named.dig(zone, "SOA").is_empty() {
            assert!(
                Instant::now() < deadline,
                "named did not answer within 15 s; log:\n{}",
                named.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        Some(named)
    }

    /// `dig @127.0.0.1 -p PORT +short NAME TYPE` (an independent client), one line per answer.
    pub fn dig(&self, name: &str, rtype: &str) -> Vec<String> {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "+short",
                "+time=1",
                "+tries=1",
                name,
                rtype,
            ])
            .output()
            .unwrap_or_else(|e| panic!("dig (bind9-dnsutils) is needed: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with(';'))
            .map(str::to_owned)
            .collect()
    }

    /// `nsupdate` with the zone's key: applies `commands` (one per line, without `send`).
    pub fn nsupdate(&self, commands: &str) -> bool {
        let script = format!(
            "server 127.0.0.1 {}\nzone {}\n{commands}\nsend\n",
            self.port, self.zone
        );
        let mut child = Command::new("nsupdate")
            .arg("-k")
            .arg(&self.key_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("nsupdate (bind9-dnsutils) is needed: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = stdin.write_all(script.as_bytes());
        }
        child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// The server's address.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What named logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

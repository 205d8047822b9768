//! A real SoftHSM2 token in the test's own directory (X8): `SOFTHSM2_CONF` points at a config
//! whose token directory is under the test's temporary directory, so tests never share or touch
//! the machine's tokens. Debian's `softhsm2` provides the module and `softhsm2-util`; `opensc`
//! provides `pkcs11-tool`, used to look at a key's attributes from outside Tally.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where Debian installs the SoftHSM2 PKCS#11 module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 configuration with initialised tokens, under a test's directory.
pub struct SoftHsm {
    conf: PathBuf,
}

impl SoftHsm {
    /// Makes `dir/softhsm2.conf` and `dir/tokens`, or `None` (after [`crate::skip`], which fails
    /// under CI) when SoftHSM2 or pkcs11-tool is not installed.
    pub fn new(dir: &Path) -> Option<Self> {
        let have = |tool: &str| {
            Command::new(tool)
                .arg("--help")
                .output()
                .is_ok_and(|o| o.status.success() || !o.stdout.is_empty() || !o.stderr.is_empty())
        };
        if !Path::new(MODULE).is_file() || !have("softhsm2-util") || !have("pkcs11-tool") {
            crate::skip(
                &crate::test_name(),
                "SoftHSM2 or pkcs11-tool is not installed (apt-get install softhsm2 opensc)",
            );
            return None;
        }
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap_or_else(|e| panic!("token directory: {e}"));
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap_or_else(|e| panic!("softhsm2.conf: {e}"));
        Some(Self { conf })
    }

    /// Initialises a token labelled `label` with user PIN `pin`.
    pub fn init_token(&self, label: &str, pin: &str) {
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                pin,
                "--so-pin",
                "5678",
            ])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap_or_else(|e| panic!("softhsm2-util: {e}"));
        assert!(
            out.status.success(),
            "softhsm2-util: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The environment a process needs to see these tokens.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("SOFTHSM2_CONF", self.conf.to_string_lossy().into_owned())]
    }

    /// Runs `pkcs11-tool --module MODULE ARGS` on these tokens.
    pub fn pkcs11_tool(&self, args: &[&str]) -> Output {
        Command::new("pkcs11-tool")
            .arg("--module")
            .arg(MODULE)
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap_or_else(|e| panic!("pkcs11-tool: {e}"))
    }
}

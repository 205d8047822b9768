//! `tally authority init` with a PKCS#11 token and `tally authority rollover` (X8): where the
//! root key lives, and handing trust from one root to the next.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tally_authority::dir;
use tally_authority::signer::{PIN_ENV, TokenConfig};
use tally_core::time::{Clock, SystemClock, Timestamp};
use tally_core::trust::{authority_id, to_hex};

use crate::output;

/// Where a new root key is made: a key file (the default) or a PKCS#11 token.
#[derive(Args, Clone, Debug, Default)]
pub struct TokenArgs {
    /// Keep the root key in a PKCS#11 token through this module (shared library), e.g.
    /// /usr/lib/softhsm/libsofthsm2.so. The key pair is generated inside the token and never
    /// leaves it; the directory gets pkcs11.toml (module, token and key labels; never the PIN)
    /// and no authority.key.
    #[arg(long, value_name = "PATH")]
    pub pkcs11_module: Option<PathBuf>,
    /// The token's label.
    #[arg(long, value_name = "LABEL", requires = "pkcs11_module")]
    pub token_label: Option<String>,
    /// The label of the root key pair in the token.
    #[arg(
        long,
        value_name = "LABEL",
        default_value = "tally-root",
        requires = "pkcs11_module"
    )]
    pub key_label: String,
    /// A file whose first line is the token's user PIN (its path is kept in pkcs11.toml for
    /// later commands; TALLY_PKCS11_PIN overrides it).
    #[arg(long, value_name = "FILE", requires = "pkcs11_module")]
    pub pin_file: Option<PathBuf>,
    /// Use the key pair already in the token under --key-label instead of generating one.
    #[arg(long, requires = "pkcs11_module")]
    pub use_existing: bool,
}

impl TokenArgs {
    /// The token configuration, if a module was given.
    fn config(&self) -> anyhow::Result<Option<TokenConfig>> {
        let Some(module) = &self.pkcs11_module else {
            return Ok(None);
        };
        let token_label = self.token_label.clone().context(
            "--pkcs11-module needs --token-label (the label the token was initialised with)",
        )?;
        let pin_file = match &self.pin_file {
            Some(p) => Some(
                std::path::absolute(p).with_context(|| format!("--pin-file {}", p.display()))?,
            ),
            None => None,
        };
        Ok(Some(TokenConfig {
            module: module.clone(),
            token_label,
            key_label: self.key_label.clone(),
            pin_file,
        }))
    }
}

/// Makes the authority in `d`: a key file, or the token of `token`.
fn make(d: &Path, token: &TokenArgs) -> anyhow::Result<(tally_authority::Authority, PathBuf)> {
    Ok(match token.config()? {
        None => dir::init(d)?,
        Some(config) => {
            let pin = config.pin()?;
            dir::init_token(d, config, &pin, token.use_existing)?
        }
    })
}

/// `tally authority init [--pkcs11-module ...]`.
pub fn init(d: &Path, token: &TokenArgs, as_json: bool) -> anyhow::Result<()> {
    let (authority, public) = make(d, token)?;
    if as_json {
        output::json(&json!({
            "public_key_file": public,
            "public_key": to_hex(authority.public().as_bytes()),
            "authority_id": to_hex(&authority_id(&authority.public())),
            "root_key": authority.signer_description(),
        }))?;
    } else {
        println!("Authority created in {}.", d.display());
        if token.pkcs11_module.is_some() {
            println!(
                "Root key: {} (never written to a file). Signing commands need the PIN: \
                 {PIN_ENV} or the pin_file in {}.",
                authority.signer_description(),
                d.join(dir::TOKEN_CONFIG_FILE).display()
            );
            println!("Give clients {} to trust.", public.display());
        } else {
            println!(
                "Give clients {} to trust; keep authority.key secret.",
                public.display()
            );
        }
    }
    Ok(())
}

/// `tally authority rollover`.
#[derive(Args)]
pub struct RolloverArgs {
    /// The authority whose root hands over trust (it signs the statement).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The authority directory of the new root. Made here if it holds no authority yet (a key
    /// file, or with --pkcs11-module a key in a token); its root signs the statement too.
    #[arg(long, value_name = "DIR")]
    pub new_dir: PathBuf,
    /// Where the new root key is made when NEW_DIR is new.
    #[command(flatten)]
    pub token: TokenArgs,
    /// Write the rollover file (every statement from the first root to the new one) here: ship
    /// it to clients (beside authority.pub as authority.rollover, or `tally client
    /// import-rollover`) and hosts (`tally host import-rollover`).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Stop trusting the old root after this day (YYYY-MM-DD, UTC midnight, or `now`): for a
    /// root that leaked. Without it the old root stays trusted and its certificates stay valid.
    #[arg(long, value_name = "DATE")]
    pub old_root_until: Option<String>,
    /// The two authorities share this PostgreSQL database (nothing is copied; NEW_DIR remembers
    /// it). Without it, the database DIR remembers is shared the same way; else the old
    /// authority.db is copied into NEW_DIR.
    #[arg(long = "database", env = "TALLY_DATABASE_URL", value_name = "URL")]
    pub database: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_until(text: &str, now: Timestamp) -> anyhow::Result<Timestamp> {
    if text == "now" {
        return Ok(now);
    }
    let mut parts = text.splitn(3, '-');
    let (y, m, d) = (parts.next(), parts.next(), parts.next());
    let parsed = match (y, m, d) {
        (Some(y), Some(m), Some(d)) => match (y.parse(), m.parse(), d.parse()) {
            (Ok(y), Ok(m), Ok(d)) => Timestamp::from_ymd(y, m, d),
            _ => None,
        },
        _ => None,
    };
    parsed.with_context(|| format!("--old-root-until {text}: expected YYYY-MM-DD or now"))
}

/// `tally authority rollover`: signs the statement with both roots and prepares NEW_DIR.
pub fn rollover(args: &RolloverArgs) -> anyhow::Result<()> {
    let now = SystemClock.now();
    let until = args
        .old_root_until
        .as_deref()
        .map(|t| parse_until(t, now))
        .transpose()?;
    if !dir::exists(&args.new_dir) {
        make(&args.new_dir, &args.token)?;
    } else if args.token.pkcs11_module.is_some() {
        anyhow::bail!(
            "{} holds an authority already: drop the token options to use it, or give a new --new-dir",
            args.new_dir.display()
        );
    }
    let done = tally_authority::rollover::carry_over(
        &args.dir,
        &args.new_dir,
        now,
        until,
        args.database.is_some(),
    )?;
    // The new directory finds the shared database without --database (issue 21).
    dir::remember_database(&args.new_dir, args.database.as_deref())?;
    tally_authority::dir::write_public(&args.out, done.chain_text.as_bytes())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let new_root = tally_core::rollover::RootRollover::new_key(&done.statement)?;
    if args.json {
        output::json(&json!({
            "out": args.out,
            "new_dir": args.new_dir,
            "new_authority_id": to_hex(&authority_id(&new_root)),
            "new_public_key": to_hex(new_root.as_bytes()),
            "old_authority_id": to_hex(&done.statement.old_authority_id),
            "old_root_until": done.statement.old_root_until().map(|t| t.to_string()),
            "chain_length": done.chain_text.lines().count(),
            "database_copied": done.database_copied,
            "previous_mac_keys": done.previous_mac_keys,
        }))?;
    } else {
        println!(
            "Root {} handed trust to root {} (new authority in {}).",
            to_hex(&done.statement.old_authority_id),
            to_hex(&authority_id(&new_root)),
            args.new_dir.display()
        );
        println!(
            "Rollover file: {} ({} statements). Ship it to hosts (tally host import-rollover \
             FILE) and clients (as authority.rollover beside authority.pub, or tally client \
             import-rollover FILE).",
            args.out.display(),
            done.chain_text.lines().count()
        );
        if let Some(db) = &done.database_copied {
            println!("The old database was copied to {}.", db.display());
        }
        println!(
            "Keys issued under the old root keep activating at the new authority. Stop the old \
             `tally authority run` and start one on {}.",
            args.new_dir.display()
        );
    }
    Ok(())
}

//! Sets `TALLY_VERSION` for `tally --version`: the package version and the git commit it was
//! built from, e.g. `0.1.0 (commit 0123abcd4567)`. `TALLY_COMMIT` in the environment wins (a
//! packager building from a tarball can pass it); without it and without a git checkout (a
//! source tarball, `cargo package`) the commit is `unknown`. Never fails the build.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=TALLY_COMMIT");
    let commit = match std::env::var("TALLY_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself, the branch it names, and packed refs.
            if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                let git_dir = PathBuf::from(git_dir);
                println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
                if let (Some(common), Some(reference)) = (
                    git(&["rev-parse", "--git-common-dir"]),
                    git(&["symbolic-ref", "-q", "HEAD"]),
                ) {
                    let common = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(common);
                    for path in [common.join(&reference), common.join("packed-refs")] {
                        if path.exists() {
                            println!("cargo:rerun-if-changed={}", path.display());
                        }
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=TALLY_VERSION={version} (commit {commit})");
}

//! `tally generate man|completions DIR` (hidden): the man pages (`clap_mangen`) and shell
//! completions (`clap_complete`) that `scripts/dist.sh` puts in the `tally` package. Generated
//! from the same clap definition the binary parses, so they cannot drift from `--help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use clap_complete::Shell;
use serde::Serialize;

use crate::output::json;

/// What to generate.
#[derive(Subcommand)]
pub enum GenerateCommand {
    /// Man pages, one per command (`tally.1`, `tally-host-run.1`, …), into DIR.
    Man(OutDir),
    /// Completion scripts for bash, zsh and fish (`tally.bash`, `_tally`, `tally.fish`) into DIR.
    Completions(OutDir),
}

/// The directory written to (created when missing).
#[derive(Args)]
pub struct OutDir {
    /// Output directory.
    pub dir: PathBuf,
    /// Print the files written as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Written {
    files: Vec<PathBuf>,
}

/// Writes the files; `cli` is the binary's own clap command.
pub fn run(command: GenerateCommand, cli: clap::Command) -> anyhow::Result<ExitCode> {
    let (out, files) = match command {
        GenerateCommand::Man(out) => {
            create(&out.dir)?;
            clap_mangen::generate_to(cli, &out.dir)
                .with_context(|| format!("cannot write man pages to {}", out.dir.display()))?;
            let files = listing(&out.dir)?;
            (out, files)
        }
        GenerateCommand::Completions(out) => {
            create(&out.dir)?;
            let mut files = Vec::new();
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                let mut cli = cli.clone();
                let file = clap_complete::generate_to(shell, &mut cli, "tally", &out.dir)
                    .with_context(|| {
                        format!("cannot write {shell} completions to {}", out.dir.display())
                    })?;
                files.push(file);
            }
            (out, files)
        }
    };
    if out.json {
        json(&Written { files })?;
    } else {
        for file in &files {
            println!("{}", file.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn create(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn listing(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "1"))
        .collect::<Vec<_>>();
    files.sort();
    Ok(files)
}

//! Issue 22: docs/RULES.md states every rule the code and docs cite (R1–R27, X1–X8), each with
//! the tests that check it; `scripts/rules-index.py` writes those lists from the source tree.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn all_rules() -> Vec<String> {
    (1..=27)
        .map(|n| format!("R{n}"))
        .chain((1..=8).map(|n| format!("X{n}")))
        .collect()
}

#[test]
fn rules_md_lists_every_rule_and_its_tests() {
    let root = root();
    let doc = std::fs::read_to_string(root.join("docs/RULES.md")).expect("docs/RULES.md");
    for rule in all_rules() {
        assert!(
            doc.contains(&format!("\n### {rule}: ")),
            "docs/RULES.md has no section for {rule}"
        );
        let start = format!("<!-- checked-by {rule} -->");
        let list = doc
            .split(&start)
            .nth(1)
            .and_then(|rest| rest.split("<!-- /checked-by -->").next())
            .unwrap_or_else(|| panic!("docs/RULES.md: {rule} has no checked-by list"));
        let entries: Vec<&str> = list.lines().filter(|l| l.starts_with("- `")).collect();
        assert!(!entries.is_empty(), "{rule}: no test checks it");
        for entry in entries {
            // - `name` in `path`
            let parts: Vec<&str> = entry.split('`').collect();
            let (name, path) = (parts[1], parts[3]);
            let source = std::fs::read_to_string(root.join(path))
                .unwrap_or_else(|e| panic!("{rule}: {path} listed in docs/RULES.md: {e}"));
            assert!(
                source.contains(&format!("fn {name}(")) || source.contains(&format!("def {name}(")),
                "{rule}: docs/RULES.md lists {name} in {path}, which is not there"
            );
        }
    }
    // The lists are what the script makes of today's tree (a new rN_/xN_ test is listed).
    let status = Command::new("python3")
        .arg(root.join("scripts/rules-index.py"))
        .arg("--check")
        .status()
        .expect("python3 runs scripts/rules-index.py");
    assert!(
        status.success(),
        "docs/RULES.md's checked-by lists are out of date: run `python3 scripts/rules-index.py`"
    );
}

#[test]
fn every_cited_rule_is_stated() {
    // Anything the docs and --help cite resolves to a section of docs/RULES.md.
    let root = root();
    let doc = std::fs::read_to_string(root.join("docs/RULES.md")).expect("docs/RULES.md");
    let mut texts = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("docs entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            texts.push(path);
        }
    }
    let help = Command::new(crate::bin())
        .arg("--help")
        .output()
        .expect("tally --help");
    let mut cited = String::from_utf8_lossy(&help.stdout).into_owned();
    for path in texts {
        cited.push_str(&std::fs::read_to_string(&path).expect("doc"));
    }
    let bytes = cited.as_bytes();
    for (i, w) in bytes.windows(2).enumerate() {
        let letter = w[0];
        if (letter != b'R' && letter != b'X') || !w[1].is_ascii_digit() {
            continue;
        }
        if i > 0 && bytes[i - 1].is_ascii_alphanumeric() {
            continue;
        }
        let digits: String = cited[i + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let end = i + 1 + digits.len();
        if bytes.get(end).is_some_and(|b| b.is_ascii_alphanumeric()) {
            continue;
        }
        let id = format!("{}{digits}", letter as char);
        assert!(
            doc.contains(&format!("\n### {id}: ")),
            "{id} is cited in the docs or --help but docs/RULES.md does not state it"
        );
    }
}

//! One line for an error and its sources, each cause once: the CLI's `error:` line, log fields
//! and messages built from errors all use it, so no cause is printed twice (an outer message
//! that already quotes its source, `cannot read X: …` over the same I/O error, adds nothing).

/// `error` and its sources, `: `-separated, skipping any source whose text the line already
/// holds.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("revocation list refused: {0}")]
        Quoting(#[source] std::io::Error),
        #[error("cannot read the list")]
        Plain(#[source] std::io::Error),
    }

    #[test]
    fn a_quoted_source_is_printed_once_and_a_silent_one_is_added() {
        let io = || std::io::Error::other("disk on fire");
        assert_eq!(
            chain(&Outer::Quoting(io())),
            "revocation list refused: disk on fire"
        );
        assert_eq!(
            chain(&Outer::Plain(io())),
            "cannot read the list: disk on fire"
        );
    }
}

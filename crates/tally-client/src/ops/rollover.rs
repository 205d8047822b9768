//! X8: importing root rollover statements into the client's state directory.

use super::{Client, TRUST_FILE};

impl Client {
    /// X8: verifies the root rollover statements in `text` from the trusted root and keeps
    /// those that verify in `DIR/authority.rollover`.
    pub fn import_rollover(
        &self,
        text: &str,
    ) -> Result<crate::rollover::Imported, crate::rollover::RolloverImportError> {
        let root = self
            .anchor()
            .ok_or_else(|| crate::rollover::RolloverImportError::Io {
                path: self.dir.join(TRUST_FILE),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no trusted authority key: `tally client trust FILE` first",
                ),
            })?;
        crate::rollover::import(&self.dir, &root, text)
    }
}

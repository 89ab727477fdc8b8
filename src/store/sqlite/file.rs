//! The store's file, private to its owner: it holds refresh tokens.

use std::path::Path;

/// Creates the file, and its directory, so that only the owner can read them: the file holds
/// refresh tokens. An existing file with looser permissions is tightened.
pub(super) fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "store file was readable by others; restricting it to its owner");
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

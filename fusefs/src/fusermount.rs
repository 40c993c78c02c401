//! Mounting without privileges: fuser 0.18 opens `/dev/fuse` (mode 0666 on Debian), is
//! refused mount(2), and runs `fusermount3` (the setuid helper of the `fuse3` package), which
//! mounts and hands the descriptor back. Here: what fusermount3 would refuse, said before
//! anything is fetched (`--allow-other` without `user_allow_other`), and unmounting what this
//! user mounted.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

/// The helper, found on PATH.
pub const FUSERMOUNT: &str = "fusermount3";

/// Is `user_allow_other` set in `/etc/fuse.conf` (a line by itself, not commented)?
pub fn user_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf")
        .map(|t| t.lines().any(|l| l.trim() == "user_allow_other"))
        .unwrap_or(false)
}

/// Refuse `--allow-other` for a non-root user when fusermount3 would: before anything is
/// fetched, with the remedy.
pub fn check_allow_other(allow_other: bool) -> Result<()> {
    let uid = rustix::process::geteuid();
    if allow_other && !uid.is_root() && !user_allow_other() {
        return Err(Error::Io(format!(
            "--allow-other as a non-root user (uid {}) needs the line `user_allow_other` in \
             /etc/fuse.conf (fusermount3 refuses it otherwise): add it as root, or mount \
             without --allow-other (then only uid {} and root can read the mount)",
            uid.as_raw(),
            uid.as_raw()
        )));
    }
    Ok(())
}

/// Unmount what this user mounted (`fusermount3 -u`, lazily with `-z`).
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let mut cmd = Command::new(FUSERMOUNT);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("--")
        .arg(mountpoint)
        .output()
        .map_err(|e| Error::io(format!("running {FUSERMOUNT}"), e))?;
    if !out.status.success() {
        return Err(Error::Io(format!(
            "{FUSERMOUNT} -u {}: {}",
            mountpoint.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

//! Who may write a store. A store is written only by its owner, or by anyone who can write it
//! when it is *group-shared* (its top folder has the setgid bit: every member of its group,
//! root included, writes it, and new folders stay group-writable). Anyone else who can read it
//! uses it read-only: a version fully in the store materializes, and the first thing that
//! would write fails at once with [`Error::Permission`], naming the path and what is missing.
//!
//! Why not let root write a user's store: the folders root would create (`roots/lock/`,
//! `sources/ab/`, …) would be root's, and the store's owner could then neither `gc` nor add
//! beneath them. Group sharing is the way for several users to write one store.

use super::error::{Error, Result};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const SETGID: u32 = 0o2000;

/// This process's access to a store.
#[derive(Clone, Debug)]
pub(crate) enum Access {
    Write,
    /// Why it may not write: the message of the error every write gets.
    ReadOnly(String),
}

impl Access {
    /// Look at the store's top folder: owner, mode, and whether we may write in it.
    pub(crate) fn of(root: &Path) -> Access {
        let Ok(meta) = fs::metadata(root) else {
            return Access::Write;
        };
        let euid = rustix::process::geteuid().as_raw();
        let mode = meta.mode() & 0o7777;
        let group_shared = mode & SETGID != 0;
        let can_write = rustix::fs::access(
            root,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .is_ok();
        let who = format!(
            "uid {euid} (owner {}, group {}, mode {mode:04o})",
            name_of_uid(meta.uid()),
            meta.gid()
        );
        if !can_write {
            return Access::ReadOnly(format!(
                "store {} is not writable by {who}: it can be read (a version fully in it \
                 materializes) but not written; run as its owner, or make it group-shared \
                 (chgrp GROUP, chmod g+ws; store-layout.md, \"Permissions\")",
                root.display()
            ));
        }
        if meta.uid() != euid && !group_shared {
            return Access::ReadOnly(format!(
                "store {} belongs to {}, not to {who}: files written as uid {euid} would keep its \
                 owner from removing them; run as its owner, or make it group-shared \
                 (chgrp GROUP, chmod g+ws; store-layout.md, \"Permissions\")",
                root.display(),
                name_of_uid(meta.uid()),
            ));
        }
        Access::Write
    }
}

fn name_of_uid(uid: u32) -> String {
    if uid == 0 {
        "root".to_string()
    } else {
        format!("uid {uid}")
    }
}

/// The error of a write to a read-only store: `what` is the path it would have written.
pub(crate) fn refused(reason: &str, what: &Path) -> Error {
    Error::Permission {
        path: what.to_path_buf(),
        reason: reason.to_string(),
        source: std::io::ErrorKind::PermissionDenied.into(),
    }
}

/// The error of a store whose marker this process cannot read.
pub(crate) fn unreadable(root: &Path, marker: &Path) -> Error {
    let euid = rustix::process::geteuid().as_raw();
    let about = fs::metadata(root).map_or_else(
        |_| String::new(),
        |m| {
            format!(
                " (owner {}, group {}, mode {:04o})",
                name_of_uid(m.uid()),
                m.gid(),
                m.mode() & 0o7777
            )
        },
    );
    refused(
        &format!(
            "store {} is not readable by uid {euid}{about}: a new store is private (0700); \
             its owner can share it read-only (chmod 0755) or make it group-shared \
             (store-layout.md, \"Permissions\")",
            root.display()
        ),
        marker,
    )
}

impl super::Store {
    /// Whether this process may write the store; the error names the store, the user, the
    /// owner and the mode.
    pub fn writable(&self) -> Result<()> {
        self.writable_for(self.root())
    }

    /// [`Store::writable`], naming the path about to be written.
    pub(crate) fn writable_for(&self, what: &Path) -> Result<()> {
        match &self.access {
            Access::Write => Ok(()),
            Access::ReadOnly(reason) => Err(refused(reason, what)),
        }
    }
}

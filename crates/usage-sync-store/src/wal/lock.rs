//! One owner per log directory.
//!
//! Two processes on one log destroy it: the second replays the first's
//! live segment, writes a checkpoint and deletes the segment the first is
//! still appending to (its records then go to an unlinked file), and both
//! flush the same units. So the log directory carries a lock file, `LOCK`,
//! holding the owner's pid, and [`DirLock::acquire`] takes an exclusive
//! `flock` on it *before* anything in the directory is read.
//!
//! `flock` (not a pid file alone) because the kernel drops the lock when
//! its holder dies, even by SIGKILL: a crashed instance never leaves a
//! stale lock behind, and a restart takes it at once. The pid inside is
//! only for the error message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::StoreError;

/// The lock file's name inside the log directory.
pub const LOCK_FILE: &str = "LOCK";

/// The held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the directory's lock without waiting. Fails with
    /// [`StoreError::InUse`] (naming the holder's pid) if another process,
    /// or another open log in this process, holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::InUse {
                    path: dir.display().to_string(),
                    pid: read_pid(&mut file),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StoreError::Open {
                    path: path.display().to_string(),
                    source,
                });
            }
        }
        // Ours now: record the pid for the next process's message. Best
        // effort: the lock itself is what excludes.
        let _ = file.set_len(0).and_then(|_| {
            file.rewind()?;
            writeln!(file, "{}", std::process::id())
        });
        Ok(DirLock { _file: file })
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Whether a process holds `dir`'s lock, and its pid if it wrote one:
/// `Some(pid)` when in use, `None` when free. Creates nothing and never
/// reads the log (for `check-config` and `migrate`).
pub fn holder(dir: &Path) -> Option<Option<u32>> {
    let path: PathBuf = dir.join(LOCK_FILE);
    let mut file = File::open(&path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => Some(read_pid(&mut file)),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_dir_is_refused_with_the_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        assert_eq!(holder(dir.path()), Some(Some(std::process::id())));
        match DirLock::acquire(dir.path()) {
            Err(StoreError::InUse { path, pid }) => {
                assert_eq!(path, dir.path().display().to_string());
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        assert_eq!(holder(dir.path()), None);
        DirLock::acquire(dir.path()).unwrap();
    }
}

//! The manifest: the last durable position of the log, kept outside the
//! segment being written.
//!
//! A segment cannot vouch for its own length: deleted, truncated, or
//! zero-filled from some point on, it still reads as a clean, shorter log,
//! and the units it no longer holds vanish without a word. So the writer
//! records, once a position is on disk, the segment, how many frames it
//! holds and the units they counted, in `wal/MANIFEST` (written to a
//! temporary file, synced, renamed over the old one). Recovery compares:
//! a log that ends before the manifest's position lost records that were
//! acknowledged, and the start is refused unless the operator accepts the
//! loss (`serve --accept-log-loss`).
//!
//! The manifest is updated at most about once a second (and at every new
//! segment and at close): damage to the last second of records before a
//! crash is not detected by it (a torn last frame is still told apart as
//! before). It only ever names a segment whose checkpoint is complete, so
//! a checkpoint interrupted by a crash never reads as lost records.

use std::io::Write;
use std::path::Path;

use super::Position;
use crate::error::StoreError;

pub const MANIFEST: &str = "MANIFEST";
const HEADER: &str = "usage-sync write-ahead log manifest v1";

/// The manifest in `dir`, if there is one.
pub fn read(dir: &Path) -> Result<Option<Position>, StoreError> {
    let path = dir.join(MANIFEST);
    let Some(text) = super::unless_absent(&path, std::fs::read_to_string(&path))? else {
        return Ok(None);
    };
    let bad = || {
        StoreError::Corrupt(format!(
            "{}: not a manifest this version can read; move it away to start without its check",
            path.display()
        ))
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(bad());
    }
    let mut field = |name: &str| -> Result<i64, StoreError> {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(bad)
    };
    let segment = u64::try_from(field("segment")?).map_err(|_| bad())?;
    let frames = u64::try_from(field("frames")?).map_err(|_| bad())?;
    let units = field("units")?;
    Ok(Some(Position {
        segment,
        frames,
        units,
        checkpointed: true,
    }))
}

/// Replaces the manifest in `dir` with `pos`, durably: a temporary file,
/// synced, renamed over the old one, and the directory synced.
pub fn write(dir: &Path, pos: &Position) -> std::io::Result<()> {
    let tmp = dir.join("MANIFEST.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(
        f,
        "{HEADER}\nsegment {}\nframes {}\nunits {}",
        pos.segment, pos.frames, pos.units
    )?;
    f.sync_data()?;
    std::fs::rename(&tmp, dir.join(MANIFEST))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_round_trips_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let pos = Position {
            segment: 7,
            frames: 1234,
            units: -5,
            checkpointed: true,
        };
        write(dir.path(), &pos).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(pos));
        std::fs::write(dir.path().join(MANIFEST), "segment 1\n").unwrap();
        assert!(matches!(read(dir.path()), Err(StoreError::Corrupt(_))));
    }
}

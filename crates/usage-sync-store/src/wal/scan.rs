//! Reading a segment's bytes back: every valid frame in order, and how
//! the scan ended (a clean end, a torn tail, or corruption).

use super::codec::{HEADER, LogRecord, MAX_PAYLOAD, T_CHECKPOINT_START_SEQUENCED, decode};

/// How a scan of a file's bytes ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Valid frames up to `end`, and nothing after it but zeros: the
    /// unused part of a segment the writer zero-fills ahead of its records
    /// (`fsync` mode), or nothing at all. A record whose write never
    /// reached the disk leaves zeros too; it was never acknowledged.
    Clean { end: u64 },
    /// The last frame is incomplete or fails its checksum and nothing
    /// follows it: a write cut short. Valid data ends at `offset`.
    Torn { offset: u64, reason: String },
    /// A bad frame followed by more data: not a torn write.
    Corrupt { offset: u64, reason: String },
}

/// Whether a segment's first payload opens a sequenced segment: frame
/// number 0, then the sequenced `CheckpointStart` tag.
fn opens_sequenced(payload: &[u8]) -> bool {
    payload.len() > 8 && payload[..8] == [0; 8] && payload[8] == T_CHECKPOINT_START_SEQUENCED
}

/// Decodes every frame of `bytes`, calling `f(offset, seq, record)` for
/// each valid one (`seq` is the frame's number in a sequenced segment, see
/// the module docs), and reports how the scan ended. Stops at the first
/// problem.
pub fn scan<'a>(bytes: &'a [u8], mut f: impl FnMut(u64, Option<u64>, LogRecord<'a>)) -> ScanEnd {
    let mut o = 0usize;
    let mut sequenced = None;
    while o < bytes.len() {
        let rest = &bytes[o..];
        // Zeros to the end are the unwritten part of a zero-filled segment.
        // No frame starts with a zero header (its length would be 0, which
        // `len != !check` and the length check reject), and the test stops
        // at the first non-zero byte.
        if rest[0] == 0 && rest.iter().all(|&b| b == 0) {
            return ScanEnd::Clean { end: o as u64 };
        }
        // A bad frame is a torn tail only if no complete, valid frame
        // follows it: whatever an interrupted write left behind (zeros,
        // garbage, half a frame) is never a valid frame, while skipping over
        // real damage would drop records that were written.
        let torn_or_corrupt = |reason: String, search_from: usize| {
            if valid_frame_after(bytes, search_from) {
                ScanEnd::Corrupt {
                    offset: o as u64,
                    reason,
                }
            } else {
                ScanEnd::Torn {
                    offset: o as u64,
                    reason,
                }
            }
        };
        if rest.len() < HEADER {
            return ScanEnd::Torn {
                offset: o as u64,
                reason: format!("{} bytes of a frame header", rest.len()),
            };
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        let check = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        if len != !check {
            return torn_or_corrupt("damaged frame header".into(), o + 1);
        }
        let len = len as usize;
        if len == 0 || len > MAX_PAYLOAD {
            return ScanEnd::Corrupt {
                offset: o as u64,
                reason: format!("invalid frame length {len}"),
            };
        }
        if rest.len() < HEADER + len {
            return torn_or_corrupt(
                format!("frame of {len} bytes cut at {}", rest.len() - HEADER),
                o + 1,
            );
        }
        let payload = &rest[HEADER..HEADER + len];
        if crc32fast::hash(payload) != crc {
            return torn_or_corrupt("checksum mismatch".into(), o + 1);
        }
        let sequenced = *sequenced.get_or_insert_with(|| opens_sequenced(payload));
        let (seq, body) = if sequenced {
            if payload.len() < 8 {
                return ScanEnd::Corrupt {
                    offset: o as u64,
                    reason: "a frame without its sequence number".into(),
                };
            }
            let (n, body) = payload.split_at(8);
            (
                Some(u64::from_le_bytes(n.try_into().expect("8 bytes"))),
                body,
            )
        } else {
            (None, payload)
        };
        match decode(body) {
            Ok(r) => f(o as u64, seq, r),
            Err(e) => {
                return ScanEnd::Corrupt {
                    offset: o as u64,
                    reason: format!("undecodable record: {e}"),
                };
            }
        }
        o += HEADER + len;
    }
    ScanEnd::Clean { end: o as u64 }
}

/// Whether a complete frame with a consistent header and a matching
/// checksum starts anywhere at or after `from`. Only used on the error
/// path; the header check rejects almost every offset before any CRC.
fn valid_frame_after(bytes: &[u8], from: usize) -> bool {
    let mut p = from;
    while p + HEADER <= bytes.len() {
        let len = u32::from_le_bytes(bytes[p..p + 4].try_into().expect("4 bytes"));
        let check = u32::from_le_bytes(bytes[p + 4..p + 8].try_into().expect("4 bytes"));
        if len == !check && len > 0 && (len as usize) <= MAX_PAYLOAD {
            let end = p + HEADER + len as usize;
            if end <= bytes.len() {
                let crc = u32::from_le_bytes(bytes[p + 8..p + 12].try_into().expect("4 bytes"));
                if crc32fast::hash(&bytes[p + HEADER..end]) == crc {
                    return true;
                }
            }
        }
        p += 1;
    }
    false
}

//! The counters sidecar: the transaction applet's retry count and signature
//! counter, written in place next to the state file (`<state>.counters`).
//!
//! The file is [`SIDECAR_LEN`] bytes: two slots of [`SLOT_LEN`] bytes (one
//! page each, so a write to one never touches the other's block). A slot
//! holds one [`Record`] ([`RECORD_LEN`] bytes, big-endian) and zeros:
//!
//! | bytes  | field |
//! |--------|-------|
//! | 0..8   | [`MAGIC`] (format of the record, version 1 in its last byte) |
//! | 8..24  | the card's [`BindingId`] (also in the state file) |
//! | 24..32 | sequence number |
//! | 32..36 | signature counter |
//! | 36     | PIN retries left |
//! | 37..48 | zero |
//! | 48..64 | SHA-256 of bytes 0..48, first 16 bytes |
//!
//! Encoding and decoding ([`Record::encode`], [`Record::decode`]) do no IO;
//! [`read`], [`create`] and [`Sidecar::write`] do the file work. Why this is
//! crash-safe is in [`crate::state`].

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use p256::elliptic_curve::rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use super::{write_atomic, Replace};
use crate::error::CardError;

/// A record's first bytes: "KB counters", format 1.
pub(crate) const MAGIC: [u8; 8] = *b"KBCTRS\x00\x01";
/// One record.
pub(crate) const RECORD_LEN: usize = 64;
/// One slot: a page, so that writing one slot never rewrites the other's block.
pub(crate) const SLOT_LEN: usize = 4096;
/// [`SLOT_LEN`] as a file offset.
const SLOT_LEN_U64: u64 = 4096;
/// The whole sidecar: slot A, then slot B.
pub(crate) const SIDECAR_LEN: usize = 2 * SLOT_LEN;
const SIDECAR_LEN_U64: u64 = 2 * SLOT_LEN_U64;
const CHECKSUM_LEN: usize = 16;
const CHECKED_LEN: usize = RECORD_LEN - CHECKSUM_LEN;
/// Appended to the state file's name.
const SIDECAR_SUFFIX: &str = ".counters";

/// Ties a sidecar to one card's state file: random, made when the state file
/// gets its first counters fields. A sidecar whose records carry another id
/// (left by an earlier card at the same path) is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BindingId(pub(crate) [u8; 16]);

impl BindingId {
    pub(crate) fn random(rng: &mut dyn CryptoRngCore) -> BindingId {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        BindingId(id)
    }

    pub(crate) fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub(crate) fn from_hex(text: &str) -> Option<BindingId> {
        let bytes = hex::decode(text).ok()?;
        <[u8; 16]>::try_from(bytes).ok().map(BindingId)
    }
}

/// One write of the hot fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) binding: BindingId,
    /// Higher than every earlier write's, to the sidecar or the state file.
    pub(crate) seq: u64,
    pub(crate) counter: u32,
    pub(crate) pin_retries_left: u8,
}

impl Record {
    pub(crate) fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..24].copy_from_slice(&self.binding.0);
        out[24..32].copy_from_slice(&self.seq.to_be_bytes());
        out[32..36].copy_from_slice(&self.counter.to_be_bytes());
        out[36] = self.pin_retries_left;
        let checksum = checksum(&out[..CHECKED_LEN]);
        out[CHECKED_LEN..].copy_from_slice(&checksum);
        out
    }

    /// The record at the start of `bytes`; `None` for anything we did not
    /// write whole: a torn write, zeros, another format, too few bytes.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Record> {
        let record = bytes.get(..RECORD_LEN)?;
        let (checked, sum) = record.split_at(CHECKED_LEN);
        if checksum(checked) != sum || checked.get(0..8)? != MAGIC {
            return None;
        }
        if checked.get(37..CHECKED_LEN)?.iter().any(|&b| b != 0) {
            return None;
        }
        Some(Record {
            binding: BindingId(checked.get(8..24)?.try_into().ok()?),
            seq: u64::from_be_bytes(checked.get(24..32)?.try_into().ok()?),
            counter: u32::from_be_bytes(checked.get(32..36)?.try_into().ok()?),
            pin_retries_left: *checked.get(36)?,
        })
    }
}

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::digest(bytes);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    A,
    B,
}

impl Slot {
    pub(crate) const BOTH: [Slot; 2] = [Slot::A, Slot::B];

    pub(crate) fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn offset(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => SLOT_LEN,
        }
    }

    fn offset_u64(self) -> u64 {
        match self {
            Slot::A => 0,
            Slot::B => SLOT_LEN_U64,
        }
    }
}

/// What a sidecar holds: each slot's record, when it decodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Slots {
    pub(crate) a: Option<Record>,
    pub(crate) b: Option<Record>,
}

impl Slots {
    /// Decodes a sidecar's bytes; a short file has short (invalid) slots.
    pub(crate) fn decode(bytes: &[u8]) -> Slots {
        let slot = |s: Slot| {
            bytes
                .get(s.offset()..)
                .and_then(|rest| Record::decode(rest.get(..SLOT_LEN.min(rest.len()))?))
        };
        Slots {
            a: slot(Slot::A),
            b: slot(Slot::B),
        }
    }

    fn get(&self, slot: Slot) -> Option<Record> {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    /// The valid record with the highest sequence number that belongs to
    /// `binding`, and its slot.
    pub(crate) fn newest(&self, binding: BindingId) -> Option<(Slot, Record)> {
        Slot::BOTH
            .into_iter()
            .filter_map(|s| self.get(s).map(|r| (s, r)))
            .filter(|(_, r)| r.binding == binding)
            .max_by_key(|(_, r)| r.seq)
    }
}

/// `<state>.counters`, next to the state file.
pub(crate) fn sidecar_path(state_path: &Path) -> PathBuf {
    let mut name = state_path.as_os_str().to_owned();
    name.push(SIDECAR_SUFFIX);
    PathBuf::from(name)
}

/// The sidecar of the state file at `state_path`; `None` when there is none.
pub(crate) fn read(state_path: &Path) -> Result<Option<Slots>, CardError> {
    let path = sidecar_path(state_path);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CardError::io(format!("opening {}", path.display()))(e)),
    };
    let mut bytes = Vec::with_capacity(SIDECAR_LEN);
    // Bounded: anything past the two slots is not ours to read.
    file.take(SIDECAR_LEN_U64)
        .read_to_end(&mut bytes)
        .map_err(CardError::io(format!("reading {}", path.display())))?;
    Ok(Some(Slots::decode(&bytes)))
}

/// The sidecar, open for in-place writes.
#[derive(Debug)]
pub(crate) struct Sidecar {
    file: File,
    path: PathBuf,
}

impl Sidecar {
    /// Opens the existing sidecar of the state file at `state_path`.
    pub(crate) fn open(state_path: &Path) -> Result<Sidecar, CardError> {
        let path = sidecar_path(state_path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(CardError::io(format!("opening {}", path.display())))?;
        Ok(Sidecar { file, path })
    }

    /// Overwrites `slot` with `record` (the whole slot, padding included) and
    /// waits until the data is on disk (`fdatasync`: the file's size and
    /// blocks do not change, so no metadata needs to follow).
    pub(crate) fn write(&self, slot: Slot, record: &Record) -> Result<(), CardError> {
        let mut block = [0u8; SLOT_LEN];
        block[..RECORD_LEN].copy_from_slice(&record.encode());
        write_all_at(&self.file, &block, slot.offset_u64())
            .and_then(|()| self.file.sync_data())
            .map_err(CardError::io(format!("writing {}", self.path.display())))
    }
}

#[cfg(unix)]
fn write_all_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(not(unix))]
fn write_all_at(mut file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)
}

/// Makes a new sidecar, replacing any earlier one atomically (temp file,
/// fsync, rename, directory fsync, mode 0600): `record` in `slot`, zeros
/// (no record) in the other. Every byte is written, so later in-place writes
/// never change the file's size or allocate blocks.
pub(crate) fn create(state_path: &Path, slot: Slot, record: &Record) -> Result<Sidecar, CardError> {
    let mut bytes = vec![0u8; SIDECAR_LEN];
    bytes[slot.offset()..slot.offset() + RECORD_LEN].copy_from_slice(&record.encode());
    write_atomic(&sidecar_path(state_path), &bytes, Replace::Yes)?;
    Sidecar::open(state_path)
}

/// Removes the sidecar of the state file at `state_path`, if there is one.
pub(crate) fn remove(state_path: &Path) -> Result<(), CardError> {
    let path = sidecar_path(state_path);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CardError::io(format!("removing {}", path.display()))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(seq: u64) -> Record {
        Record {
            binding: BindingId([7; 16]),
            seq,
            counter: 0x0102_0304,
            pin_retries_left: 2,
        }
    }

    /// The layout the module doc promises, byte for byte.
    #[test]
    fn a_record_encodes_as_documented() {
        let bytes = record(0x1122_3344_5566_7788).encode();
        let expected_head = concat!(
            "4b424354525300 01",
            "07070707070707070707070707070707",
            "1122334455667788",
            "01020304",
            "02",
            "0000000000000000000000"
        );
        assert_eq!(
            hex::encode(&bytes[..CHECKED_LEN]),
            expected_head.replace(' ', "")
        );
        assert_eq!(
            bytes[CHECKED_LEN..],
            Sha256::digest(&bytes[..CHECKED_LEN])[..CHECKSUM_LEN]
        );
        assert_eq!(Record::decode(&bytes), Some(record(0x1122_3344_5566_7788)));
    }

    /// Any single flipped bit (a torn or rotten write) makes the record invalid.
    #[test]
    fn a_damaged_record_is_invalid() {
        let bytes = record(5).encode();
        for bit in 0..RECORD_LEN * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Record::decode(&damaged), None, "bit {bit}");
        }
        assert_eq!(Record::decode(&bytes[..RECORD_LEN - 1]), None);
        assert_eq!(Record::decode(&[0u8; RECORD_LEN]), None);
    }

    /// The newest valid record of the right card wins, wherever it is.
    #[test]
    fn newest_takes_the_highest_valid_sequence_of_this_card() {
        let mine = BindingId([7; 16]);
        let other = Record {
            binding: BindingId([8; 16]),
            ..record(99)
        };
        let slots = Slots {
            a: Some(record(4)),
            b: Some(record(3)),
        };
        assert_eq!(slots.newest(mine), Some((Slot::A, record(4))));
        let slots = Slots {
            a: Some(record(4)),
            b: Some(record(5)),
        };
        assert_eq!(slots.newest(mine), Some((Slot::B, record(5))));
        let slots = Slots {
            a: Some(record(4)),
            b: Some(other),
        };
        assert_eq!(slots.newest(mine), Some((Slot::A, record(4))));
        assert_eq!(slots.newest(BindingId([9; 16])), None);
        assert_eq!(Slots::default().newest(mine), None);
    }

    #[test]
    fn a_short_sidecar_has_only_the_slots_it_holds() {
        let mut bytes = vec![0u8; SIDECAR_LEN];
        bytes[..RECORD_LEN].copy_from_slice(&record(1).encode());
        bytes[SLOT_LEN..SLOT_LEN + RECORD_LEN].copy_from_slice(&record(2).encode());
        let full = Slots::decode(&bytes);
        assert_eq!((full.a, full.b), (Some(record(1)), Some(record(2))));
        let cut = Slots::decode(&bytes[..SLOT_LEN + RECORD_LEN - 1]);
        assert_eq!((cut.a, cut.b), (Some(record(1)), None));
        assert_eq!(Slots::decode(&[]), Slots::default());
    }

    #[test]
    fn file_offsets_match_buffer_offsets() {
        assert_eq!(u64::try_from(SLOT_LEN), Ok(SLOT_LEN_U64));
        assert_eq!(u64::try_from(SIDECAR_LEN), Ok(SIDECAR_LEN_U64));
    }

    #[test]
    fn the_sidecar_sits_next_to_the_state_file() {
        assert_eq!(
            sidecar_path(Path::new("/var/lib/card/card.json")),
            Path::new("/var/lib/card/card.json.counters")
        );
        assert_eq!(sidecar_path(Path::new("card")), Path::new("card.counters"));
    }

    proptest! {
        /// Whatever is on disk, decoding neither panics nor invents a record
        /// that does not encode back to the same bytes.
        #[test]
        fn decoding_any_bytes_is_safe(bytes in proptest::collection::vec(any::<u8>(), 0..SIDECAR_LEN + 8)) {
            let slots = Slots::decode(&bytes);
            for (slot, record) in [(Slot::A, slots.a), (Slot::B, slots.b)] {
                if let Some(r) = record {
                    let start = slot.offset();
                    prop_assert_eq!(&bytes[start..start + RECORD_LEN], &r.encode()[..]);
                }
            }
        }

        #[test]
        fn records_round_trip(binding: [u8; 16], seq: u64, counter: u32, pin_retries_left in 0u8..16) {
            let r = Record { binding: BindingId(binding), seq, counter, pin_retries_left };
            prop_assert_eq!(Record::decode(&r.encode()), Some(r));
        }
    }
}

//! The KeyBridge BLE frame format, modelled on FIDO CTAP 2.1 §11.4 (CTAP-BLE).
//!
//! A *message* is a command byte and up to [`MESSAGE_LEN_MAX`] bytes of data.
//! It travels as one INIT fragment followed by CONT fragments, each at most
//! the negotiated [`FragmentLen`] (the control-point length) long:
//!
//! ```text
//! INIT  | CMD (high bit set) | HLEN | LLEN | DATA ...            (3-byte header)
//! CONT  | SEQ (0x00..=0x7F, high bit clear) | DATA ...           (1-byte header)
//! ```
//!
//! `HLEN‖LLEN` is the big-endian length of the whole message's data. SEQ
//! starts at 0 after the INIT and wraps from `0x7F` back to `0x00`, so a
//! message longer than 128 CONT fragments is still well defined. Phone →
//! device fragments are *writes* to the control-point characteristic; device
//! → phone fragments are *notifications* on the status characteristic.
//!
//! Everything here is IO-free and clock-free: [`Fragments`] turns a message
//! into fragments and [`crate::ble::Reassembler`] (given the time) turns them
//! back.

use std::fmt;

/// The KeyBridge GATT service (128-bit, randomly drawn; not a SIG-assigned UUID).
pub const SERVICE_UUID: &str = "6b620001-5d3c-4e2b-9a71-0c8f4e2d1b30";
/// Control point: the phone *writes* request fragments here (write with response).
pub const CONTROL_POINT_UUID: &str = "6b620002-5d3c-4e2b-9a71-0c8f4e2d1b30";
/// Status: the device *notifies* response, KEEPALIVE and ERROR fragments here.
pub const STATUS_UUID: &str = "6b620003-5d3c-4e2b-9a71-0c8f4e2d1b30";
/// Control point length: read-only, 2 bytes big-endian, the largest fragment
/// the device accepts (20..=512).
pub const CONTROL_POINT_LENGTH_UUID: &str = "6b620004-5d3c-4e2b-9a71-0c8f4e2d1b30";

/// The same UUIDs as numbers, for BLE stacks that take `u128`.
pub const SERVICE_UUID_U128: u128 = 0x6b620001_5d3c_4e2b_9a71_0c8f4e2d1b30;
pub const CONTROL_POINT_UUID_U128: u128 = 0x6b620002_5d3c_4e2b_9a71_0c8f4e2d1b30;
pub const STATUS_UUID_U128: u128 = 0x6b620003_5d3c_4e2b_9a71_0c8f4e2d1b30;
pub const CONTROL_POINT_LENGTH_UUID_U128: u128 = 0x6b620004_5d3c_4e2b_9a71_0c8f4e2d1b30;

/// Smallest fragment: the 20 bytes an ATT MTU of 23 leaves for a value.
pub const FRAGMENT_LEN_MIN: usize = 20;
/// Largest fragment: the largest attribute value ATT allows (Core 5.x Vol 3 F §3.2.9).
pub const FRAGMENT_LEN_MAX: usize = 512;
/// ATT MTU bounds: the default 23, and the MTU whose payload is the largest value.
pub const ATT_MTU_MIN: u16 = 23;
pub const ATT_MTU_MAX: u16 = 515;
/// ATT header of a write or notification (opcode + handle).
const ATT_HEADER_LEN: usize = 3;

/// Largest message data. The biggest thing KeyBridge moves is a protected
/// PUT DATA of a 2048-byte certificate or a SIGN of a 4096-byte chained
/// payload, plus APDU and secure-channel overhead; 8 KiB covers both. A
/// declared length above it is refused before anything is allocated.
pub const MESSAGE_LEN_MAX: usize = 8192;

pub const INIT_HEADER_LEN: usize = 3;
pub const CONT_HEADER_LEN: usize = 1;
/// CONT sequence numbers run 0..=SEQ_MAX and wrap.
pub const SEQ_MAX: u8 = 0x7F;
const INIT_BIT: u8 = 0x80;

/// The command byte of an INIT fragment (CTAP-BLE values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmd {
    /// `0x81` either way: echo the data back. Liveness check.
    Ping,
    /// `0x82` device → phone: still working; data is one [`KeepaliveStatus`] byte.
    Keepalive,
    /// `0x83` either way: a command APDU (phone → device) or its response.
    Msg,
    /// `0xBE` phone → device: abandon the request being processed.
    Cancel,
    /// `0xBF` device → phone: one [`ErrorCode`] byte.
    Error,
}

impl Cmd {
    pub fn byte(self) -> u8 {
        match self {
            Cmd::Ping => 0x81,
            Cmd::Keepalive => 0x82,
            Cmd::Msg => 0x83,
            Cmd::Cancel => 0xBE,
            Cmd::Error => 0xBF,
        }
    }
}

impl TryFrom<u8> for Cmd {
    type Error = FrameError;
    fn try_from(b: u8) -> Result<Cmd, FrameError> {
        Ok(match b {
            0x81 => Cmd::Ping,
            0x82 => Cmd::Keepalive,
            0x83 => Cmd::Msg,
            0xBE => Cmd::Cancel,
            0xBF => Cmd::Error,
            other => return Err(FrameError::UnknownCommand(other)),
        })
    }
}

/// The byte a KEEPALIVE carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveStatus {
    /// `0x01`: the device is processing.
    Processing,
    /// `0x02`: the device waits for its holder to confirm on the device.
    UserPresenceNeeded,
}

impl KeepaliveStatus {
    pub fn byte(self) -> u8 {
        match self {
            KeepaliveStatus::Processing => 0x01,
            KeepaliveStatus::UserPresenceNeeded => 0x02,
        }
    }
}

/// The byte an ERROR carries (CTAP-BLE `ERR_*` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `0x01` the INIT's command byte is not one the device knows.
    InvalidCmd,
    /// `0x02` a parameter in the request is invalid.
    InvalidPar,
    /// `0x03` the declared length is invalid (over [`MESSAGE_LEN_MAX`], or the
    /// fragments carried more than declared, or a fragment exceeds the length).
    InvalidLen,
    /// `0x04` a CONT arrived out of sequence, or without an INIT.
    InvalidSeq,
    /// `0x05` the rest of a message did not arrive in time.
    ReqTimeout,
    /// `0x06` the device is busy with another request.
    Busy,
    /// `0x7F` anything else.
    Other,
}

impl ErrorCode {
    pub fn byte(self) -> u8 {
        match self {
            ErrorCode::InvalidCmd => 0x01,
            ErrorCode::InvalidPar => 0x02,
            ErrorCode::InvalidLen => 0x03,
            ErrorCode::InvalidSeq => 0x04,
            ErrorCode::ReqTimeout => 0x05,
            ErrorCode::Busy => 0x06,
            ErrorCode::Other => 0x7F,
        }
    }

    pub fn from_byte(b: u8) -> ErrorCode {
        match b {
            0x01 => ErrorCode::InvalidCmd,
            0x02 => ErrorCode::InvalidPar,
            0x03 => ErrorCode::InvalidLen,
            0x04 => ErrorCode::InvalidSeq,
            0x05 => ErrorCode::ReqTimeout,
            0x06 => ErrorCode::Busy,
            _ => ErrorCode::Other,
        }
    }

    /// Whether the phone should simply send its request again: the request was
    /// damaged on the way, not refused.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::InvalidSeq | ErrorCode::ReqTimeout | ErrorCode::InvalidLen | ErrorCode::Busy
        )
    }
}

/// Why bytes are not a fragment, or fragments not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("empty fragment")]
    Empty,
    #[error("INIT fragment shorter than its 3-byte header")]
    TruncatedInit,
    #[error("unknown command byte {0:#04x}")]
    UnknownCommand(u8),
    #[error("declared message length {declared} is over the {max}-byte bound")]
    LengthTooLarge { declared: usize, max: usize },
    #[error("fragment of {len} bytes is over the negotiated {max}")]
    FragmentTooLong { len: usize, max: usize },
    #[error("fragments carry more data than the INIT declared")]
    Overflow,
    #[error("CONT fragment without an INIT")]
    UnexpectedCont,
    #[error("CONT sequence {got}, expected {expected}")]
    WrongSequence { expected: u8, got: u8 },
    #[error("the rest of the message did not arrive in time")]
    Timeout,
    #[error("fragment length {0} outside 20..=512")]
    BadFragmentLen(usize),
    #[error("ATT MTU {0} outside 23..=515")]
    BadAttMtu(u16),
}

impl FrameError {
    /// The ERROR frame a device answers this with.
    pub fn code(self) -> ErrorCode {
        match self {
            FrameError::UnknownCommand(_) => ErrorCode::InvalidCmd,
            FrameError::Empty
            | FrameError::TruncatedInit
            | FrameError::LengthTooLarge { .. }
            | FrameError::FragmentTooLong { .. }
            | FrameError::Overflow => ErrorCode::InvalidLen,
            FrameError::UnexpectedCont | FrameError::WrongSequence { .. } => ErrorCode::InvalidSeq,
            FrameError::Timeout => ErrorCode::ReqTimeout,
            FrameError::BadFragmentLen(_) | FrameError::BadAttMtu(_) => ErrorCode::InvalidPar,
        }
    }
}

/// The largest fragment one side accepts: CTAP's control-point length.
/// Invariant: within [`FRAGMENT_LEN_MIN`]`..=`[`FRAGMENT_LEN_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FragmentLen(usize);

impl FragmentLen {
    pub const MIN: FragmentLen = FragmentLen(FRAGMENT_LEN_MIN);
    pub const MAX: FragmentLen = FragmentLen(FRAGMENT_LEN_MAX);

    pub fn new(len: usize) -> Result<FragmentLen, FrameError> {
        if (FRAGMENT_LEN_MIN..=FRAGMENT_LEN_MAX).contains(&len) {
            Ok(FragmentLen(len))
        } else {
            Err(FrameError::BadFragmentLen(len))
        }
    }

    /// What one write or notification can carry at this ATT MTU.
    pub fn from_att_mtu(mtu: u16) -> Result<FragmentLen, FrameError> {
        if !(ATT_MTU_MIN..=ATT_MTU_MAX).contains(&mtu) {
            return Err(FrameError::BadAttMtu(mtu));
        }
        FragmentLen::new(usize::from(mtu) - ATT_HEADER_LEN)
    }

    pub fn get(self) -> usize {
        self.0
    }

    /// As the control-point-length characteristic carries it.
    pub fn to_be_bytes(self) -> [u8; 2] {
        // In range 20..=512, so it fits a u16.
        u16::try_from(self.0).unwrap_or(u16::MAX).to_be_bytes()
    }
}

impl fmt::Display for FragmentLen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

/// One fragment, parsed without copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment<'a> {
    Init {
        cmd: Cmd,
        /// The declared length of the whole message's data.
        len: usize,
        data: &'a [u8],
    },
    Cont {
        seq: u8,
        data: &'a [u8],
    },
}

impl<'a> TryFrom<&'a [u8]> for Fragment<'a> {
    type Error = FrameError;

    fn try_from(bytes: &'a [u8]) -> Result<Fragment<'a>, FrameError> {
        match bytes {
            [] => Err(FrameError::Empty),
            [first, rest @ ..] if first & INIT_BIT != 0 => {
                let cmd = Cmd::try_from(*first)?;
                let [hi, lo, data @ ..] = rest else {
                    return Err(FrameError::TruncatedInit);
                };
                Ok(Fragment::Init {
                    cmd,
                    len: usize::from(u16::from_be_bytes([*hi, *lo])),
                    data,
                })
            }
            [seq, data @ ..] => Ok(Fragment::Cont { seq: *seq, data }),
        }
    }
}

/// A whole message.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub cmd: Cmd,
    pub data: Vec<u8>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No data: MSG carries APDUs, and APDUs carry PINs.
        write!(f, "Message({:?}, {} bytes)", self.cmd, self.data.len())
    }
}

impl Message {
    pub fn new(cmd: Cmd, data: impl Into<Vec<u8>>) -> Message {
        Message {
            cmd,
            data: data.into(),
        }
    }

    pub fn error(code: ErrorCode) -> Message {
        Message::new(Cmd::Error, vec![code.byte()])
    }

    /// Splits the message into fragments of at most `len` bytes.
    pub fn fragments(&self, len: FragmentLen) -> Result<Fragments<'_>, FrameError> {
        Fragments::new(self.cmd, &self.data, len)
    }
}

/// The fragments of one message, in order. Yields owned fragments because
/// each goes out as its own characteristic value.
#[derive(Debug, Clone)]
pub struct Fragments<'a> {
    cmd: Cmd,
    data: &'a [u8],
    offset: usize,
    len: FragmentLen,
    /// `None` before the INIT is produced.
    next_seq: Option<u8>,
}

impl<'a> Fragments<'a> {
    pub fn new(cmd: Cmd, data: &'a [u8], len: FragmentLen) -> Result<Fragments<'a>, FrameError> {
        if data.len() > MESSAGE_LEN_MAX {
            return Err(FrameError::LengthTooLarge {
                declared: data.len(),
                max: MESSAGE_LEN_MAX,
            });
        }
        Ok(Fragments {
            cmd,
            data,
            offset: 0,
            len,
            next_seq: None,
        })
    }

    /// How many fragments a message of `data_len` bytes takes.
    pub fn count(data_len: usize, len: FragmentLen) -> usize {
        let first = len.get() - INIT_HEADER_LEN;
        let per_cont = len.get() - CONT_HEADER_LEN;
        1 + data_len.saturating_sub(first).div_ceil(per_cont)
    }
}

impl Iterator for Fragments<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        match self.next_seq {
            None => {
                let take = self.data.len().min(self.len.get() - INIT_HEADER_LEN);
                // Bounded by MESSAGE_LEN_MAX in `new`, so the length fits u16.
                let declared = u16::try_from(self.data.len()).unwrap_or(u16::MAX);
                let mut out = Vec::with_capacity(INIT_HEADER_LEN + take);
                out.push(self.cmd.byte());
                out.extend_from_slice(&declared.to_be_bytes());
                out.extend_from_slice(&self.data[..take]);
                self.offset = take;
                self.next_seq = Some(0);
                Some(out)
            }
            Some(_) if self.offset >= self.data.len() => None,
            Some(seq) => {
                let take = (self.data.len() - self.offset).min(self.len.get() - CONT_HEADER_LEN);
                let mut out = Vec::with_capacity(CONT_HEADER_LEN + take);
                out.push(seq);
                out.extend_from_slice(&self.data[self.offset..self.offset + take]);
                self.offset += take;
                self.next_seq = Some(if seq == SEQ_MAX { 0 } else { seq + 1 });
                Some(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn a_short_message_is_one_init_fragment() {
        let m = Message::new(Cmd::Msg, h("00A40400"));
        let f: Vec<_> = m.fragments(FragmentLen::MIN).unwrap().collect();
        assert_eq!(f, vec![h("83 0004 00A40400")]);
        assert_eq!(Fragments::count(4, FragmentLen::MIN), 1);
    }

    #[test]
    fn long_messages_get_cont_fragments_with_wrapping_sequence() {
        // 17 bytes in the INIT, then 19 per CONT: 17 + 130 * 19 = 2487 bytes
        // need CONT sequences 0..=127 and then 0, 1 again.
        let data: Vec<u8> = (0..2487u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let m = Message::new(Cmd::Msg, data.clone());
        let frags: Vec<_> = m.fragments(FragmentLen::MIN).unwrap().collect();
        assert_eq!(frags.len(), 131);
        assert_eq!(Fragments::count(data.len(), FragmentLen::MIN), 131);
        assert_eq!(&frags[0][..3], &h("83 09B7"));
        assert_eq!(frags[1][0], 0x00);
        assert_eq!(frags[128][0], 0x7F);
        assert_eq!(frags[129][0], 0x00);
        assert_eq!(frags[130][0], 0x01);
        assert!(frags.iter().all(|f| f.len() <= 20));
    }

    #[test]
    fn fragments_parse_without_copying() {
        assert_eq!(
            Fragment::try_from(&h("BF 0001 04")[..]),
            Ok(Fragment::Init {
                cmd: Cmd::Error,
                len: 1,
                data: &[0x04]
            })
        );
        assert_eq!(
            Fragment::try_from(&h("05 AABB")[..]),
            Ok(Fragment::Cont {
                seq: 5,
                data: &[0xAA, 0xBB]
            })
        );
        assert_eq!(Fragment::try_from(&[][..]), Err(FrameError::Empty));
        assert_eq!(
            Fragment::try_from(&h("83 00")[..]),
            Err(FrameError::TruncatedInit)
        );
        assert_eq!(
            Fragment::try_from(&h("84 0000")[..]),
            Err(FrameError::UnknownCommand(0x84))
        );
    }

    #[test]
    fn fragment_lengths_and_att_mtus_are_bounded() {
        assert!(FragmentLen::new(19).is_err());
        assert!(FragmentLen::new(513).is_err());
        assert_eq!(FragmentLen::from_att_mtu(23).unwrap().get(), 20);
        assert_eq!(FragmentLen::from_att_mtu(185).unwrap().get(), 182);
        assert_eq!(FragmentLen::from_att_mtu(515).unwrap().get(), 512);
        assert_eq!(
            FragmentLen::from_att_mtu(22),
            Err(FrameError::BadAttMtu(22))
        );
        assert_eq!(
            FragmentLen::from_att_mtu(517),
            Err(FrameError::BadAttMtu(517))
        );
        assert_eq!(FragmentLen::MAX.to_be_bytes(), [0x02, 0x00]);
    }

    #[test]
    fn an_oversized_message_is_refused_not_fragmented() {
        let big = vec![0; MESSAGE_LEN_MAX + 1];
        assert!(matches!(
            Fragments::new(Cmd::Msg, &big, FragmentLen::MAX),
            Err(FrameError::LengthTooLarge { .. })
        ));
    }

    #[test]
    fn uuids_agree_in_both_spellings() {
        for (s, n) in [
            (SERVICE_UUID, SERVICE_UUID_U128),
            (CONTROL_POINT_UUID, CONTROL_POINT_UUID_U128),
            (STATUS_UUID, STATUS_UUID_U128),
            (CONTROL_POINT_LENGTH_UUID, CONTROL_POINT_LENGTH_UUID_U128),
        ] {
            assert_eq!(u128::from_str_radix(&s.replace('-', ""), 16).unwrap(), n);
        }
    }
}

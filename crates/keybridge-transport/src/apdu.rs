//! ISO/IEC 7816-4 APDUs (§5.1 command-response pairs, §5.6 status bytes).

use std::fmt;

/// Largest data field a command may carry (extended Lc, 3 bytes: up to 65535).
pub const DATA_LEN_MAX: usize = 65_535;
/// Largest short-APDU data field.
pub const SHORT_DATA_LEN_MAX: usize = 255;
/// CLA bit 5 (`0x10`): "command is not the last of a chain" (§5.1.1.1).
pub const CLA_CHAINING: u8 = 0x10;
pub const INS_GET_RESPONSE: u8 = 0xC0;

/// Why bytes are not a command APDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApduError {
    #[error("APDU shorter than its 4-byte header")]
    TooShort,
    #[error("APDU length fields do not match its size")]
    WrongLength,
    #[error("response shorter than its 2-byte status word")]
    ResponseTooShort,
}

impl ApduError {
    /// The status word a card answers for this malformed command.
    pub fn status_word(&self) -> StatusWord {
        StatusWord::WrongLength
    }
}

/// A command APDU. `le` is the number of bytes expected: `None` for no Le field,
/// `Some(256)` for short `Le = 00`, `Some(65536)` for extended `Le = 0000`.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    pub data: Vec<u8>,
    pub le: Option<usize>,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately no data: commands carry PINs.
        write!(
            f,
            "Command({:02X} {:02X} {:02X} {:02X}, {} data bytes, le {:?})",
            self.cla,
            self.ins,
            self.p1,
            self.p2,
            self.data.len(),
            self.le
        )
    }
}

impl Command {
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Command {
        Command {
            cla,
            ins,
            p1,
            p2,
            data: Vec::new(),
            le: None,
        }
    }

    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Command {
        self.data = data.into();
        self
    }

    pub fn with_le(mut self, le: usize) -> Command {
        self.le = Some(le);
        self
    }

    /// Whether more commands of a chain follow this one.
    pub fn is_chained(&self) -> bool {
        self.cla & CLA_CHAINING != 0
    }

    /// Parses the four cases of §5.1, in short and extended form.
    pub fn parse(bytes: &[u8]) -> Result<Command, ApduError> {
        let (header, body) = match bytes {
            [a, b, c, d, rest @ ..] => ([*a, *b, *c, *d], rest),
            _ => return Err(ApduError::TooShort),
        };
        let mut cmd = Command::new(header[0], header[1], header[2], header[3]);
        let short_le = |b: u8| if b == 0 { 256 } else { usize::from(b) };
        let ext_len = |hi: u8, lo: u8| usize::from(u16::from_be_bytes([hi, lo]));
        let ext_le = |hi: u8, lo: u8| match ext_len(hi, lo) {
            0 => 65_536,
            n => n,
        };
        match body {
            // Case 1.
            [] => {}
            // Case 2S.
            [le] => cmd.le = Some(short_le(*le)),
            // Case 2E.
            [0, hi, lo] => cmd.le = Some(ext_le(*hi, *lo)),
            // Cases 3E and 4E: 00 Lc(2) data [Le(2)].
            [0, hi, lo, rest @ ..] if ext_len(*hi, *lo) > 0 => {
                let lc = ext_len(*hi, *lo);
                match rest.len().checked_sub(lc) {
                    Some(0) => cmd.data = rest.to_vec(),
                    Some(2) => {
                        cmd.data = rest[..lc].to_vec();
                        cmd.le = Some(ext_le(rest[lc], rest[lc + 1]));
                    }
                    _ => return Err(ApduError::WrongLength),
                }
            }
            // Cases 3S and 4S: Lc(1) data [Le(1)].
            [lc, rest @ ..] if *lc != 0 => {
                let lc = usize::from(*lc);
                match rest.len().checked_sub(lc) {
                    Some(0) => cmd.data = rest.to_vec(),
                    Some(1) => {
                        cmd.data = rest[..lc].to_vec();
                        cmd.le = Some(short_le(rest[lc]));
                    }
                    _ => return Err(ApduError::WrongLength),
                }
            }
            _ => return Err(ApduError::WrongLength),
        }
        Ok(cmd)
    }

    /// Whether this command needs the extended form.
    pub fn needs_extended(&self) -> bool {
        self.data.len() > SHORT_DATA_LEN_MAX || self.le.is_some_and(|le| le > 256)
    }

    /// Encodes in short form when it fits, extended form otherwise.
    /// Data over [`DATA_LEN_MAX`] or an Le over 65536 is a programmer error.
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.data.len() <= DATA_LEN_MAX,
            "APDU data over 65535 bytes"
        );
        let mut out = Vec::with_capacity(4 + 3 + self.data.len() + 2);
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        let lc = u16::try_from(self.data.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes();
        if self.needs_extended() {
            out.push(0);
            if !self.data.is_empty() {
                out.extend_from_slice(&lc);
                out.extend_from_slice(&self.data);
            }
            if let Some(le) = self.le {
                assert!((1..=65_536).contains(&le), "extended Le out of range");
                let le = u16::try_from(le % 65_536).unwrap_or(0);
                out.extend_from_slice(&le.to_be_bytes());
            }
        } else {
            if !self.data.is_empty() {
                out.push(lc[1]);
                out.extend_from_slice(&self.data);
            }
            if let Some(le) = self.le {
                assert!((1..=256).contains(&le), "short Le out of range");
                out.push(u8::try_from(le % 256).unwrap_or(0));
            }
        }
        out
    }

    /// Splits a command into a chain of short commands of at most `chunk` data
    /// bytes each (§5.1.1.1). Only the last one keeps Le and a clear chaining bit.
    pub fn into_chain(self, chunk: usize) -> Vec<Command> {
        let chunk = chunk.clamp(1, SHORT_DATA_LEN_MAX);
        if self.data.len() <= chunk {
            return vec![self];
        }
        let pieces: Vec<&[u8]> = self.data.chunks(chunk).collect();
        let last = pieces.len() - 1;
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| Command {
                cla: if i == last {
                    self.cla & !CLA_CHAINING
                } else {
                    self.cla | CLA_CHAINING
                },
                ins: self.ins,
                p1: self.p1,
                p2: self.p2,
                data: piece.to_vec(),
                le: if i == last { self.le } else { None },
            })
            .collect()
    }
}

/// A response APDU: data then SW1 SW2.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    pub data: Vec<u8>,
    pub sw: StatusWord,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Response({} data bytes, {})", self.data.len(), self.sw)
    }
}

impl Response {
    pub fn ok(data: impl Into<Vec<u8>>) -> Response {
        Response {
            data: data.into(),
            sw: StatusWord::Ok,
        }
    }

    pub fn status(sw: StatusWord) -> Response {
        Response {
            data: Vec::new(),
            sw,
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Response, ApduError> {
        let split = bytes
            .len()
            .checked_sub(2)
            .ok_or(ApduError::ResponseTooShort)?;
        let (data, sw) = bytes.split_at(split);
        Ok(Response {
            data: data.to_vec(),
            sw: StatusWord::from_u16(u16::from_be_bytes([sw[0], sw[1]])),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.sw.to_u16().to_be_bytes());
        out
    }
}

/// Status words of ISO/IEC 7816-4 §5.6 (tables 5 and 6) that KeyBridge uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatusWord {
    /// `9000` normal processing.
    Ok,
    /// `61xx`: `xx` more bytes available with GET RESPONSE (`00` = 256 or more).
    MoreData(u8),
    /// `63Cx`: verification failed, `x` retries left.
    VerifyFailed(u8),
    /// `6581` memory failure (e.g. the state file could not be written).
    MemoryFailure,
    /// `6700` wrong length.
    WrongLength,
    /// `6882` secure messaging not supported.
    SecureMessagingNotSupported,
    /// `6883` last command of the chain expected.
    LastCommandExpected,
    /// `6884` command chaining not supported.
    ChainingNotSupported,
    /// `6982` security status not satisfied (e.g. PIN not verified).
    SecurityNotSatisfied,
    /// `6987` expected secure messaging data objects missing: the command
    /// must come inside the secure channel on this link.
    SecureMessagingMissing,
    /// `6988` incorrect secure messaging data objects: an envelope failed
    /// authentication or came out of order (the session is dropped).
    SecureMessagingIncorrect,
    /// `6983` authentication method blocked (PIN blocked).
    AuthenticationBlocked,
    /// `6985` conditions of use not satisfied (the holder declined).
    ConditionsNotSatisfied,
    /// `6A80` incorrect parameters in the data field.
    IncorrectData,
    /// `6A81` function not supported.
    FunctionNotSupported,
    /// `6A82` file or application not found.
    NotFound,
    /// `6A86` incorrect P1-P2.
    IncorrectP1P2,
    /// `6A88` referenced data not found.
    ReferencedDataNotFound,
    /// `6B00` wrong parameters P1-P2.
    WrongP1P2,
    /// `6Cxx` wrong Le; `xx` is the exact length available.
    WrongLe(u8),
    /// `6D00` instruction not supported.
    InsNotSupported,
    /// `6E00` class not supported.
    ClaNotSupported,
    /// `6F00` no precise diagnosis.
    NoPreciseDiagnosis,
    /// Any other value.
    Other(u16),
}

impl StatusWord {
    pub fn from_u16(sw: u16) -> StatusWord {
        let [sw1, sw2] = sw.to_be_bytes();
        match (sw1, sw2) {
            (0x90, 0x00) => StatusWord::Ok,
            (0x61, n) => StatusWord::MoreData(n),
            (0x63, n) if n & 0xF0 == 0xC0 => StatusWord::VerifyFailed(n & 0x0F),
            (0x65, 0x81) => StatusWord::MemoryFailure,
            (0x67, 0x00) => StatusWord::WrongLength,
            (0x68, 0x82) => StatusWord::SecureMessagingNotSupported,
            (0x68, 0x83) => StatusWord::LastCommandExpected,
            (0x68, 0x84) => StatusWord::ChainingNotSupported,
            (0x69, 0x82) => StatusWord::SecurityNotSatisfied,
            (0x69, 0x83) => StatusWord::AuthenticationBlocked,
            (0x69, 0x87) => StatusWord::SecureMessagingMissing,
            (0x69, 0x88) => StatusWord::SecureMessagingIncorrect,
            (0x69, 0x85) => StatusWord::ConditionsNotSatisfied,
            (0x6A, 0x80) => StatusWord::IncorrectData,
            (0x6A, 0x81) => StatusWord::FunctionNotSupported,
            (0x6A, 0x82) => StatusWord::NotFound,
            (0x6A, 0x86) => StatusWord::IncorrectP1P2,
            (0x6A, 0x88) => StatusWord::ReferencedDataNotFound,
            (0x6B, 0x00) => StatusWord::WrongP1P2,
            (0x6C, n) => StatusWord::WrongLe(n),
            (0x6D, 0x00) => StatusWord::InsNotSupported,
            (0x6E, 0x00) => StatusWord::ClaNotSupported,
            (0x6F, 0x00) => StatusWord::NoPreciseDiagnosis,
            _ => StatusWord::Other(sw),
        }
    }

    pub fn to_u16(self) -> u16 {
        match self {
            StatusWord::Ok => 0x9000,
            StatusWord::MoreData(n) => 0x6100 | u16::from(n),
            StatusWord::VerifyFailed(n) => 0x63C0 | u16::from(n & 0x0F),
            StatusWord::MemoryFailure => 0x6581,
            StatusWord::WrongLength => 0x6700,
            StatusWord::SecureMessagingNotSupported => 0x6882,
            StatusWord::LastCommandExpected => 0x6883,
            StatusWord::ChainingNotSupported => 0x6884,
            StatusWord::SecurityNotSatisfied => 0x6982,
            StatusWord::AuthenticationBlocked => 0x6983,
            StatusWord::SecureMessagingMissing => 0x6987,
            StatusWord::SecureMessagingIncorrect => 0x6988,
            StatusWord::ConditionsNotSatisfied => 0x6985,
            StatusWord::IncorrectData => 0x6A80,
            StatusWord::FunctionNotSupported => 0x6A81,
            StatusWord::NotFound => 0x6A82,
            StatusWord::IncorrectP1P2 => 0x6A86,
            StatusWord::ReferencedDataNotFound => 0x6A88,
            StatusWord::WrongP1P2 => 0x6B00,
            StatusWord::WrongLe(n) => 0x6C00 | u16::from(n),
            StatusWord::InsNotSupported => 0x6D00,
            StatusWord::ClaNotSupported => 0x6E00,
            StatusWord::NoPreciseDiagnosis => 0x6F00,
            StatusWord::Other(sw) => sw,
        }
    }

    pub fn is_ok(self) -> bool {
        self == StatusWord::Ok
    }
}

impl fmt::Display for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X}", self.to_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn parses_the_seven_cases() {
        let c = Command::parse(&h("00A40400")).unwrap();
        assert_eq!((c.data.len(), c.le), (0, None));
        let c = Command::parse(&h("00CA000100")).unwrap();
        assert_eq!(c.le, Some(256));
        let c = Command::parse(&h("00A4040003A0B0C0")).unwrap();
        assert_eq!((c.data, c.le), (h("A0B0C0"), None));
        let c = Command::parse(&h("00A4040003A0B0C010")).unwrap();
        assert_eq!((c.data, c.le), (h("A0B0C0"), Some(16)));
        let c = Command::parse(&h("00CA0001 000000")).unwrap();
        assert_eq!(c.le, Some(65_536));
        let c = Command::parse(&h("002A9E9A 000003 010203")).unwrap();
        assert_eq!((c.data, c.le), (h("010203"), None));
        let c = Command::parse(&h("002A9E9A 000003 010203 0100")).unwrap();
        assert_eq!((c.data, c.le), (h("010203"), Some(256)));
    }

    #[test]
    fn refuses_malformed_commands() {
        for bad in [
            "",
            "00",
            "00A404",
            "00A4040005A0",
            "00A4040001A0B0C0",
            "00A40400 000005 01",
            "00A40400 0000",
        ] {
            assert!(Command::parse(&h(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn encodes_short_and_extended() {
        let c = Command::new(0, 0xA4, 4, 0)
            .with_data(h("A0B0"))
            .with_le(256);
        assert_eq!(c.encode(), h("00A4040002A0B000"));
        let c = Command::new(0, 0x2A, 0x9E, 0x9A)
            .with_data(vec![7; 300])
            .with_le(65_536);
        let e = c.encode();
        assert_eq!(&e[..7], &h("002A9E9A00012C"));
        assert_eq!(&e[e.len() - 2..], &[0, 0]);
        assert_eq!(Command::parse(&e).unwrap(), c);
    }

    #[test]
    fn chains_long_data() {
        let c = Command::new(0, 0x2A, 0x9E, 0x9A)
            .with_data(vec![1; 600])
            .with_le(256);
        let chain = c.clone().into_chain(255);
        assert_eq!(chain.len(), 3);
        assert!(chain[0].is_chained() && chain[1].is_chained() && !chain[2].is_chained());
        assert_eq!(chain[0].le, None);
        assert_eq!(chain[2].le, Some(256));
        let joined: Vec<u8> = chain.iter().flat_map(|c| c.data.clone()).collect();
        assert_eq!(joined, c.data);
    }

    #[test]
    fn status_words_round_trip() {
        for sw in [
            0x9000u16, 0x6110, 0x63C2, 0x6983, 0x6987, 0x6988, 0x6A82, 0x6C05, 0x6D00, 0x6E00,
            0x1234,
        ] {
            assert_eq!(StatusWord::from_u16(sw).to_u16(), sw);
        }
        assert_eq!(StatusWord::from_u16(0x63C2), StatusWord::VerifyFailed(2));
        assert_eq!(
            Response::parse(&h("0102 9000")).unwrap(),
            Response::ok(h("0102"))
        );
        assert!(Response::parse(&h("90")).is_err());
    }

    prop_compose! {
        fn command()(cla in any::<u8>(), ins in any::<u8>(), p1 in any::<u8>(), p2 in any::<u8>(),
                     data in proptest::collection::vec(any::<u8>(), 0..700),
                     le in proptest::option::of(1usize..=65_536)) -> Command {
            Command { cla, ins, p1, p2, data, le }
        }
    }

    proptest! {
        #[test]
        fn parse_of_encode_is_identity(c in command()) {
            prop_assert_eq!(Command::parse(&c.encode()).unwrap(), c);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(c) = Command::parse(&bytes) {
                // Whatever parses re-encodes to a command with the same meaning.
                prop_assert_eq!(Command::parse(&c.encode()).unwrap(), c);
            }
        }
    }
}

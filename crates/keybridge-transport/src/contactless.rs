//! What NFC needs before PC/SC: contactless ATRs and frame sizes. IO-free.
//!
//! A contactless card has no ATR of its own; the PC/SC reader builds one
//! (PC/SC Specification Part 3, §3.1.3.2.3) so applications can tell cards
//! apart:
//!
//! ```text
//! storage card (ISO 14443-3, FeliCa, …):
//!   3B 8F 80 01 | 80 4F 0C A0 00 00 03 06 SS NN NN 00 00 00 00 | TCK
//!                 ^ category, AID tag+len, PC/SC RID, standard SS, card name NN NN, RFU
//! ISO 14443-4 card (smart card: type A's ATS historical bytes, or type B's
//! ATQB application data + protocol info + MBLI):
//!   3B 8n 80 01 | n historical bytes | TCK
//! ```
//!
//! `T0 = 8n` says: TD1 present, `n` historical bytes; `TD1 = 80`: TD2
//! present, T=0 indicated; `TD2 = 01`: T=1; TCK makes the XOR of T0..TCK zero.
//!
//! Whether a command goes as one extended APDU or as a chain of short ones
//! depends on the card: the historical bytes' card-capabilities object
//! (ISO/IEC 7816-4 §12.1.1.9, compact tag `7`, third software function table:
//! `b7` extended Lc/Le, `b8` command chaining) and, when the card has it, the
//! extended length information DO `7F66` (§12.7.1: two `02` INTEGERs, the
//! largest command and response the card takes). [`CardLimits::plan`] makes
//! the decision; [`CardLimits::transmit_options`] turns it into
//! [`TransmitOptions`].

use crate::apdu::SHORT_DATA_LEN_MAX;
use crate::channel::TransmitOptions;

const TS_DIRECT: u8 = 0x3B;
const TD1_T0_MORE: u8 = 0x80;
const TD2_T1: u8 = 0x01;
/// Category indicator + application identifier tag and length, PC/SC RID.
const STORAGE_PREFIX: [u8; 8] = [0x80, 0x4F, 0x0C, 0xA0, 0x00, 0x00, 0x03, 0x06];
/// Compact-TLV tag of the card capabilities (ISO/IEC 7816-4 §12.1.1.9).
const TAG_CARD_CAPABILITIES: u8 = 0x7;
const CAPABILITY_CHAINING: u8 = 0x80;
const CAPABILITY_EXTENDED: u8 = 0x40;
/// Tag of the extended length information DO.
pub const TAG_EXTENDED_LENGTH_INFO: [u8; 2] = [0x7F, 0x66];

/// Why bytes are not a contactless ATR, or a `7F66` not one we can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContactlessError {
    #[error("not a PC/SC part 3 contactless ATR")]
    NotContactless,
    #[error("ATR length does not match its T0")]
    Length,
    #[error("ATR check byte TCK is wrong")]
    Checksum,
    #[error("extended length information (7F66) malformed")]
    ExtendedLengthInfo,
}

/// The standard byte SS of a storage card's ATR (PC/SC part 3, supplement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageStandard {
    Iso14443APart3,
    Iso14443BPart3,
    Iso15693Part3,
    FeliCa,
    Other(u8),
}

impl StorageStandard {
    fn from_byte(b: u8) -> StorageStandard {
        match b {
            0x03 => StorageStandard::Iso14443APart3,
            0x07 => StorageStandard::Iso14443BPart3,
            0x0B => StorageStandard::Iso15693Part3,
            0x11 => StorageStandard::FeliCa,
            other => StorageStandard::Other(other),
        }
    }
}

/// What the reader's ATR says about the card in the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactlessAtr {
    /// A memory card (MIFARE Classic/Ultralight, FeliCa, …): no APDUs of its
    /// own, so no KeyBridge applet. `name` is PC/SC's card name (e.g. `0001`
    /// MIFARE Classic 1K, `0003` Ultralight).
    Storage {
        standard: StorageStandard,
        name: u16,
    },
    /// An ISO 14443-4 smart card: it speaks APDUs; its historical bytes may
    /// tell its capabilities.
    Iso14443_4 { historical: Vec<u8> },
}

impl ContactlessAtr {
    pub fn parse(atr: &[u8]) -> Result<ContactlessAtr, ContactlessError> {
        let [ts, t0, td1, td2, rest @ ..] = atr else {
            return Err(ContactlessError::NotContactless);
        };
        if *ts != TS_DIRECT || t0 & 0xF0 != 0x80 || *td1 != TD1_T0_MORE || *td2 != TD2_T1 {
            return Err(ContactlessError::NotContactless);
        }
        let n = usize::from(t0 & 0x0F);
        if rest.len() != n + 1 {
            return Err(ContactlessError::Length);
        }
        // XOR of T0 through TCK is zero.
        if atr[1..].iter().fold(0u8, |x, b| x ^ b) != 0 {
            return Err(ContactlessError::Checksum);
        }
        let historical = &rest[..n];
        if let Some(tail) = historical.strip_prefix(&STORAGE_PREFIX[..]) {
            if let [ss, n1, n2, 0, 0, 0, 0] = tail {
                return Ok(ContactlessAtr::Storage {
                    standard: StorageStandard::from_byte(*ss),
                    name: u16::from_be_bytes([*n1, *n2]),
                });
            }
            return Err(ContactlessError::Length);
        }
        Ok(ContactlessAtr::Iso14443_4 {
            historical: historical.to_vec(),
        })
    }

    /// Whether the card can run an applet at all.
    pub fn speaks_apdus(&self) -> bool {
        matches!(self, ContactlessAtr::Iso14443_4 { .. })
    }

    /// The third software function table of the card capabilities, if the
    /// historical bytes are compact-TLV (category indicator `80`) and have one.
    pub fn card_capabilities(&self) -> Option<u8> {
        let ContactlessAtr::Iso14443_4 { historical } = self else {
            return None;
        };
        let mut objects: &[u8] = historical.strip_prefix(&[0x80])?;
        // Compact-TLV: one byte tag (high nibble) + length (low nibble).
        while let [tl, rest @ ..] = objects {
            let (tag, len) = (tl >> 4, usize::from(tl & 0x0F));
            let value = rest.get(..len)?;
            if tag == TAG_CARD_CAPABILITIES {
                return value.get(2).copied();
            }
            objects = &rest[len..];
        }
        None
    }
}

/// What the phone knows of the card's frame sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CardLimits {
    pub extended_length: bool,
    pub chaining: bool,
    /// From `7F66`: the largest command APDU and response the card takes.
    pub command_len_max: Option<usize>,
    pub response_len_max: Option<usize>,
}

/// How to send a command of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePlan {
    /// One short APDU (data ≤ 255).
    Short,
    /// One extended APDU.
    Extended,
    /// A chain of short APDUs.
    Chained,
    /// Neither fits: the card cannot take this command.
    TooLarge,
}

impl CardLimits {
    /// What the ATR tells. A card whose historical bytes say nothing is
    /// assumed to chain (ISO/IEC 7816-4 allows it everywhere; the KeyBridge
    /// applet's dispatcher does) but not to take extended APDUs.
    pub fn from_atr(atr: &ContactlessAtr) -> CardLimits {
        match atr.card_capabilities() {
            Some(caps) => CardLimits {
                extended_length: caps & CAPABILITY_EXTENDED != 0,
                chaining: caps & CAPABILITY_CHAINING != 0,
                ..CardLimits::default()
            },
            None => CardLimits {
                extended_length: false,
                chaining: atr.speaks_apdus(),
                ..CardLimits::default()
            },
        }
    }

    /// Adds what a `7F66` DO (tag and length included, or its value alone)
    /// says: the card takes extended APDUs up to these sizes.
    pub fn with_extended_length_info(
        mut self,
        do_7f66: &[u8],
    ) -> Result<CardLimits, ContactlessError> {
        let value = match do_7f66 {
            [0x7F, 0x66, len, rest @ ..] if usize::from(*len) == rest.len() => rest,
            other => other,
        };
        let mut sizes = [0usize; 2];
        let mut rest = value;
        for size in sizes.iter_mut() {
            let [0x02, len, tail @ ..] = rest else {
                return Err(ContactlessError::ExtendedLengthInfo);
            };
            let len = usize::from(*len);
            if len == 0 || len > 3 || tail.len() < len {
                return Err(ContactlessError::ExtendedLengthInfo);
            }
            *size = tail[..len]
                .iter()
                .fold(0usize, |n, b| (n << 8) | usize::from(*b));
            rest = &tail[len..];
        }
        // A third INTEGER (response size with SM) may follow; we do not use it.
        self.extended_length = sizes[0] > SHORT_DATA_LEN_MAX + 5;
        self.command_len_max = Some(sizes[0]);
        self.response_len_max = Some(sizes[1]);
        Ok(self)
    }

    /// How to send a command with `data_len` bytes of data. Extended when
    /// the card takes it and the whole APDU (header, 3-byte Lc, data, 2-byte
    /// Le) fits its announced maximum; otherwise chaining; short when it fits.
    pub fn plan(&self, data_len: usize) -> FramePlan {
        if data_len <= SHORT_DATA_LEN_MAX {
            return FramePlan::Short;
        }
        let extended_apdu_len = 4 + 3 + data_len + 2;
        if self.extended_length
            && self
                .command_len_max
                .is_none_or(|max| extended_apdu_len <= max)
        {
            return FramePlan::Extended;
        }
        if self.chaining {
            return FramePlan::Chained;
        }
        FramePlan::TooLarge
    }

    /// The [`TransmitOptions`] for a command of `data_len` bytes, or `None`
    /// when the card cannot take it.
    pub fn transmit_options(&self, data_len: usize) -> Option<TransmitOptions> {
        let extended_length = match self.plan(data_len) {
            FramePlan::TooLarge => return None,
            FramePlan::Extended => true,
            FramePlan::Short | FramePlan::Chained => false,
        };
        let mut options = TransmitOptions {
            extended_length,
            ..TransmitOptions::default()
        };
        if let Some(max) = self.response_len_max {
            options.response_len_max = options.response_len_max.min(max.max(256));
        }
        Some(options)
    }
}

/// How to frame commands for the card behind a PC/SC reader, decided from
/// the ATR the reader reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtrFraming {
    /// A contact card, or an ATR that is not a well-formed PC/SC part 3
    /// contactless one: long commands are chained (not every reader and
    /// card takes extended APDUs).
    Contact,
    /// A contactless card: its announced capabilities decide.
    Contactless {
        atr: ContactlessAtr,
        limits: CardLimits,
    },
}

impl AtrFraming {
    /// Reads `atr`: contactless when [`ContactlessAtr::parse`] accepts it.
    pub fn from_atr(atr: &[u8]) -> AtrFraming {
        match ContactlessAtr::parse(atr) {
            Ok(parsed) => AtrFraming::Contactless {
                limits: CardLimits::from_atr(&parsed),
                atr: parsed,
            },
            Err(_) => AtrFraming::Contact,
        }
    }

    /// The options for a command of `data_len` bytes. When the card can take
    /// it neither whole nor chained ([`FramePlan::TooLarge`]) the command is
    /// chained anyway and the card's status word tells the refusal.
    pub fn transmit_options(&self, data_len: usize) -> TransmitOptions {
        let chained = TransmitOptions {
            extended_length: false,
            ..TransmitOptions::default()
        };
        match self {
            AtrFraming::Contact => chained,
            AtrFraming::Contactless { limits, .. } => {
                limits.transmit_options(data_len).unwrap_or(chained)
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
    fn storage_cards_are_recognised_and_not_smart_cards() {
        // MIFARE Classic 1K as PC/SC readers report it (TCK 6A).
        let atr = ContactlessAtr::parse(&h("3B8F8001804F0CA000000306030001000000006A")).unwrap();
        assert_eq!(
            atr,
            ContactlessAtr::Storage {
                standard: StorageStandard::Iso14443APart3,
                name: 0x0001
            }
        );
        assert!(!atr.speaks_apdus());
        assert_eq!(CardLimits::from_atr(&atr).plan(300), FramePlan::TooLarge);
        assert_eq!(CardLimits::from_atr(&atr).plan(10), FramePlan::Short);
        // FeliCa (standard 11, name F011).
        let atr =
            ContactlessAtr::parse(&with_tck("3B8F8001804F0CA000000306 11 F011 00000000")).unwrap();
        assert_eq!(
            atr,
            ContactlessAtr::Storage {
                standard: StorageStandard::FeliCa,
                name: 0xF011
            }
        );
    }

    #[test]
    fn iso14443_4_cards_carry_their_historical_bytes() {
        // A YubiKey 5 NFC over a PC/SC reader: 3B 8D 80 01 + its ATS historical
        // bytes: 80 | 73 C0 21 C0 (capabilities: chaining, extended) | 57 "YubiKey".
        let atr = ContactlessAtr::parse(&h("3B8D80018073C021C057597562694B6579F9")).unwrap();
        assert!(atr.speaks_apdus());
        assert_eq!(atr.card_capabilities(), Some(0xC0));
        let limits = CardLimits::from_atr(&atr);
        assert_eq!(limits.plan(600), FramePlan::Extended);
        // Historical bytes that are not compact-TLV say nothing: chain, and
        // never send an extended APDU to a card that did not announce it.
        let atr = ContactlessAtr::parse(&with_tck("3B88 8001 0000000000000000")).unwrap();
        assert_eq!(atr.card_capabilities(), None);
        let limits = CardLimits::from_atr(&atr);
        assert_eq!(limits.plan(100), FramePlan::Short);
        assert_eq!(limits.plan(600), FramePlan::Chained);
    }

    fn with_tck(hex: &str) -> Vec<u8> {
        let mut bytes = h(hex);
        let tck = bytes[1..].iter().fold(0, |x, b| x ^ b);
        bytes.push(tck);
        bytes
    }

    #[test]
    fn card_capabilities_decide_extended_or_chaining() {
        // Historical bytes: 80 | 73 (tag 7, 3 bytes) 00 00 C0 (chaining + extended).
        let atr = ContactlessAtr::parse(&with_tck("3B8580018073 0000C0")).unwrap_or_else(|e| {
            panic!("{e}");
        });
        assert_eq!(atr.card_capabilities(), Some(0xC0));
        let limits = CardLimits::from_atr(&atr);
        assert!(limits.extended_length && limits.chaining);
        assert_eq!(limits.plan(600), FramePlan::Extended);
        assert!(limits.transmit_options(600).unwrap().extended_length);
        // Chaining only (80).
        let atr = ContactlessAtr::parse(&with_tck("3B8580018073 000080")).unwrap();
        let limits = CardLimits::from_atr(&atr);
        assert_eq!(limits.plan(600), FramePlan::Chained);
        assert!(!limits.transmit_options(600).unwrap().extended_length);
        // Neither: only short commands.
        let atr = ContactlessAtr::parse(&with_tck("3B8580018073 000000")).unwrap();
        assert_eq!(CardLimits::from_atr(&atr).plan(600), FramePlan::TooLarge);
        assert!(CardLimits::from_atr(&atr).transmit_options(600).is_none());
    }

    #[test]
    fn extended_length_info_bounds_extended_apdus() {
        // 7F66 08 | 02 02 0400 (1024-byte commands) | 02 02 0800 (2048-byte responses)
        let limits = CardLimits {
            chaining: true,
            ..CardLimits::default()
        }
        .with_extended_length_info(&h("7F6608 02020400 02020800"))
        .unwrap();
        assert_eq!(limits.command_len_max, Some(1024));
        assert_eq!(limits.response_len_max, Some(2048));
        assert_eq!(limits.plan(1000), FramePlan::Extended);
        // 1020 data bytes make a 1029-byte APDU: over the card's limit, so chain.
        assert_eq!(limits.plan(1020), FramePlan::Chained);
        assert_eq!(limits.transmit_options(300).unwrap().response_len_max, 2048);
        for bad in ["7F6602 0200", "0201", "02040000000002020800", ""] {
            assert!(
                CardLimits::default()
                    .with_extended_length_info(&h(bad))
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_atrs_are_errors() {
        for bad in [
            "",
            "3B",
            "3B00",
            "3F8F8001",
            "3B8F8101",
            "3B8580018073 0000C0",       // missing TCK
            "3B8580018073 0000C0 00 00", // one byte too many
        ] {
            assert!(ContactlessAtr::parse(&h(bad)).is_err(), "{bad}");
        }
        let mut bad_tck = with_tck("3B8580018073 0000C0");
        *bad_tck.last_mut().unwrap() ^= 1;
        assert_eq!(
            ContactlessAtr::parse(&bad_tck),
            Err(ContactlessError::Checksum)
        );
    }

    #[test]
    fn atr_framing_from_published_atrs() {
        // YubiKey 5 NFC (capabilities C0): one extended APDU.
        let yubikey = AtrFraming::from_atr(&h("3B8D80018073C021C057597562694B6579F9"));
        assert!(matches!(yubikey, AtrFraming::Contactless { .. }));
        assert!(yubikey.transmit_options(600).extended_length);
        assert!(!yubikey.transmit_options(100).extended_length);
        // Capabilities 80: chaining only.
        let chaining = AtrFraming::from_atr(&with_tck("3B8580018073 000080"));
        assert!(!chaining.transmit_options(600).extended_length);
        // No capabilities in the historical bytes: chained.
        let silent = AtrFraming::from_atr(&with_tck("3B88 8001 0000000000000000"));
        assert!(!silent.transmit_options(600).extended_length);
        // MIFARE Classic 1K (storage): recognised, never extended.
        let mifare = AtrFraming::from_atr(&h("3B8F8001804F0CA000000306030001000000006A"));
        assert!(matches!(
            mifare,
            AtrFraming::Contactless {
                atr: ContactlessAtr::Storage { .. },
                ..
            }
        ));
        assert!(!mifare.transmit_options(600).extended_length);
        // A contact ATR (KeyBridge's virtual card: T=1, TA3/TB3) and garbage:
        // contact framing, chained.
        for contact in [
            "3B8E8131FE1580594B6579427269646765829000 76",
            "3B8580018073 0000C0", // contactless-looking but no TCK
            "",
        ] {
            let framing = AtrFraming::from_atr(&h(contact));
            assert_eq!(framing, AtrFraming::Contact, "{contact}");
            assert!(!framing.transmit_options(600).extended_length);
        }
    }
}

//! The card's Answer To Reset (ISO/IEC 7816-3 §8).
//!
//! ```text
//! 3B              TS   direct convention
//! 8E              T0   TD1 follows; 14 historical bytes
//! 81              TD1  TD2 follows; protocol T=1
//! 31              TD2  TA3 and TB3 follow; protocol T=1
//! FE              TA3  IFSC = 254 bytes
//! 15              TB3  BWI = 1, CWI = 5
//! 80              historical bytes: category 80 = COMPACT-TLV objects follow (ISO/IEC 7816-4 §12.1.1)
//! 59 "KeyBridge"  compact TLV tag 5 (card issuer's data), 9 bytes
//! 82 90 00        compact TLV tag 8 (status indicator), 2 bytes: SW 9000
//! 76              TCK  XOR of T0 through the last historical byte
//! ```
//!
//! T=1 only, so TCK is present. pcscd asks for this ATR every ~0.3 s to see
//! whether the card is still there; the shell answers it at any time.

/// The ATR the virtual card answers to every get-ATR request.
pub const ATR: [u8; 21] = [
    0x3B, 0x8E, 0x81, 0x31, 0xFE, 0x15, // TS T0 TD1 TD2 TA3 TB3
    0x80, // category indicator
    0x59, b'K', b'e', b'y', b'B', b'r', b'i', b'd', b'g', b'e', // issuer's data
    0x82, 0x90, 0x00, // status indicator
    0x76, // TCK
];

/// The ATR an NFC reader reports for the card in its field (`--link
/// nfc=…`): a contactless card has none of its own, so the reader builds
/// one (PC/SC Specification Part 3, §3.1.3.2.3) from the ISO 14443-4 card's
/// ATS historical bytes:
///
/// ```text
/// 3B              TS
/// 8F              T0   TD1 follows; 15 historical bytes
/// 80              TD1  TD2 follows; T=0 indicated
/// 01              TD2  T=1
/// 80              historical bytes: category 80 = COMPACT-TLV objects follow
/// 73 C0 21 C0     compact TLV tag 7 (card capabilities), 3 bytes; the third
///                 software function table C0: command chaining and
///                 extended Lc/Le (ISO/IEC 7816-4 §12.1.1.9), as a YubiKey 5 NFC
/// 59 "KeyBridge"  compact TLV tag 5 (card issuer's data), 9 bytes
/// ED              TCK
/// ```
pub const CONTACTLESS_ATR: [u8; 20] = [
    0x3B, 0x8F, 0x80, 0x01, // TS T0 TD1 TD2
    0x80, // category indicator
    0x73, 0xC0, 0x21, 0xC0, // card capabilities
    0x59, b'K', b'e', b'y', b'B', b'r', b'i', b'd', b'g', b'e', // issuer's data
    0xED, // TCK
];

#[cfg(test)]
mod tests {
    use super::*;
    use keybridge_transport::contactless::{AtrFraming, ContactlessAtr};

    /// The ATR is self-consistent: T0 announces exactly the historical bytes
    /// that follow the interface bytes, and TCK makes the XOR of T0..=TCK zero.
    #[test]
    fn atr_is_well_formed() {
        assert_eq!(ATR[0], 0x3B);
        let historical_len = usize::from(ATR[1] & 0x0F);
        let interface_len = 4; // TD1 TD2 TA3 TB3
        assert_eq!(ATR.len(), 2 + interface_len + historical_len + 1);
        assert_eq!(ATR[1..].iter().fold(0u8, |acc, b| acc ^ b), 0, "TCK");
        assert_eq!(&ATR[8..17], b"KeyBridge");
    }

    /// What a phone's PC/SC stack makes of the NFC ATR: an ISO 14443-4 card
    /// that takes extended APDUs and chaining; the contact ATR is no
    /// contactless one.
    #[test]
    fn the_contactless_atr_reads_as_an_iso_14443_4_card_with_extended_apdus() {
        let parsed = ContactlessAtr::parse(&CONTACTLESS_ATR).unwrap();
        assert!(parsed.speaks_apdus());
        assert_eq!(parsed.card_capabilities(), Some(0xC0));
        assert!(matches!(
            AtrFraming::from_atr(&CONTACTLESS_ATR),
            AtrFraming::Contactless { .. }
        ));
        assert!(
            AtrFraming::from_atr(&CONTACTLESS_ATR)
                .transmit_options(1_000)
                .extended_length
        );
        assert!(ContactlessAtr::parse(&ATR).is_err());
    }
}

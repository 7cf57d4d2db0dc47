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

#[cfg(test)]
mod tests {
    use super::*;

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
}

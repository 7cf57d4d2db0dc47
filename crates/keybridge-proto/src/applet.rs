//! The KeyBridge transaction applet's interface, shared by the card that answers
//! it and the relay that drives it. Status words are ISO/IEC 7816-4 §5.6.
//!
//! | command          | CLA INS P1 P2 | data               | response                         |
//! |------------------|---------------|--------------------|----------------------------------|
//! | SELECT           | 00 A4 04 00   | [`AID`]            | version (1 byte)                 |
//! | VERIFY           | 00 20 00 80   | PIN, ASCII digits  | `9000`, `63Cx`, `6983` blocked   |
//! | VERIFY (query)   | 00 20 00 80   | none               | `9000` verified, else `63Cx`     |
//! | GENERATE KEY     | 00 47 00 00   | none               | 65-byte SEC1 public key          |
//! | GET DATA         | 00 CA 00 xx   | none               | object `xx` (see `OBJ_*`)        |
//! | PUT DATA         | 00 DA 00 02   | certificate DER    | none                             |
//! | SIGN TRANSACTION | 00 2A 9E 9A   | confirmation payload | counter (u32 BE) ‖ DER signature |
//! | SIGN CSR         | 00 2A 9E 10   | CertificationRequestInfo (DER) | DER ECDSA signature     |
//! | PUT DATA OCRA    | 00 DA 00 04   | [`ocra_put_data`]: suite length ‖ suite ‖ key | none     |
//! | OCRA RESPONSE    | 00 88 00 00   | confirmation payload | [`OcraAnswer`]: C ‖ T ‖ response |
//!
//! GENERATE KEY, PUT DATA, SIGN TRANSACTION, SIGN CSR, PUT DATA OCRA and OCRA
//! RESPONSE need the PIN. A verified PIN is good for exactly one SIGN
//! TRANSACTION, SIGN CSR or OCRA RESPONSE: each needs the PIN again.
//! SIGN answers `6985` when the holder declines on the device, `6A80` when the
//! payload does not parse, `6A88` when no key has been generated.
//!
//! SIGN CSR signs SHA-256 of the data with the payment key, but only if the
//! data is exactly a PKCS#10 `CertificationRequestInfo` carrying the card's
//! own public key ([`crate::csr::check_request_info`]); anything else is `6A80`,
//! so the instruction cannot be used to sign a payment message.
//!
//! OCRA RESPONSE (ISO 7816-4 INTERNAL AUTHENTICATE: a response computed from
//! a challenge) shows the payload like SIGN TRANSACTION, asks the holder, and
//! answers an RFC 6287 response with the suite PUT DATA OCRA stored, over the
//! question [`crate::ocra::payload_question`] (SHA-256 of the payload, hex),
//! the next counter (spent and saved first, shared with SIGN TRANSACTION) if
//! the suite has C, and the time step of the host's time if it has T.
//! `6A88` when no OCRA secret was stored.

/// Proprietary AID (ISO/IEC 7816-5 category `F`): `F0` "KBRIDGE" version 1.
pub const AID: [u8; 9] = [0xF0, 0x4B, 0x42, 0x52, 0x49, 0x44, 0x47, 0x45, 0x01];

pub const INS_SELECT: u8 = 0xA4;
pub const INS_VERIFY: u8 = 0x20;
pub const INS_GENERATE_KEY: u8 = 0x47;
pub const INS_GET_DATA: u8 = 0xCA;
pub const INS_PUT_DATA: u8 = 0xDA;
pub const INS_SIGN: u8 = 0x2A;
/// INTERNAL AUTHENTICATE: OCRA RESPONSE.
pub const INS_OCRA_RESPONSE: u8 = 0x88;

pub const P2_PIN: u8 = 0x80;
pub const P1_SIGN: u8 = 0x9E;
pub const P2_SIGN: u8 = 0x9A;
/// SIGN CSR: P1 = [`P1_SIGN`], P2 = this.
pub const P2_SIGN_CSR: u8 = 0x10;

/// GET DATA: the card's public key, 65 bytes SEC1 uncompressed.
pub const OBJ_PUBLIC_KEY: u8 = 0x01;
/// GET DATA / PUT DATA: the card's X.509 certificate, DER.
pub const OBJ_CERTIFICATE: u8 = 0x02;
/// GET DATA: [`CardStatus`] (6 bytes).
pub const OBJ_STATUS: u8 = 0x03;
/// PUT DATA: the OCRA suite and secret ([`ocra_put_data`]); never readable.
pub const OBJ_OCRA: u8 = 0x04;

pub const PIN_LEN_MIN: usize = 4;
pub const PIN_LEN_MAX: usize = 8;

/// The applet's status object: what a relay needs before asking for a PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardStatus {
    /// The last signature counter used; the next signature uses `counter + 1`.
    pub counter: u32,
    pub pin_retries_left: u8,
    pub pin_retries_max: u8,
    pub has_key: bool,
}

impl CardStatus {
    pub const ENCODED_LEN: usize = 7;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let c = self.counter.to_be_bytes();
        [
            c[0],
            c[1],
            c[2],
            c[3],
            self.pin_retries_left,
            self.pin_retries_max,
            u8::from(self.has_key),
        ]
    }

    pub fn decode(bytes: &[u8]) -> Option<CardStatus> {
        let b: [u8; Self::ENCODED_LEN] = bytes.try_into().ok()?;
        Some(CardStatus {
            counter: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            pin_retries_left: b[4],
            pin_retries_max: b[5],
            has_key: b[6] == 1,
        })
    }
}

/// Whether `pin` has the shape the applet accepts: 4 to 8 ASCII digits.
pub fn pin_is_well_formed(pin: &[u8]) -> bool {
    (PIN_LEN_MIN..=PIN_LEN_MAX).contains(&pin.len()) && pin.iter().all(u8::is_ascii_digit)
}

/// Splits a SIGN TRANSACTION answer into its counter and DER signature.
pub fn split_signature_response(data: &[u8]) -> Option<(u32, &[u8])> {
    if data.len() < 4 + 8 {
        return None;
    }
    let (counter, signature) = data.split_at(4);
    Some((u32::from_be_bytes(counter.try_into().ok()?), signature))
}

/// PUT DATA OCRA's data: suite length (1 byte) ‖ suite (ASCII) ‖ secret.
pub fn ocra_put_data(suite: &str, secret: &[u8]) -> Option<Vec<u8>> {
    let len = u8::try_from(suite.len()).ok()?;
    let mut out = Vec::with_capacity(1 + suite.len() + secret.len());
    out.push(len);
    out.extend_from_slice(suite.as_bytes());
    out.extend_from_slice(secret);
    Some(out)
}

/// Splits PUT DATA OCRA's data into suite text and secret.
pub fn split_ocra_put_data(data: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = data.split_first()?;
    let (suite, secret) = rest.split_at_checked(usize::from(len))?;
    Some((std::str::from_utf8(suite).ok()?, secret))
}

/// OCRA RESPONSE's answer: the counter and time step used (0 when the suite
/// has none) and the response digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcraAnswer {
    pub counter: u64,
    pub time_step: u64,
    pub response: String,
}

impl OcraAnswer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.response.len());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&self.time_step.to_be_bytes());
        out.extend_from_slice(self.response.as_bytes());
        out
    }

    pub fn decode(data: &[u8]) -> Option<OcraAnswer> {
        let (c, rest) = data.split_at_checked(8)?;
        let (t, response) = rest.split_at_checked(8)?;
        let response = std::str::from_utf8(response).ok()?;
        if response.is_empty() || !response.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(OcraAnswer {
            counter: u64::from_be_bytes(c.try_into().ok()?),
            time_step: u64::from_be_bytes(t.try_into().ok()?),
            response: response.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        let s = CardStatus {
            counter: 0x0102_0304,
            pin_retries_left: 2,
            pin_retries_max: 3,
            has_key: true,
        };
        assert_eq!(CardStatus::decode(&s.encode()), Some(s));
        assert_eq!(CardStatus::decode(&[0; 6]), None);
    }

    #[test]
    fn ocra_formats_round_trip() {
        let data = ocra_put_data("OCRA-1:HOTP-SHA1-6:QN08", b"key").unwrap();
        assert_eq!(
            split_ocra_put_data(&data),
            Some(("OCRA-1:HOTP-SHA1-6:QN08", &b"key"[..]))
        );
        assert_eq!(split_ocra_put_data(&[5, b'a']), None);
        let a = OcraAnswer {
            counter: 7,
            time_step: 9,
            response: "01234567".into(),
        };
        assert_eq!(OcraAnswer::decode(&a.encode()), Some(a));
        assert_eq!(OcraAnswer::decode(&[0; 16]), None);
        assert_eq!(OcraAnswer::decode(&[0; 15]), None);
    }

    #[test]
    fn pins() {
        assert!(pin_is_well_formed(b"1234"));
        assert!(pin_is_well_formed(b"12345678"));
        assert!(!pin_is_well_formed(b"123"));
        assert!(!pin_is_well_formed(b"123456789"));
        assert!(!pin_is_well_formed(b"12a4"));
    }
}

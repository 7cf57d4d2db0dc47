//! The confirmation payload: what the security device shows and signs.
//!
//! ```text
//! 71 L                 KeyBridge confirmation payload (constructed)
//!   80 01 <version>    format version, currently 1
//!   81 L  origin       server identity, UTF-8, 1..=64 bytes (stops cross-server replay)
//!   82 10 <id>         transaction id, 16 random bytes
//!   83 20 <challenge>  32 random bytes, single use
//!   84 L  payer        payer account id
//!   85 L  payee        payee account id
//!   86 L  payee name   display name, UTF-8, 1..=64 bytes
//!   87 08 <amount>     minor units, u64 big-endian
//!   88 03 <currency>   ISO 4217 alphabetic code
//!   89 L  order id     UTF-8, 1..=64 bytes
//!   8A L  description  UTF-8, 0..=140 bytes
//!   8B 08 <created>    unix seconds, u64 big-endian
//!   8C 08 <expires>    unix seconds, u64 big-endian
//! ```
//!
//! Every field is required, in this order, once; nothing else may follow. Text
//! fields may not hold control or bidirectional-override characters, so what a
//! device displays is what it signs (no hidden line breaks, no reordered text).

use sha2::{Digest, Sha256};

use crate::tlv::{self, Reader, TlvError};
use crate::{AccountId, Challenge, Currency, Money, TransactionId};

pub const PAYLOAD_VERSION: u8 = 1;

const TAG_TEMPLATE: u16 = 0x71;
const TAG_VERSION: u16 = 0x80;
const TAG_ORIGIN: u16 = 0x81;
const TAG_TRANSACTION_ID: u16 = 0x82;
const TAG_CHALLENGE: u16 = 0x83;
const TAG_PAYER: u16 = 0x84;
const TAG_PAYEE: u16 = 0x85;
const TAG_PAYEE_NAME: u16 = 0x86;
const TAG_AMOUNT: u16 = 0x87;
const TAG_CURRENCY: u16 = 0x88;
const TAG_ORDER_ID: u16 = 0x89;
const TAG_DESCRIPTION: u16 = 0x8A;
const TAG_CREATED: u16 = 0x8B;
const TAG_EXPIRES: u16 = 0x8C;

/// Why bytes are not a valid confirmation payload, or a payload cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    #[error("malformed TLV: {0}")]
    Tlv(#[from] TlvError),
    #[error("payload is not a KeyBridge confirmation template")]
    NotATemplate,
    #[error("unsupported payload version {0}")]
    Version(u8),
    #[error("field {tag:#04x} missing or out of order")]
    MissingField { tag: u16 },
    #[error("field {tag:#04x} has a bad length or value")]
    BadField { tag: u16 },
    #[error("bytes follow the payload")]
    TrailingBytes,
    #[error("expiry is not after creation")]
    BadTimes,
}

/// A decoded confirmation payload. Construct with [`ConfirmationPayload::validate`]
/// semantics: [`ConfirmationPayload::encode`] refuses what `decode` would refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmationPayload {
    pub origin: String,
    pub transaction_id: TransactionId,
    pub challenge: Challenge,
    pub payer: AccountId,
    pub payee: AccountId,
    pub payee_name: String,
    pub amount: Money,
    pub order_id: String,
    pub description: String,
    pub created_at_unix_s: u64,
    pub expires_at_unix_s: u64,
}

impl ConfirmationPayload {
    pub const ORIGIN_LEN_MAX: usize = 64;
    pub const PAYEE_NAME_LEN_MAX: usize = 64;
    pub const ORDER_ID_LEN_MAX: usize = 64;
    /// Bounded so a card display can show it whole.
    pub const DESCRIPTION_LEN_MAX: usize = 140;
    /// Upper bound of an encoded payload, for buffers on cards and relays.
    pub const ENCODED_LEN_MAX: usize = 1024;

    /// Checks every field against the limits `decode` enforces.
    pub fn validate(&self) -> Result<(), PayloadError> {
        check_text(TAG_ORIGIN, &self.origin, 1, Self::ORIGIN_LEN_MAX)?;
        check_text(
            TAG_PAYEE_NAME,
            &self.payee_name,
            1,
            Self::PAYEE_NAME_LEN_MAX,
        )?;
        check_text(TAG_ORDER_ID, &self.order_id, 1, Self::ORDER_ID_LEN_MAX)?;
        check_text(
            TAG_DESCRIPTION,
            &self.description,
            0,
            Self::DESCRIPTION_LEN_MAX,
        )?;
        if self.expires_at_unix_s <= self.created_at_unix_s {
            return Err(PayloadError::BadTimes);
        }
        Ok(())
    }

    /// The canonical encoding. Fails only when a field is out of its bounds.
    pub fn encode(&self) -> Result<Vec<u8>, PayloadError> {
        self.validate()?;
        let mut body = Vec::with_capacity(512);
        tlv::write(&mut body, TAG_VERSION, &[PAYLOAD_VERSION]);
        tlv::write(&mut body, TAG_ORIGIN, self.origin.as_bytes());
        tlv::write(&mut body, TAG_TRANSACTION_ID, &self.transaction_id.0);
        tlv::write(&mut body, TAG_CHALLENGE, &self.challenge.0);
        tlv::write(&mut body, TAG_PAYER, self.payer.as_str().as_bytes());
        tlv::write(&mut body, TAG_PAYEE, self.payee.as_str().as_bytes());
        tlv::write(&mut body, TAG_PAYEE_NAME, self.payee_name.as_bytes());
        tlv::write(
            &mut body,
            TAG_AMOUNT,
            &self.amount.minor_units.to_be_bytes(),
        );
        tlv::write(&mut body, TAG_CURRENCY, &self.amount.currency.as_bytes());
        tlv::write(&mut body, TAG_ORDER_ID, self.order_id.as_bytes());
        tlv::write(&mut body, TAG_DESCRIPTION, self.description.as_bytes());
        tlv::write(
            &mut body,
            TAG_CREATED,
            &self.created_at_unix_s.to_be_bytes(),
        );
        tlv::write(
            &mut body,
            TAG_EXPIRES,
            &self.expires_at_unix_s.to_be_bytes(),
        );
        let mut out = Vec::with_capacity(body.len() + 4);
        tlv::write(&mut out, TAG_TEMPLATE, &body);
        debug_assert!(out.len() <= Self::ENCODED_LEN_MAX);
        Ok(out)
    }

    /// Decodes and validates untrusted bytes. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<ConfirmationPayload, PayloadError> {
        if bytes.len() > Self::ENCODED_LEN_MAX {
            return Err(PayloadError::NotATemplate);
        }
        let mut outer = Reader::new(bytes);
        let template = outer.next_tlv()?.ok_or(PayloadError::NotATemplate)?;
        if template.tag != TAG_TEMPLATE {
            return Err(PayloadError::NotATemplate);
        }
        if !outer.is_empty() {
            return Err(PayloadError::TrailingBytes);
        }
        let mut r = Fields(Reader::new(template.value));
        let version = r.fixed::<1>(TAG_VERSION)?[0];
        if version != PAYLOAD_VERSION {
            return Err(PayloadError::Version(version));
        }
        let origin = r.text(TAG_ORIGIN)?;
        let transaction_id = TransactionId(r.fixed(TAG_TRANSACTION_ID)?);
        let challenge = Challenge(r.fixed(TAG_CHALLENGE)?);
        let payer = r.account(TAG_PAYER)?;
        let payee = r.account(TAG_PAYEE)?;
        let payee_name = r.text(TAG_PAYEE_NAME)?;
        let minor_units = u64::from_be_bytes(r.fixed(TAG_AMOUNT)?);
        let currency = Currency::from_bytes(&r.fixed::<3>(TAG_CURRENCY)?)
            .map_err(|_| PayloadError::BadField { tag: TAG_CURRENCY })?;
        let order_id = r.text(TAG_ORDER_ID)?;
        let description = r.text(TAG_DESCRIPTION)?;
        let created_at_unix_s = u64::from_be_bytes(r.fixed(TAG_CREATED)?);
        let expires_at_unix_s = u64::from_be_bytes(r.fixed(TAG_EXPIRES)?);
        if !r.0.is_empty() {
            return Err(PayloadError::TrailingBytes);
        }
        let payload = ConfirmationPayload {
            origin,
            transaction_id,
            challenge,
            payer,
            payee,
            payee_name,
            amount: Money::new(minor_units, currency),
            order_id,
            description,
            created_at_unix_s,
            expires_at_unix_s,
        };
        payload.validate()?;
        Ok(payload)
    }

    /// SHA-256 of the canonical encoding, for PIV signing and OCRA questions.
    pub fn digest(encoded: &[u8]) -> [u8; 32] {
        Sha256::digest(encoded).into()
    }
}

/// The exact bytes the transaction applet signs: the payload, then the
/// signature counter as a big-endian u32. Binding the counter into the signature
/// means a relay cannot present an old signature with a fresher counter.
pub fn signed_message(payload: &[u8], counter: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(payload.len() + 4);
    m.extend_from_slice(payload);
    m.extend_from_slice(&counter.to_be_bytes());
    m
}

struct Fields<'a>(Reader<'a>);

impl<'a> Fields<'a> {
    fn field(&mut self, tag: u16) -> Result<&'a [u8], PayloadError> {
        match self.0.next_tlv()? {
            Some(t) if t.tag == tag => Ok(t.value),
            _ => Err(PayloadError::MissingField { tag }),
        }
    }

    fn fixed<const N: usize>(&mut self, tag: u16) -> Result<[u8; N], PayloadError> {
        self.field(tag)?
            .try_into()
            .map_err(|_| PayloadError::BadField { tag })
    }

    fn text(&mut self, tag: u16) -> Result<String, PayloadError> {
        let v = self.field(tag)?;
        std::str::from_utf8(v)
            .map(str::to_owned)
            .map_err(|_| PayloadError::BadField { tag })
    }

    fn account(&mut self, tag: u16) -> Result<AccountId, PayloadError> {
        let v = self.text(tag)?;
        AccountId::new(&v).map_err(|_| PayloadError::BadField { tag })
    }
}

fn check_text(tag: u16, s: &str, min: usize, max: usize) -> Result<(), PayloadError> {
    let bad_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if s.len() < min || s.len() > max || s.chars().any(bad_char) {
        return Err(PayloadError::BadField { tag });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> ConfirmationPayload {
        ConfirmationPayload {
            origin: "keybridge.example".into(),
            transaction_id: TransactionId([7; 16]),
            challenge: Challenge([9; 32]),
            payer: AccountId::new("alice").unwrap(),
            payee: AccountId::new("bookshop").unwrap(),
            payee_name: "Corner Bookshop".into(),
            amount: Money::new(1234, Currency::from_code("CNY").unwrap()),
            order_id: "ORD-1".into(),
            description: "Two books".into(),
            created_at_unix_s: 1_700_000_000,
            expires_at_unix_s: 1_700_000_120,
        }
    }

    #[test]
    fn encodes_to_the_documented_layout() {
        let bytes = sample().encode().unwrap();
        assert_eq!(&bytes[..2], &[0x71, 0x81]);
        assert_eq!(&bytes[3..6], &[0x80, 0x01, 0x01]);
        assert_eq!(ConfirmationPayload::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn a_changed_amount_or_payee_changes_the_bytes() {
        let base = sample().encode().unwrap();
        let mut p = sample();
        p.amount.minor_units += 1;
        assert_ne!(p.encode().unwrap(), base);
        let mut p = sample();
        p.payee = AccountId::new("mallory").unwrap();
        assert_ne!(p.encode().unwrap(), base);
    }

    #[test]
    fn refuses_what_a_display_could_misrender() {
        let mut p = sample();
        p.payee_name = "Shop\nPay mallory".into();
        assert_eq!(
            p.encode(),
            Err(PayloadError::BadField {
                tag: TAG_PAYEE_NAME
            })
        );
        p.payee_name = "Shop \u{202E}".into();
        assert!(p.encode().is_err());
        let mut p = sample();
        p.description = "x".repeat(141);
        assert!(p.encode().is_err());
    }

    #[test]
    fn refuses_trailing_bytes_version_and_unknown_currency() {
        let mut bytes = sample().encode().unwrap();
        bytes.push(0);
        assert_eq!(
            ConfirmationPayload::decode(&bytes),
            Err(PayloadError::TrailingBytes)
        );

        let mut bytes = sample().encode().unwrap();
        bytes[5] = 2;
        assert_eq!(
            ConfirmationPayload::decode(&bytes),
            Err(PayloadError::Version(2))
        );

        let bytes = sample().encode().unwrap();
        let cny = bytes.windows(3).position(|w| w == b"CNY").unwrap();
        let mut bad = bytes.clone();
        bad[cny..cny + 3].copy_from_slice(b"XXX");
        assert_eq!(
            ConfirmationPayload::decode(&bad),
            Err(PayloadError::BadField { tag: TAG_CURRENCY })
        );
    }

    #[test]
    fn signed_message_appends_the_counter() {
        assert_eq!(signed_message(&[1, 2], 0x0102_0304), vec![1, 2, 1, 2, 3, 4]);
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[a-zA-Z0-9 äöü€中文.,-]{{1,{}}}", max / 3))
            .unwrap()
    }

    prop_compose! {
        fn payload()(
            origin in text(64),
            id in any::<[u8; 16]>(),
            challenge in any::<[u8; 32]>(),
            payer in "[a-zA-Z0-9_.:-]{1,34}",
            payee in "[a-zA-Z0-9_.:-]{1,34}",
            payee_name in text(64),
            minor in any::<u64>(),
            currency in prop::sample::select(vec!["CNY", "EUR", "JPY", "KWD"]),
            order_id in text(64),
            description in proptest::string::string_regex("[a-z0-9 ]{0,140}").unwrap(),
            created in 0u64..u64::MAX / 2,
            ttl in 1u64..100_000,
        ) -> ConfirmationPayload {
            ConfirmationPayload {
                origin,
                transaction_id: TransactionId(id),
                challenge: Challenge(challenge),
                payer: AccountId::new(&payer).unwrap(),
                payee: AccountId::new(&payee).unwrap(),
                payee_name,
                amount: Money::new(minor, Currency::from_code(currency).unwrap()),
                order_id,
                description,
                created_at_unix_s: created,
                expires_at_unix_s: created + ttl,
            }
        }
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity(p in payload()) {
            let bytes = p.encode().unwrap();
            prop_assert!(bytes.len() <= ConfirmationPayload::ENCODED_LEN_MAX);
            prop_assert_eq!(ConfirmationPayload::decode(&bytes).unwrap(), p);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = ConfirmationPayload::decode(&bytes);
        }

        #[test]
        fn any_single_byte_flip_is_refused_or_changes_the_payload(p in payload(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let bytes = p.encode().unwrap();
            let mut flipped = bytes.clone();
            let i = at.index(flipped.len());
            flipped[i] ^= 1 << bit;
            if let Ok(q) = ConfirmationPayload::decode(&flipped) {
                prop_assert_ne!(q, p);
            }
        }
    }
}

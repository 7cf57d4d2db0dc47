//! The PIV conversation (NIST SP 800-73-4), for any PIV card: a YubiKey over
//! NFC or USB, or `keybridge card --profile piv`.
//!
//! Paying: SELECT, VERIFY PIN (FF-padded to 8 bytes), GENERAL AUTHENTICATE in
//! slot 9C over SHA-256 of the payload (`7C … 82 00 81 20 <digest>`). The card
//! shows nothing and keeps no counter: the phone's own screen shows the
//! payment, and the server checks the signature over the payload it stored.
//!
//! Enrolling: management-key authentication (3DES, mutual: the card proves it
//! knows the key too), GENERATE ASYMMETRIC KEY PAIR (P-256) in 9C, and PUT
//! DATA of the issued certificate into its object `5FC10A`.

use des::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use des::TdesEde3;
use keybridge_proto::api::DeclineReason;
use keybridge_transport::{Command, StatusWord};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::driver::{send, DriverError, SignOutcome};
use crate::link::CardLink;

/// The PIV application's RID (SELECT by prefix, as SP 800-73-4 allows).
pub const AID: [u8; 5] = [0xA0, 0x00, 0x00, 0x03, 0x08];
/// Slot 9C: digital signature, "PIN always".
pub const SLOT_SIGNATURE: u8 = 0x9C;
/// The management key every PIV card ships with.
pub const MANAGEMENT_KEY_DEFAULT: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
const ALG_3DES: u8 = 0x03;
const ALG_ECC_P256: u8 = 0x11;
const KEY_MANAGEMENT: u8 = 0x9B;

fn refused(step: &'static str, sw: StatusWord) -> DriverError {
    DriverError::Refused { step, sw }
}

/// `tag ‖ len ‖ value` for the short values this conversation sends.
fn tlv(tag: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = tag.to_vec();
    match value.len() {
        n @ 0..=0x7F => out.push(u8::try_from(n).unwrap_or(0)),
        n @ 0x80..=0xFF => out.extend_from_slice(&[0x81, u8::try_from(n).unwrap_or(0)]),
        n => out.extend_from_slice(&[
            0x82,
            u8::try_from(n >> 8).unwrap_or(0xFF),
            u8::try_from(n & 0xFF).unwrap_or(0xFF),
        ]),
    }
    out.extend_from_slice(value);
    out
}

/// Finds `tag` (one or two bytes) at the start of `bytes`; its value.
fn take<'a>(bytes: &'a [u8], tag: &[u8]) -> Option<&'a [u8]> {
    let rest = bytes.strip_prefix(tag)?;
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = match l0 {
        0..=0x7F => (usize::from(l0), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => (
            usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?])),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    rest.get(..len)
}

pub fn select(link: &mut CardLink) -> Result<(), DriverError> {
    let cmd = Command::new(0, 0xA4, 0x04, 0x00)
        .with_data(AID.to_vec())
        .with_le(256);
    let r = send(link, &cmd)?;
    match r.sw {
        StatusWord::Ok => Ok(()),
        sw => Err(refused("SELECT PIV", sw)),
    }
}

/// VERIFY the PIN: `Ok(None)` accepted, `Ok(Some(reason))` wrong or blocked.
/// A PIN that is not 6 to 8 characters is wrong without being sent.
pub fn verify_pin(link: &mut CardLink, pin: &[u8]) -> Result<Option<DeclineReason>, DriverError> {
    if !(6..=8).contains(&pin.len()) || pin.contains(&0xFF) {
        return Ok(Some(DeclineReason::WrongPin));
    }
    let mut padded = Zeroizing::new([0xFFu8; 8]);
    padded[..pin.len()].copy_from_slice(pin);
    let cmd = Command::new(0, 0x20, 0x00, 0x80).with_data(padded.to_vec());
    let r = send(link, &cmd)?;
    Ok(match r.sw {
        StatusWord::Ok => None,
        StatusWord::VerifyFailed(0) | StatusWord::AuthenticationBlocked => {
            Some(DeclineReason::PinBlocked)
        }
        StatusWord::VerifyFailed(_) => Some(DeclineReason::WrongPin),
        sw => return Err(refused("VERIFY", sw)),
    }
    .inspect(|reason| tracing::info!(sw = %r.sw, ?reason, "PIV card refused the PIN")))
}

/// Mutual authentication with the 3DES management key (witness, then the
/// card encrypts our challenge), as yubico-piv-tool does it.
pub fn authenticate_management(link: &mut CardLink, key: &[u8; 24]) -> Result<(), DriverError> {
    let cipher = TdesEde3::new_from_slice(key).map_err(|_| DriverError::Malformed {
        step: "management key",
    })?;
    let ask = Command::new(0, 0x87, ALG_3DES, KEY_MANAGEMENT)
        .with_data(tlv(&[0x7C], &tlv(&[0x80], &[])))
        .with_le(256);
    let r = send(link, &ask)?;
    if !r.sw.is_ok() {
        return Err(refused("GENERAL AUTHENTICATE (witness)", r.sw));
    }
    let step = "GENERAL AUTHENTICATE (witness)";
    let witness = take(&r.data, &[0x7C])
        .and_then(|t| take(t, &[0x80]))
        .filter(|w| w.len() == 8)
        .ok_or(DriverError::Malformed { step })?;
    let witness: [u8; 8] = witness
        .try_into()
        .map_err(|_| DriverError::Malformed { step })?;
    // Block types are inferred, not named (generic-array 0.14.9 deprecates the name).
    let mut witness = witness.into();
    cipher.decrypt_block(&mut witness);
    let witness: [u8; 8] = witness.into();
    let challenge: [u8; 8] = rand::random();
    let mut body = tlv(&[0x80], &witness);
    body.extend_from_slice(&tlv(&[0x81], &challenge));
    let answer = Command::new(0, 0x87, ALG_3DES, KEY_MANAGEMENT)
        .with_data(tlv(&[0x7C], &body))
        .with_le(256);
    let r = send(link, &answer)?;
    if !r.sw.is_ok() {
        return Err(refused("GENERAL AUTHENTICATE (management key)", r.sw));
    }
    let step = "GENERAL AUTHENTICATE (card's response)";
    let response = take(&r.data, &[0x7C])
        .and_then(|t| take(t, &[0x82]))
        .ok_or(DriverError::Malformed { step })?;
    let mut expected = challenge.into();
    cipher.encrypt_block(&mut expected);
    let expected: [u8; 8] = expected.into();
    // The card proved it holds the same key: a card that does not is not ours.
    if response != expected {
        return Err(DriverError::Malformed { step });
    }
    Ok(())
}

/// GENERATE ASYMMETRIC KEY PAIR (P-256) in `slot`; the public key, SEC1.
pub fn generate_p256(link: &mut CardLink, slot: u8) -> Result<Vec<u8>, DriverError> {
    let cmd = Command::new(0, 0x47, 0x00, slot)
        .with_data(tlv(&[0xAC], &tlv(&[0x80], &[ALG_ECC_P256])))
        .with_le(256);
    let r = send(link, &cmd)?;
    if !r.sw.is_ok() {
        return Err(refused("GENERATE ASYMMETRIC KEY PAIR", r.sw));
    }
    take(&r.data, &[0x7F, 0x49])
        .and_then(|t| take(t, &[0x86]))
        .filter(|p| p.len() == 65 && p.first() == Some(&0x04))
        .map(<[u8]>::to_vec)
        .ok_or(DriverError::Malformed {
            step: "GENERATE ASYMMETRIC KEY PAIR",
        })
}

/// PUT DATA of a DER certificate into the slot's certificate object.
pub fn put_certificate(link: &mut CardLink, slot: u8, der: &[u8]) -> Result<(), DriverError> {
    let tag: [u8; 3] = match slot {
        0x9A => [0x5F, 0xC1, 0x05],
        0x9C => [0x5F, 0xC1, 0x0A],
        0x9D => [0x5F, 0xC1, 0x0B],
        0x9E => [0x5F, 0xC1, 0x01],
        _ => {
            return Err(DriverError::Malformed {
                step: "PUT DATA slot",
            })
        }
    };
    let mut object = tlv(&[0x70], der);
    object.extend_from_slice(&[0x71, 0x01, 0x00, 0xFE, 0x00]);
    let mut data = tlv(&[0x5C], &tag);
    data.extend_from_slice(&tlv(&[0x53], &object));
    let r = send(link, &Command::new(0, 0xDB, 0x3F, 0xFF).with_data(data))?;
    match r.sw {
        StatusWord::Ok => Ok(()),
        sw => Err(refused("PUT DATA", sw)),
    }
}

/// The whole signing conversation for one payment: SELECT, VERIFY, then
/// GENERAL AUTHENTICATE 9C over SHA-256(payload). There is no counter: the
/// outcome's `counter` is 0 and the server ignores it for PIV devices.
pub fn sign_payload(
    link: &mut CardLink,
    pin: &[u8],
    payload: &[u8],
) -> Result<SignOutcome, DriverError> {
    select(link)?;
    if let Some(reason) = verify_pin(link, pin)? {
        return Ok(SignOutcome::Declined(reason));
    }
    let digest = Sha256::digest(payload);
    let mut template = tlv(&[0x82], &[]);
    template.extend_from_slice(&tlv(&[0x81], &digest));
    let cmd = Command::new(0, 0x87, ALG_ECC_P256, SLOT_SIGNATURE)
        .with_data(tlv(&[0x7C], &template))
        .with_le(256);
    let r = send(link, &cmd)?;
    match r.sw {
        StatusWord::Ok => {
            // The shortest DER ECDSA signature is 8 bytes: anything shorter
            // (an empty `82`, which the fuzz target `relay_answers` got
            // through) is a broken card, told apart here rather than sent
            // to the server as a signature.
            let signature = take(&r.data, &[0x7C])
                .and_then(|t| take(t, &[0x82]))
                .filter(|s| s.len() >= DER_SIGNATURE_LEN_MIN)
                .ok_or(DriverError::Malformed {
                    step: "GENERAL AUTHENTICATE (sign)",
                })?;
            Ok(SignOutcome::Signed {
                counter: 0,
                signature: signature.to_vec(),
            })
        }
        StatusWord::AuthenticationBlocked => Ok(SignOutcome::Declined(DeclineReason::PinBlocked)),
        sw => Err(refused("GENERAL AUTHENTICATE (sign)", sw)),
    }
}

/// `30 06 02 01 r 02 01 s`.
const DER_SIGNATURE_LEN_MIN: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::InProcessCard;
    use keybridge_transport::{CardChannel, LinkError};

    /// A card that says yes to SELECT and VERIFY and answers GENERAL
    /// AUTHENTICATE with `sign`.
    struct Answers {
        sign: Vec<u8>,
    }

    impl CardChannel for Answers {
        fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, LinkError> {
            Ok(match command.get(1) {
                Some(0x87) => self.sign.clone(),
                _ => vec![0x90, 0x00],
            })
        }
    }

    fn sign_with(answer: &[u8]) -> Result<SignOutcome, DriverError> {
        let card = Answers {
            sign: answer.to_vec(),
        };
        let mut link = CardLink::InProcess(InProcessCard(Box::new(card)));
        sign_payload(&mut link, b"123456", b"payload")
    }

    #[test]
    fn a_signature_too_short_for_der_is_a_broken_card() {
        let empty = [0x7C, 0x02, 0x82, 0x00, 0x90, 0x00];
        assert!(matches!(
            sign_with(&empty),
            Err(DriverError::Malformed { .. })
        ));
        let shortest = [
            0x7C, 0x0A, 0x82, 0x08, 0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x90, 0x00,
        ];
        assert!(matches!(
            sign_with(&shortest),
            Ok(SignOutcome::Signed { signature, .. }) if signature.len() == 8
        ));
    }

    #[test]
    fn tlv_shapes() {
        assert_eq!(
            tlv(&[0x7C], &tlv(&[0x80], &[])),
            vec![0x7C, 0x02, 0x80, 0x00]
        );
        let long = tlv(&[0x53], &[0; 300]);
        assert_eq!(&long[..4], &[0x53, 0x82, 0x01, 0x2C]);
        assert_eq!(take(&long, &[0x53]).map(<[u8]>::len), Some(300));
        assert_eq!(take(&[0x7C, 0x05, 0x82, 0x00], &[0x7C]), None);
        assert_eq!(
            take(&[0x7F, 0x49, 0x02, 0x86, 0x00], &[0x7F, 0x49]),
            Some(&[0x86, 0x00][..])
        );
    }
}

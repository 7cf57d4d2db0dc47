//! The transaction applet's conversation, in terms of outcomes.

use keybridge_proto::api::DeclineReason;
use keybridge_proto::applet::{self, CardStatus, OcraAnswer};
use keybridge_transport::secure::{self, PhoneSession, Protected};
use keybridge_transport::{transmit, Command, LinkError, Response, StatusWord, TransmitOptions};
use p256::ecdsa::VerifyingKey;

use crate::link::CardLink;

/// What the card answered to a request for a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignOutcome {
    Signed {
        counter: u32,
        signature: Vec<u8>,
    },
    /// An OCRA-mode card's answer.
    Ocra(OcraAnswer),
    Declined(DeclineReason),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The card answered a status word the step does not expect.
    #[error("card refused {step}: status {sw}")]
    Refused { step: &'static str, sw: StatusWord },
    #[error("card answered {step} with malformed data")]
    Malformed { step: &'static str },
    /// A radio link needs the certificate pinned at enrolment to check the
    /// card in the secure channel; this credential has none (or a bad one).
    #[error("no usable pinned card certificate for the secure channel: {0}; enrol the card again")]
    NoPinnedCertificate(&'static str),
}

/// How to frame a command with `data_len` bytes of data on this link.
fn options(link: &CardLink, data_len: usize) -> TransmitOptions {
    link.transmit_options(data_len)
}

pub(crate) fn send(link: &mut CardLink, command: &Command) -> Result<Response, DriverError> {
    let options = options(link, command.data.len());
    Ok(transmit(link.channel(), command, options)?)
}

/// Sends `command` inside the secure channel when there is one.
fn send_via(
    link: &mut CardLink,
    session: Option<&mut PhoneSession>,
    command: &Command,
) -> Result<Response, DriverError> {
    let Some(session) = session else {
        return send(link, command);
    };
    let options = options(link, command.data.len());
    let mut protected = Protected {
        inner: link.channel(),
        session,
        options,
    };
    Ok(transmit(&mut protected, command, options)?)
}

/// The public key a pinned certificate certifies.
fn pinned_key(certificate: &[u8]) -> Result<VerifyingKey, DriverError> {
    let (_, cert) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|_| DriverError::NoPinnedCertificate("not an X.509 certificate"))?;
    VerifyingKey::from_sec1_bytes(&cert.public_key().subject_public_key.data)
        .map_err(|_| DriverError::NoPinnedCertificate("not a P-256 key"))
}

/// KEY AGREEMENT with the selected applet: the card proves it holds the key
/// of `pinned_certificate`, and both sides derive fresh session keys.
pub fn open_secure_channel(
    link: &mut CardLink,
    pinned_certificate: &[u8],
) -> Result<PhoneSession, DriverError> {
    let key = pinned_key(pinned_certificate)?;
    // The key agreement's messages may be long: frame as for long commands.
    let options = options(link, keybridge_transport::apdu::SHORT_DATA_LEN_MAX + 1);
    let mut rng = rand::rngs::OsRng;
    Ok(secure::establish(
        link.channel(),
        options,
        pinned_certificate,
        &key,
        &mut rng,
    )?)
}

fn expect_ok(step: &'static str, r: Response) -> Result<Vec<u8>, DriverError> {
    if r.sw.is_ok() {
        Ok(r.data)
    } else {
        Err(DriverError::Refused { step, sw: r.sw })
    }
}

pub fn select(link: &mut CardLink) -> Result<(), DriverError> {
    let cmd = Command::new(0, applet::INS_SELECT, 0x04, 0x00)
        .with_data(applet::AID.to_vec())
        .with_le(256);
    expect_ok("SELECT", send(link, &cmd)?).map(drop)
}

pub fn status(link: &mut CardLink) -> Result<CardStatus, DriverError> {
    let data = get_data(link, applet::OBJ_STATUS)?;
    CardStatus::decode(&data).ok_or(DriverError::Malformed {
        step: "GET DATA status",
    })
}

pub fn get_data(link: &mut CardLink, object: u8) -> Result<Vec<u8>, DriverError> {
    let cmd = Command::new(0, applet::INS_GET_DATA, 0x00, object).with_le(256);
    expect_ok("GET DATA", send(link, &cmd)?)
}

/// VERIFY: `Ok(None)` when accepted, `Ok(Some(reason))` when the PIN was wrong
/// or is blocked.
pub fn verify_pin(link: &mut CardLink, pin: &[u8]) -> Result<Option<DeclineReason>, DriverError> {
    verify_pin_via(link, None, pin)
}

fn verify_pin_via(
    link: &mut CardLink,
    session: Option<&mut PhoneSession>,
    pin: &[u8],
) -> Result<Option<DeclineReason>, DriverError> {
    let cmd = Command::new(0, applet::INS_VERIFY, 0x00, applet::P2_PIN).with_data(pin.to_vec());
    let r = send_via(link, session, &cmd)?;
    Ok(match r.sw {
        StatusWord::Ok => None,
        StatusWord::VerifyFailed(0) | StatusWord::AuthenticationBlocked => {
            Some(DeclineReason::PinBlocked)
        }
        StatusWord::VerifyFailed(_) | StatusWord::IncorrectData => Some(DeclineReason::WrongPin),
        sw => return Err(DriverError::Refused { step: "VERIFY", sw }),
    })
}

pub fn generate_key(link: &mut CardLink) -> Result<Vec<u8>, DriverError> {
    let cmd = Command::new(0, applet::INS_GENERATE_KEY, 0, 0).with_le(256);
    expect_ok("GENERATE KEY", send(link, &cmd)?)
}

pub fn put_certificate(link: &mut CardLink, der: &[u8]) -> Result<(), DriverError> {
    let cmd = Command::new(0, applet::INS_PUT_DATA, 0x00, applet::OBJ_CERTIFICATE)
        .with_data(der.to_vec());
    expect_ok("PUT DATA", send(link, &cmd)?).map(drop)
}

/// The whole signing conversation for one payment: SELECT, VERIFY, SIGN.
/// On a link that requires the secure channel this fails with
/// [`DriverError::NoPinnedCertificate`]: use [`sign_transaction_pinned`].
pub fn sign_transaction(
    link: &mut CardLink,
    pin: &[u8],
    payload: &[u8],
) -> Result<SignOutcome, DriverError> {
    sign_transaction_pinned(link, pin, payload, None)
}

/// SELECT, then (on links that require it, or whenever a certificate is
/// pinned and the link is radio) KEY AGREEMENT checked against
/// `pinned_certificate`, then VERIFY and SIGN inside the channel, so neither
/// the PIN nor the payload crosses the radio in clear.
pub fn sign_transaction_pinned(
    link: &mut CardLink,
    pin: &[u8],
    payload: &[u8],
    pinned_certificate: Option<&[u8]>,
) -> Result<SignOutcome, DriverError> {
    select(link)?;
    let mut session = if link.requires_secure_channel() {
        let certificate = pinned_certificate
            .ok_or(DriverError::NoPinnedCertificate("the credential has none"))?;
        Some(open_secure_channel(link, certificate)?)
    } else {
        None
    };
    if let Some(reason) = verify_pin_via(link, session.as_mut(), pin)? {
        return Ok(SignOutcome::Declined(reason));
    }
    let cmd = Command::new(0, applet::INS_SIGN, applet::P1_SIGN, applet::P2_SIGN)
        .with_data(payload.to_vec())
        .with_le(256);
    let r = send_via(link, session.as_mut(), &cmd)?;
    match r.sw {
        StatusWord::Ok => {
            let (counter, signature) = applet::split_signature_response(&r.data)
                .ok_or(DriverError::Malformed { step: "SIGN" })?;
            Ok(SignOutcome::Signed {
                counter,
                signature: signature.to_vec(),
            })
        }
        StatusWord::ConditionsNotSatisfied => Ok(SignOutcome::Declined(DeclineReason::Declined)),
        StatusWord::AuthenticationBlocked => Ok(SignOutcome::Declined(DeclineReason::PinBlocked)),
        sw => Err(DriverError::Refused { step: "SIGN", sw }),
    }
}

/// SIGN CSR: the card signs a CertificationRequestInfo for its own key (the
/// PIN must have been verified; this consumes it).
pub fn sign_csr(link: &mut CardLink, request_info: &[u8]) -> Result<Vec<u8>, DriverError> {
    let cmd = Command::new(0, applet::INS_SIGN, applet::P1_SIGN, applet::P2_SIGN_CSR)
        .with_data(request_info.to_vec())
        .with_le(256);
    expect_ok("SIGN CSR", send(link, &cmd)?)
}

/// PUT DATA OCRA: stores the suite and shared secret on the card.
pub fn put_ocra(link: &mut CardLink, suite: &str, secret: &[u8]) -> Result<(), DriverError> {
    let data = applet::ocra_put_data(suite, secret).ok_or(DriverError::Malformed {
        step: "PUT DATA OCRA",
    })?;
    let cmd = Command::new(0, applet::INS_PUT_DATA, 0x00, applet::OBJ_OCRA).with_data(data);
    expect_ok("PUT DATA OCRA", send(link, &cmd)?).map(drop)
}

/// The OCRA conversation for one payment: SELECT, VERIFY, OCRA RESPONSE.
pub fn ocra_response(
    link: &mut CardLink,
    pin: &[u8],
    payload: &[u8],
) -> Result<SignOutcome, DriverError> {
    select(link)?;
    if let Some(reason) = verify_pin(link, pin)? {
        return Ok(SignOutcome::Declined(reason));
    }
    let cmd = Command::new(0, applet::INS_OCRA_RESPONSE, 0, 0)
        .with_data(payload.to_vec())
        .with_le(256);
    let r = send(link, &cmd)?;
    match r.sw {
        StatusWord::Ok => {
            OcraAnswer::decode(&r.data)
                .map(SignOutcome::Ocra)
                .ok_or(DriverError::Malformed {
                    step: "OCRA RESPONSE",
                })
        }
        StatusWord::ConditionsNotSatisfied => Ok(SignOutcome::Declined(DeclineReason::Declined)),
        StatusWord::AuthenticationBlocked => Ok(SignOutcome::Declined(DeclineReason::PinBlocked)),
        sw => Err(DriverError::Refused {
            step: "OCRA RESPONSE",
            sw,
        }),
    }
}

//! The transaction applet's conversation, in terms of outcomes.

use keybridge_proto::api::DeclineReason;
use keybridge_proto::applet::{self, CardStatus, OcraAnswer};
use keybridge_transport::{transmit, Command, LinkError, Response, StatusWord, TransmitOptions};

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
}

pub(crate) fn send(link: &mut CardLink, command: &Command) -> Result<Response, DriverError> {
    let options = TransmitOptions {
        extended_length: link.extended_length(),
        ..TransmitOptions::default()
    };
    Ok(transmit(link.channel(), command, options)?)
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
    let cmd = Command::new(0, applet::INS_VERIFY, 0x00, applet::P2_PIN).with_data(pin.to_vec());
    let r = send(link, &cmd)?;
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
pub fn sign_transaction(
    link: &mut CardLink,
    pin: &[u8],
    payload: &[u8],
) -> Result<SignOutcome, DriverError> {
    select(link)?;
    if let Some(reason) = verify_pin(link, pin)? {
        return Ok(SignOutcome::Declined(reason));
    }
    let cmd = Command::new(0, applet::INS_SIGN, applet::P1_SIGN, applet::P2_SIGN)
        .with_data(payload.to_vec())
        .with_le(256);
    let r = send(link, &cmd)?;
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

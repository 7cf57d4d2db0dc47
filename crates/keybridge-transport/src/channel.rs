//! A logical exchange with a card over any link that moves raw APDU bytes.

use crate::apdu::{ApduError, Command, Response, StatusWord, INS_GET_RESPONSE};

/// Why an exchange with a card failed below the applet level.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error("card link IO: {0}")]
    Io(#[from] std::io::Error),
    #[error("the card was removed or its link closed")]
    CardGone,
    #[error("the card sent a malformed response: {0}")]
    Malformed(#[from] ApduError),
    #[error("the card's response is larger than {0} bytes")]
    ResponseTooLarge(usize),
    #[error("timed out waiting for the card")]
    Timeout,
    #[error("reader error: {0}")]
    Reader(String),
    /// The secure channel could not be set up, or refused a frame.
    #[error("secure channel: {0}")]
    Secure(crate::secure::SecureError),
    /// The radio link's device answered with a BLE ERROR frame it does not
    /// expect the phone to recover from by sending again.
    #[error("BLE device error: {0:?}")]
    Ble(crate::ble::ErrorCode),
}

/// Something that carries one command APDU to a card and its response back:
/// a vpcd socket, a PC/SC reader, a BLE link.
pub trait CardChannel {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, LinkError>;
}

/// How [`transmit`] shapes commands for the card at the other end.
#[derive(Debug, Clone, Copy)]
pub struct TransmitOptions {
    /// Send long data as one extended APDU; otherwise chain short ones.
    pub extended_length: bool,
    /// Bound on a whole response across GET RESPONSE rounds.
    pub response_len_max: usize,
}

impl Default for TransmitOptions {
    fn default() -> TransmitOptions {
        TransmitOptions {
            extended_length: true,
            response_len_max: 64 * 1024,
        }
    }
}

/// Sends `command`, chaining when the data does not fit a short APDU and
/// extended length is off, and collects the whole response: `61xx` is followed
/// by GET RESPONSE, `6Cxx` by a re-send with the exact Le.
pub fn transmit(
    channel: &mut dyn CardChannel,
    command: &Command,
    options: TransmitOptions,
) -> Result<Response, LinkError> {
    let pieces = if command.data.len() > 255 && !options.extended_length {
        command.clone().into_chain(255)
    } else {
        vec![command.clone()]
    };
    let mut response = Response::status(StatusWord::NoPreciseDiagnosis);
    for piece in &pieces {
        response = exchange(channel, piece)?;
        if piece.is_chained() && !response.sw.is_ok() {
            // The card refused a link of the chain: stop and report its answer.
            return Ok(response);
        }
    }
    let mut data = std::mem::take(&mut response.data);
    // Bounded: each round either ends or adds at least one byte, and the total
    // is capped by `response_len_max`.
    while let StatusWord::MoreData(n) = response.sw {
        let le = if n == 0 { 256 } else { usize::from(n) };
        let get = Command::new(command.cla & 0x03, INS_GET_RESPONSE, 0, 0).with_le(le);
        response = exchange(channel, &get)?;
        data.extend_from_slice(&response.data);
        if data.len() > options.response_len_max {
            return Err(LinkError::ResponseTooLarge(options.response_len_max));
        }
        if response.data.is_empty() && matches!(response.sw, StatusWord::MoreData(_)) {
            return Err(LinkError::Malformed(ApduError::WrongLength));
        }
    }
    Ok(Response {
        data,
        sw: response.sw,
    })
}

fn exchange(channel: &mut dyn CardChannel, command: &Command) -> Result<Response, LinkError> {
    let response = Response::parse(&channel.transmit_raw(&command.encode())?)?;
    if let StatusWord::WrongLe(exact) = response.sw {
        let mut again = command.clone();
        again.le = Some(if exact == 0 { 256 } else { usize::from(exact) });
        return Ok(Response::parse(&channel.transmit_raw(&again.encode())?)?);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A card that answers from a script and records what it was sent, so the
    /// test reads as a transcript.
    struct Scripted {
        expect: Vec<(&'static str, &'static str)>,
    }

    impl CardChannel for Scripted {
        fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, LinkError> {
            let (want, answer) = self.expect.remove(0);
            assert_eq!(hex::encode_upper(command), want.replace(' ', ""));
            Ok(hex::decode(answer.replace(' ', "")).unwrap())
        }
    }

    #[test]
    fn follows_61xx_with_get_response() {
        let mut card = Scripted {
            expect: vec![("00CA0002 00", "0102 6102"), ("00C00000 02", "0304 9000")],
        };
        let cmd = Command::new(0, 0xCA, 0, 2).with_le(256);
        let r = transmit(&mut card, &cmd, TransmitOptions::default()).unwrap();
        assert_eq!(r, Response::ok(vec![1, 2, 3, 4]));
        assert!(card.expect.is_empty());
    }

    #[test]
    fn resends_with_exact_le_on_6cxx() {
        let mut card = Scripted {
            expect: vec![
                ("00CA0003 02", "6C07"),
                ("00CA0003 07", "01020304050607 9000"),
            ],
        };
        let cmd = Command::new(0, 0xCA, 0, 3).with_le(2);
        let r = transmit(&mut card, &cmd, TransmitOptions::default()).unwrap();
        assert_eq!(r.data.len(), 7);
    }

    #[test]
    fn chains_when_extended_length_is_off() {
        let data = vec![0xAB; 300];
        let first = format!("102A9E9A FF{}", "AB".repeat(255));
        let second = format!("002A9E9A 2D{}", "AB".repeat(45));
        let mut card = Scripted {
            expect: vec![
                (Box::leak(first.into_boxed_str()), "9000"),
                (Box::leak(second.into_boxed_str()), "01 9000"),
            ],
        };
        let cmd = Command::new(0, 0x2A, 0x9E, 0x9A).with_data(data);
        let options = TransmitOptions {
            extended_length: false,
            ..TransmitOptions::default()
        };
        assert_eq!(
            transmit(&mut card, &cmd, options).unwrap(),
            Response::ok(vec![1])
        );
    }

    #[test]
    fn stops_a_chain_the_card_refuses() {
        let first = format!("102A9E9A FF{}", "00".repeat(255));
        let mut card = Scripted {
            expect: vec![(Box::leak(first.into_boxed_str()), "6884")],
        };
        let cmd = Command::new(0, 0x2A, 0x9E, 0x9A).with_data(vec![0; 300]);
        let options = TransmitOptions {
            extended_length: false,
            ..TransmitOptions::default()
        };
        let r = transmit(&mut card, &cmd, options).unwrap();
        assert_eq!(r.sw, StatusWord::ChainingNotSupported);
    }
}

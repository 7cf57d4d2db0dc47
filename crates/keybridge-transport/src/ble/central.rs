//! The phone's side: one request at a time, resent whole when it was damaged.
//!
//! A request is an APDU in a MSG. The device answers with a MSG (the response
//! APDU), or ERROR; while it works (the holder is reading the amount) it sends
//! KEEPALIVE, which keeps the phone waiting up to [`CentralOptions::busy_ms_max`].
//! When fragments are lost either way the phone hears nothing for
//! [`CentralOptions::idle_ms_max`], or gets a transient ERROR, and sends the
//! same bytes again, up to [`CentralOptions::attempts_max`] times. That is safe
//! because the device answers a verbatim retransmission of a protected command
//! from its cache (see [`crate::secure`]), so a SIGN is never run twice for
//! one request.

use std::time::{Duration, Instant};

use super::frame::{Cmd, ErrorCode, Message};
use super::reassembly::Reassembler;
use super::GattClientIo;
use crate::channel::LinkError;

/// How patient the phone is.
#[derive(Debug, Clone, Copy)]
pub struct CentralOptions {
    /// Silence (no fragment, no KEEPALIVE) after which a request is sent again.
    pub idle_ms_max: u64,
    /// How many times one request is sent before giving up.
    pub attempts_max: u32,
    /// The longest the phone waits for one answer, KEEPALIVEs included
    /// (a holder reading the screen); then it sends CANCEL and gives up.
    pub busy_ms_max: u64,
}

impl Default for CentralOptions {
    fn default() -> CentralOptions {
        CentralOptions {
            idle_ms_max: 1_500,
            attempts_max: 4,
            busy_ms_max: 120_000,
        }
    }
}

/// What the link did, for the demo's report and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub requests: u64,
    pub fragments_sent: u64,
    pub fragments_received: u64,
    /// Requests sent again after loss or a transient ERROR.
    pub retransmissions: u64,
    pub keepalives: u64,
}

enum Wait {
    Answer(Vec<u8>),
    Again(&'static str),
}

/// The phone's BLE engine over some GATT client.
#[derive(Debug)]
pub struct Central<Io> {
    io: Io,
    options: CentralOptions,
    stats: LinkStats,
}

impl<Io: GattClientIo> Central<Io> {
    pub fn new(io: Io, options: CentralOptions) -> Central<Io> {
        Central {
            io,
            options,
            stats: LinkStats::default(),
        }
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    pub fn io(&self) -> &Io {
        &self.io
    }

    fn send(&mut self, message: &Message) -> Result<(), LinkError> {
        let fragments = message
            .fragments(self.io.fragment_len())
            .map_err(|_| LinkError::ResponseTooLarge(super::frame::MESSAGE_LEN_MAX))?;
        for fragment in fragments {
            self.io.write(&fragment)?;
            self.stats.fragments_sent += 1;
        }
        Ok(())
    }

    /// Asks the device to abandon what it is doing.
    pub fn cancel(&mut self) -> Result<(), LinkError> {
        self.send(&Message::new(Cmd::Cancel, Vec::new()))
    }

    /// Sends `apdu` and returns the device's answer.
    pub fn request(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        self.stats.requests += 1;
        // Whatever is still in the pipe belongs to an earlier request.
        while self.io.next_notification(Duration::ZERO)?.is_some() {}
        let message = Message::new(Cmd::Msg, apdu.to_vec());
        let started = Instant::now();
        // One reassembler for all attempts: after a damaged answer it discards
        // that answer's remaining fragments until the next INIT.
        let mut reassembler = Reassembler::new(self.io.fragment_len(), self.options.idle_ms_max);
        for attempt in 1..=self.options.attempts_max {
            if attempt > 1 {
                self.stats.retransmissions += 1;
            }
            self.send(&message)?;
            match self.await_answer(started, &mut reassembler)? {
                Wait::Answer(data) => return Ok(data),
                Wait::Again(why) => {
                    tracing::debug!(attempt, why, "BLE request lost; sending it again");
                }
            }
        }
        Err(LinkError::Timeout)
    }

    fn await_answer(
        &mut self,
        started: Instant,
        reassembler: &mut Reassembler,
    ) -> Result<Wait, LinkError> {
        let mut last_heard = Instant::now();
        let idle = Duration::from_millis(self.options.idle_ms_max);
        let busy = Duration::from_millis(self.options.busy_ms_max);
        loop {
            let now = Instant::now();
            if now.duration_since(started) >= busy {
                let _ = self.cancel();
                return Err(LinkError::Timeout);
            }
            let quiet = now.duration_since(last_heard);
            if quiet >= idle {
                return Ok(Wait::Again("no answer"));
            }
            let Some(fragment) = self.io.next_notification(idle - quiet)? else {
                continue;
            };
            last_heard = Instant::now();
            self.stats.fragments_received += 1;
            let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            match reassembler.push(&fragment, now_ms) {
                Err(_) => return Ok(Wait::Again("damaged answer")),
                Ok(None) => {}
                Ok(Some(m)) => match m.cmd {
                    Cmd::Msg => return Ok(Wait::Answer(m.data)),
                    Cmd::Keepalive => self.stats.keepalives += 1,
                    Cmd::Error => {
                        let code = ErrorCode::from_byte(m.data.first().copied().unwrap_or(0x7F));
                        if code.is_transient() {
                            return Ok(Wait::Again("device reported a damaged request"));
                        }
                        return Err(LinkError::Ble(code));
                    }
                    // The device never sends these unasked; ignore them.
                    Cmd::Ping | Cmd::Cancel => {}
                },
            }
        }
    }

    /// Sends PING with `data` and waits for the echo: a liveness check.
    pub fn ping(&mut self, data: &[u8]) -> Result<Duration, LinkError> {
        let started = Instant::now();
        while self.io.next_notification(Duration::ZERO)?.is_some() {}
        self.send(&Message::new(Cmd::Ping, data.to_vec()))?;
        let mut reassembler = Reassembler::new(self.io.fragment_len(), self.options.idle_ms_max);
        let idle = Duration::from_millis(self.options.idle_ms_max);
        while let Some(fragment) = self.io.next_notification(idle)? {
            let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if let Ok(Some(m)) = reassembler.push(&fragment, now_ms) {
                if m.cmd == Cmd::Ping && m.data == data {
                    return Ok(started.elapsed());
                }
            }
        }
        Err(LinkError::Timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::frame::FragmentLen;
    use std::collections::VecDeque;

    /// A device in memory: answers each whole request by the script, losing
    /// the fragments the test says to lose.
    #[derive(Debug)]
    struct Scripted {
        len: FragmentLen,
        inbox: Reassembler,
        outbox: VecDeque<Vec<u8>>,
        /// Answers to give, one per complete request.
        answers: VecDeque<Message>,
        /// Indexes (over all fragments the device sends) to lose.
        lose: Vec<usize>,
        sent: usize,
        requests_seen: usize,
    }

    impl GattClientIo for Scripted {
        fn write(&mut self, fragment: &[u8]) -> Result<(), LinkError> {
            if let Ok(Some(_)) = self.inbox.push(fragment, 0) {
                self.requests_seen += 1;
                if let Some(answer) = self.answers.pop_front() {
                    for f in answer.fragments(self.len).unwrap() {
                        if !self.lose.contains(&self.sent) {
                            self.outbox.push_back(f);
                        }
                        self.sent += 1;
                    }
                }
            }
            Ok(())
        }
        fn next_notification(&mut self, _wait: Duration) -> Result<Option<Vec<u8>>, LinkError> {
            Ok(self.outbox.pop_front())
        }
        fn fragment_len(&self) -> FragmentLen {
            self.len
        }
        fn att_mtu(&self) -> u16 {
            23
        }
    }

    fn central(answers: Vec<Message>, lose: Vec<usize>) -> Central<Scripted> {
        let len = FragmentLen::MIN;
        Central::new(
            Scripted {
                len,
                inbox: Reassembler::new(len, 1_000),
                outbox: VecDeque::new(),
                answers: answers.into(),
                lose,
                sent: 0,
                requests_seen: 0,
            },
            CentralOptions {
                idle_ms_max: 50,
                attempts_max: 3,
                busy_ms_max: 5_000,
            },
        )
    }

    #[test]
    fn keepalives_then_the_answer() {
        let mut c = central(vec![Message::new(Cmd::Msg, vec![0x90, 0x00])], vec![]);
        c.io.outbox.push_back(vec![0x82, 0x00, 0x01, 0x02]);
        assert_eq!(c.request(&[0, 0xA4, 4, 0]).unwrap(), vec![0x90, 0x00]);
        assert_eq!(c.stats().retransmissions, 0);
    }

    #[test]
    fn a_lost_answer_fragment_makes_the_phone_send_again() {
        let answer: Vec<u8> = (0..60).collect();
        // Fragment 1 of the first answer is lost; the second answer is whole.
        let mut c = central(
            vec![
                Message::new(Cmd::Msg, answer.clone()),
                Message::new(Cmd::Msg, answer.clone()),
            ],
            vec![1],
        );
        assert_eq!(c.request(&[0, 0x2A, 0x9E, 0x9A]).unwrap(), answer);
        assert_eq!(c.stats().retransmissions, 1);
        assert_eq!(c.io.requests_seen, 2);
    }

    #[test]
    fn transient_errors_are_retried_and_others_reported() {
        let mut c = central(
            vec![
                Message::error(ErrorCode::InvalidSeq),
                Message::new(Cmd::Msg, vec![0x90, 0]),
            ],
            vec![],
        );
        assert_eq!(c.request(&[0, 0xA4, 4, 0]).unwrap(), vec![0x90, 0]);
        let mut c = central(vec![Message::error(ErrorCode::InvalidCmd)], vec![]);
        assert!(matches!(
            c.request(&[0, 0xA4, 4, 0]),
            Err(LinkError::Ble(ErrorCode::InvalidCmd))
        ));
    }

    #[test]
    fn silence_ends_in_a_timeout_after_bounded_attempts() {
        let mut c = central(vec![], vec![]);
        assert!(matches!(
            c.request(&[0, 0xA4, 4, 0]),
            Err(LinkError::Timeout)
        ));
        assert_eq!(c.io.requests_seen, 3);
    }
}

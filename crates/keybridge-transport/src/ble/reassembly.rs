//! Fragments back into messages, with a timeout. The time is an argument
//! (`now_ms`, any monotonic millisecond count): the reassembler never reads a
//! clock, so a test or a fuzz run replays exactly.
//!
//! Rules (one per way fragments go wrong over the air):
//! - A declared length over [`MESSAGE_LEN_MAX`] is refused before any buffer
//!   is allocated; buffers grow only with data actually received.
//! - A fragment longer than the negotiated [`FragmentLen`] is refused.
//! - A CONT out of sequence, or one with no INIT before it, or data beyond the
//!   declared length, is an error; the partial message is dropped.
//! - After an error the reassembler *discards* CONT fragments silently until
//!   the next INIT, so one broken message yields one error (one ERROR frame),
//!   not one per stray fragment.
//! - An INIT while a message is in progress starts over: it is how the sender
//!   retries a whole message after it gave up on the last attempt.
//! - When no fragment arrived for `timeout_ms`, the partial message is dropped:
//!   [`Reassembler::poll`] reports it once; a later CONT is discarded, a later
//!   INIT starts afresh.

use super::frame::{Cmd, Fragment, FragmentLen, FrameError, Message, MESSAGE_LEN_MAX, SEQ_MAX};

/// How long a partial message may wait for its next fragment, unless the
/// owner chooses otherwise.
pub const REASSEMBLY_TIMEOUT_MS_DEFAULT: u64 = 3_000;

#[derive(Debug)]
struct Partial {
    cmd: Cmd,
    declared: usize,
    data: Vec<u8>,
    next_seq: u8,
    last_fragment_ms: u64,
}

/// Collects fragments into messages.
#[derive(Debug)]
pub struct Reassembler {
    fragment_len: FragmentLen,
    timeout_ms: u64,
    partial: Option<Partial>,
    discarding: bool,
}

impl Reassembler {
    pub fn new(fragment_len: FragmentLen, timeout_ms: u64) -> Reassembler {
        Reassembler {
            fragment_len,
            timeout_ms,
            partial: None,
            discarding: false,
        }
    }

    /// Changes the accepted fragment length (after MTU negotiation). Drops any
    /// partial message: its fragments were cut for the old length.
    pub fn set_fragment_len(&mut self, fragment_len: FragmentLen) {
        self.fragment_len = fragment_len;
        self.reset();
    }

    pub fn reset(&mut self) {
        self.partial = None;
        self.discarding = false;
    }

    /// Whether a message is partly received.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// When the partial message times out, if there is one.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.partial
            .as_ref()
            .map(|p| p.last_fragment_ms.saturating_add(self.timeout_ms))
    }

    /// Reports (once) a partial message that waited too long, and drops it.
    pub fn poll(&mut self, now_ms: u64) -> Result<(), FrameError> {
        match self.deadline_ms() {
            Some(deadline) if now_ms >= deadline => {
                self.fail();
                Err(FrameError::Timeout)
            }
            _ => Ok(()),
        }
    }

    fn fail(&mut self) {
        self.partial = None;
        self.discarding = true;
    }

    /// Takes one fragment. `Ok(Some(_))` when it completed a message,
    /// `Ok(None)` when more is needed or the fragment was discarded.
    pub fn push(&mut self, fragment: &[u8], now_ms: u64) -> Result<Option<Message>, FrameError> {
        if fragment.len() > self.fragment_len.get() {
            self.fail();
            return Err(FrameError::FragmentTooLong {
                len: fragment.len(),
                max: self.fragment_len.get(),
            });
        }
        let parsed = match Fragment::try_from(fragment) {
            Ok(f) => f,
            Err(e) => {
                self.fail();
                return Err(e);
            }
        };
        match parsed {
            Fragment::Init { cmd, len, data } => {
                // Whatever was in progress is abandoned: the sender started over.
                self.partial = None;
                self.discarding = false;
                if len > MESSAGE_LEN_MAX {
                    self.fail();
                    return Err(FrameError::LengthTooLarge {
                        declared: len,
                        max: MESSAGE_LEN_MAX,
                    });
                }
                if data.len() > len {
                    self.fail();
                    return Err(FrameError::Overflow);
                }
                if data.len() == len {
                    return Ok(Some(Message::new(cmd, data)));
                }
                // Grows with what arrives; `len` is bounded, so reserving it
                // would be safe too, but an INIT alone should not cost 8 KiB.
                self.partial = Some(Partial {
                    cmd,
                    declared: len,
                    data: data.to_vec(),
                    next_seq: 0,
                    last_fragment_ms: now_ms,
                });
                Ok(None)
            }
            Fragment::Cont { seq, data } => {
                // A partial message past its deadline is gone, whatever arrives.
                if self.deadline_ms().is_some_and(|d| now_ms >= d) {
                    self.fail();
                    return Err(FrameError::Timeout);
                }
                let Some(partial) = self.partial.as_mut() else {
                    if self.discarding {
                        return Ok(None);
                    }
                    self.fail();
                    return Err(FrameError::UnexpectedCont);
                };
                if seq != partial.next_seq {
                    let expected = partial.next_seq;
                    self.fail();
                    return Err(FrameError::WrongSequence { expected, got: seq });
                }
                if partial.data.len().saturating_add(data.len()) > partial.declared {
                    self.fail();
                    return Err(FrameError::Overflow);
                }
                partial.data.extend_from_slice(data);
                partial.next_seq = if seq == SEQ_MAX { 0 } else { seq + 1 };
                partial.last_fragment_ms = now_ms;
                if partial.data.len() == partial.declared {
                    let done = self.partial.take();
                    return Ok(done.map(|p| Message::new(p.cmd, p.data)));
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::frame::{ErrorCode, Fragments, FRAGMENT_LEN_MAX, FRAGMENT_LEN_MIN};
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    fn reassembler() -> Reassembler {
        Reassembler::new(FragmentLen::MIN, 1_000)
    }

    fn round_trip(cmd: Cmd, data: &[u8], len: FragmentLen) -> Message {
        let mut r = Reassembler::new(len, 1_000);
        let frags: Vec<_> = Fragments::new(cmd, data, len).unwrap().collect();
        assert_eq!(frags.len(), Fragments::count(data.len(), len));
        let mut out = None;
        for (i, f) in frags.iter().enumerate() {
            assert!(f.len() <= len.get());
            let got = r.push(f, i as u64).unwrap();
            assert_eq!(got.is_some(), i + 1 == frags.len(), "fragment {i}");
            out = got;
        }
        out.unwrap()
    }

    #[test]
    fn every_fragment_length_in_range_round_trips() {
        // Sizes around the boundaries where the INIT fills exactly, where the
        // sequence wraps, and the largest message.
        for len in FRAGMENT_LEN_MIN..=FRAGMENT_LEN_MAX {
            let len = FragmentLen::new(len).unwrap();
            for size in [0, 1, len.get() - 3, len.get() - 2, 2500, MESSAGE_LEN_MAX] {
                let data: Vec<u8> = (0..size)
                    .map(|i| u8::try_from(i * 7 % 256).unwrap())
                    .collect();
                let m = round_trip(Cmd::Msg, &data, len);
                assert_eq!(m.data, data, "len {len} size {size}");
            }
        }
    }

    #[test]
    fn a_huge_declared_length_is_refused_without_allocating() {
        let mut r = reassembler();
        assert_eq!(
            r.push(&h("83 FFFF 00"), 0),
            Err(FrameError::LengthTooLarge {
                declared: 65_535,
                max: MESSAGE_LEN_MAX
            })
        );
        assert!(!r.in_progress());
        // A declared length within bounds reserves nothing up front either.
        assert_eq!(r.push(&h("83 2000 00"), 0), Ok(None));
        assert!(r.partial.as_ref().unwrap().data.capacity() < 64);
    }

    #[test]
    fn out_of_sequence_and_orphan_cont_are_one_error_each() {
        let mut r = reassembler();
        assert_eq!(r.push(&h("00 AA"), 0), Err(FrameError::UnexpectedCont));
        // Further strays from the same broken message are discarded quietly.
        assert_eq!(r.push(&h("01 AA"), 0), Ok(None));
        assert_eq!(r.push(&h("83 0003 01"), 0), Ok(None));
        assert_eq!(
            r.push(&h("01 02"), 0),
            Err(FrameError::WrongSequence {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(r.push(&h("02 03"), 0), Ok(None));
        assert_eq!(FrameError::UnexpectedCont.code(), ErrorCode::InvalidSeq);
    }

    #[test]
    fn more_data_than_declared_is_an_error() {
        let mut r = reassembler();
        assert_eq!(r.push(&h("83 0001 0102"), 0), Err(FrameError::Overflow));
        assert_eq!(r.push(&h("83 0002 01"), 0), Ok(None));
        assert_eq!(r.push(&h("00 0203"), 0), Err(FrameError::Overflow));
    }

    #[test]
    fn fragments_longer_than_negotiated_are_refused() {
        let mut r = reassembler();
        let long = [vec![0x83, 0x00, 0x20], vec![0; 18]].concat();
        assert_eq!(
            r.push(&long, 0),
            Err(FrameError::FragmentTooLong { len: 21, max: 20 })
        );
    }

    #[test]
    fn a_stalled_message_times_out_once_and_a_new_init_starts_over() {
        let mut r = reassembler();
        assert_eq!(r.push(&h("83 0004 0102"), 100), Ok(None));
        assert_eq!(r.deadline_ms(), Some(1_100));
        assert_eq!(r.poll(1_099), Ok(()));
        assert_eq!(r.poll(1_100), Err(FrameError::Timeout));
        assert_eq!(r.poll(5_000), Ok(()), "reported once");
        // The late rest of the message is discarded.
        assert_eq!(r.push(&h("00 0304"), 5_001), Ok(None));
        // The sender's retry goes through.
        assert_eq!(r.push(&h("83 0004 0102"), 6_000), Ok(None));
        assert_eq!(
            r.push(&h("00 0304"), 6_001),
            Ok(Some(Message::new(Cmd::Msg, h("01020304"))))
        );
    }

    #[test]
    fn a_late_cont_is_a_timeout_even_without_poll() {
        let mut r = reassembler();
        assert_eq!(r.push(&h("83 0004 0102"), 0), Ok(None));
        assert_eq!(r.push(&h("00 0304"), 1_000), Err(FrameError::Timeout));
    }

    #[test]
    fn an_init_mid_message_restarts() {
        let mut r = reassembler();
        assert_eq!(r.push(&h("83 0004 0102"), 0), Ok(None));
        assert_eq!(
            r.push(&h("BE 0000"), 1),
            Ok(Some(Message::new(Cmd::Cancel, vec![])))
        );
        assert!(!r.in_progress());
    }

    proptest! {
        #[test]
        fn fragment_then_reassemble_is_identity(
            len in FRAGMENT_LEN_MIN..=FRAGMENT_LEN_MAX,
            data in proptest::collection::vec(any::<u8>(), 0..=MESSAGE_LEN_MAX),
        ) {
            let len = FragmentLen::new(len).unwrap();
            prop_assert_eq!(round_trip(Cmd::Msg, &data, len).data, data);
        }

        #[test]
        fn arbitrary_fragments_never_panic_and_stay_bounded(
            frags in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..64),
        ) {
            let mut r = reassembler();
            for (i, f) in frags.iter().enumerate() {
                if let Ok(Some(m)) = r.push(f, i as u64 * 100) {
                    prop_assert!(m.data.len() <= MESSAGE_LEN_MAX);
                }
                let _ = r.poll(i as u64 * 100);
            }
        }
    }
}

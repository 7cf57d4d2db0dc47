//! vsmartcard's vpcd protocol: TCP, every message a 2-byte big-endian length
//! then payload. From the reader, a 1-byte payload is control (power off/on,
//! reset, get ATR); anything longer is a command APDU. The card answers an APDU
//! (and a get-ATR) with one frame; power and reset get no answer.
//!
//! In pcscd's setup vpcd is the listening side and the card connects. KeyBridge
//! keeps that shape: [`VpcdReader`] listens like vpcd does (the relay uses it so
//! no pcscd is needed), and [`VpcdCard`] is what a card runs, whichever reader
//! (real vpcd inside pcscd, or the relay) is at the other end.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::channel::{CardChannel, LinkError};

/// A frame's payload is at most `u16::MAX` bytes by construction of the length
/// prefix; we never allocate more than that for one frame.
pub const FRAME_LEN_MAX: usize = u16::MAX as usize;

/// Control messages from reader to card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    PowerOff,
    PowerOn,
    Reset,
    GetAtr,
}

impl Control {
    pub fn byte(self) -> u8 {
        match self {
            Control::PowerOff => 0x00,
            Control::PowerOn => 0x01,
            Control::Reset => 0x02,
            Control::GetAtr => 0x04,
        }
    }

    pub fn from_byte(b: u8) -> Option<Control> {
        Some(match b {
            0x00 => Control::PowerOff,
            0x01 => Control::PowerOn,
            0x02 => Control::Reset,
            0x04 => Control::GetAtr,
            _ => return None,
        })
    }
}

/// What a card receives from its reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderMessage {
    Control(Control),
    /// A 1-byte payload that is not a known control code.
    UnknownControl(u8),
    Apdu(Vec<u8>),
}

pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u16::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "vpcd frame over 65535 bytes"))?;
    let mut frame = Vec::with_capacity(payload.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    w.write_all(&frame)?;
    w.flush()
}

/// Reads one frame. `Ok(None)` is a clean end of stream before a frame
/// began; a stream that ends inside a frame, its length prefix included, is
/// an error.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    if !crate::stream::read_header(r, &mut len)? {
        return Ok(None);
    }
    let mut payload = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// The reader side: listens, accepts one card at a time, powers it on and
/// carries APDUs to it.
#[derive(Debug)]
pub struct VpcdReader {
    listener: TcpListener,
    card: Option<TcpStream>,
    atr: Vec<u8>,
    timeout: Duration,
}

impl VpcdReader {
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<VpcdReader> {
        Ok(VpcdReader {
            listener: TcpListener::bind(addr)?,
            card: None,
            atr: Vec::new(),
            timeout: Duration::from_secs(30),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Bounds how long one APDU may take (a user confirming on the card counts).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The ATR of the connected card, once [`VpcdReader::wait_for_card`] returned.
    pub fn atr(&self) -> &[u8] {
        &self.atr
    }

    pub fn has_card(&self) -> bool {
        self.card.is_some()
    }

    /// Blocks until a card connects (up to `wait`), then asks for its ATR and
    /// powers it on, as vpcd does on insertion.
    pub fn wait_for_card(&mut self, wait: Duration) -> Result<(), LinkError> {
        if self.card.is_some() {
            return Ok(());
        }
        self.listener.set_nonblocking(true)?;
        let deadline = std::time::Instant::now() + wait;
        let stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        return Err(LinkError::Timeout);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.timeout))?;
        let mut stream = stream;
        write_frame(&mut stream, &[Control::GetAtr.byte()])?;
        self.atr = read_frame(&mut stream)?.ok_or(LinkError::CardGone)?;
        write_frame(&mut stream, &[Control::PowerOn.byte()])?;
        self.card = Some(stream);
        Ok(())
    }

    /// Drops the current card connection (as if removed).
    pub fn disconnect(&mut self) {
        if let Some(mut s) = self.card.take() {
            let _ = write_frame(&mut s, &[Control::PowerOff.byte()]);
        }
    }
}

impl CardChannel for VpcdReader {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, LinkError> {
        let stream = self.card.as_mut().ok_or(LinkError::CardGone)?;
        let result = write_frame(stream, command).and_then(|()| read_frame(stream));
        match result {
            Ok(Some(response)) => Ok(response),
            Ok(None) => {
                self.card = None;
                Err(LinkError::CardGone)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.card = None;
                Err(LinkError::Timeout)
            }
            Err(e) => {
                self.card = None;
                Err(e.into())
            }
        }
    }
}

/// The card side: connects to a reader and exchanges frames.
#[derive(Debug)]
pub struct VpcdCard {
    stream: TcpStream,
}

impl VpcdCard {
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<VpcdCard> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(VpcdCard { stream })
    }

    /// The next message from the reader; `Ok(None)` when the reader closed.
    pub fn next_message(&mut self) -> io::Result<Option<ReaderMessage>> {
        Ok(
            read_frame(&mut self.stream)?.map(|frame| match frame.as_slice() {
                [b] => Control::from_byte(*b)
                    .map(ReaderMessage::Control)
                    .unwrap_or(ReaderMessage::UnknownControl(*b)),
                _ => ReaderMessage::Apdu(frame),
            }),
        )
    }

    pub fn reply(&mut self, payload: &[u8]) -> io::Result<()> {
        write_frame(&mut self.stream, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &[0x00, 0xA4, 0x04, 0x00]).unwrap();
        write_frame(&mut buf, &[0x04]).unwrap();
        assert_eq!(&buf[..2], &[0, 4]);
        let mut r = buf.as_slice();
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some(vec![0x00, 0xA4, 0x04, 0x00])
        );
        assert_eq!(read_frame(&mut r).unwrap(), Some(vec![0x04]));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn a_truncated_frame_is_an_error_not_a_panic() {
        let mut r: &[u8] = &[0x00, 0x05, 1, 2];
        assert!(read_frame(&mut r).is_err());
        // Cut inside the length prefix: not a clean end either (found by
        // fuzz/fuzz_targets/vpcd_frames.rs).
        let mut r: &[u8] = &[0x00];
        assert!(read_frame(&mut r).is_err());
    }

    #[test]
    fn reader_and_card_talk_over_loopback() {
        let mut reader = VpcdReader::bind("127.0.0.1:0").unwrap();
        let addr = reader.local_addr().unwrap();
        let card = std::thread::spawn(move || {
            let mut card = VpcdCard::connect(addr).unwrap();
            let mut seen = Vec::new();
            while let Some(msg) = card.next_message().unwrap() {
                match &msg {
                    ReaderMessage::Control(Control::GetAtr) => card.reply(&[0x3B, 0x00]).unwrap(),
                    ReaderMessage::Apdu(_) => card.reply(&[0x90, 0x00]).unwrap(),
                    _ => {}
                }
                seen.push(msg);
            }
            seen
        });
        reader.wait_for_card(Duration::from_secs(5)).unwrap();
        assert_eq!(reader.atr(), &[0x3B, 0x00]);
        assert_eq!(
            reader.transmit_raw(&[0, 0xA4, 4, 0]).unwrap(),
            vec![0x90, 0x00]
        );
        drop(reader);
        let seen = card.join().unwrap();
        assert_eq!(
            seen,
            vec![
                ReaderMessage::Control(Control::GetAtr),
                ReaderMessage::Control(Control::PowerOn),
                ReaderMessage::Apdu(vec![0, 0xA4, 4, 0]),
            ]
        );
    }
}

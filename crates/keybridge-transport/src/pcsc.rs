//! The PC/SC link: a reader through pcscd (USB and NFC readers, and the
//! virtual card attached through vsmartcard's vpcd), with the `pcsc` crate.
//!
//! [`PcscReader`] is a [`CardChannel`]: it connects to the first reader whose
//! name contains a filter and has a card in it, and sends raw APDUs with
//! `SCardTransmit`. Any PC/SC failure drops the connection (and, when pcscd
//! itself went away, the context), so the next [`PcscReader::wait_for_card`]
//! starts over: a restarted pcscd or a re-presented card is picked up again.

use std::ffi::CString;
use std::fmt;
use std::time::{Duration, Instant};

use crate::channel::{CardChannel, LinkError};

/// How often [`PcscReader::wait_for_card`] looks again.
const POLL_INTERVAL_MS: u64 = 100;

/// A PC/SC reader, and the card in it once connected.
pub struct PcscReader {
    /// Part of a reader name; `None` takes the first reader with a card.
    filter: Option<String>,
    context: Option<pcsc::Context>,
    card: Option<(pcsc::Card, String)>,
    /// The ATR of the connected card, as pcscd reported it on connecting.
    atr: Option<Vec<u8>>,
}

impl fmt::Debug for PcscReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PcscReader")
            .field("filter", &self.filter)
            .field("connected", &self.card.as_ref().map(|(_, name)| name))
            .finish()
    }
}

fn reader_error(e: pcsc::Error) -> LinkError {
    match e {
        pcsc::Error::RemovedCard | pcsc::Error::NoSmartcard | pcsc::Error::ResetCard => {
            LinkError::CardGone
        }
        other => LinkError::Reader(other.to_string()),
    }
}

impl PcscReader {
    /// A reader whose name contains `filter` (any reader when `None`). Nothing
    /// is opened yet: pcscd may start later.
    pub fn new(filter: Option<&str>) -> PcscReader {
        PcscReader {
            filter: filter.map(str::to_owned),
            context: None,
            card: None,
            atr: None,
        }
    }

    /// The ATR of the connected card (the reader builds one for a
    /// contactless card, PC/SC part 3), read when connecting; `None` when
    /// not connected or when the reader would not tell.
    pub fn atr(&self) -> Option<&[u8]> {
        self.card.as_ref().and(self.atr.as_deref())
    }

    /// The connected reader's name.
    pub fn reader_name(&self) -> Option<&str> {
        self.card.as_ref().map(|(_, name)| name.as_str())
    }

    /// Drops the card connection (the card stays in the reader).
    pub fn disconnect(&mut self) {
        self.card = None;
        self.atr = None;
    }

    /// Every reader pcscd knows now.
    pub fn list_readers(&mut self) -> Result<Vec<String>, LinkError> {
        let context = self.context()?;
        let readers = context.list_readers_owned().map_err(|e| {
            self.context = None;
            reader_error(e)
        })?;
        Ok(readers
            .into_iter()
            .map(|r| r.to_string_lossy().into_owned())
            .collect())
    }

    fn context(&mut self) -> Result<&pcsc::Context, LinkError> {
        if self.context.is_none() {
            self.context = Some(pcsc::Context::establish(pcsc::Scope::User).map_err(reader_error)?);
        }
        self.context
            .as_ref()
            .ok_or_else(|| LinkError::Reader("no PC/SC context".into()))
    }

    /// One attempt: connect to the first matching reader that has a card.
    fn try_connect(&mut self) -> Result<(), LinkError> {
        let filter = self.filter.clone();
        let readers = self.list_readers()?;
        let context = self.context()?;
        let mut last = LinkError::Timeout;
        for name in readers
            .iter()
            .filter(|name| filter.as_deref().is_none_or(|f| name.contains(f)))
        {
            let Ok(c_name) = CString::new(name.as_str()) else {
                continue;
            };
            match context.connect(&c_name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY) {
                Ok(card) => {
                    // SCardStatus gives the ATR; a reader that fails to tell
                    // leaves it unknown (then commands are chained).
                    self.atr = card
                        .status2_owned()
                        .map(|status| status.atr().to_vec())
                        .ok()
                        .filter(|atr| !atr.is_empty());
                    self.card = Some((card, name.clone()));
                    return Ok(());
                }
                Err(e) => last = reader_error(e),
            }
        }
        Err(last)
    }

    /// Whether pcscd reports a card in the reader named exactly `reader`.
    pub fn card_present(&mut self, reader: &str) -> Result<bool, LinkError> {
        let name = CString::new(reader).map_err(|_| LinkError::Reader("reader name".into()))?;
        let mut states = [pcsc::ReaderState::new(name, pcsc::State::UNAWARE)];
        let context = self.context()?;
        if let Err(e) = context.get_status_change(Duration::ZERO, &mut states) {
            self.context = None;
            return Err(reader_error(e));
        }
        Ok(states[0].event_state().contains(pcsc::State::PRESENT))
    }

    /// Waits up to `wait` until pcscd reports no card in `reader`: a card
    /// process that was just stopped takes pcscd a moment (its ATR poll) to
    /// notice, and a connection made in that moment talks to nobody.
    pub fn wait_until_empty(&mut self, reader: &str, wait: Duration) -> Result<(), LinkError> {
        let deadline = Instant::now() + wait;
        while self.card_present(reader)? {
            if Instant::now() >= deadline {
                return Err(LinkError::Timeout);
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
        Ok(())
    }

    /// Waits up to `wait` for a matching reader with a card, and connects.
    pub fn wait_for_card(&mut self, wait: Duration) -> Result<(), LinkError> {
        if self.card.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + wait;
        loop {
            match self.try_connect() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if Instant::now() >= deadline {
                        return Err(match e {
                            LinkError::CardGone => LinkError::Timeout,
                            other => other,
                        });
                    }
                    // pcscd may have restarted: a fresh context next time.
                    if matches!(e, LinkError::Reader(_)) {
                        self.context = None;
                    }
                    std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
                }
            }
        }
    }
}

impl CardChannel for PcscReader {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, LinkError> {
        let Some((card, _)) = self.card.as_ref() else {
            return Err(LinkError::CardGone);
        };
        let mut buffer = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
        match card.transmit(command, &mut buffer) {
            // No status word: the reader lost the card during the exchange
            // (vpcd answers so when the card's connection closes; an NFC
            // card leaving the field mid-command is the same case).
            Ok(answer) if answer.len() < 2 => {
                self.card = None;
                self.atr = None;
                Err(LinkError::CardGone)
            }
            Ok(answer) => Ok(answer.to_vec()),
            Err(e) => {
                self.card = None;
                self.atr = None;
                if !matches!(
                    e,
                    pcsc::Error::RemovedCard | pcsc::Error::ResetCard | pcsc::Error::NoSmartcard
                ) {
                    self.context = None;
                }
                Err(reader_error(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A card taken out of the reader (or the NFC field), reset, or absent
    /// is `CardGone`, which the relay answers with "tap again"; anything
    /// else is a reader problem.
    #[test]
    fn removal_errors_are_card_gone() {
        for e in [
            pcsc::Error::RemovedCard,
            pcsc::Error::NoSmartcard,
            pcsc::Error::ResetCard,
        ] {
            assert!(matches!(reader_error(e), LinkError::CardGone), "{e}");
        }
        for e in [pcsc::Error::NoService, pcsc::Error::ReaderUnavailable] {
            assert!(matches!(reader_error(e), LinkError::Reader(_)), "{e}");
        }
    }
}

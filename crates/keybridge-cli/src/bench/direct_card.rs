//! A card called in-process (`--transport direct`).

use super::PIN;

/// The transaction applet on a card in this process: the same dispatcher,
/// applet and state file (written before each answer) as `keybridge card`,
/// reached by a function call instead of a socket.
pub struct DirectCard {
    card: keybridge_card::Card,
    holder: keybridge_card::QuietApprove,
    rng: rand::rngs::OsRng,
}

/// Where a direct card keeps its state between commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardState {
    /// Its state file, saved durably before each answer (as `keybridge card`).
    File,
    /// Memory only (`--transport direct-memory`).
    Memory,
}

impl DirectCard {
    pub fn new(state_path: &std::path::Path, kept: CardState) -> anyhow::Result<DirectCard> {
        keybridge_card::init_state(state_path, PIN)?;
        let state = keybridge_card::CardState::load(state_path)?;
        let store: Box<dyn keybridge_card::StateStore> = match kept {
            CardState::File => Box::new(keybridge_card::FileStore::new(state_path)),
            CardState::Memory => Box::new(keybridge_card::MemoryStore::new()),
        };
        let applet = keybridge_card::TransactionApplet::new(state, store);
        Ok(DirectCard {
            card: keybridge_card::Card::new().with_applet(Box::new(applet)),
            holder: keybridge_card::QuietApprove,
            rng: rand::rngs::OsRng,
        })
    }
}

impl keybridge_transport::CardChannel for DirectCard {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, keybridge_transport::LinkError> {
        let now_unix_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut context = keybridge_card::Context {
            holder: &mut self.holder,
            rng: &mut self.rng,
            now_unix_s,
        };
        Ok(self.card.process(command, &mut context))
    }
}

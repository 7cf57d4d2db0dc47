//! The `Store` abstraction: everything the server persists, behind one
//! object-safe async trait used as `Arc<dyn Store>`.
//!
//! Architecture invariant: handlers and the verification unit know no SQL.
//! A backend implements each method atomically (one database transaction per
//! call); the money rules themselves live in [`crate::payment`] and the audit
//! hash in [`audit`], so a second backend (PostgreSQL) shares them.

pub mod audit;
pub mod books;
#[cfg(test)]
pub(crate) mod contract;
pub mod postgres;
mod records;
mod rows;
pub(crate) mod sqlite;
mod web;

use async_trait::async_trait;
use keybridge_proto::api::{Reason, TransactionStatus};
use keybridge_proto::{AccountId, TransactionId};

pub use postgres::PgStore;
pub use records::{
    AccountRecord, AuditRecord, DeviceRecord, DeviceStatus, NewAccount, NewDevice, NewTerminal,
    OcraRecord, TerminalRecord, TransactionRecord, TransferKind, TransferRecord,
};
pub use sqlite::SqliteStore;
pub use web::{AttemptResult, DeliveryRecord, DeliveryState, WebStore, WebhookRecord};

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A record with this id (or unique key) already exists.
    #[error("already exists")]
    AlreadyExists,
    /// The referenced account does not exist or may not be used here.
    #[error("unknown account")]
    UnknownAccount,
    /// A balance would leave the i64 range: an operating limit, not a bug.
    #[error("balance out of range")]
    BalanceOverflow,
    /// A stored value does not decode (corruption or a bug in a migration).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The audit log's hash chain breaks at this sequence number.
    #[error("audit chain broken at seq {seq}")]
    AuditChainBroken { seq: u64 },
    /// The database itself failed. The text may hold internals: log it, never send it.
    #[error("backend: {0}")]
    Backend(String),
}

/// What [`Store::create_transaction`] reads by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreationKeys {
    pub terminal_id: String,
    pub idempotency_key: String,
    pub payer: AccountId,
    pub payee: AccountId,
    /// Pending transactions expiring at or before this are not counted in
    /// [`CreationFacts::payer_pending`]: they are over, swept or not.
    pub now_unix_s: u64,
    /// Counting the payer's pending transactions stops here: the rules only
    /// ask whether the payer is at the limit.
    pub pending_count_max: u64,
}

/// What deciding on a new transaction needs to know, read by
/// [`Store::create_transaction`] in the same database transaction as the insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreationFacts {
    pub payer: Option<AccountRecord>,
    pub payee: Option<AccountRecord>,
    /// The payer's active, unrevoked devices (as [`Store::count_active_devices`]).
    pub payer_active_devices: u64,
    /// The payer's transactions waiting for confirmation (pending, expiring
    /// after [`CreationKeys::now_unix_s`]), counted up to
    /// [`CreationKeys::pending_count_max`]. On PostgreSQL the count and the
    /// insert hold a lock per payer, so instances creating for one payer at
    /// once take turns and none counts past another's insert.
    pub payer_pending: u64,
}

/// Builds the new transaction from the facts, or `None` to refuse it (the
/// caller learns why from the facts it gets back). Runs inside the store's
/// write, so it must be quick and must not block.
pub type BuildTransaction = Box<dyn FnOnce(&CreationFacts) -> Option<TransactionRecord> + Send>;

/// Result of [`Store::create_transaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Stored `pending`, exactly as built.
    Created(TransactionRecord),
    /// This terminal already created a transaction with this key (the caller
    /// compares the request hash): nothing was built.
    Existing(TransactionRecord),
    /// `build` refused; nothing was stored.
    Refused(CreationFacts),
}

/// Result of [`Store::insert_transaction`]: the unique index on
/// `(terminal_id, idempotency_key)` decides which request created the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    Created(TransactionRecord),
    /// Another request with the same terminal and key got there first.
    Existing(TransactionRecord),
}

/// Result of a compare-and-set from `pending` to a final status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finalized {
    /// This call ended the transaction; the record shows the new status.
    Applied(TransactionRecord),
    /// The transaction had already ended; the record shows how.
    NotPending(TransactionRecord),
    NotFound,
}

/// Names the answer that ended a transaction: see `verify::answer_digest`.
/// Stored with the end, so that the same answer posted again is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerDigest(pub [u8; 32]);

/// A signed confirmation that passed the verification unit, for the payment unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedConfirmation {
    pub transaction_id: TransactionId,
    pub device_id: String,
    /// The answer as received, stored with whatever end it brings.
    pub answer: Option<AnswerDigest>,
    /// The card's counter to consume; `None` for methods without one (PIV).
    pub counter: Option<u32>,
    pub now_unix_s: u64,
    /// The reason for a counter that did not move forward: `counter_replay`
    /// for signatures, `response_reused` for OCRA.
    pub replay_reason: Reason,
}

#[async_trait]
pub trait Store: WebStore + Send + Sync + std::fmt::Debug {
    // Accounts.
    /// Creates the account and, on demand, the currency's issuance account, and
    /// funds the opening balance with one transfer from it. `AlreadyExists` if taken.
    async fn create_account(
        &self,
        account: NewAccount,
        now_unix_s: u64,
    ) -> Result<AccountRecord, StoreError>;
    async fn get_account(&self, id: &AccountId) -> Result<Option<AccountRecord>, StoreError>;
    /// Every account, system accounts included, ordered by id.
    async fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError>;

    // Terminals.
    async fn create_terminal(&self, terminal: NewTerminal) -> Result<TerminalRecord, StoreError>;
    /// Every terminal, disabled ones included, ordered by id.
    async fn list_terminals(&self) -> Result<Vec<TerminalRecord>, StoreError>;
    async fn get_terminal(&self, terminal_id: &str) -> Result<Option<TerminalRecord>, StoreError>;
    /// Disables the terminal (once, audited); `None` if there is none.
    async fn disable_terminal(
        &self,
        terminal_id: &str,
        now_unix_s: u64,
    ) -> Result<Option<TerminalRecord>, StoreError>;
    /// Gives an enabled terminal a new API key (by its hash), audited; the
    /// old key authenticates nothing from the commit on. `None` if there is
    /// no such terminal; a disabled one is returned unchanged.
    async fn rotate_terminal_key(
        &self,
        terminal_id: &str,
        api_key_hash: [u8; 32],
        now_unix_s: u64,
    ) -> Result<Option<TerminalRecord>, StoreError>;
    async fn terminal_by_key_hash(
        &self,
        api_key_hash: [u8; 32],
    ) -> Result<Option<TerminalRecord>, StoreError>;

    // Devices.
    /// `UnknownAccount` if the account is missing or a system account.
    async fn create_device(&self, device: NewDevice) -> Result<DeviceRecord, StoreError>;
    async fn device_by_credential_hash(
        &self,
        credential_hash: [u8; 32],
    ) -> Result<Option<DeviceRecord>, StoreError>;
    async fn list_devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Marks the device disabled (idempotent). `None` if there is no such device.
    async fn disable_device(
        &self,
        device_id: &str,
        now_unix_s: u64,
    ) -> Result<Option<DeviceRecord>, StoreError>;
    /// Active devices whose certificate is not revoked.
    async fn count_active_devices(&self, account: &AccountId) -> Result<u64, StoreError>;
    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError>;
    /// Sets the label. `None` if there is no such device.
    async fn rename_device(
        &self,
        device_id: &str,
        label: &str,
        now_unix_s: u64,
    ) -> Result<Option<DeviceRecord>, StoreError>;
    /// Revokes the device's certificate (or OCRA secret): once, for good, audited.
    /// `None` if there is no such device.
    async fn revoke_device(
        &self,
        device_id: &str,
        now_unix_s: u64,
    ) -> Result<Option<DeviceRecord>, StoreError>;

    // Transactions.
    /// In one database transaction: answers a replay of `(terminal,
    /// idempotency key)` with the existing transaction; otherwise reads both
    /// accounts and the payer's device count, lets `build` decide, and inserts
    /// what it built (with its audit row) as [`Store::insert_transaction`].
    async fn create_transaction(
        &self,
        keys: CreationKeys,
        build: BuildTransaction,
    ) -> Result<CreateOutcome, StoreError>;
    /// Inserts a new `pending` transaction and its audit row.
    async fn insert_transaction(
        &self,
        transaction: TransactionRecord,
    ) -> Result<InsertOutcome, StoreError>;
    async fn get_transaction(
        &self,
        id: &TransactionId,
    ) -> Result<Option<TransactionRecord>, StoreError>;
    /// Newest first.
    async fn list_transactions(&self, limit: u32) -> Result<Vec<TransactionRecord>, StoreError>;
    /// The next page of [`Store::list_transactions`]: up to `limit` made
    /// before `before`, newest first; `None` if there is no `before`.
    async fn transactions_before(
        &self,
        before: &TransactionId,
        limit: u32,
    ) -> Result<Option<Vec<TransactionRecord>>, StoreError>;
    /// Pending transactions of `payer` whose expiry is still ahead of `now`.
    async fn pending_for_payer(
        &self,
        payer: &AccountId,
        now_unix_s: u64,
    ) -> Result<Vec<TransactionRecord>, StoreError>;
    /// Ends a pending transaction without moving money (a rejected or
    /// declined answer), with an audit row; `answer` names the answer that
    /// ended it, if one did.
    async fn finalize(
        &self,
        id: &TransactionId,
        status: TransactionStatus,
        reason: Reason,
        answer: Option<AnswerDigest>,
        now_unix_s: u64,
    ) -> Result<Finalized, StoreError>;
    /// The payment unit: in one database transaction, re-checks `pending`, the
    /// device and its counter, consumes the counter, and settles (one transfer)
    /// or fails for insufficient funds. Rules: [`crate::payment::decide`].
    async fn apply_signed_confirmation(
        &self,
        confirmation: SignedConfirmation,
    ) -> Result<Finalized, StoreError>;
    /// Expires every pending transaction with `expires_at <= now`; returns them.
    async fn expire_due(&self, now_unix_s: u64) -> Result<Vec<TransactionRecord>, StoreError>;
    /// The answer that ended this transaction, if an answer did.
    async fn ending_answer(&self, id: &TransactionId) -> Result<Option<AnswerDigest>, StoreError>;

    // Ledger and audit.
    async fn transfers_for_transaction(
        &self,
        id: &TransactionId,
    ) -> Result<Vec<TransferRecord>, StoreError>;
    /// At most `limit` audit rows with `seq > after_seq`, in `seq` order.
    /// From the start (`after_seq` 0) it holds every row committed before
    /// the call.
    async fn audit_page(&self, after_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// Every audit row that names this transaction, in `seq` order: its
    /// story (created, then how it ended). It holds every row committed
    /// before the call.
    async fn audit_for_transaction(
        &self,
        id: &TransactionId,
    ) -> Result<Vec<AuditRecord>, StoreError>;

    /// Reads the books back in one snapshot and counts what breaks each of
    /// their rules (`books::BooksRule`): balanced when nothing does.
    async fn check_books(&self) -> Result<books::BooksCheck, StoreError>;

    /// The whole audit log, in `seq` order.
    async fn audit_log(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let mut rows: Vec<AuditRecord> = Vec::new();
        loop {
            let after = rows.last().map_or(0, |r| r.seq);
            let page = self.audit_page(after, AUDIT_PAGE).await?;
            let done = page.len() < AUDIT_PAGE as usize;
            rows.extend(page);
            if done {
                return Ok(rows);
            }
        }
    }

    /// Recomputes the hash chain from its first row, a page at a time; the
    /// check as far as it got, and where it broke if it did.
    async fn check_audit_chain(&self) -> Result<(audit::ChainCheck, Option<u64>), StoreError> {
        self.check_audit_chain_in_pages(AUDIT_PAGE).await
    }

    /// [`Store::check_audit_chain`] reading `page` rows at a time.
    async fn check_audit_chain_in_pages(
        &self,
        page: u32,
    ) -> Result<(audit::ChainCheck, Option<u64>), StoreError> {
        let mut check = audit::ChainCheck::default();
        let mut after = 0;
        loop {
            let rows = self.audit_page(after, page).await?;
            match check.feed(&rows) {
                Ok(()) => {}
                Err(StoreError::AuditChainBroken { seq }) => return Ok((check, Some(seq))),
                Err(e) => return Err(e),
            }
            match rows.last() {
                Some(last) if rows.len() == page as usize => after = last.seq,
                _ => return Ok((check, None)),
            }
        }
    }

    /// Recomputes the hash chain; returns the number of rows checked.
    async fn verify_audit_chain(&self) -> Result<u64, StoreError> {
        match self.check_audit_chain().await? {
            (check, None) => Ok(check.rows()),
            (_, Some(seq)) => Err(StoreError::AuditChainBroken { seq }),
        }
    }
}

/// Rows per page when the store reads the whole audit log.
const AUDIT_PAGE: u32 = 1_000;

//! The books, read back: the double-entry rules every committed state keeps,
//! each as one query that counts what breaks it. Both backends run the same
//! SQL, inside one read-only snapshot, so a payment committing meanwhile is
//! either wholly in the check or not at all.
//!
//! The store keeps these rules by construction (a settle writes its status,
//! its transfer and both balances in one transaction); this check is how an
//! operator, a backup or a test sees that it did, without trusting the code
//! that wrote them.

/// One rule of the books.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BooksRule {
    /// Each account's balance is the sum of the transfers that credit it
    /// minus those that debit it.
    BalanceIsItsTransfers,
    /// Each currency's balances sum to zero: the issuance accounts hold the
    /// opposite of every opening balance.
    CurrencySumsToZero,
    /// A settled transaction has its payment transfer.
    SettledHasItsTransfer,
    /// A payment transfer belongs to a settled transaction (at most one per
    /// transaction: the unique index on `transfers.transaction_id`).
    TransferHasItsSettlement,
}

impl BooksRule {
    pub const ALL: [BooksRule; 4] = [
        BooksRule::BalanceIsItsTransfers,
        BooksRule::CurrencySumsToZero,
        BooksRule::SettledHasItsTransfer,
        BooksRule::TransferHasItsSettlement,
    ];

    /// The machine-readable name, as the API reports a broken rule.
    pub fn code(self) -> &'static str {
        match self {
            BooksRule::BalanceIsItsTransfers => "balance_is_its_transfers",
            BooksRule::CurrencySumsToZero => "currency_sums_to_zero",
            BooksRule::SettledHasItsTransfer => "settled_has_its_transfer",
            BooksRule::TransferHasItsSettlement => "transfer_has_its_settlement",
        }
    }

    /// What a nonzero count of this rule's query is a count of.
    pub fn breaches(self) -> &'static str {
        match self {
            BooksRule::BalanceIsItsTransfers => {
                "accounts hold a balance their transfers do not add up to"
            }
            BooksRule::CurrencySumsToZero => "currencies' balances do not sum to zero",
            BooksRule::SettledHasItsTransfer => "settled transactions without their transfer",
            BooksRule::TransferHasItsSettlement => {
                "payment transfers without a settled transaction"
            }
        }
    }

    /// Counts the rows that break the rule (standard SQL: both backends).
    pub(crate) fn count_sql(self) -> &'static str {
        match self {
            BooksRule::BalanceIsItsTransfers => {
                "SELECT COUNT(*) FROM accounts AS a
                 LEFT JOIN (
                     SELECT account, SUM(delta) AS net FROM (
                         SELECT credit_account AS account, amount_minor AS delta FROM transfers
                         UNION ALL
                         SELECT debit_account, -amount_minor FROM transfers
                     ) AS moves GROUP BY account
                 ) AS t ON t.account = a.id
                 WHERE a.balance_minor <> COALESCE(t.net, 0)"
            }
            BooksRule::CurrencySumsToZero => {
                "SELECT COUNT(*) FROM (
                     SELECT currency FROM accounts GROUP BY currency
                     HAVING SUM(balance_minor) <> 0
                 ) AS unbalanced"
            }
            BooksRule::SettledHasItsTransfer => {
                "SELECT COUNT(*) FROM transactions AS t
                 WHERE t.status = 'settled'
                   AND NOT EXISTS (SELECT 1 FROM transfers AS f
                                   WHERE f.transaction_id = t.id AND f.kind = 'payment')"
            }
            BooksRule::TransferHasItsSettlement => {
                "SELECT COUNT(*) FROM transfers AS f
                 WHERE f.kind = 'payment'
                   AND NOT EXISTS (SELECT 1 FROM transactions AS t
                                   WHERE t.id = f.transaction_id AND t.status = 'settled')"
            }
        }
    }
}

/// Counts of the accounts and transfers checked.
pub(crate) const ACCOUNTS_SQL: &str = "SELECT COUNT(*) FROM accounts";
pub(crate) const TRANSFERS_SQL: &str = "SELECT COUNT(*) FROM transfers";

/// The books as one snapshot held them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BooksCheck {
    pub accounts: u64,
    pub transfers: u64,
    /// Each rule broken, with how many rows break it; empty when balanced.
    pub broken: Vec<(BooksRule, u64)>,
}

impl BooksCheck {
    pub fn balanced(&self) -> bool {
        self.broken.is_empty()
    }

    /// Each broken rule as "N what", for logs and errors.
    pub fn describe_broken(&self) -> String {
        self.broken
            .iter()
            .map(|(rule, n)| format!("{n} {}", rule.breaches()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

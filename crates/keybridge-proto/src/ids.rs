//! Identifier newtypes. Each one validates on construction ("parse, don't validate"),
//! so code holding an `AccountId` never re-checks it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("account id must be 1 to {max} characters of A-Z a-z 0-9 - _ . :", max = AccountId::LEN_MAX)]
    Account,
    #[error("transaction id must be 32 hexadecimal digits")]
    Transaction,
}

/// A transaction id: 128 bits (the server's are a millisecond time prefix and
/// 80 random bits), shown as 32 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId(pub [u8; 16]);

impl TransactionId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransactionId({})", self.to_hex())
    }
}

impl FromStr for TransactionId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<TransactionId, IdError> {
        let mut out = [0u8; 16];
        if s.len() != 32
            || !s
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(IdError::Transaction);
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| IdError::Transaction)?;
        Ok(TransactionId(out))
    }
}

impl Serialize for TransactionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for TransactionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TransactionId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The 32-byte single-use challenge inside a confirmation payload.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Challenge(pub [u8; 32]);

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Challenge({})", hex::encode(self.0))
    }
}

/// A ledger account identifier, such as `alice` or `CN-6222-0001`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

impl AccountId {
    /// IBANs are at most 34 characters; we allow the same.
    pub const LEN_MAX: usize = 34;

    pub fn new(s: &str) -> Result<AccountId, IdError> {
        let ok = !s.is_empty()
            && s.len() <= Self::LEN_MAX
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if ok {
            Ok(AccountId(s.to_owned()))
        } else {
            Err(IdError::Account)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({})", self.0)
    }
}

impl FromStr for AccountId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<AccountId, IdError> {
        AccountId::new(s)
    }
}

impl TryFrom<String> for AccountId {
    type Error = IdError;
    fn try_from(s: String) -> Result<AccountId, IdError> {
        AccountId::new(&s)
    }
}

impl From<AccountId> for String {
    fn from(a: AccountId) -> String {
        a.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids() {
        assert!(AccountId::new("alice").is_ok());
        assert!(AccountId::new("CN-6222.0001_x:y").is_ok());
        assert!(AccountId::new("").is_err());
        assert!(AccountId::new("a b").is_err());
        assert!(AccountId::new(&"a".repeat(35)).is_err());
        assert!(AccountId::new("ü").is_err());
    }

    #[test]
    fn transaction_ids_round_trip_as_hex() {
        let id = TransactionId([0xab; 16]);
        assert_eq!(id.to_hex().parse::<TransactionId>().unwrap(), id);
        assert!("AB".repeat(16).parse::<TransactionId>().is_err());
        assert!("zz".repeat(16).parse::<TransactionId>().is_err());
        assert!("ab".parse::<TransactionId>().is_err());
    }
}

//! Money as integer minor units plus an ISO 4217 currency.
//!
//! Amounts are parsed from and formatted to decimal strings digit by digit:
//! no floating point is involved anywhere, so `12.34 CNY` is exactly `1234` fen.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An ISO 4217 alphabetic code known to KeyBridge, with its minor-unit exponent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

/// ISO 4217 codes we accept, with their minor-unit exponents (ISO 4217, table A.1).
/// A currency outside this table is refused rather than guessed.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PLN", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

/// Why an amount or currency was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoneyError {
    #[error("unknown ISO 4217 currency code")]
    UnknownCurrency,
    #[error("amount is not a decimal number")]
    Malformed,
    #[error("amount has more decimal places than the currency allows")]
    TooPrecise,
    #[error("amount is too large")]
    Overflow,
}

impl Currency {
    /// Looks up an ISO 4217 alphabetic code (upper case).
    pub fn from_code(code: &str) -> Result<Currency, MoneyError> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(c, exponent)| {
                let b = c.as_bytes();
                Currency {
                    code: [b[0], b[1], b[2]],
                    exponent: *exponent,
                }
            })
            .ok_or(MoneyError::UnknownCurrency)
    }

    pub fn from_bytes(code: &[u8]) -> Result<Currency, MoneyError> {
        let code = std::str::from_utf8(code).map_err(|_| MoneyError::UnknownCurrency)?;
        Currency::from_code(code)
    }

    pub fn code(&self) -> &str {
        // The code is always one of the ASCII entries of `CURRENCIES`.
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    pub fn as_bytes(&self) -> [u8; 3] {
        self.code
    }

    /// Number of decimal digits of the minor unit (2 for CNY, 0 for JPY, 3 for KWD).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Currency, MoneyError> {
        Currency::from_code(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_owned()
    }
}

/// An amount of money: minor units and their currency.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Money {
    pub minor_units: u64,
    pub currency: Currency,
}

impl Money {
    pub fn new(minor_units: u64, currency: Currency) -> Money {
        Money {
            minor_units,
            currency,
        }
    }

    /// Parses a decimal major-unit string such as `12.34` for the currency.
    /// `12.3` is `1230` minor units for CNY; `12.345` is refused for CNY.
    pub fn parse_major(text: &str, currency: Currency) -> Result<Money, MoneyError> {
        let (whole, fraction) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || (text.contains('.') && !digits(fraction)) {
            return Err(MoneyError::Malformed);
        }
        let exponent = usize::from(currency.exponent);
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > exponent {
            return Err(MoneyError::TooPrecise);
        }
        let mut minor: u64 = 0;
        let padded = format!("{fraction:0<exponent$}");
        for b in whole.bytes().chain(padded.bytes()) {
            minor = minor
                .checked_mul(10)
                .and_then(|m| m.checked_add(u64::from(b - b'0')))
                .ok_or(MoneyError::Overflow)?;
        }
        Ok(Money::new(minor, currency))
    }

    /// The amount in major units as a decimal string, without the currency: `12.34`.
    pub fn major_string(&self) -> String {
        let exponent = u32::from(self.currency.exponent);
        if exponent == 0 {
            return self.minor_units.to_string();
        }
        let scale = 10u64.pow(exponent);
        format!(
            "{}.{:0width$}",
            self.minor_units / scale,
            self.minor_units % scale,
            width = usize::from(self.currency.exponent)
        )
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.currency, self.major_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cny() -> Currency {
        Currency::from_code("CNY").unwrap()
    }

    #[test]
    fn parses_exact_minor_units() {
        let check = |text: &str, code: &str, minor: u64| {
            let c = Currency::from_code(code).unwrap();
            assert_eq!(
                Money::parse_major(text, c).unwrap().minor_units,
                minor,
                "{text}"
            );
        };
        check("12.34", "CNY", 1234);
        check("12.3", "CNY", 1230);
        check("12", "CNY", 1200);
        check("0.01", "CNY", 1);
        check("12.340", "CNY", 1234);
        check("500", "JPY", 500);
        check("1.005", "KWD", 1005);
    }

    #[test]
    fn refuses_bad_amounts() {
        let c = cny();
        assert_eq!(Money::parse_major("1.234", c), Err(MoneyError::TooPrecise));
        for bad in ["", ".5", "5.", "-1", "1e3", "1,00", " 1", "١٢"] {
            assert_eq!(
                Money::parse_major(bad, c),
                Err(MoneyError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            Money::parse_major("184467440737095516.16", c),
            Err(MoneyError::Overflow)
        );
        assert_eq!(Currency::from_code("XXX"), Err(MoneyError::UnknownCurrency));
        assert_eq!(Currency::from_code("cny"), Err(MoneyError::UnknownCurrency));
    }

    #[test]
    fn formats_for_the_currency() {
        assert_eq!(Money::new(1234, cny()).to_string(), "CNY 12.34");
        assert_eq!(Money::new(5, cny()).to_string(), "CNY 0.05");
        let jpy = Currency::from_code("JPY").unwrap();
        assert_eq!(Money::new(500, jpy).to_string(), "JPY 500");
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(minor in any::<u64>(), idx in 0usize..CURRENCIES.len()) {
            let c = Currency::from_code(CURRENCIES[idx].0).unwrap();
            let m = Money::new(minor, c);
            prop_assert_eq!(Money::parse_major(&m.major_string(), c).unwrap(), m);
        }
    }
}

//! OCRA, the OATH Challenge-Response Algorithm (RFC 6287): a suite parser and
//! a calculator, shared by the card (which answers) and the server (which
//! recomputes). No IO, no clock: the time step comes in as a number.
//!
//! ```text
//! OCRASuite = "OCRA-1:" CryptoFunction ":" DataInput
//! CryptoFunction = "HOTP-" ("SHA1" | "SHA256" | "SHA512") "-" t     t = 0 | 4..=10
//! DataInput = ["C-"] "Q" ("A" | "N" | "H") xx ["-P" H] ["-S" nnn] ["-T" G]
//!             xx = 04..=64, H = SHA1 | SHA256 | SHA512, nnn = 001..=512,
//!             G = 1..=59 "S" | 1..=59 "M" | 1..=48 "H"   (erratum 3729: no 0H)
//! ```
//!
//! The HMAC input is `suite ‖ 00 ‖ C (8) ‖ Q (128) ‖ P (hash) ‖ S (nnn) ‖ T (8)`
//! with only the fields the suite names (RFC 6287 §5.1). The question is
//! left-justified and zero-padded to 128 bytes: QA as its ASCII bytes, QH as
//! its hex digits, QN as the hex digits of the decimal number (the reference
//! implementation in RFC 6287 Appendix A packs nibbles, so an odd number of
//! digits leaves a half byte of padding). Truncation is RFC 4226 §5.3's
//! dynamic truncation; `t = 0` answers the whole HMAC in lower-case hex.
//!
//! A question may be up to twice `xx` long: mutual challenge-response
//! (RFC 6287 §7.3) concatenates the client's and the server's questions under
//! one `QA08` suite, and Appendix C's vectors do exactly that.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Bytes of the question field in the HMAC input.
pub const QUESTION_FIELD_LEN: usize = 128;
/// Shortest and longest question a suite may name (`QF04` … `QF64`).
pub const QUESTION_LEN_MIN: u8 = 4;
pub const QUESTION_LEN_MAX: u8 = 64;
/// Longest session information a suite may name (`S512`).
pub const SESSION_LEN_MAX: u16 = 512;
/// Longest suite string we parse; real ones are under 40 characters.
pub const SUITE_LEN_MAX: usize = 64;
/// Longest key we accept: HMAC hashes longer keys anyway, so this only bounds memory.
pub const KEY_LEN_MAX: usize = 128;

/// Why a suite or an input was refused. Each names the part that is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OcraError {
    #[error("the suite does not start with OCRA-1:")]
    Version,
    #[error("the crypto function is not HOTP-SHA1/256/512-t with t = 0 or 4..10")]
    CryptoFunction,
    #[error("the data input is not [C-]Qfxx[-Ph][-Snnn][-Tg] in that order")]
    DataInput,
    #[error("the suite is longer than {SUITE_LEN_MAX} bytes")]
    SuiteTooLong,
    #[error("the suite names a counter but none was given, or the reverse")]
    Counter,
    #[error("the question is empty, too long, or has characters its format forbids")]
    Question,
    #[error("the suite names a PIN hash but none was given (or it has the wrong length), or the reverse")]
    Pin,
    #[error("the suite names session information but none was given (or it is too long), or the reverse")]
    Session,
    #[error("the suite names a time step but no time was given, or the reverse")]
    Timestamp,
    #[error("the key is empty or longer than {KEY_LEN_MAX} bytes")]
    Key,
}

/// The HMAC's hash, also used for the PIN hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgorithm {
    fn parse(s: &str) -> Option<HashAlgorithm> {
        match s {
            "SHA1" => Some(HashAlgorithm::Sha1),
            "SHA256" => Some(HashAlgorithm::Sha256),
            "SHA512" => Some(HashAlgorithm::Sha512),
            _ => None,
        }
    }

    pub fn output_len(self) -> usize {
        match self {
            HashAlgorithm::Sha1 => 20,
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha512 => 64,
        }
    }

    pub fn digest(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            HashAlgorithm::Sha1 => Sha1::digest(bytes).to_vec(),
            HashAlgorithm::Sha256 => Sha256::digest(bytes).to_vec(),
            HashAlgorithm::Sha512 => Sha512::digest(bytes).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        // `new_from_slice` accepts every key length for HMAC; the error arm
        // is unreachable but costs nothing to handle as "no output".
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            match <M as hmac::digest::KeyInit>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(message);
                    mac.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            }
        }
        match self {
            HashAlgorithm::Sha1 => run::<Hmac<Sha1>>(key, message),
            HashAlgorithm::Sha256 => run::<Hmac<Sha256>>(key, message),
            HashAlgorithm::Sha512 => run::<Hmac<Sha512>>(key, message),
        }
    }
}

/// How the question is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuestionFormat {
    /// `QA`: printable ASCII.
    Alphanumeric,
    /// `QN`: decimal digits.
    Numeric,
    /// `QH`: hexadecimal digits.
    Hex,
}

/// A time step `G` in seconds, with the unit the suite wrote it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeStep {
    seconds: u64,
}

impl TimeStep {
    fn parse(s: &str) -> Option<TimeStep> {
        let (number, unit) = s.split_at_checked(s.len().checked_sub(1)?)?;
        let n = parse_decimal_canonical(number, 2)?;
        let (max, scale) = match unit {
            "S" => (59, 1),
            "M" => (59, 60),
            // Erratum 3729 (verified): hours are 1..48; "0H" is an editorial slip.
            "H" => (48, 3600),
            _ => return None,
        };
        (1..=max)
            .contains(&n)
            .then_some(TimeStep { seconds: n * scale })
    }

    pub fn seconds(self) -> u64 {
        self.seconds
    }

    /// The time-step count `T` for a Unix time: whole steps since the epoch.
    pub fn steps_at(self, unix_s: u64) -> u64 {
        unix_s / self.seconds
    }
}

/// A parsed OCRA suite. Built only by [`Suite::parse`], so every value is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suite {
    text: String,
    hash: HashAlgorithm,
    digits: u8,
    counter: bool,
    question: QuestionFormat,
    question_len: u8,
    pin: Option<HashAlgorithm>,
    session_len: Option<u16>,
    time_step: Option<TimeStep>,
}

/// Parses a number written without leading zeros (`t` and `G`): two
/// spellings of one suite would be two different HMAC inputs.
fn parse_decimal_canonical(s: &str, max_len: usize) -> Option<u64> {
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    parse_decimal_exact(s, 1, max_len)
}

/// Parses `digits` only if it is exactly `min..=max` ASCII digits.
fn parse_decimal_exact(s: &str, min: usize, max: usize) -> Option<u64> {
    if s.len() < min || s.len() > max || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Suite {
    pub fn parse(text: &str) -> Result<Suite, OcraError> {
        if text.len() > SUITE_LEN_MAX {
            return Err(OcraError::SuiteTooLong);
        }
        let mut parts = text.split(':');
        if parts.next() != Some("OCRA-1") {
            return Err(OcraError::Version);
        }
        let function = parts.next().ok_or(OcraError::CryptoFunction)?;
        let data = parts.next().ok_or(OcraError::DataInput)?;
        if parts.next().is_some() {
            return Err(OcraError::DataInput);
        }

        let mut f = function.split('-');
        let (hash, digits) = match (f.next(), f.next(), f.next(), f.next()) {
            (Some("HOTP"), Some(h), Some(t), None) => {
                let hash = HashAlgorithm::parse(h).ok_or(OcraError::CryptoFunction)?;
                let t = parse_decimal_canonical(t, 2).ok_or(OcraError::CryptoFunction)?;
                if t != 0 && !(4..=10).contains(&t) {
                    return Err(OcraError::CryptoFunction);
                }
                (
                    hash,
                    u8::try_from(t).map_err(|_| OcraError::CryptoFunction)?,
                )
            }
            _ => return Err(OcraError::CryptoFunction),
        };

        let mut items = data.split('-').peekable();
        let counter = items.next_if_eq(&"C").is_some();
        let q = items.next().ok_or(OcraError::DataInput)?;
        let (question, len) = match q.split_at_checked(2) {
            Some(("QA", n)) => (QuestionFormat::Alphanumeric, n),
            Some(("QN", n)) => (QuestionFormat::Numeric, n),
            Some(("QH", n)) => (QuestionFormat::Hex, n),
            _ => return Err(OcraError::DataInput),
        };
        let question_len = parse_decimal_exact(len, 2, 2)
            .filter(|n| (u64::from(QUESTION_LEN_MIN)..=u64::from(QUESTION_LEN_MAX)).contains(n))
            .and_then(|n| u8::try_from(n).ok())
            .ok_or(OcraError::DataInput)?;

        let mut pin = None;
        let mut session_len = None;
        let mut time_step = None;
        // Each optional item at most once, in the order P, S, T.
        let mut order = 0;
        for item in items {
            let (rank, ok) = if let Some(h) = item.strip_prefix('P') {
                pin = HashAlgorithm::parse(h);
                (1, pin.is_some())
            } else if let Some(n) = item.strip_prefix('S') {
                session_len = parse_decimal_exact(n, 3, 3)
                    .filter(|n| (1..=u64::from(SESSION_LEN_MAX)).contains(n))
                    .and_then(|n| u16::try_from(n).ok());
                (2, session_len.is_some())
            } else if let Some(g) = item.strip_prefix('T') {
                time_step = TimeStep::parse(g);
                (3, time_step.is_some())
            } else {
                (0, false)
            };
            if !ok || rank <= order {
                return Err(OcraError::DataInput);
            }
            order = rank;
        }
        Ok(Suite {
            text: text.to_owned(),
            hash,
            digits,
            counter,
            question,
            question_len,
            pin,
            session_len,
            time_step,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
    pub fn hash(&self) -> HashAlgorithm {
        self.hash
    }
    /// 0 means the whole HMAC, in hex.
    pub fn digits(&self) -> u8 {
        self.digits
    }
    pub fn uses_counter(&self) -> bool {
        self.counter
    }
    pub fn question_format(&self) -> QuestionFormat {
        self.question
    }
    pub fn question_len(&self) -> u8 {
        self.question_len
    }
    pub fn pin_hash(&self) -> Option<HashAlgorithm> {
        self.pin
    }
    pub fn session_len(&self) -> Option<u16> {
        self.session_len
    }
    pub fn time_step(&self) -> Option<TimeStep> {
        self.time_step
    }
}

impl std::fmt::Display for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// What one computation needs besides suite and key. Every field the suite
/// names must be present, and no other.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inputs<'a> {
    pub counter: Option<u64>,
    pub question: &'a str,
    /// The PIN's hash (already hashed with the suite's P algorithm).
    pub pin_hash: Option<&'a [u8]>,
    /// Session information, at most the suite's `nnn` bytes (left-padded with zeros).
    pub session: Option<&'a [u8]>,
    /// The time-step count `T` (see [`TimeStep::steps_at`]).
    pub time_steps: Option<u64>,
}

/// Packs hex digits left-justified into the 128-byte question field.
fn pack_nibbles(nibbles: &[u8], field: &mut [u8; QUESTION_FIELD_LEN]) -> Result<(), OcraError> {
    if nibbles.len() > 2 * QUESTION_FIELD_LEN {
        return Err(OcraError::Question);
    }
    for (i, n) in nibbles.iter().enumerate() {
        let shift = if i % 2 == 0 { 4 } else { 0 };
        field[i / 2] |= n << shift;
    }
    Ok(())
}

/// Decimal digits to the hex digits of the same number (no leading zeros;
/// "0" for zero), as RFC 6287 Appendix A's `BigInteger(q, 10).toString(16)`.
fn decimal_to_hex_nibbles(digits: &[u8]) -> Vec<u8> {
    // Base 10 → base 256, most significant byte first.
    let mut number: Vec<u8> = Vec::new();
    for &d in digits {
        let mut carry = u32::from(d - b'0');
        for byte in number.iter_mut().rev() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = v.to_be_bytes()[3]; // the low byte
            carry = v >> 8;
        }
        while carry > 0 {
            number.insert(0, carry.to_be_bytes()[3]);
            carry >>= 8;
        }
    }
    let mut nibbles: Vec<u8> = number.iter().flat_map(|b| [b >> 4, b & 0x0F]).collect();
    let leading = nibbles.iter().take_while(|n| **n == 0).count();
    nibbles.drain(..leading);
    if nibbles.is_empty() {
        nibbles.push(0);
    }
    nibbles
}

fn question_field(suite: &Suite, question: &str) -> Result<[u8; QUESTION_FIELD_LEN], OcraError> {
    let max = 2 * usize::from(suite.question_len);
    if question.is_empty() || question.len() > max {
        return Err(OcraError::Question);
    }
    let mut field = [0u8; QUESTION_FIELD_LEN];
    match suite.question {
        QuestionFormat::Alphanumeric => {
            if !question.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(OcraError::Question);
            }
            field[..question.len()].copy_from_slice(question.as_bytes());
        }
        QuestionFormat::Numeric => {
            if !question.bytes().all(|b| b.is_ascii_digit()) {
                return Err(OcraError::Question);
            }
            pack_nibbles(&decimal_to_hex_nibbles(question.as_bytes()), &mut field)?;
        }
        QuestionFormat::Hex => {
            let nibbles: Option<Vec<u8>> = question
                .chars()
                .map(|c| c.to_digit(16).and_then(|d| u8::try_from(d).ok()))
                .collect();
            pack_nibbles(&nibbles.ok_or(OcraError::Question)?, &mut field)?;
        }
    }
    Ok(field)
}

/// The HMAC input for `suite` and `inputs` (RFC 6287 §5.1).
pub fn data_input(suite: &Suite, inputs: &Inputs<'_>) -> Result<Vec<u8>, OcraError> {
    let mut data = Vec::with_capacity(suite.text.len() + 1 + 8 + QUESTION_FIELD_LEN + 64 + 8);
    data.extend_from_slice(suite.text.as_bytes());
    data.push(0);
    match (suite.counter, inputs.counter) {
        (true, Some(c)) => data.extend_from_slice(&c.to_be_bytes()),
        (false, None) => {}
        _ => return Err(OcraError::Counter),
    }
    data.extend_from_slice(&question_field(suite, inputs.question)?);
    match (suite.pin, inputs.pin_hash) {
        (Some(h), Some(p)) if p.len() == h.output_len() => data.extend_from_slice(p),
        (None, None) => {}
        _ => return Err(OcraError::Pin),
    }
    match (suite.session_len, inputs.session) {
        (Some(n), Some(s)) if s.len() <= usize::from(n) => {
            data.resize(data.len() + usize::from(n) - s.len(), 0);
            data.extend_from_slice(s);
        }
        (None, None) => {}
        _ => return Err(OcraError::Session),
    }
    match (suite.time_step, inputs.time_steps) {
        (Some(_), Some(t)) => data.extend_from_slice(&t.to_be_bytes()),
        (None, None) => {}
        _ => return Err(OcraError::Timestamp),
    }
    Ok(data)
}

/// Computes the OCRA response: `digits` decimal digits, or the whole HMAC
/// in lower-case hex when the suite says `t = 0`.
pub fn compute(suite: &Suite, key: &[u8], inputs: &Inputs<'_>) -> Result<String, OcraError> {
    if key.is_empty() || key.len() > KEY_LEN_MAX {
        return Err(OcraError::Key);
    }
    let mac = suite.hash.hmac(key, &data_input(suite, inputs)?);
    if suite.digits == 0 {
        return Ok(hex::encode(mac));
    }
    // RFC 4226 §5.3: the low nibble of the last byte picks 4 bytes, top bit dropped.
    let last = *mac.last().ok_or(OcraError::Key)?;
    let offset = usize::from(last & 0x0F);
    let word: [u8; 4] = mac
        .get(offset..offset + 4)
        .and_then(|w| w.try_into().ok())
        .ok_or(OcraError::Key)?;
    let binary = u64::from(u32::from_be_bytes(word) & 0x7FFF_FFFF);
    let modulus = 10u64.pow(u32::from(suite.digits));
    Ok(format!(
        "{:0width$}",
        binary % modulus,
        width = usize::from(suite.digits)
    ))
}

/// Whether `response` is the right answer, compared in constant time.
pub fn verify(
    suite: &Suite,
    key: &[u8],
    inputs: &Inputs<'_>,
    response: &str,
) -> Result<bool, OcraError> {
    let expected = compute(suite, key, inputs)?;
    Ok(expected.len() == response.len()
        && bool::from(expected.as_bytes().ct_eq(response.as_bytes())))
}

/// The question KeyBridge's card and server derive from a confirmation
/// payload: the hex of SHA-256 over the exact payload bytes (64 hex digits,
/// for a `QH64` suite). Any change to amount, payee or anything else in the
/// payload changes the question, and so the response.
pub fn payload_question(payload: &[u8]) -> String {
    hex::encode_upper(Sha256::digest(payload))
}

/// An `otpauth`-style provisioning URI for an OCRA credential, the
/// convention of Google Authenticator's `otpauth://totp/...` applied to OCRA:
///
/// ```text
/// otpauth://ocra/<label>?secret=<RFC 4648 base32>&suite=<OCRA suite>[&counter=<C>]
/// ```
///
/// Query values may be percent-encoded (`%3A` for `:`). `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpauthUri {
    pub label: String,
    pub suite: Suite,
    pub secret: Vec<u8>,
    pub counter: u64,
}

impl std::fmt::Debug for OtpauthUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtpauthUri")
            .field("label", &self.label)
            .field("suite", &self.suite.as_str())
            .field("secret", &"<redacted>")
            .field("counter", &self.counter)
            .finish()
    }
}

/// Why a provisioning URI was refused (never echoes the secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OtpauthError {
    #[error("not an otpauth://ocra/ URI")]
    Scheme,
    #[error("the URI has no secret, or it is not base32")]
    Secret,
    #[error("the URI has no suite, or it does not parse: {0}")]
    Suite(OcraError),
    #[error("the counter is not a decimal number")]
    Counter,
    #[error("the URI is malformed (percent-encoding, repeated or unknown parameter)")]
    Malformed,
}

/// Longest provisioning URI accepted.
pub const OTPAUTH_LEN_MAX: usize = 1024;

impl OtpauthUri {
    pub fn parse(uri: &str) -> Result<OtpauthUri, OtpauthError> {
        if uri.len() > OTPAUTH_LEN_MAX {
            return Err(OtpauthError::Malformed);
        }
        let rest = uri
            .strip_prefix("otpauth://ocra/")
            .ok_or(OtpauthError::Scheme)?;
        let (label, query) = rest.split_once('?').ok_or(OtpauthError::Secret)?;
        let label = percent_decode(label).ok_or(OtpauthError::Malformed)?;
        let (mut secret, mut suite, mut counter) = (None, None, None);
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').ok_or(OtpauthError::Malformed)?;
            let v = percent_decode(v).ok_or(OtpauthError::Malformed)?;
            let slot = match k {
                "secret" => &mut secret,
                "suite" => &mut suite,
                "counter" => &mut counter,
                // Authenticator apps add `issuer`; it carries nothing we need.
                "issuer" => continue,
                _ => return Err(OtpauthError::Malformed),
            };
            if slot.replace(v).is_some() {
                return Err(OtpauthError::Malformed);
            }
        }
        let secret = secret
            .as_deref()
            .and_then(base32_decode)
            .filter(|s| !s.is_empty() && s.len() <= KEY_LEN_MAX)
            .ok_or(OtpauthError::Secret)?;
        let suite = Suite::parse(
            suite
                .as_deref()
                .ok_or(OtpauthError::Suite(OcraError::Version))?,
        )
        .map_err(OtpauthError::Suite)?;
        let counter = match counter {
            Some(c) => parse_decimal_exact(&c, 1, 20).ok_or(OtpauthError::Counter)?,
            None => 0,
        };
        let parsed = OtpauthUri {
            label,
            suite,
            secret,
            counter,
        };
        // What parses must render to a URI that parses again (the relay
        // forwards `to_uri()` to the server), and percent-encoding can make
        // the rendering up to three times as long as the text given.
        if parsed.to_uri().len() > OTPAUTH_LEN_MAX {
            return Err(OtpauthError::Malformed);
        }
        Ok(parsed)
    }

    /// The URI text (the secret in it: treat the string as a secret).
    pub fn to_uri(&self) -> String {
        format!(
            "otpauth://ocra/{}?secret={}&suite={}&counter={}",
            percent_encode(&self.label),
            base32_encode(&self.secret),
            percent_encode(self.suite.as_str()),
            self.counter
        )
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

const BASE32_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32, upper case, no padding (as authenticator URIs write it).
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(
                BASE32_ALPHABET[((buffer >> bits) & 31) as usize],
            ));
        }
    }
    if bits > 0 {
        out.push(char::from(
            BASE32_ALPHABET[((buffer << (5 - bits)) & 31) as usize],
        ));
    }
    out
}

/// Decodes RFC 4648 base32 (either case, `=` padding optional). `None` on
/// any other character or leftover bits that are not zero.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = BASE32_ALPHABET
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())?;
        buffer = (buffer << 5) | u32::try_from(v).ok()?;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xFF).to_be_bytes()[3]);
        }
        buffer &= 0xFF;
    }
    // Leftover bits must be zero padding, or the text was cut.
    (bits < 5 && buffer & ((1 << bits) - 1) == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_part_of_a_suite() {
        let s = Suite::parse("OCRA-1:HOTP-SHA512-10:C-QH64-PSHA256-S128-T30S").unwrap();
        assert_eq!(s.hash(), HashAlgorithm::Sha512);
        assert_eq!(s.digits(), 10);
        assert!(s.uses_counter());
        assert_eq!(s.question_format(), QuestionFormat::Hex);
        assert_eq!(s.question_len(), 64);
        assert_eq!(s.pin_hash(), Some(HashAlgorithm::Sha256));
        assert_eq!(s.session_len(), Some(128));
        assert_eq!(s.time_step().unwrap().seconds(), 30);
        assert_eq!(Suite::parse("OCRA-1:HOTP-SHA1-0:QA04").unwrap().digits(), 0);
        assert_eq!(
            Suite::parse("OCRA-1:HOTP-SHA1-6:QN08-T48H")
                .unwrap()
                .time_step()
                .unwrap()
                .seconds(),
            48 * 3600
        );
    }

    #[test]
    fn refuses_malformed_suites_with_the_part_that_is_wrong() {
        use OcraError::*;
        for (text, error) in [
            ("OCRA-2:HOTP-SHA1-6:QN08", Version),
            ("OCRA-1:HOTP-MD5-6:QN08", CryptoFunction),
            ("OCRA-1:HOTP-SHA1-3:QN08", CryptoFunction),
            ("OCRA-1:HOTP-SHA1-11:QN08", CryptoFunction),
            ("OCRA-1:HOTP-SHA1-06:QN08", CryptoFunction),
            ("OCRA-1:HOTP-SHA1-6:QN08-T01M", DataInput),
            ("OCRA-1:HOTP-SHA1-6:QN03", DataInput),
            ("OCRA-1:HOTP-SHA1-6:QN65", DataInput),
            ("OCRA-1:HOTP-SHA1-6:QX08", DataInput),
            ("OCRA-1:HOTP-SHA1-6:C", DataInput),
            ("OCRA-1:HOTP-SHA1-6:QN08-C", DataInput),
            ("OCRA-1:HOTP-SHA1-6:QN08-T1M-PSHA1", DataInput),
            ("OCRA-1:HOTP-SHA1-6:QN08-PSHA1-PSHA1", DataInput),
            ("OCRA-1:HOTP-SHA1-6:QN08-T0H", DataInput), // erratum 3729
            ("OCRA-1:HOTP-SHA1-6:QN08-T60S", DataInput),
            ("OCRA-1:HOTP-SHA1-6:QN08-T49H", DataInput),
            ("OCRA-1:HOTP-SHA1-6:QN08-S000", DataInput),
            ("OCRA-1:HOTP-SHA1-6:QN08-S513", DataInput),
            ("OCRA-1:HOTP-SHA1-6:QN08-S64", DataInput),
            ("OCRA-1:HOTP-SHA1-6:QN08-PSHA3", DataInput),
            ("OCRA-1:HOTP-SHA1-6:QN08:", DataInput),
            ("OCRA-1:HOTP-SHA1-6", DataInput),
        ] {
            assert_eq!(Suite::parse(text), Err(error), "{text}");
        }
        assert_eq!(
            Suite::parse(&format!("OCRA-1:HOTP-SHA1-6:QN08{}", "-".repeat(60))),
            Err(SuiteTooLong)
        );
    }

    #[test]
    fn numeric_questions_pack_like_the_reference_implementation() {
        // RFC 6287 Appendix C's numeric challenges as liboath spells them out.
        for (q, packed) in [
            ("00000000", &[0x00][..]),
            ("11111111", &[0xA9, 0x8A, 0xC7]),
            ("22222222", &[0x15, 0x31, 0x58, 0xE0]),
            ("12345678", &[0xBC, 0x61, 0x4E]),
        ] {
            let suite = Suite::parse("OCRA-1:HOTP-SHA1-6:QN08").unwrap();
            let field = question_field(&suite, q).unwrap();
            assert_eq!(&field[..packed.len()], packed, "{q}");
            assert!(field[packed.len()..].iter().all(|b| *b == 0), "{q}");
        }
    }

    #[test]
    fn inputs_must_match_the_suite() {
        let suite = Suite::parse("OCRA-1:HOTP-SHA256-8:C-QN08-PSHA1").unwrap();
        let pin = HashAlgorithm::Sha1.digest(b"1234");
        let good = Inputs {
            counter: Some(0),
            question: "12345678",
            pin_hash: Some(&pin),
            ..Inputs::default()
        };
        assert!(compute(&suite, b"k", &good).is_ok());
        let e = |i: Inputs<'_>| compute(&suite, b"k", &i).unwrap_err();
        assert_eq!(
            e(Inputs {
                counter: None,
                ..good
            }),
            OcraError::Counter
        );
        assert_eq!(
            e(Inputs {
                pin_hash: None,
                ..good
            }),
            OcraError::Pin
        );
        assert_eq!(
            e(Inputs {
                pin_hash: Some(&pin[..19]),
                ..good
            }),
            OcraError::Pin
        );
        assert_eq!(
            e(Inputs {
                time_steps: Some(1),
                ..good
            }),
            OcraError::Timestamp
        );
        assert_eq!(
            e(Inputs {
                session: Some(b"s"),
                ..good
            }),
            OcraError::Session
        );
        assert_eq!(
            e(Inputs {
                question: "1234567a",
                ..good
            }),
            OcraError::Question
        );
        assert_eq!(
            e(Inputs {
                question: "",
                ..good
            }),
            OcraError::Question
        );
        assert_eq!(
            e(Inputs {
                question: &"1".repeat(17),
                ..good
            }),
            OcraError::Question
        );
        assert_eq!(compute(&suite, b"", &good), Err(OcraError::Key));
    }

    #[test]
    fn no_truncation_answers_the_whole_hmac() {
        let suite = Suite::parse("OCRA-1:HOTP-SHA256-0:QH04").unwrap();
        let r = compute(
            &suite,
            b"key",
            &Inputs {
                question: "ABCD",
                ..Inputs::default()
            },
        )
        .unwrap();
        assert_eq!(r.len(), 64);
        assert!(r.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn ten_digits_are_zero_padded_and_sessions_left_padded() {
        let suite = Suite::parse("OCRA-1:HOTP-SHA1-10:QA08-S004").unwrap();
        let i = Inputs {
            question: "ABCD",
            session: Some(&[1, 2]),
            ..Inputs::default()
        };
        let r = compute(&suite, b"key", &i).unwrap();
        assert_eq!(r.len(), 10);
        let padded = Inputs {
            session: Some(&[0, 0, 1, 2]),
            ..i
        };
        assert_eq!(compute(&suite, b"key", &padded).unwrap(), r);
        let long = Inputs {
            session: Some(&[0; 5]),
            ..i
        };
        assert_eq!(compute(&suite, b"key", &long), Err(OcraError::Session));
    }

    #[test]
    fn the_payload_question_changes_with_every_byte() {
        let q = payload_question(b"payload");
        assert_eq!(q.len(), 64);
        assert_ne!(q, payload_question(b"payloae"));
        let suite = Suite::parse("OCRA-1:HOTP-SHA256-8:C-QH64").unwrap();
        let i = Inputs {
            counter: Some(1),
            question: &q,
            ..Inputs::default()
        };
        assert!(compute(&suite, b"key", &i).is_ok());
    }

    #[test]
    fn base32_round_trips_rfc4648_vectors() {
        for (raw, b32) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(raw.as_bytes()), b32);
            assert_eq!(base32_decode(b32).unwrap(), raw.as_bytes());
        }
        assert_eq!(base32_decode("MZXW6YQ=").unwrap(), b"foob");
        assert_eq!(base32_decode("mzxw6yq").unwrap(), b"foob");
        assert_eq!(base32_decode("MZXW6YR"), None); // non-zero leftover bits
        assert_eq!(base32_decode("MZ1W"), None);
    }

    #[test]
    fn otpauth_uris_round_trip_and_refuse_junk() {
        let uri = OtpauthUri {
            label: "KeyBridge:alice card".into(),
            suite: Suite::parse("OCRA-1:HOTP-SHA256-8:C-QH64-T30S").unwrap(),
            secret: (1..=32).collect(),
            counter: 7,
        };
        let text = uri.to_uri();
        assert!(
            text.starts_with("otpauth://ocra/KeyBridge%3Aalice%20card?secret="),
            "{text}"
        );
        assert_eq!(OtpauthUri::parse(&text).unwrap(), uri);
        assert!(!format!("{uri:?}").contains(&base32_encode(&uri.secret)));
        let s = "OCRA-1:HOTP-SHA1-6:QN08";
        assert_eq!(
            OtpauthUri::parse(&format!("otpauth://totp/x?secret=MY&suite={s}")),
            Err(OtpauthError::Scheme)
        );
        assert_eq!(
            OtpauthUri::parse(&format!("otpauth://ocra/x?suite={s}")),
            Err(OtpauthError::Secret)
        );
        assert_eq!(
            OtpauthUri::parse(&format!("otpauth://ocra/x?secret=M1&suite={s}")),
            Err(OtpauthError::Secret)
        );
        assert_eq!(
            OtpauthUri::parse("otpauth://ocra/x?secret=MY&suite=OCRA-1:X:QN08"),
            Err(OtpauthError::Suite(OcraError::CryptoFunction))
        );
        assert_eq!(
            OtpauthUri::parse(&format!("otpauth://ocra/x?secret=MY&secret=MY&suite={s}")),
            Err(OtpauthError::Malformed)
        );
        assert_eq!(
            OtpauthUri::parse(&format!("otpauth://ocra/x?secret=MY&suite={s}&counter=-1")),
            Err(OtpauthError::Counter)
        );
        assert_eq!(
            OtpauthUri::parse(&format!("otpauth://ocra/x%ZZ?secret=MY&suite={s}")),
            Err(OtpauthError::Malformed)
        );
    }

    #[test]
    fn a_parsed_uri_renders_to_one_that_parses_again() {
        // Found by fuzz/fuzz_targets/otpauth_uri.rs: 400 raw spaces in the
        // label fit the limit as given, but not as `%20` in `to_uri()`.
        let s = "OCRA-1:HOTP-SHA1-6:QN08";
        let long = format!("otpauth://ocra/{}?secret=MY&suite={s}", " ".repeat(400));
        assert!(long.len() <= OTPAUTH_LEN_MAX);
        assert_eq!(OtpauthUri::parse(&long), Err(OtpauthError::Malformed));
        // Up to the limit once rendered, it still parses and round-trips.
        let rendered_rest = "?secret=MY&suite=OCRA-1%3AHOTP-SHA1-6%3AQN08&counter=0".len();
        let prefix = "otpauth://ocra/".len();
        let label = "a".repeat(OTPAUTH_LEN_MAX - prefix - rendered_rest);
        let uri =
            OtpauthUri::parse(&format!("otpauth://ocra/{label}?secret=MY&suite={s}")).unwrap();
        assert_eq!(uri.to_uri().len(), OTPAUTH_LEN_MAX);
        assert_eq!(OtpauthUri::parse(&uri.to_uri()), Ok(uri));
    }

    #[test]
    fn verify_compares_whole_responses() {
        let suite = Suite::parse("OCRA-1:HOTP-SHA1-6:QN08").unwrap();
        let key = b"12345678901234567890";
        let i = Inputs {
            question: "00000000",
            ..Inputs::default()
        };
        assert_eq!(verify(&suite, key, &i, "237653"), Ok(true));
        assert_eq!(verify(&suite, key, &i, "237654"), Ok(false));
        assert_eq!(verify(&suite, key, &i, "23765"), Ok(false));
        assert_eq!(verify(&suite, key, &i, "2376530"), Ok(false));
    }
}

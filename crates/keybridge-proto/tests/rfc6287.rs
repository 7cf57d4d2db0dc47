//! Every test vector of RFC 6287 Appendix C, from `data/rfc6287-vectors.txt`
//! (which names its source), through one `check`. A wrong packing of QN,
//! a wrong field order or a wrong truncation fails dozens of lines at once.

use std::collections::HashMap;

use keybridge_proto::ocra::{self, Inputs, Suite};

const VECTORS: &str = include_str!("data/rfc6287-vectors.txt");

/// One vector line, parsed.
struct Vector<'a> {
    line: usize,
    suite: &'a str,
    key: Vec<u8>,
    counter: Option<u64>,
    question: &'a str,
    pin: Option<&'a str>,
    timestamp_unix_s: Option<u64>,
    response: &'a str,
}

fn absent(field: &str) -> Option<&str> {
    (field != "-").then_some(field)
}

fn vectors() -> Vec<Vector<'static>> {
    let mut keys = HashMap::new();
    let mut out = Vec::new();
    for (i, line) in VECTORS.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [] => {}
            [first, ..] if first.starts_with('#') => {}
            ["key", name, hex] => {
                keys.insert(*name, hex::decode(hex).unwrap());
            }
            [suite, key, counter, question, pin, timestamp, response] => out.push(Vector {
                line: i + 1,
                suite,
                key: keys[key].clone(),
                counter: absent(counter).map(|c| c.parse().unwrap()),
                question,
                pin: absent(pin),
                timestamp_unix_s: absent(timestamp).map(|t| t.parse().unwrap()),
                response,
            }),
            other => panic!("line {}: cannot read {other:?}", i + 1),
        }
    }
    out
}

fn check(v: &Vector<'_>) {
    let suite = Suite::parse(v.suite).unwrap_or_else(|e| panic!("line {}: {e}", v.line));
    let pin_hash = v.pin.map(|p| {
        suite
            .pin_hash()
            .expect("suite names P")
            .digest(p.as_bytes())
    });
    let inputs = Inputs {
        counter: v.counter,
        question: v.question,
        pin_hash: pin_hash.as_deref(),
        session: None,
        time_steps: v
            .timestamp_unix_s
            .map(|t| suite.time_step().expect("suite names T").steps_at(t)),
    };
    let got =
        ocra::compute(&suite, &v.key, &inputs).unwrap_or_else(|e| panic!("line {}: {e}", v.line));
    assert_eq!(got, v.response, "line {}: {}", v.line, v.suite);
    assert_eq!(ocra::verify(&suite, &v.key, &inputs, v.response), Ok(true));
}

#[test]
fn every_rfc6287_appendix_c_vector() {
    let all = vectors();
    // C.1: 10 + 10 + 5 + 10 + 5; C.2: 4 × 5; C.3: 2 × 5.
    assert_eq!(all.len(), 70);
    for v in &all {
        check(v);
    }
}

#[test]
fn appendix_c_pin_hash_and_time_step() {
    assert_eq!(
        hex::encode(ocra::HashAlgorithm::Sha1.digest(b"1234")),
        "7110eda4d09e062aa5e4a390b0a572ac0d2c0220"
    );
    let suite = Suite::parse("OCRA-1:HOTP-SHA512-8:QN08-T1M").unwrap();
    assert_eq!(
        suite.time_step().unwrap().steps_at(1_206_446_790),
        0x132d0b6
    );
}

/// The vectors are only evidence if a wrong input fails them.
#[test]
fn a_changed_input_misses_every_vector() {
    for v in vectors() {
        let suite = Suite::parse(v.suite).unwrap();
        let pin_hash = v
            .pin
            .map(|p| suite.pin_hash().unwrap().digest(p.as_bytes()));
        let inputs = Inputs {
            counter: v.counter.map(|c| c + 1),
            question: v.question,
            pin_hash: pin_hash.as_deref(),
            session: None,
            time_steps: v
                .timestamp_unix_s
                .map(|t| suite.time_step().unwrap().steps_at(t) + 1),
        };
        let mut key = v.key.clone();
        if v.counter.is_none() && v.timestamp_unix_s.is_none() {
            key[0] ^= 1;
        }
        assert_ne!(
            ocra::compute(&suite, &key, &inputs).unwrap(),
            v.response,
            "line {}",
            v.line
        );
    }
}

//! `keybridge ocra` reproduces every RFC 6287 Appendix C vector, read from the
//! same data file the calculator's own test uses (it names its source).

use std::collections::HashMap;
use std::process::Command;

const VECTORS: &str = include_str!("../../keybridge-proto/tests/data/rfc6287-vectors.txt");

fn keybridge_ocra(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keybridge"))
        .arg("ocra")
        .args(args)
        .env_remove("KEYBRIDGE_OCRA_KEY")
        .env_remove("KEYBRIDGE_OCRA_PIN")
        .output()
        .expect("run keybridge ocra");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn reproduces_every_appendix_c_vector() {
    let mut keys = HashMap::new();
    let mut checked = 0;
    for line in VECTORS.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [] => {}
            [first, ..] if first.starts_with('#') => {}
            ["key", name, hex] => {
                keys.insert(*name, *hex);
            }
            [suite, key, counter, question, pin, timestamp, response] => {
                let mut args = vec!["--suite", suite, "--key", keys[key], "--question", question];
                for (flag, value) in [
                    ("--counter", counter),
                    ("--pin", pin),
                    ("--timestamp", timestamp),
                ] {
                    if *value != "-" {
                        args.extend([flag, value]);
                    }
                }
                let (ok, stdout, stderr) = keybridge_ocra(&args);
                assert!(ok, "{line}: {stderr}");
                assert_eq!(stdout, *response, "{line}");
                checked += 1;
            }
            other => panic!("cannot read {other:?}"),
        }
    }
    assert_eq!(checked, 70);
}

#[test]
fn pin_hash_is_the_same_as_pin_and_bad_input_is_an_error() {
    let key = "3132333435363738393031323334353637383930313233343536373839303132";
    let base = [
        "--suite",
        "OCRA-1:HOTP-SHA256-8:C-QN08-PSHA1",
        "--key",
        key,
        "--counter",
        "0",
        "--question",
        "12345678",
    ];
    let mut with_hash = base.to_vec();
    with_hash.extend(["--pin-hash", "7110eda4d09e062aa5e4a390b0a572ac0d2c0220"]);
    assert_eq!(keybridge_ocra(&with_hash).1, "65347737");
    // No PIN for a P suite, a bad suite, a non-hex key: errors, never a number.
    let (ok, stdout, stderr) = keybridge_ocra(&base);
    assert!(
        !ok && stdout.is_empty() && stderr.contains("--pin"),
        "{stderr}"
    );
    let (ok, _, stderr) = keybridge_ocra(&[
        "--suite",
        "OCRA-1:HOTP-SHA1-6:QN08-T0H",
        "--key",
        key,
        "--question",
        "1",
        "--timestamp",
        "0",
    ]);
    assert!(!ok && stderr.contains("data input"), "{stderr}");
    let (ok, _, _) = keybridge_ocra(&[
        "--suite",
        "OCRA-1:HOTP-SHA1-6:QN08",
        "--key",
        "zz",
        "--question",
        "1",
    ]);
    assert!(!ok);
}

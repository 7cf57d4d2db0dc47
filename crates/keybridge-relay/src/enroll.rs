//! Enrolment: the card makes a key and signs a PKCS#10 request for it, the
//! server's CA checks that signature (proof of possession) and certifies the
//! key for one account, the phone writes the certificate back and keeps the
//! device credential it will use to receive requests. For an OCRA-mode card,
//! the server stores the secret of an otpauth URI and the phone writes the
//! same secret to the card (PUT DATA OCRA).

use std::path::Path;

use keybridge_proto::api::{b64, DeviceEnrolled, EnrollCsr, ProvisionOcra, SignatureMethod};
use keybridge_proto::ocra::OtpauthUri;
use keybridge_proto::AccountId;
use keybridge_terminal::Client;
use serde::{Deserialize, Serialize};

use crate::driver;
use crate::link::CardLink;
use crate::session::RelayError;

/// What the phone keeps after enrolment. `credential` is a secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct DeviceCredential {
    pub server: String,
    pub device_id: String,
    pub account: AccountId,
    pub credential: String,
    /// How the card confirms (older credential files: the transaction applet).
    #[serde(default = "transaction_applet", alias = "signature_method")]
    pub method: SignatureMethod,
    /// The card's certificate (DER, base64) as the server issued it at
    /// enrolment: pinned, it is what the card must prove itself with in the
    /// secure channel on radio links. Absent in credentials written before
    /// the secure channel existed; those work on vpcd only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_certificate: Option<String>,
}

fn transaction_applet() -> SignatureMethod {
    SignatureMethod::TransactionApplet
}

impl DeviceCredential {
    /// The pinned card certificate, DER.
    pub fn card_certificate_der(&self) -> Option<Vec<u8>> {
        self.card_certificate.as_deref().and_then(b64::decode)
    }
}

impl std::fmt::Debug for DeviceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCredential")
            .field("server", &self.server)
            .field("device_id", &self.device_id)
            .field("account", &self.account)
            .field("credential", &"<redacted>")
            .field("method", &self.method)
            .field("card_certificate", &self.card_certificate.is_some())
            .finish()
    }
}

impl DeviceCredential {
    pub fn load(path: &Path) -> Result<DeviceCredential, RelayError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RelayError::Credential(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| RelayError::Credential(format!("{}: {e}", path.display())))
    }

    /// Writes the credential readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), RelayError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| RelayError::Credential(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        };
        write().map_err(|e| RelayError::Credential(format!("{}: {e}", path.display())))
    }
}

/// The common name the relay puts in the request (the CA chooses the
/// certificate's subject; this only labels the request).
const REQUEST_COMMON_NAME: &str = "KeyBridge transaction applet";
/// The same, for a PIV card's slot 9C key.
const PIV_REQUEST_COMMON_NAME: &str = "KeyBridge PIV 9C";

/// What enrolling a PIV card needs besides its PIN.
#[derive(Clone)]
pub struct PivEnrollment {
    /// The card's 3DES management key (default: [`crate::piv::MANAGEMENT_KEY_DEFAULT`]).
    pub management_key: zeroize::Zeroizing<[u8; 24]>,
}

impl Default for PivEnrollment {
    fn default() -> PivEnrollment {
        PivEnrollment {
            management_key: zeroize::Zeroizing::new(crate::piv::MANAGEMENT_KEY_DEFAULT),
        }
    }
}

impl std::fmt::Debug for PivEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PivEnrollment { management_key: <redacted> }")
    }
}

/// Enrols the card on `link` for `account` with the applet `method` names:
/// - transaction applet: [`enroll`] (by CSR signed on the card);
/// - PIV: VERIFY, management-key authentication, GENERATE in 9C, a PKCS#10
///   request signed in 9C, the certificate from the server's CA, PUT DATA
///   `5FC10A` (authenticated again first: the
///   card may have been reset while the server answered).
#[allow(clippy::too_many_arguments)] // one flat call from the CLI and the demo; a struct would only rename them
pub async fn enroll_with(
    admin: &Client,
    link: std::sync::Arc<std::sync::Mutex<CardLink>>,
    account: &AccountId,
    label: &str,
    pin: zeroize::Zeroizing<String>,
    card_wait: std::time::Duration,
    method: SignatureMethod,
    piv_options: PivEnrollment,
) -> Result<(DeviceEnrolled, DeviceCredential), RelayError> {
    if method == SignatureMethod::TransactionApplet {
        return enroll(admin, link, account, label, pin, card_wait).await;
    }
    // Proof of possession as for the transaction applet: the card signs a
    // PKCS#10 request for its new 9C key (GENERAL AUTHENTICATE over the
    // request info's SHA-256, which is what ECDSA-with-SHA256 signs), and the
    // CA checks that signature before it certifies the key.
    let (link2, pin2) = (link.clone(), pin.clone());
    let key = piv_options.management_key.clone();
    let csr = tokio::task::spawn_blocking(move || {
        let mut link = link2.lock().map_err(|_| RelayError::Poisoned)?;
        link.wait_for_card(card_wait)?;
        crate::piv::select(&mut link)?;
        if let Some(reason) = crate::piv::verify_pin(&mut link, pin2.as_bytes())? {
            return Err(RelayError::Pin(reason));
        }
        crate::piv::authenticate_management(&mut link, &key)?;
        let point = crate::piv::generate_p256(&mut link, crate::piv::SLOT_SIGNATURE)?;
        let info =
            keybridge_proto::csr::certification_request_info(PIV_REQUEST_COMMON_NAME, &point)
                .map_err(|e| RelayError::Protocol(e.to_string()))?;
        match crate::piv::sign_payload(&mut link, pin2.as_bytes(), &info)? {
            crate::SignOutcome::Signed { signature, .. } => {
                Ok::<_, RelayError>(keybridge_proto::csr::assemble(&info, &signature))
            }
            crate::SignOutcome::Declined(reason) => Err(RelayError::Pin(reason)),
            crate::SignOutcome::Ocra(_) => Err(RelayError::Protocol(
                "a PIV card answered with an OCRA response".into(),
            )),
        }
    })
    .await
    .map_err(|_| RelayError::Poisoned)??;

    let (enrolled, certificate) =
        certify(admin, account, label, &csr, SignatureMethod::Piv).await?;
    let key = piv_options.management_key.clone();
    tokio::task::spawn_blocking(move || {
        let mut link = link.lock().map_err(|_| RelayError::Poisoned)?;
        crate::piv::select(&mut link)?;
        crate::piv::authenticate_management(&mut link, &key)?;
        crate::piv::put_certificate(&mut link, crate::piv::SLOT_SIGNATURE, &certificate)?;
        Ok::<_, RelayError>(())
    })
    .await
    .map_err(|_| RelayError::Poisoned)??;

    let credential = DeviceCredential {
        server: admin.base_url().to_owned(),
        device_id: enrolled.device_id.clone(),
        account: enrolled.account.clone(),
        credential: enrolled.credential.clone(),
        method: SignatureMethod::Piv,
        // KB-SC1 runs on the transaction applet's key: PIV cards are reached by
        // wire or PC/SC only.
        card_certificate: None,
    };
    Ok((enrolled, credential))
}

/// Enrols the card on `link` for `account`: VERIFY, GENERATE KEY, SIGN CSR
/// (the card checks the request carries its own key), the CA certifies it
/// (admin API), VERIFY again, PUT DATA the certificate onto the card.
pub async fn enroll(
    admin: &Client,
    link: std::sync::Arc<std::sync::Mutex<CardLink>>,
    account: &AccountId,
    label: &str,
    pin: zeroize::Zeroizing<String>,
    card_wait: std::time::Duration,
) -> Result<(DeviceEnrolled, DeviceCredential), RelayError> {
    let (link2, pin2) = (link.clone(), pin.clone());
    let csr = tokio::task::spawn_blocking(move || {
        let mut link = link2.lock().map_err(|_| RelayError::Poisoned)?;
        link.wait_for_card(card_wait)?;
        driver::select(&mut link)?;
        if let Some(reason) = driver::verify_pin(&mut link, pin2.as_bytes())? {
            return Err(RelayError::Pin(reason));
        }
        let point = driver::generate_key(&mut link)?;
        let info = keybridge_proto::csr::certification_request_info(REQUEST_COMMON_NAME, &point)
            .map_err(|e| RelayError::Protocol(e.to_string()))?;
        let signature = driver::sign_csr(&mut link, &info)?;
        Ok::<_, RelayError>(keybridge_proto::csr::assemble(&info, &signature))
    })
    .await
    .map_err(|_| RelayError::Poisoned)??;

    let (enrolled, certificate) = certify(
        admin,
        account,
        label,
        &csr,
        SignatureMethod::TransactionApplet,
    )
    .await?;
    tokio::task::spawn_blocking(move || {
        let mut link = link.lock().map_err(|_| RelayError::Poisoned)?;
        // SIGN CSR consumed the verified PIN.
        if let Some(reason) = driver::verify_pin(&mut link, pin.as_bytes())? {
            return Err(RelayError::Pin(reason));
        }
        driver::put_certificate(&mut link, &certificate)?;
        Ok::<_, RelayError>(())
    })
    .await
    .map_err(|_| RelayError::Poisoned)??;

    let credential = DeviceCredential {
        server: admin.base_url().to_owned(),
        device_id: enrolled.device_id.clone(),
        account: enrolled.account.clone(),
        credential: enrolled.credential.clone(),
        method: SignatureMethod::TransactionApplet,
        card_certificate: Some(enrolled.certificate.clone()),
    };
    Ok((enrolled, credential))
}

/// Sends a card-signed PKCS#10 request to the CA (admin API) and returns the
/// enrolment with the issued certificate, DER.
async fn certify(
    admin: &Client,
    account: &AccountId,
    label: &str,
    csr: &[u8],
    method: SignatureMethod,
) -> Result<(DeviceEnrolled, Vec<u8>), RelayError> {
    let enrolled = admin
        .enroll_csr(&EnrollCsr {
            account: account.clone(),
            csr: b64::encode(csr),
            label: label.to_owned(),
            method,
        })
        .await?;
    let certificate = b64::decode(&enrolled.certificate)
        .ok_or_else(|| RelayError::Protocol("certificate is not base64".into()))?;
    Ok((enrolled, certificate))
}

/// Enrols an OCRA-mode card: the server stores the URI's secret (sealed),
/// then VERIFY and PUT DATA OCRA give the card the same secret and suite.
pub async fn enroll_ocra(
    admin: &Client,
    link: std::sync::Arc<std::sync::Mutex<CardLink>>,
    account: &AccountId,
    label: &str,
    pin: zeroize::Zeroizing<String>,
    uri: &OtpauthUri,
    card_wait: std::time::Duration,
) -> Result<(DeviceEnrolled, DeviceCredential), RelayError> {
    let text = zeroize::Zeroizing::new(uri.to_uri());
    let enrolled = admin
        .provision_ocra(&ProvisionOcra {
            account: account.clone(),
            uri: text.to_string(),
            label: label.to_owned(),
        })
        .await?;
    let suite = uri.suite.as_str().to_owned();
    let secret = zeroize::Zeroizing::new(uri.secret.clone());
    tokio::task::spawn_blocking(move || {
        let mut link = link.lock().map_err(|_| RelayError::Poisoned)?;
        link.wait_for_card(card_wait)?;
        driver::select(&mut link)?;
        if let Some(reason) = driver::verify_pin(&mut link, pin.as_bytes())? {
            return Err(RelayError::Pin(reason));
        }
        driver::put_ocra(&mut link, &suite, &secret)?;
        Ok::<_, RelayError>(())
    })
    .await
    .map_err(|_| RelayError::Poisoned)??;
    let credential = DeviceCredential {
        server: admin.base_url().to_owned(),
        device_id: enrolled.device_id.clone(),
        account: enrolled.account.clone(),
        credential: enrolled.credential.clone(),
        method: SignatureMethod::Ocra,
        card_certificate: None,
    };
    Ok((enrolled, credential))
}

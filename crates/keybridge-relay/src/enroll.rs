//! Enrolment: the card makes a key, the server's CA certifies it for one
//! account, the phone writes the certificate back and keeps the device
//! credential it will use to receive requests.

use std::path::Path;

use keybridge_proto::api::{b64, DeviceEnrolled, EnrollDevice};
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
    /// The card's certificate (DER, base64) as the server issued it at
    /// enrolment: pinned, it is what the card must prove itself with in the
    /// secure channel on radio links. Absent in credentials written before
    /// the secure channel existed; those work on vpcd only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_certificate: Option<String>,
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

/// Enrols the card on `link` for `account`: VERIFY, GENERATE KEY, ask the
/// server (admin API) for a certificate, PUT DATA it onto the card.
pub async fn enroll(
    admin: &Client,
    link: std::sync::Arc<std::sync::Mutex<CardLink>>,
    account: &AccountId,
    label: &str,
    pin: zeroize::Zeroizing<String>,
    card_wait: std::time::Duration,
) -> Result<(DeviceEnrolled, DeviceCredential), RelayError> {
    let link2 = link.clone();
    let public_key = tokio::task::spawn_blocking(move || {
        let mut link = link2.lock().map_err(|_| RelayError::Poisoned)?;
        link.wait_for_card(card_wait)?;
        driver::select(&mut link)?;
        if let Some(reason) = driver::verify_pin(&mut link, pin.as_bytes())? {
            return Err(RelayError::Pin(reason));
        }
        Ok::<_, RelayError>(driver::generate_key(&mut link)?)
    })
    .await
    .map_err(|_| RelayError::Poisoned)??;

    let enrolled = admin
        .enroll_device(&EnrollDevice {
            account: account.clone(),
            public_key: b64::encode(&public_key),
            label: label.to_owned(),
        })
        .await?;
    let certificate = b64::decode(&enrolled.certificate)
        .ok_or_else(|| RelayError::Protocol("certificate is not base64".into()))?;
    tokio::task::spawn_blocking(move || {
        let mut link = link.lock().map_err(|_| RelayError::Poisoned)?;
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
        card_certificate: Some(enrolled.certificate.clone()),
    };
    Ok((enrolled, credential))
}

//! Answers the card made that have not reached the server yet, kept on the
//! phone's storage until the server has judged them.
//!
//! A phone killed between the card's signature and the server's answer (the
//! app swiped away, the battery out) would otherwise ask the card, and its
//! holder, again when it restarts: the server still has the request pending
//! and sends it again. A restarted relay delivers what it kept first, in the
//! order the card signed, before it lets the card sign anything new: the
//! server requires each device's counter to grow, so a kept answer delivered
//! after a newer signature would be refused as a replay.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use keybridge_proto::api::Confirmation;
use keybridge_proto::TransactionId;
use serde::{Deserialize, Serialize};

/// One answer waiting for the server's judgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub transaction_id: TransactionId,
    pub answer: Confirmation,
    /// The request's expiry: past it the server has ended the transaction,
    /// and the answer is dropped unsent.
    pub expires_at_unix_s: u64,
    /// The card's signature counter (0 when it has none): the order to
    /// deliver in.
    pub counter: u32,
}

/// A directory of kept answers, one file each.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// Opens `dir`, creating it (readable by its owner only) if needed.
    pub fn open(dir: &Path) -> io::Result<Outbox> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
        Ok(Outbox {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, id: &TransactionId) -> PathBuf {
        self.dir.join(format!("{}.json", id.to_hex()))
    }

    /// Keeps `kept`, durably (written, synced, renamed into place, the
    /// directory synced) before it returns. A write that fails (a full
    /// disk) removes its temporary file.
    pub fn keep(&self, kept: &Kept) -> io::Result<()> {
        let text = serde_json::to_vec(kept).map_err(io::Error::other)?;
        let path = self.path(&kept.transaction_id);
        let temp = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options.open(&temp).and_then(|mut file| {
            file.write_all(&text)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Forgets the answer for `id` (nothing kept is fine).
    pub fn forget(&self, id: &TransactionId) -> io::Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Every kept answer, the card's oldest signature first. A file that
    /// does not read as one (a write cut off before its rename leaves only
    /// a `.tmp`, which is skipped) is reported and left alone.
    pub fn load(&self) -> io::Result<Vec<Kept>> {
        let mut kept = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Kept>(&b).map_err(|e| e.to_string()))
            {
                Ok(k) => kept.push(k),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable kept answer")
                }
            }
        }
        kept.sort_by_key(|k| (k.counter, k.expires_at_unix_s));
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(id: u8, counter: u32) -> Kept {
        Kept {
            transaction_id: TransactionId([id; 16]),
            answer: Confirmation::Signed {
                counter,
                signature: "c2lnbmF0dXJl".into(),
            },
            expires_at_unix_s: 1_000 + u64::from(id),
            counter,
        }
    }

    #[test]
    fn kept_answers_come_back_oldest_signature_first_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("outbox")).unwrap();
        assert_eq!(outbox.load().unwrap(), vec![]);
        outbox.keep(&kept(1, 9)).unwrap();
        outbox.keep(&kept(2, 7)).unwrap();
        outbox.keep(&kept(2, 7)).unwrap(); // kept again: one file
                                           // A write cut off before its rename, and something unreadable.
        std::fs::write(dir.path().join("outbox/x.tmp"), b"{").unwrap();
        std::fs::write(dir.path().join("outbox/y.json"), b"not json").unwrap();
        let reopened = Outbox::open(&dir.path().join("outbox")).unwrap();
        assert_eq!(reopened.load().unwrap(), vec![kept(2, 7), kept(1, 9)]);
        reopened.forget(&TransactionId([2; 16])).unwrap();
        reopened.forget(&TransactionId([2; 16])).unwrap();
        assert_eq!(reopened.load().unwrap(), vec![kept(1, 9)]);
    }
}

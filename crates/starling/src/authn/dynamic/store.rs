//! Where the dynamic security document lives between restarts: one JSON value under
//! [`SETTING_KEY`] in the broker's store, written through the broker's journal and committer
//! like every other change (so it shares their group commit, their failure handling and
//! their order), or an initial file read while the store holds none. Owns the encoding and
//! the wait for a change's commit.

use std::path::Path;
use std::sync::Arc;

use starling_broker::persist::{Journal, TicketStatus};
use starling_broker::wake::{Wake, Waker};
use starling_store::Op;
use tokio::sync::Notify;

use super::DynsecError;
use super::model::{Document, MAX_DOCUMENT_BYTES};

/// The name of the store's setting that holds the document.
pub const SETTING_KEY: &str = "dynamic_security";

/// Encodes the document as stored; refuses one above [`MAX_DOCUMENT_BYTES`].
pub(super) fn encode(doc: &Document) -> Result<Vec<u8>, DynsecError> {
    let bytes = serde_json::to_vec(doc).map_err(|e| DynsecError::Document {
        origin: "the document".into(),
        message: e.to_string(),
    })?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(DynsecError::TooMany {
            what: "document bytes".into(),
            max: MAX_DOCUMENT_BYTES,
        });
    }
    Ok(bytes)
}

/// Decodes and validates a stored or initial document; `origin` names it in errors.
pub(super) fn decode(bytes: &[u8], origin: &str) -> Result<Document, DynsecError> {
    let fail = |message: String| DynsecError::Document {
        origin: origin.to_owned(),
        message,
    };
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(fail(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let doc: Document = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        fail(format!("{path}: {}", e.inner()))
    })?;
    doc.validate().map_err(|e| fail(e.to_string()))?;
    Ok(doc)
}

/// Reads the initial document from `path` (bounded: a larger file is refused unread).
pub(super) fn read_file(path: &Path) -> Result<Document, DynsecError> {
    let origin = path.display().to_string();
    let io = |e: std::io::Error| DynsecError::Document {
        origin: origin.clone(),
        message: e.to_string(),
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_DOCUMENT_BYTES as u64 {
        return Err(DynsecError::Document {
            origin,
            message: format!("larger than {MAX_DOCUMENT_BYTES} bytes"),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    decode(&bytes, &origin)
}

/// Wakes the task waiting for a commit; `Notify` keeps a wake-up that arrives before the
/// task waits, as the journal's waiters require.
#[derive(Debug, Default)]
struct CommitWake(Notify);

impl Wake for CommitWake {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// Journals the document and waits until its batch is done: `Ok` once it is durable.
pub(super) async fn commit(journal: &Journal, bytes: Vec<u8>) -> Result<(), DynsecError> {
    if journal.is_closed() {
        return Err(DynsecError::NotStored("the broker is stopping".into()));
    }
    let ticket = journal.push(Op::PutSetting(SETTING_KEY.to_owned(), bytes));
    let wake = Arc::new(CommitWake::default());
    let waker: Waker = wake.clone();
    // The journal lists a waker once per commit; this memo is the journal's for us.
    let mut registered = u64::MAX;
    loop {
        journal.notify_when_done(ticket, &waker, &mut registered);
        if journal.is_done(ticket) {
            break;
        }
        wake.0.notified().await;
    }
    match journal.status(ticket) {
        TicketStatus::Durable => Ok(()),
        TicketStatus::Full => Err(DynsecError::NotStored("the disk is full".into())),
        TicketStatus::Failed => Err(DynsecError::NotStored(
            "the store failed to commit it".into(),
        )),
        TicketStatus::Pending => Err(DynsecError::NotStored(
            "the store has not committed it".into(),
        )),
    }
}

//! The frames nodes exchange: `length (u32, big-endian) | version (u8) | kind (u8) | body`,
//! where the length counts everything after itself and the body is the request or reply, a
//! protobuf message ([`crate::wire`]). Messages grow by new fields within a version (an older
//! node skips them); the version changes only for what an older node cannot skip, and lets
//! it refuse such a peer instead of misreading it. Version 1 carried postcard bodies.
//! Every length is checked before anything is allocated.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The frame format this build speaks (2: protobuf bodies).
pub const VERSION: u8 = 2;

/// The largest frame accepted (a request carries at most one snapshot chunk or one batch of
/// entries; openraft's chunk size is set below this).
pub const MAX_FRAME: u32 = 16 * 1024 * 1024;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// openraft's AppendEntries request.
    AppendEntries = 1,
    /// openraft's RequestVote request.
    Vote = 2,
    /// A chunk of a snapshot.
    InstallSnapshot = 3,
    /// A command for the leader to commit (from a node that is not the leader).
    Propose = 4,
    /// A node's filters, as a snapshot or a delta ([`crate::routes::Update`]).
    Routes = 5,
    /// Messages for the receiver's subscribers ([`crate::net::Forward`]).
    Forward = 6,
    /// A request for a session whose client id the sender now owns ([`crate::net::Handover`]).
    Handover = 7,
    /// A change of the members, for the leader ([`crate::members::Change`]).
    Members = 8,
    /// The reply to the request before it on the same stream.
    Reply = 0x80,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::AppendEntries,
            2 => Kind::Vote,
            3 => Kind::InstallSnapshot,
            4 => Kind::Propose,
            5 => Kind::Routes,
            6 => Kind::Forward,
            7 => Kind::Handover,
            8 => Kind::Members,
            0x80 => Kind::Reply,
            _ => return None,
        })
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The length is below the header's or above [`MAX_FRAME`].
    #[error("frame length {0} out of bounds")]
    Length(u32),
    /// The peer speaks another frame version.
    #[error("peer speaks frame version {0}, this node {VERSION}")]
    Version(u8),
    /// An unknown kind.
    #[error("unknown frame kind {0}")]
    Kind(u8),
}

/// Writes one frame and flushes it.
pub async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(body.len() + 2)
        .ok()
        .filter(|&l| l <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::other(format!("frame of {} bytes too large", body.len())))?;
    let mut head = [0u8; 6];
    head[..4].copy_from_slice(&len.to_be_bytes());
    head[4] = VERSION;
    head[5] = kind as u8;
    w.write_all(&head).await?;
    w.write_all(body).await?;
    w.flush().await
}

/// Reads one frame into `body` (replacing what it held) and returns its kind.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R, body: &mut Vec<u8>) -> Result<Kind, FrameError> {
    let len = r.read_u32().await?;
    if !(2..=MAX_FRAME).contains(&len) {
        return Err(FrameError::Length(len));
    }
    let version = r.read_u8().await?;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let kind = r.read_u8().await?;
    let kind = Kind::from_byte(kind).ok_or(FrameError::Kind(kind))?;
    body.clear();
    body.resize(len as usize - 2, 0);
    r.read_exact(body).await?;
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_headers_are_refused() {
        let mut wire = Vec::new();
        write(&mut wire, Kind::Vote, b"hello")
            .await
            .unwrap_or_default();
        write(&mut wire, Kind::Reply, b"").await.unwrap_or_default();
        let mut r = wire.as_slice();
        let mut body = Vec::new();
        assert_eq!(read(&mut r, &mut body).await.ok(), Some(Kind::Vote));
        assert_eq!(body, b"hello");
        assert_eq!(read(&mut r, &mut body).await.ok(), Some(Kind::Reply));
        assert!(body.is_empty());

        let cases: [(&[u8], &str); 5] = [
            (&[0, 0, 0, 1, 1], "length 1"),
            (&[0x7f, 0, 0, 0, 1, 1], "length"),
            (&[0, 0, 0, 2, 9, 1], "version 9"),
            // A node from before the bodies were protobuf.
            (&[0, 0, 0, 2, 1, 1], "version 1"),
            (&[0, 0, 0, 2, VERSION, 9], "kind 9"),
        ];
        for (bytes, what) in cases {
            let mut r = bytes;
            let err = read(&mut r, &mut body)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(what), "{what}: {err}");
        }
        // A frame cut short is an I/O error, not a panic or a short body.
        let mut r = &wire[..8];
        assert!(matches!(
            read(&mut r, &mut body).await,
            Err(FrameError::Io(_))
        ));
    }
}

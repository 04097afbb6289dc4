//! Socket results in one vocabulary, with error kinds classified in one place.

use std::io::{self, ErrorKind, Read};

/// The outcome of one non-blocking read or write attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStatus {
    /// This many bytes moved.
    Progress(usize),
    /// Nothing more now; wait for readiness.
    WouldBlock,
    /// The peer closed (EOF): an ordinary end.
    Closed,
    /// The peer reset or the pipe broke: also ordinary, counted apart.
    Reset,
    /// Anything else: the connection is unusable.
    Error(ErrorKind),
}

/// Maps an I/O error to a status; `None` means "interrupted, retry".
pub fn classify(e: &io::Error) -> Option<IoStatus> {
    match e.kind() {
        ErrorKind::Interrupted => None,
        ErrorKind::WouldBlock => Some(IoStatus::WouldBlock),
        ErrorKind::UnexpectedEof => Some(IoStatus::Closed),
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::NotConnected => Some(IoStatus::Reset),
        kind => Some(IoStatus::Error(kind)),
    }
}

/// Reads until `WouldBlock`, EOF, or `buf` holds `cap` bytes. Returns the
/// last status: `Progress(total)` when it stopped at the cap, `WouldBlock`
/// after draining the socket (bytes read are in `buf`), `Closed` on EOF, `Reset` on reset.
pub fn read_into<R: Read>(src: &mut R, buf: &mut Vec<u8>, cap: usize) -> IoStatus {
    let mut chunk = [0u8; 4096];
    let mut total = 0;
    loop {
        let room = cap.saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return IoStatus::Progress(total);
        }
        match src.read(&mut chunk[..room]) {
            Ok(0) => return IoStatus::Closed,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                total += n;
            }
            Err(e) => match classify(&e) {
                None => continue,
                Some(status) => return status,
            },
        }
    }
}

/// Reads and throws away what is available, up to `budget` bytes (for
/// streams whose clients have nothing more to say): `WouldBlock` once the
/// socket is drained, `Progress(n)` when the budget ran out first,
/// `Closed` on EOF, `Reset` on reset.
pub fn discard<R: Read>(src: &mut R, budget: usize) -> IoStatus {
    let mut chunk = [0u8; 2048];
    let mut total = 0;
    while total < budget {
        match src.read(&mut chunk) {
            Ok(0) => return IoStatus::Closed,
            Ok(n) => total += n,
            Err(e) => match classify(&e) {
                None => continue,
                Some(status) => return status,
            },
        }
    }
    IoStatus::Progress(total)
}

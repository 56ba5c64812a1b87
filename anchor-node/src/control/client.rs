//! The CLI's side of the control socket: connect, send one request, read its answer. Failures
//! are the one-line errors users see ("upmt-an not running (no socket at ...)"). Renders nothing.

use std::path::Path;

use tokio::io::BufReader;
use upmt_sys::control_socket::ConnectError;

use super::{FrameError, PROTOCOL_VERSION, Request, RequestFrame, Response, ResponseFrame};

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upmt-an closed the control connection")]
    Closed,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(
        "upmt-an speaks control protocol version {0}, this one {PROTOCOL_VERSION}; use the upmt-an that came with the daemon"
    )]
    Version(u32),
    /// The daemon refused the request; the message is the daemon's.
    #[error("{0}")]
    Refusal(String),
}

/// Sends `request` to the daemon at `path` and returns its answer; a refusal is an error.
pub async fn request(path: &Path, request: Request) -> Result<Response, ClientError> {
    let mut stream = upmt_sys::control_socket::connect(path, "upmt-an").await?;
    let (rd, mut wr) = stream.split();
    let frame = RequestFrame {
        version: PROTOCOL_VERSION,
        request,
    };
    // A refused client is sent its refusal and closed at once, maybe before this write: the
    // refusal waiting to be read says more than "broken pipe".
    let written = super::write_line(&mut wr, &frame).await;
    let mut rd = BufReader::new(rd);
    let line = match super::read_line(&mut rd).await {
        Ok(Some(line)) => line,
        Ok(None) => return Err(written.err().map_or(ClientError::Closed, Into::into)),
        Err(e) => return Err(e.into()),
    };
    let frame: ResponseFrame = match serde_json::from_slice(&line) {
        Ok(frame) => frame,
        Err(e) => {
            return Err(match upmt_sys::control_socket::version_of(&line) {
                Some(v) if v != PROTOCOL_VERSION => ClientError::Version(v),
                _ => ClientError::Frame(FrameError::Json(e)),
            });
        }
    };
    if frame.version != PROTOCOL_VERSION {
        return Err(ClientError::Version(frame.version));
    }
    match frame.response {
        Response::Error { message } => Err(ClientError::Refusal(message)),
        response => Ok(response),
    }
}

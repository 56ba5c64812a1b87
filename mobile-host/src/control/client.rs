//! The CLI's side of the control socket: connect, send a request, read its response, or follow a
//! watch stream. Connection failures become the one-line errors users see ("upmt-mh not running
//! (no socket at ...)", "permission denied: ..."). This module never renders anything.

use std::io;
use std::path::Path;

use tokio::net::UnixStream;
use upmt_sys::control_socket::ConnectError;

use super::proto::{
    self, ErrorKind, ErrorReply, Event, FrameError, PROTOCOL_VERSION, Request, RequestFrame,
    Response, ResponseFrame,
};

/// What went wrong talking to the daemon. Messages are complete one-liners for the CLI.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the daemon closed the control connection")]
    Closed,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(
        "the daemon speaks control protocol version {0}, this upmt {PROTOCOL_VERSION}; use the upmt that came with the daemon"
    )]
    Version(u32),
    /// The daemon refused the request; the message is the daemon's.
    #[error("{}", .0.message)]
    Refusal(ErrorReply),
    #[error("unexpected answer from the daemon: {0}")]
    Unexpected(&'static str),
}

impl ClientError {
    /// The refusal's kind, when the daemon refused.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Refusal(e) => Some(e.kind),
            ClientError::Connect(ConnectError::NoAccess { .. }) => {
                Some(ErrorKind::PermissionDenied)
            }
            _ => None,
        }
    }
}

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects to the daemon's socket at `path`.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = upmt_sys::control_socket::connect(path, "upmt-mh").await?;
        Ok(Client { stream })
    }

    /// Sends `request` and returns the daemon's answer; a refusal is [`ClientError::Refusal`].
    pub async fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        if let Err(e) = proto::write_frame(&mut self.stream, &RequestFrame::from(request)).await {
            // A refused peer is sent its refusal and closed at once, maybe before this write: the
            // refusal waiting in the receive buffer says more than "broken pipe".
            return match self.response().await {
                Err(refusal @ ClientError::Refusal(_)) => Err(refusal),
                _ => Err(e.into()),
            };
        }
        self.response().await
    }

    /// Turns the connection into an event stream; read it with [`Client::next_event`].
    pub async fn watch(&mut self) -> Result<(), ClientError> {
        match self.request(Request::Watch).await? {
            Response::Watching => Ok(()),
            _ => Err(ClientError::Unexpected("expected watching")),
        }
    }

    /// The next event of a watch stream; `None` when the daemon ends it.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        match self.response().await {
            Ok(Response::Event(event)) => Ok(Some(event)),
            Ok(_) => Err(ClientError::Unexpected("expected an event")),
            Err(ClientError::Closed) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn response(&mut self) -> Result<Response, ClientError> {
        let body = proto::read_frame_bytes(&mut self.stream)
            .await
            .map_err(|e| match e {
                // A refused peer gets its error frame and a close; a reset can win the race.
                FrameError::Io(io) if io.kind() == io::ErrorKind::ConnectionReset => {
                    ClientError::Closed
                }
                e => ClientError::Frame(e),
            })?
            .ok_or(ClientError::Closed)?;
        let frame: ResponseFrame = match serde_json::from_slice(&body) {
            Ok(frame) => frame,
            Err(e) => {
                // Maybe a daemon of another version: say so rather than "invalid JSON".
                return Err(match upmt_sys::control_socket::version_of(&body) {
                    Some(v) if v != PROTOCOL_VERSION => ClientError::Version(v),
                    _ => ClientError::Frame(FrameError::Json(e)),
                });
            }
        };
        if frame.version != PROTOCOL_VERSION {
            return Err(ClientError::Version(frame.version));
        }
        match frame.response {
            Response::Error(e) => Err(ClientError::Refusal(e)),
            response => Ok(response),
        }
    }
}

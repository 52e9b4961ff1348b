//! The one error type of the QMP client and the QEMU backend.

use std::io;
use std::time::Duration;

/// Why a QMP operation failed.
///
/// The variants tell a caller what to do next: `Command` means QEMU understood and refused
/// (do not retry blindly), `Timeout` means the answer may still come and will be dropped
/// (retry next tick), `Closed` means reconnect (or the VM is gone), `Protocol` means the peer
/// said something that is not QMP (log it; the connection may still be usable).
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket (or a `/proc` file read on the VM's behalf) failed.
    /// (The message holds the I/O error; it is not also the error's `source`, or chained
    /// reports printed it twice.)
    #[error("QMP I/O error: {0}")]
    Io(io::Error),
    /// No reply within the command's deadline. A late reply is recognised by its id and dropped.
    #[error("QMP command `{command}` got no reply within {after:?}")]
    Timeout { command: String, after: Duration },
    /// The peer sent something that is not valid QMP, or a reply of an unexpected shape.
    #[error("QMP protocol error: {detail}")]
    Protocol { detail: String },
    /// QEMU answered the command with an error object.
    #[error("QMP command `{command}` failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    /// The connection is closed (QEMU exited, or the socket was shut down).
    #[error("QMP connection closed")]
    Closed,
    /// The VM has no device of the kind an operation needs (e.g. no virtio-balloon).
    #[error("the VM has no {what}")]
    NoDevice { what: &'static str },
    /// The caller passed something we refuse to send (e.g. a device id that is not a QEMU id).
    #[error("invalid argument: {detail}")]
    InvalidArgument { detail: String },
}

impl QmpError {
    pub(crate) fn protocol(detail: impl Into<String>) -> QmpError {
        QmpError::Protocol {
            detail: detail.into(),
        }
    }

    /// The QEMU error class (`GenericError`, `DeviceNotFound`, `CommandNotFound`, ...) when
    /// QEMU refused the command.
    pub fn command_class(&self) -> Option<&str> {
        match self {
            QmpError::Command { class, .. } => Some(class),
            _ => None,
        }
    }
}

impl From<io::Error> for QmpError {
    /// A peer that went away is `Closed`, not an I/O failure: the caller's reaction differs.
    fn from(e: io::Error) -> QmpError {
        match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof => QmpError::Closed,
            _ => QmpError::Io(e),
        }
    }
}

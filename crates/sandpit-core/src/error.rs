//! The core's one error type. Each variant says what went wrong in terms a
//! caller can act on, and [`Error::code`] the gRPC code it is answered with,
//! in one place (the daemon's `api::status` turns that into a tonic status).

use crate::policy::Rule;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or malformed.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    /// Policy refused the request; `rule` names the admission rule.
    #[error("denied by rule '{rule}': {reason}")]
    Denied { rule: Rule, reason: String },

    /// The request is well formed but the object's state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),

    /// No such object, or none the caller may see (other teams' sandboxes
    /// are not acknowledged).
    #[error("{kind} '{id}' not found")]
    NotFound { kind: &'static str, id: String },

    /// The call carried no credentials the daemon knows.
    #[error("missing or unknown credentials")]
    Unauthenticated,

    /// The caller is known but its role or team does not allow the call.
    #[error("{0}")]
    PermissionDenied(String),

    /// The image is not on the engine and pulling it failed.
    #[error(
        "image '{image}' is not present on the Docker engine and could not be pulled ({reason}); \
         load it with `docker load` or `docker import` (e.g. scripts/build-image.sh {image}), \
         or make its registry reachable"
    )]
    ImageUnavailable { image: String, reason: String },

    /// The container engine cannot be reached; the daemon keeps serving and retries.
    #[error("container engine unavailable: {0}")]
    Unavailable(String),

    /// The container engine answered with an error.
    #[error("docker {op} failed: {message}")]
    Docker { op: &'static str, message: String },

    /// The store failed to read or write.
    #[error("store: {0}")]
    Store(String),

    /// An operation ran past its time limit (e.g. an exec's timeout).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),

    /// A per-identity limit (rate, concurrent calls, message size) was reached.
    #[error("{0}")]
    ResourceExhausted(String),

    /// The daemon is stopping and takes no new work.
    #[error("daemon is shutting down")]
    ShuttingDown,

    /// Someone else changed the record between reading and writing it.
    #[error("{0}")]
    Conflict(String),

    /// The caller went away before the call finished.
    #[error("cancelled: {0}")]
    Cancelled(String),

    /// A bug or an invariant broken; never the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { field, reason: reason.into() }
    }

    pub fn denied(rule: Rule, reason: impl Into<String>) -> Self {
        Error::Denied { rule, reason: reason.into() }
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound { kind, id: id.into() }
    }

    /// The gRPC status code this error is answered with: the one table.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::Denied { rule: Rule::TeamQuota, .. } => Code::ResourceExhausted,
            Error::Denied { rule, .. } if rule.depends_on_state() => Code::FailedPrecondition,
            Error::Denied { .. } => Code::PermissionDenied,
            Error::FailedPrecondition(_) | Error::ImageUnavailable { .. } => Code::FailedPrecondition,
            Error::NotFound { .. } => Code::NotFound,
            Error::Unauthenticated => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unavailable(_) | Error::ShuttingDown => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Cancelled(_) => Code::Cancelled,
            Error::Conflict(_) => Code::Aborted,
            Error::Docker { .. } | Error::Store(_) | Error::Internal(_) => Code::Internal,
        }
    }

    /// Whether the request was refused (rather than attempted and failed).
    pub fn is_denial(&self) -> bool {
        matches!(
            self,
            Error::Denied { .. } | Error::PermissionDenied(_) | Error::Unauthenticated | Error::ResourceExhausted(_)
        )
    }

    /// Transient failures worth retrying (engine down, engine hiccup).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Docker { .. })
    }
}

/// Longest caller-supplied value quoted back in a message (and so in the
/// audit log): enough to recognise it, never enough to flood anything.
const QUOTE_MAX: usize = 64;

/// A caller-supplied value as it is quoted in messages: in single quotes,
/// cut after [`QUOTE_MAX`] characters (the cut is marked with its size), with
/// control characters and Unicode direction controls escaped, so that no
/// value can make a message long, span lines, or reorder what a reader sees.
pub fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(QUOTE_MAX) + 16);
    out.push('\'');
    for (n, c) in value.chars().enumerate() {
        if n == QUOTE_MAX {
            out.push_str(&format!("…' ({} bytes)", value.len()));
            return out;
        }
        if c.is_control() || crate::text::is_direction_control(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The gRPC status codes the daemon answers with, named as gRPC names them
/// (these names are what the audit log records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok,
    Cancelled,
    Aborted,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    PermissionDenied,
    FailedPrecondition,
    Internal,
    Unavailable,
    Unauthenticated,
    ResourceExhausted,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Aborted => "ABORTED",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_short_single_line_and_inert() {
        assert_eq!(quoted("sb-1"), "'sb-1'");
        let long = quoted(&"x".repeat(4_000_000));
        assert!(long.len() < 100 && long.ends_with("(4000000 bytes)"), "{long}");
        assert_eq!(quoted("a\nb\x1b[2J"), "'a\\nb\\u{1b}[2J'");
        assert_eq!(quoted("\u{202e}abc"), "'\\u{202e}abc'");
        // Cut on a character, not a byte.
        assert!(quoted(&"é".repeat(100)).starts_with(&format!("'{}…", "é".repeat(64))));
    }
}

//! [`Error`] to gRPC status: the code comes from [`Error::code`], the one table.

use tonic::Status;

use sandpit_core::error::Code;
use sandpit_core::Error;

pub fn tonic_code(c: Code) -> tonic::Code {
    match c {
        Code::Ok => tonic::Code::Ok,
        Code::Cancelled => tonic::Code::Cancelled,
        Code::Aborted => tonic::Code::Aborted,
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        Code::NotFound => tonic::Code::NotFound,
        Code::PermissionDenied => tonic::Code::PermissionDenied,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::Internal => tonic::Code::Internal,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::Unauthenticated => tonic::Code::Unauthenticated,
        Code::ResourceExhausted => tonic::Code::ResourceExhausted,
    }
}

/// The status a failed call is answered with (internal errors are logged).
/// A function, not a `From`: neither type is this crate's, so handlers say
/// `.map_err(to_status)` where a core error leaves them.
pub fn to_status(e: Error) -> Status {
    let code = e.code();
    if code == Code::Internal {
        tracing::error!(error = %e, "internal error");
    }
    Status::new(tonic_code(code), bounded(e.to_string()))
}

/// Longest status message sent: messages may quote the request, and a
/// header-sized limit applies to them on the wire.
const MESSAGE_MAX: usize = 1024;

fn bounded(mut message: String) -> String {
    if message.len() > MESSAGE_MAX {
        let cut = (0..=MESSAGE_MAX).rev().find(|i| message.is_char_boundary(*i)).unwrap_or(0);
        message.truncate(cut);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandpit_core::policy::Rule;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let s = to_status(Error::invalid("x", "é".repeat(2000)));
        assert!(s.message().len() <= MESSAGE_MAX + '…'.len_utf8());
        assert!(s.message().starts_with("x: é") && s.message().ends_with('…'));
    }

    #[test]
    fn denials_by_rule() {
        assert_eq!(Error::denied(Rule::Ttl, "x").code(), Code::PermissionDenied);
        assert_eq!(Error::denied(Rule::MaxLifetime, "x").code(), Code::FailedPrecondition);
        assert_eq!(Error::denied(Rule::ExperimentApproval, "x").code(), Code::FailedPrecondition);
        assert_eq!(Error::Unavailable("x".into()).code(), Code::Unavailable);
        let s = to_status(Error::invalid("ttl", "must be above zero"));
        assert_eq!((s.code(), s.message()), (tonic::Code::InvalidArgument, "ttl: must be above zero"));
    }
}

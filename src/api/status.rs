//! The one table from [`Error`] to gRPC status codes.

use tonic::{Code, Status};

use crate::Error;

pub fn code(e: &Error) -> Code {
    match e {
        Error::InvalidArgument { .. } => Code::InvalidArgument,
        Error::Denied { rule, .. } if rule.depends_on_state() => Code::FailedPrecondition,
        Error::Denied { .. } => Code::PermissionDenied,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::NotFound { .. } => Code::NotFound,
        Error::Unauthenticated => Code::Unauthenticated,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::ImageUnavailable { .. } => Code::FailedPrecondition,
        Error::Unavailable(_) | Error::ShuttingDown => Code::Unavailable,
        Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        Error::Docker { .. } | Error::Store(_) | Error::Config { .. } | Error::Internal(_) => {
            Code::Internal
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = code(&e);
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Rule;

    #[test]
    fn denials_by_rule() {
        assert_eq!(code(&Error::denied(Rule::Ttl, "x")), Code::PermissionDenied);
        assert_eq!(
            code(&Error::denied(Rule::MaxLifetime, "x")),
            Code::FailedPrecondition
        );
        assert_eq!(code(&Error::Unavailable("x".into())), Code::Unavailable);
        let s = Status::from(Error::invalid("ttl", "must be above zero"));
        assert_eq!(s.message(), "ttl: must be above zero");
    }
}

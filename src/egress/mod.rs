//! The egress proxy for sandboxes in `allowlist` network mode (in progress):
//! so far, how hosts are compared, which addresses are refused, and the
//! request-head parser.

pub mod addr;
pub mod http;

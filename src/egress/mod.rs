//! The egress proxy for sandboxes in `allowlist` network mode (in progress):
//! so far, how hosts are compared and which addresses are refused.

pub mod addr;

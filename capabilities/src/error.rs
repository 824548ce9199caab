//! The errors of a capability call, with their Dapr-style error codes and a coarse kind.
//!
//! The gateway owns the mapping to HTTP status codes (it lives beside the rest of its error map);
//! [`ErrorKind`]'s variant docs give the suggested status for each.

use std::fmt;

use serde::Serialize;

/// What a caller of the HTTP API should make of an error, for the gateway's status map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorKind {
    /// The capability does not exist. Suggested status: 404.
    NotFound,
    /// The request is malformed. Suggested status: 400.
    BadRequest,
    /// No offer could serve the call and no stale result could stand in. Suggested status: 503.
    Unavailable,
    /// Every offer that was tried timed out. Suggested status: 504.
    Timeout,
    /// A bug or an unexpected state in edgecar. Suggested status: 500.
    Internal,
}

/// Why one offer did not serve a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureReason {
    /// Skipped: its circuit breaker is open (or its half-open probe slot is taken).
    CircuitOpen,
    /// Could not be reached (connection refused, DNS, no route, program not found).
    Unreachable,
    /// Did not answer within its timeout.
    Timeout,
    /// Answered with a 5xx status.
    ServerError,
    /// Anything else (protocol error, bad reply, missing secret, crashed process).
    Other,
}

/// One offer's failure, as listed in [`CapabilityError::Unavailable`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfferFailure {
    /// The offer's name.
    pub offer: String,
    /// The kind of failure.
    pub reason: FailureReason,
    /// A human-readable detail (`connection refused`, `status 502`, `exit status 1: ...`).
    pub message: String,
}

impl fmt::Display for OfferFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.offer, self.message)
    }
}

/// Joins failures as `a: timed out after 2s; b: status 502`.
fn list(failures: &[OfferFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a capability call produced no reply.
///
/// A 4xx from an offer is *not* an error: it is the caller's fault and comes back as a normal
/// [`CapabilityReply`](crate::CapabilityReply).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// No capability with this name is loaded. Code `ERR_CAPABILITY_NOT_FOUND`.
    #[error("capability {name:?} not found")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The request cannot be forwarded as sent (method path or query with characters a URL
    /// cannot carry, `..` segments). Code `ERR_MALFORMED_REQUEST`.
    #[error("malformed capability request: {reason}")]
    MalformedRequest {
        /// What is wrong.
        reason: String,
    },
    /// Every offer failed or was skipped, and no stale cached result could stand in.
    /// Code `ERR_CAPABILITY_UNAVAILABLE`.
    #[error("capability {capability:?} unavailable: {}", list(.failures))]
    Unavailable {
        /// The capability.
        capability: String,
        /// Each offer's failure, in manifest order.
        failures: Vec<OfferFailure>,
    },
    /// Every offer that was tried timed out (others may have been skipped by open breakers), and
    /// no stale result could stand in. Code `ERR_CAPABILITY_TIMEOUT`.
    #[error("capability {capability:?} timed out: {}", list(.failures))]
    TimedOut {
        /// The capability.
        capability: String,
        /// Each offer's failure, in manifest order.
        failures: Vec<OfferFailure>,
    },
    /// Something that should not happen. Code `ERR_CAPABILITY_INTERNAL`.
    #[error("internal error in capability engine: {reason}")]
    Internal {
        /// What happened.
        reason: String,
    },
}

impl CapabilityError {
    /// The Dapr-style `errorCode` for the error body.
    pub fn error_code(&self) -> &'static str {
        match self {
            CapabilityError::NotFound { .. } => "ERR_CAPABILITY_NOT_FOUND",
            CapabilityError::MalformedRequest { .. } => "ERR_MALFORMED_REQUEST",
            CapabilityError::Unavailable { .. } => "ERR_CAPABILITY_UNAVAILABLE",
            CapabilityError::TimedOut { .. } => "ERR_CAPABILITY_TIMEOUT",
            CapabilityError::Internal { .. } => "ERR_CAPABILITY_INTERNAL",
        }
    }

    /// The coarse kind, for the gateway's status map.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CapabilityError::NotFound { .. } => ErrorKind::NotFound,
            CapabilityError::MalformedRequest { .. } => ErrorKind::BadRequest,
            CapabilityError::Unavailable { .. } => ErrorKind::Unavailable,
            CapabilityError::TimedOut { .. } => ErrorKind::Timeout,
            CapabilityError::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// The offers' failures, for `Unavailable` and `TimedOut`; empty otherwise.
    pub fn failures(&self) -> &[OfferFailure] {
        match self {
            CapabilityError::Unavailable { failures, .. }
            | CapabilityError::TimedOut { failures, .. } => failures,
            _ => &[],
        }
    }

    /// The error for a capability whose every offer failed: `TimedOut` when every offer that
    /// was actually tried timed out, `Unavailable` otherwise.
    pub(crate) fn all_failed(capability: &str, failures: Vec<OfferFailure>) -> Self {
        let tried = failures
            .iter()
            .filter(|f| f.reason != FailureReason::CircuitOpen);
        let mut any_tried = false;
        let mut all_timeouts = true;
        for f in tried {
            any_tried = true;
            all_timeouts &= f.reason == FailureReason::Timeout;
        }
        let capability = capability.to_owned();
        if any_tried && all_timeouts {
            CapabilityError::TimedOut {
                capability,
                failures,
            }
        } else {
            CapabilityError::Unavailable {
                capability,
                failures,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn failure(offer: &str, reason: FailureReason, message: &str) -> OfferFailure {
        OfferFailure {
            offer: offer.into(),
            reason,
            message: message.into(),
        }
    }

    #[test]
    fn message_lists_every_offer() {
        let e = CapabilityError::all_failed(
            "geo",
            vec![
                failure("cloud", FailureReason::CircuitOpen, "circuit breaker open"),
                failure("peer", FailureReason::ServerError, "status 502"),
            ],
        );
        assert_eq!(e.error_code(), "ERR_CAPABILITY_UNAVAILABLE");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(
            e.to_string(),
            "capability \"geo\" unavailable: cloud: circuit breaker open; peer: status 502"
        );
    }

    #[test]
    fn only_timeouts_is_a_timeout() {
        let e = CapabilityError::all_failed(
            "geo",
            vec![
                failure("cloud", FailureReason::CircuitOpen, "open"),
                failure("peer", FailureReason::Timeout, "timed out after 2s"),
            ],
        );
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(e.error_code(), "ERR_CAPABILITY_TIMEOUT");
        let e = CapabilityError::all_failed(
            "geo",
            vec![failure("cloud", FailureReason::CircuitOpen, "open")],
        );
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }
}

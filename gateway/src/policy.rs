//! Policy: what a caller may do, decided once on the request path for every transport.
//!
//! Today the local app may do everything (Dapr's sidecar model: the API is reachable only from the
//! gateway unless its address is changed, and an API token can guard it). A device reaches state
//! only inside its own key namespace — the state block prefixes its keys with its id — and may not
//! change the sidecar's metadata. Scoped rules from the device registry extend this table.

use crate::call::{Caller, Op};
use crate::error::{Error, ErrorKind, codes};

/// Decides whether `caller` may perform `op`.
pub fn authorize(caller: &Caller, op: &Op) -> Result<(), Error> {
    match (caller, op) {
        (Caller::LocalApp { .. }, _) => Ok(()),
        (Caller::Device { .. }, Op::MetadataSet { .. } | Op::MetadataGet) => Err(Error::new(
            ErrorKind::Forbidden,
            codes::PERMISSION_DENIED,
            format!("{caller} may not use {}", op.name()),
        )),
        (Caller::Device { .. }, _) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_cannot_touch_sidecar_metadata() {
        let dev = Caller::Device { id: "d1".into() };
        assert!(authorize(&dev, &Op::MetadataGet).is_err());
        assert!(
            authorize(
                &dev,
                &Op::StateGet {
                    store: "s".into(),
                    key: "k".into()
                }
            )
            .is_ok()
        );
        let app = Caller::LocalApp { app_id: "a".into() };
        assert!(
            authorize(
                &app,
                &Op::MetadataSet {
                    attribute: "x".into()
                }
            )
            .is_ok()
        );
    }
}

//! The runtime: the one request path from a decoded [`Call`] to a [`Reply`].
//!
//! `authorize(caller, op)` first, then the building block that owns the operation. Transports hold
//! an `Arc<Runtime>` and call [`Runtime::handle`]; nothing here knows which transport asked.

use std::sync::Arc;

use tracing::debug;

use crate::blocks::metadata::MetadataBlock;
use crate::blocks::pubsub::PubSubBlock;
use crate::blocks::state::StateBlock;
use crate::call::{Call, Op, Reply};
use crate::error::Error;
use crate::policy;

/// Everything a request may need, built once at start-up.
pub struct Runtime {
    /// This sidecar's app id (the local app's identity).
    pub app_id: String,
    /// The state building block.
    pub state: StateBlock,
    /// The metadata building block.
    pub metadata: MetadataBlock,
    /// The pub/sub building block (shared with the subscription manager).
    pub pubsub: Arc<PubSubBlock>,
}

impl Runtime {
    /// Runs one call along the request path.
    pub async fn handle(&self, call: Call) -> Result<Reply, Error> {
        policy::authorize(&call.caller, &call.op)?;
        let caller = &call.caller;
        let result = match &call.op {
            Op::StateGet { store, key } => self.state.get(caller, store, key).await,
            Op::StateBulkGet { store } => self.state.bulk_get(caller, store, &call.body).await,
            Op::StateSave { store } => {
                self.state
                    .save(caller, store, &call.body, &call.params)
                    .await
            }
            Op::StateDelete { store, key } => {
                self.state.delete(caller, store, key, &call.params).await
            }
            Op::StateTransaction { store } => {
                self.state
                    .transaction(caller, store, &call.body, &call.params)
                    .await
            }
            Op::MetadataGet => self.metadata.get(),
            Op::MetadataSet { attribute } => self.metadata.set(attribute, &call.body),
            Op::Publish { pubsub, topic } => {
                self.pubsub
                    .publish(caller, pubsub, topic, &call.body, &call.params)
                    .await
            }
            Op::BulkPublish { pubsub, topic } => {
                self.pubsub
                    .bulk_publish(caller, pubsub, topic, &call.body, &call.params)
                    .await
            }
        };
        if let Err(e) = &result {
            debug!(caller = %call.caller, op = call.op.name(), code = e.code, error = %e.message, "call failed");
        }
        result
    }
}

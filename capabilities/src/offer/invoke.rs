//! `type: invoke` offers: service invocation of an app id through the gateway's [`Invoker`], which
//! resolves local apps, devices, LAN peers and `app.site` on other sites.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Invoker, Offer, OfferRequest, UpstreamError, UpstreamReply};

/// One `invoke` offer.
pub(crate) struct InvokeOffer {
    /// `app` or `app.site`.
    app_id: String,
    /// The gateway's invocation path.
    invoker: Arc<dyn Invoker>,
}

impl InvokeOffer {
    /// An offer calling `app_id` through `invoker`.
    pub(crate) fn new(app_id: String, invoker: Arc<dyn Invoker>) -> Self {
        Self { app_id, invoker }
    }
}

#[async_trait]
impl Offer for InvokeOffer {
    async fn call(&self, req: &OfferRequest) -> Result<UpstreamReply, UpstreamError> {
        let method = match &req.query {
            Some(q) if !q.is_empty() => format!("{}?{q}", req.method),
            _ => req.method.clone(),
        };
        self.invoker
            .invoke(
                &self.app_id,
                &method,
                &req.http_method,
                &req.headers,
                req.body.clone(),
            )
            .await
    }

    fn target(&self) -> String {
        self.app_id.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;
    use http::{Method, StatusCode};

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait]
    impl Invoker for Recorder {
        async fn invoke(
            &self,
            app_id: &str,
            method: &str,
            http_method: &Method,
            _headers: &[(String, String)],
            body: Bytes,
        ) -> Result<UpstreamReply, UpstreamError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("{http_method} {app_id}/{method}"));
            Ok(UpstreamReply::new(StatusCode::OK, body))
        }
    }

    #[tokio::test]
    async fn passes_app_method_and_query() {
        let recorder = Arc::new(Recorder::default());
        let offer = InvokeOffer::new("detector.site-b".into(), recorder.clone());
        let req = OfferRequest {
            capability: "detect".into(),
            method: "v2/run".into(),
            http_method: Method::PUT,
            query: Some("fast=1".into()),
            headers: Vec::new(),
            body: Bytes::from_static(b"img"),
        };
        let reply = offer.call(&req).await.unwrap();
        assert_eq!(reply.body, Bytes::from_static(b"img"));
        assert_eq!(
            recorder.0.lock().unwrap().as_slice(),
            ["PUT detector.site-b/v2/run?fast=1"]
        );
        assert_eq!(offer.target(), "detector.site-b");
    }
}

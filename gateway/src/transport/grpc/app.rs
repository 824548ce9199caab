//! The app's side of gRPC (`--app-protocol grpc`): edgecar calls the app's `AppCallback` and
//! `AppCallbackHealthCheck` services, as daprd does.

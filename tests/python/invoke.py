"""Drives edgecar with the official Dapr Python SDK's HTTP invocation client, unchanged.

Usage: DAPR_HTTP_PORT=<port> DAPR_API_METHOD_INVOCATION_PROTOCOL=HTTP python invoke.py <app-id>
Prints one line per check; exits non-zero on the first mismatch.
"""
import json
import sys

from dapr.clients import DaprClient

app_id = sys.argv[1]
with DaprClient() as client:
    print("ok client created (sidecar health waited for)")
    resp = client.invoke_method(
        app_id,
        "orders/42",
        data=json.dumps({"qty": 3}),
        content_type="application/json",
        http_verb="POST",
        http_querystring=(("priority", "high"),),
    )
    seen = json.loads(resp.data)
    assert seen["method"] == "POST", seen
    assert seen["path"] == "/orders/42?priority=high", seen
    assert json.loads(seen["body"]) == {"qty": 3}, seen
    assert resp.status_code == 201, resp.status_code
    print("ok invoke_method over HTTP: verb, path, query, body, status")

    resp = client.invoke_method(app_id, "health", http_verb="GET")
    assert json.loads(resp.data)["method"] == "GET"
    print("ok GET without a body")

    # The SDK's other calls (get_metadata, state, ...) go over gRPC, which edgecar does not serve.
print("all checks passed")

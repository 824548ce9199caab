"""A Dapr gRPC app written with the official SDK's dapr.ext.grpc (dapr-ext-grpc), unchanged.

Usage: grpc_app.py <port> <record file>
Serves AppCallback on <port>; appends one JSON line per call it receives to <record file>.
"""

import json
import sys

from dapr.ext.grpc import (
    App,
    BindingRequest,
    InvokeMethodRequest,
    InvokeMethodResponse,
    SubscriptionMessage,
)

PORT = int(sys.argv[1])
RECORD = sys.argv[2]
app = App()


def record(kind, **fields):
    with open(RECORD, 'a') as f:
        f.write(json.dumps({'kind': kind, **fields}) + '\n')


@app.method(name='echo')
def echo(request: InvokeMethodRequest) -> InvokeMethodResponse:
    record('invoke', data=request.data.decode(), content_type=request.content_type)
    return InvokeMethodResponse(b'grpc-app:' + request.data, 'text/plain')


@app.subscribe(pubsub_name='pubsub', topic='orders')
def orders(event: SubscriptionMessage) -> None:
    record('event', data=event.raw_data().decode(), topic=event.topic(),
           pubsub=event.pubsub_name(), type=event.type())


@app.binding('tick')
def tick(request: BindingRequest):
    record('binding', metadata=dict(request.binding_metadata))


print('app listening', flush=True)
app.run(PORT)

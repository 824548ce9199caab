"""A Dapr gRPC app written with the official SDK's dapr.ext.grpc (dapr-ext-grpc), unchanged.

Usage: grpc_app.py <port> <record file>
Serves AppCallback (and AppCallbackAlpha, as the SDK does) on <port>; appends one JSON line per
call it receives to <record file>. A standard gRPC server interceptor also records every RPC
edgecar makes ("rpc" lines: the method, and for event RPCs the binding name, topic, path or batch
size), so the test sees what was called, not only what reached a handler.
"""

import json
import sys
import threading
from concurrent import futures

import grpc
from dapr.ext.grpc import (
    App,
    BindingRequest,
    InvokeMethodRequest,
    InvokeMethodResponse,
    Rule,
    SubscriptionMessage,
    TopicEventResponse,
)

PORT = int(sys.argv[1])
RECORD = sys.argv[2]
lock = threading.Lock()


def record(kind, **fields):
    with lock, open(RECORD, 'a') as f:
        f.write(json.dumps({'kind': kind, **fields}) + '\n')


def describe(method, request):
    """What an RPC carried, for the record."""
    if method == 'OnBindingEvent':
        return {'name': request.name}
    if method in ('OnTopicEvent',):
        return {'topic': request.topic, 'path': request.path}
    if method in ('OnBulkTopicEvent', 'OnBulkTopicEventAlpha1'):
        return {'topic': request.topic, 'path': request.path, 'entries': len(request.entries)}
    return {}


class Recorder(grpc.ServerInterceptor):
    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit('/', 1)[-1]
        inner = handler.unary_unary

        def observed(request, context):
            record('rpc', method=method, **describe(method, request))
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


app = App(thread_pool=futures.ThreadPoolExecutor(max_workers=10), interceptors=[Recorder()])


@app.method(name='echo')
def echo(request: InvokeMethodRequest) -> InvokeMethodResponse:
    record('invoke', data=request.data.decode(), content_type=request.content_type)
    return InvokeMethodResponse(b'grpc-app:' + request.data, 'text/plain')


@app.subscribe(pubsub_name='mem', topic='orders')
def orders(event: SubscriptionMessage) -> None:
    record('event', data=event.raw_data().decode(), topic=event.topic(),
           pubsub=event.pubsub_name(), type=event.type())


# JSON string data: daprd hands a JSON-typed event's data over as its JSON encoding.
@app.subscribe(pubsub_name='pubsub', topic='strings')
def strings(event: SubscriptionMessage) -> None:
    record('string', data=event.raw_data().decode(), content_type=event.data_content_type())


# Routed by a rule: dapr-ext-grpc finds the handler by the path it gave (this function's name).
@app.subscribe(pubsub_name='pubsub', topic='routed', rule=Rule('event.type == "com.dapr.event.sent"', 1))
def on_routed(event: SubscriptionMessage) -> None:
    record('routed', data=event.raw_data().decode())


# Bulk-subscribed by a declarative Subscription (the SDK's decorator has no bulk option); the SDK
# answers OnBulkTopicEvent by calling this once per entry. n == 3 is dropped, n == 4 is retried
# once.
retried = set()


@app.subscribe(pubsub_name='pubsub', topic='batch')
def batch(event: SubscriptionMessage):
    n = json.loads(event.raw_data())['n']
    status = 'success'
    if n == 3:
        status = 'drop'
    elif n == 4 and n not in retried:
        retried.add(n)
        status = 'retry'
    record('batch', n=n, status=status, id=event.id())
    return TopicEventResponse(status)


@app.subscribe(pubsub_name='pubsub', topic='batch-dead')
def dead(event: SubscriptionMessage) -> None:
    record('dead', data=event.raw_data().decode())


# Only "tick" is listed by ListInputBindings; the "tock" binding edgecar also runs is not.
@app.binding('tick')
def tick(request: BindingRequest):
    record('binding', metadata=dict(request.binding_metadata))


print('app listening', flush=True)
app.run(PORT)

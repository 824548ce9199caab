"""The official Dapr Python SDK's DaprClient, over gRPC with its default settings, against edgecar.

Usage: grpc_client.py <app-id> <configuration items file>
Environment: DAPR_GRPC_PORT, DAPR_HTTP_PORT (the SDK waits on /v1.0/healthz/outbound),
DAPR_API_TOKEN. Prints "all checks passed" when every call behaved as daprd's would; the Rust test
checks what the app received and that edgecar stopped after Shutdown.
"""

import json
import signal
import sys
import threading
import time

import grpc

from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import Concurrency, StateItem, StateOptions
from dapr.conf import settings
from dapr.proto import api_service_v1, api_v1

signal.alarm(120)  # a hung stream fails the test instead of hanging it
APP_ID = sys.argv[1]
CONFIG_FILE = sys.argv[2] if len(sys.argv) > 2 else ''


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f'ok: {what}', flush=True)


def expect_error(fn, code, what):
    try:
        fn()
    except DaprGrpcError as e:
        check(e.code() == code, f'{what}: {e.code()} {e.details()} (error code {e.error_code()})')
        return e
    raise AssertionError(f'{what}: no error')


if APP_ID == '--token':
    # edgecar runs with an API token (DAPR_API_TOKEN here too): the SDK sends it as metadata.
    # The SDK adds it to unary and bidirectional calls only (not to server streams such as
    # SubscribeConfiguration), as against daprd; the main run is without a token for that reason.
    with DaprClient() as d:
        check(d.get_metadata().application_id != '', 'with the token: served')
    channel = grpc.insecure_channel(f'127.0.0.1:{settings.DAPR_GRPC_PORT}')
    try:
        api_service_v1.DaprStub(channel).GetMetadata(api_v1.GetMetadataRequest())
        raise AssertionError('a call without dapr-api-token was served')
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.UNAUTHENTICATED, 'no token: UNAUTHENTICATED')
    channel.close()
    print('all checks passed', flush=True)
    sys.exit(0)

with DaprClient() as d:
    # --- state: ETags, first-write, delete with ETag
    d.save_state('statestore', 'k1', 'v1')
    got = d.get_state('statestore', 'k1')
    check(got.data == b'v1' and got.etag, f'get_state returns the bytes and an etag ({got.etag!r})')
    first = StateOptions(concurrency=Concurrency.first_write)
    err = expect_error(
        lambda: d.save_state('statestore', 'k1', 'v2', etag='999', options=first),
        grpc.StatusCode.ABORTED,
        'a stale etag is refused',
    )
    check(err.error_code() == 'ERR_STATE_SAVE', 'the error carries ERR_STATE_SAVE in ErrorInfo')
    d.save_state('statestore', 'k1', 'v2', etag=got.etag, options=first)
    check(d.get_state('statestore', 'k1').data == b'v2', 'the right etag saves')
    binary = bytes(range(256))
    d.save_state('statestore', 'bin', binary)
    check(d.get_state('statestore', 'bin').data == binary, 'binary values round-trip unchanged')
    etag = d.get_state('statestore', 'k1').etag
    expect_error(
        lambda: d.delete_state('statestore', 'k1', etag='999'),
        grpc.StatusCode.ABORTED,
        'delete with a stale etag is refused',
    )
    d.delete_state('statestore', 'k1', etag=etag)
    check(d.get_state('statestore', 'k1').data == b'', 'deleted key reads empty')
    expect_error(
        lambda: d.get_state('nosuchstore', 'k'),
        grpc.StatusCode.INVALID_ARGUMENT,
        'an unknown store is INVALID_ARGUMENT',
    )

    # --- bulk state and transactions
    d.save_bulk_state('statestore', [StateItem('b1', 'one'), StateItem('b2', '{"n":2}')])
    items = {i.key: i for i in d.get_bulk_state('statestore', ['b1', 'b2', 'b3']).items}
    check(items['b1'].data == b'one' and items['b2'].data == b'{"n":2}', 'bulk get returns each value')
    check(items['b3'].data == b'' and items['b1'].etag, 'bulk get: missing key empty, etags set')
    d.execute_state_transaction(
        'statestore',
        [
            TransactionalStateOperation(key='t1', data='tx'),
            TransactionalStateOperation(key='b1', operation_type=TransactionOperationType.delete),
        ],
    )
    check(d.get_state('statestore', 't1').data == b'tx', 'transaction upserts')
    check(d.get_state('statestore', 'b1').data == b'', 'transaction deletes')

    # --- query (alpha): filter, sort, page
    for i, (state, n) in enumerate([('CA', 3), ('WA', 1), ('CA', 2), ('CA', 1)]):
        d.save_state('statestore', f'q{i}', json.dumps({'state': state, 'n': n}))
    q = {'filter': {'EQ': {'state': 'CA'}}, 'sort': [{'key': 'n', 'order': 'DESC'}],
         'page': {'limit': 2}}
    r = d.query_state('statestore', json.dumps(q))
    check([x.key for x in r.results] == ['q0', 'q2'] and r.token, f'query page 1 ({r.results})')
    q['page']['token'] = r.token
    r = d.query_state('statestore', json.dumps(q))
    check([x.key for x in r.results] == ['q3'] and json.loads(r.results[0].value) == {'state': 'CA', 'n': 1},
          'query page 2')

    # --- publish and bulk publish (the app subscribes to "orders")
    d.publish_event('pubsub', 'orders', data='{"id": 1}', data_content_type='application/json')
    resp = d.publish_events('pubsub', 'orders', data=['{"id": 2}', '{"id": 3}'],
                            data_content_type='application/json')
    check(len(resp.failed_entries) == 0, 'bulk publish: no failed entries')

    # --- a streaming subscription (SubscribeTopicEventsAlpha1, bidirectional)
    sub = d.subscribe('pubsub', 'stream-topic')
    d.publish_event('pubsub', 'stream-topic', data='{"s": 1}', data_content_type='application/json')
    msg = sub.next_message()
    check(msg is not None and json.loads(msg.raw_data()) == {'s': 1},
          f'the streaming subscription receives the event ({msg and msg.raw_data()!r})')
    check(msg.topic() == 'stream-topic' and msg.pubsub_name() == 'pubsub', 'with its topic')
    sub.respond_retry(msg)
    again = sub.next_message()
    check(again is not None and again.id() == msg.id(), 'RETRY redelivers the same event')
    sub.respond_success(again)
    d.publish_event('pubsub', 'stream-topic', data='"str"', data_content_type='application/json')
    s = sub.next_message()
    check(s is not None and s.raw_data() == b'"str"',
          f'JSON string data arrives JSON-encoded, as daprd sends it ({s and s.raw_data()!r})')
    sub.respond_success(s)
    sub.close()

    # --- invocation, HTTP protocol (the SDK's default) then gRPC's InvokeService
    r = d.invoke_method(APP_ID, 'echo', data=b'over-http', http_verb='POST')
    check(r.data == b'over-http', 'invoke over the HTTP invocation protocol')
    settings.DAPR_API_METHOD_INVOCATION_PROTOCOL = 'grpc'
    with DaprClient() as g:
        r = g.invoke_method(APP_ID, 'echo', data=b'over-grpc', content_type='text/plain',
                            http_verb='POST')
        check(r.data == b'over-grpc', 'invoke over gRPC InvokeService')
    settings.DAPR_API_METHOD_INVOCATION_PROTOCOL = 'http'

    # --- output binding (bindings.http to the app's /erp)
    r = d.invoke_binding('erp', 'post', data='{"order": 7}')
    check(b'binding-ok' in r.data, 'output binding returns the endpoint\'s answer')
    check(r.binding_metadata.get('statuscode') == '200', 'binding metadata carries the status')
    blob = bytes(range(256))  # not UTF-8: gRPC's bytes reach the binding as they are
    r = d.invoke_binding('erp', 'post', data=blob, binding_metadata={'path': 'echo'})
    check(r.data == blob, 'binary binding data reaches the endpoint and comes back byte for byte')

    # --- secrets
    s = d.get_secret('secrets', 'db-password')
    check(s.secret == {'db-password': 's3cret'}, 'get_secret')
    b = d.get_bulk_secret('secrets')
    check(b.secrets.get('db-password') == {'db-password': 's3cret'}, 'get_bulk_secret')

    # --- configuration get and subscribe
    c = d.get_configuration('settings', ['threshold'])
    check(c.items['threshold'].value == '21.5', 'get_configuration')
    seen = threading.Event()
    changes = []

    def on_change(sub_id, resp):
        for k, item in resp.items.items():
            changes.append((k, item.value))
        if ('threshold', '30') in changes:
            seen.set()

    sub_id = d.subscribe_configuration('settings', ['threshold'], on_change)
    check(bool(sub_id), f'subscribe_configuration returns an id ({sub_id})')
    time.sleep(0.3)
    with open(CONFIG_FILE, 'w') as f:
        f.write('threshold: 30\n')
    check(seen.wait(15), f'a change arrives on the configuration stream ({changes})')
    check(d.unsubscribe_configuration('settings', sub_id), 'unsubscribe_configuration')

    # --- locks
    check(d.try_lock('lockstore', 'res1', 'alice', 60).success, 'alice takes the lock')
    check(not d.try_lock('lockstore', 'res1', 'bob', 60).success, 'bob does not')
    check(d.unlock('lockstore', 'res1', 'bob').status.name == 'lock_belongs_to_others',
          'bob cannot unlock it')
    check(d.unlock('lockstore', 'res1', 'alice').status.name == 'success', 'alice unlocks')

    # --- metadata
    d.set_metadata('color', 'blue')
    m = d.get_metadata()
    check(m.application_id == APP_ID, f'metadata names the app ({m.application_id})')
    check(m.extended_metadata.get('color') == 'blue', 'set_metadata is read back')
    names = {c.name for c in m.registered_components}
    check({'statestore', 'pubsub', 'secrets', 'lockstore', 'settings', 'erp'} <= names,
          f'metadata lists the components ({names})')

    # --- RPCs edgecar does not serve answer UNIMPLEMENTED, which SDK fallbacks rely on
    channel = grpc.insecure_channel(f'127.0.0.1:{settings.DAPR_GRPC_PORT}')
    try:
        api_service_v1.DaprStub(channel).GetActorState(
            api_v1.GetActorStateRequest(actor_type='a', actor_id='b', key='c'))
        raise AssertionError('an actor RPC was served')
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.UNIMPLEMENTED, 'unserved RPCs are UNIMPLEMENTED')
    channel.close()

    # --- shutdown: edgecar stops (the Rust test waits for the exit)
    d.shutdown()
    print('all checks passed', flush=True)

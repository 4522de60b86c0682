#!/usr/bin/env python3
"""A Starling plugin in Python: a grpcio server implementing ``starling.plugin.v1.Plugin``
(proto/starling/plugin/v1/plugin.proto). The gRPC plugin tests start it, and
docs/plugins-grpc.md shows it as the example.

What it does:

* ``OnConnect``: refuses a client whose id starts with ``--ban-prefix`` (default ``banned``)
  with 0x87 Not authorized.
* ``OnPublish``: on ``rewrite/...`` the payload is upper-cased; on ``drop/...`` the message is
  dropped with 0x97 Quota exceeded; on ``take/...`` it is taken; else it passes.
* ``OnSubscribe``: refuses ``forbidden/...`` filters with 0x87.
* ``Notify``: appends every notification (deliveries, acks, drops, sessions, disconnects) as
  one JSON object per line to ``--record FILE``.

Failure modes for the tests: ``--mode hang`` never answers ``OnPublish`` on ``hang/...``
(it waits until the broker gives up the call); ``--mode crash`` exits on its first
``OnPublish``.

The Python stubs are generated from the proto into ``--stubs DIR`` (with grpcio-tools) when
they are not there yet. Prints ``ready <port>`` once it listens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
PROTO = PROTO_DIR / "starling" / "plugin" / "v1" / "plugin.proto"


def load_stubs(stubs: Path):
    """Imports plugin_pb2 and plugin_pb2_grpc, generating them into `stubs` if needed."""
    generated = stubs / "starling" / "plugin" / "v1" / "plugin_pb2_grpc.py"
    if not generated.exists():
        stubs.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable, "-m", "grpc_tools.protoc",
                f"-I{PROTO_DIR}", f"--python_out={stubs}", f"--grpc_python_out={stubs}",
                str(PROTO),
            ],
            check=True,
            timeout=60,
        )
    sys.path.insert(0, str(stubs))
    from starling.plugin.v1 import plugin_pb2, plugin_pb2_grpc  # noqa: E402

    return plugin_pb2, plugin_pb2_grpc


def make_servicer(pb, pb_grpc, args):
    record_lock = threading.Lock()

    def record(obj: dict) -> None:
        if args.record is None:
            return
        with record_lock, open(args.record, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj) + "\n")

    class Plugin(pb_grpc.PluginServicer):
        def Describe(self, request, context):
            return pb.DescribeResponse(events=[pb.Event.Value(e) for e in args.events])

        def OnConnect(self, request, context):
            if request.client.client_id.startswith(args.ban_prefix):
                return pb.ConnectResponse(refuse=0x87)
            return pb.ConnectResponse(accept=pb.ConnectResponse.Accept())

        def OnPublish(self, request, context):
            if args.mode == "crash":
                os._exit(3)
            topic = request.topic
            if args.mode == "hang" and topic.startswith("hang/"):
                # Never answers: waits until the broker cancels the call (its deadline).
                deadline = time.monotonic() + 120
                while context.is_active() and time.monotonic() < deadline:
                    time.sleep(0.05)
                context.abort(grpc.StatusCode.CANCELLED, "gave up")
            if topic.startswith("rewrite/"):
                change = pb.Change(payload=request.payload.upper())
                change.user_properties.items.add(key="rewritten-by", value="python")
                return pb.PublishResponse(change=change)
            if topic.startswith("drop/"):
                return pb.PublishResponse(drop=0x97)
            if topic.startswith("take/"):
                return pb.PublishResponse(taken=pb.PublishResponse.Taken())
            return pb.PublishResponse(**{"pass": pb.PublishResponse.Pass()})

        def OnSubscribe(self, request, context):
            if request.filter.startswith("forbidden/"):
                return pb.FilterResponse(refuse=0x87)
            return pb.FilterResponse(**{"pass": pb.FilterResponse.Pass()})

        def OnUnsubscribe(self, request, context):
            return pb.FilterResponse(**{"pass": pb.FilterResponse.Pass()})

        def Notify(self, request_iterator, context):
            for n in request_iterator:
                kind = n.WhichOneof("event")
                e = getattr(n, kind)
                line = {"event": kind, "ts_ms": n.ts_ms}
                if kind == "delivered":
                    line.update(client_id=e.client_id, topic=e.topic, qos=e.qos,
                                payload=e.payload.decode("utf-8", "replace"),
                                **({"from": getattr(e, "from")} if e.HasField("from") else {}))
                elif kind == "acked":
                    line.update(client_id=e.client_id, packet_id=e.packet_id, qos=e.qos)
                elif kind == "dropped":
                    line.update(topic=e.topic, reason=e.reason)
                elif kind == "session":
                    line.update(client_id=e.client_id, change=e.change)
                elif kind == "disconnected":
                    line.update(client_id=e.client.client_id, reason_code=e.reason_code)
                record(line)
            return pb.NotifyResponse()

    return Plugin()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    p.add_argument("--stubs", type=Path, required=True, help="directory of the Python stubs")
    p.add_argument("--record", help="JSON-lines file the notifications are appended to")
    p.add_argument("--mode", choices=["normal", "hang", "crash"], default="normal")
    p.add_argument("--ban-prefix", default="banned")
    p.add_argument(
        "--events",
        nargs="*",
        default=["EVENT_CONNECT", "EVENT_PUBLISH", "EVENT_SUBSCRIBE", "EVENT_DELIVERED",
                 "EVENT_ACKED", "EVENT_DROPPED", "EVENT_SESSION", "EVENT_DISCONNECTED"],
        help="the events Describe names",
    )
    args = p.parse_args()
    pb, pb_grpc = load_stubs(args.stubs)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    pb_grpc.add_PluginServicer_to_server(make_servicer(pb, pb_grpc, args), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"ready {args.port}", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())

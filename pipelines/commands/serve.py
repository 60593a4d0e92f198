"""``gpt-scratch serve``: an OpenAI-compatible HTTP API over one model folder (``pipelines.serving.app``).

The port is bound before the (slow) model load, so a port in use fails at once.  The server listens on 127.0.0.1
unless ``--host`` says otherwise; without ``--api-key`` on another address it warns that anyone who can reach the port
can use the model.  Requests that arrive together are decoded in one batch; a full queue answers 429 at once.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from ..errors import UserError
from ..serving.app import make_server, server_url


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="model folder (e.g. the --out of pretrain or finetune-instruct)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                        "only; 0.0.0.0 exposes the server to the network, use it with --api-key)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="reply length when a request gives no max_tokens (default 256)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together (default 8)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests that may wait for a batch; more are answered 429 (default 64)")
    parser.add_argument("--request-timeout", type=float, default=300.0,
                        help="seconds a request may wait in the queue before it gets 503 (default 300)")
    parser.add_argument("--batch-wait-ms", type=float, default=15.0,
                        help="how long the first request of a batch waits for others to join (default 15 ms)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for decoding (default: torch's "
                        "choice; 1 is often faster for a small model on a busy machine)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log each request on stderr")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.threads < 0:
        raise UserError(f"--threads {args.threads} must be 0 (torch's choice) or a positive count")
    if args.threads:
        torch.set_num_threads(args.threads)
    server = make_server(args.model, args.host, args.port, api_key=args.api_key, max_new_tokens=args.max_new_tokens,
                         max_batch_size=args.max_batch_size, max_queue=args.max_queue,
                         request_timeout=args.request_timeout, batch_wait_ms=args.batch_wait_ms,
                         access_log=not args.no_access_log)
    service = server.service
    logging.basicConfig(format="%(message)s", stream=sys.stderr)  # uvicorn's warnings, and its access log:
    logging.getLogger("uvicorn.access").setLevel(logging.INFO)  # one line per request on stderr (stdout: the URL)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach this port can use the model",
              file=sys.stderr)
    kind = "instruct model, chat template" if service.instruct else "base model, transcript chat"
    print(f"serving {args.model} on {server_url(server)}", flush=True)
    print(f"(model id {service.name!r}: {kind}; context {service.context} tokens; batches of up to "
          f"{args.max_batch_size}, queue {args.max_queue}; Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("stopped", file=sys.stderr)
    return 0



"""``gpt-scratch serve`` under load: concurrent streams batched through the engine, a full queue, timeouts, malformed
requests, clients that hang up.

A tiny random model (its embeddings scaled up so that greedy decoding has clear winners) with a small trained
byte-level BPE tokenizer.  Servers run in-process (uvicorn in a thread) on 127.0.0.1, port 0; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipelines.serving.app import make_server, server_url

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [
    "The quick brown fox",
    "Hello there,",
    "how are you",
    "The lazy dog jumps over",
    "quick quick",
    "over the",
    "Hello, how",
    "brown dog. The",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
    from pipelines.runs.tokenizers import train_bpe_tokenizer

    eos = "<|endoftext|>"
    tokenizer = train_bpe_tokenizer(["The quick brown fox jumps over the lazy dog. Hello there, how are you?"] * 20, 320)
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    config = GPTScratchConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=128, eos_token_id=eos_id, bos_token_id=eos_id,
                              pad_token_id=eos_id)
    torch.manual_seed(0)
    model = GPTScratchForCausalLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(25)  # peaked logits: no near-ties for greedy decoding to trip on
    folder = tmp_path_factory.mktemp("serve-model") / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def serving(model_dir, **options):
    """An in-process server (uvicorn in a thread) for the block: ``(server, url)``."""
    server = make_server(model_dir, "127.0.0.1", 0, access_log=False, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.uvicorn.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.uvicorn.started, "the server did not start"
    try:
        yield server, server_url(server)
    finally:
        server.shutdown(timeout=15)
        server.server_close()
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def served(model_dir):
    with serving(model_dir) as (server, url):
        yield url


def post(url, payload=None, raw=None, timeout=60):
    data = raw if raw is not None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def get(url, timeout=30):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def stream_events(body: str) -> list:
    blocks = [block for block in body.split("\n\n") if block.strip()]
    assert all(block.startswith("data: ") for block in blocks), body[:500]
    assert blocks[-1] == "data: [DONE]"
    return [json.loads(block[len("data: "):]) for block in blocks[:-1]]


def assert_error(status, body, expected):
    assert status == expected, (status, body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], body


# ----------------------------------------------------------------------------------------------------------------


def test_concurrent_streams_are_batched_and_each_matches_its_greedy_answer(model_dir):
    from pipelines.decoding.engine import Engine
    from pipelines.runs.folders import open_model

    model, tokenizer = open_model(model_dir, device="cpu")
    engine = Engine(model, tokenizer)
    lengths = [10 + 2 * i for i in range(len(PROMPTS))]  # rows leave the batch at different steps
    alone = [engine.run([engine.request(p, max_new_tokens=n, temperature=0.0)])[0] for p, n in zip(PROMPTS, lengths)]

    with serving(model_dir, batch_wait_ms=300) as (server, url):
        start = threading.Barrier(len(PROMPTS))

        def client(i):
            start.wait(timeout=30)
            payload = {"prompt": PROMPTS[i], "max_tokens": lengths[i], "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}
            return post(url + "/v1/completions", payload)

        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            streamed = list(pool.map(client, range(len(PROMPTS))))
        stats = get(url + "/health")[1]
        plain = [post(url + "/v1/completions", {"prompt": p, "max_tokens": n, "temperature": 0})
                 for p, n in zip(PROMPTS, lengths)]

    assert stats["largest_batch"] > 1, stats  # the streams were decoded together
    assert stats["queued"] == 0 and stats["running"] == 0
    for (status, body), (plain_status, plain_body), reference in zip(streamed, plain, alone):
        assert status == 200 and plain_status == 200, (body, plain_body)
        chunks = stream_events(body)
        assert all(c["object"] == "text_completion" for c in chunks)
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
        usage = chunks[-1]["usage"]
        answer = json.loads(plain_body)
        assert text == answer["choices"][0]["text"] == reference.text
        assert finish == answer["choices"][0]["finish_reason"] == reference.finish_reason
        assert usage == answer["usage"]
        assert usage["completion_tokens"] == len(reference.tokens)
        assert usage["prompt_tokens"] == len(reference.prompt_ids)


class Gate:
    """An engine whose batches wait until the test opens the gate."""

    def __init__(self, engine):
        self.engine, self.open = engine, threading.Event()

    def run(self, requests, on_text=None):
        assert self.open.wait(timeout=60), "the test never opened the gate"
        return self.engine.run(requests, on_text)


def wait_for(url, condition, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = get(url + "/health")[1]
        if condition(stats):
            return stats
        time.sleep(0.02)
    raise AssertionError(f"the server never reached the state: last /health {stats}")


def test_full_queue_is_refused_at_once_and_a_request_queued_too_long_gets_503(model_dir):
    with serving(model_dir, max_batch_size=1, max_queue=1, request_timeout=1.5, batch_wait_ms=0) as (server, url):
        gate = server.batcher.engine = Gate(server.batcher.engine)
        with ThreadPoolExecutor(2) as pool:
            payload = {"prompt": "Hello", "max_tokens": 4, "temperature": 0}
            running = pool.submit(post, url + "/v1/completions", payload)
            wait_for(url, lambda s: s["running"] == 1)
            queued = pool.submit(post, url + "/v1/completions", {**payload, "stream": True})
            wait_for(url, lambda s: s["queued"] == 1)

            began = time.monotonic()
            status, body = post(url + "/v1/completions", payload, timeout=10)
            assert time.monotonic() - began < 3, "a full queue must be answered at once"
            assert_error(status, body, 429)
            assert json.loads(body)["error"]["code"] == "queue_full"

            status, body = queued.result(timeout=30)  # the gate is still shut: it times out in the queue
            assert_error(status, body, 503)
            assert json.loads(body)["error"]["code"] == "queue_timeout"
            gate.open.set()
            status, body = running.result(timeout=30)
            assert status == 200 and json.loads(body)["usage"]["completion_tokens"] >= 1
        stats = get(url + "/health")[1]
        assert stats["status"] == "ok" and stats["queued"] == 0


def test_out_of_range_numbers_nan_infinity_and_lone_surrogates_are_400(served):
    completions, chat = served + "/v1/completions", served + "/v1/chat/completions"
    bad = [
        b'{"prompt": "x", "temperature": NaN}',
        b'{"prompt": "x", "temperature": Infinity}',
        b'{"prompt": "x", "top_p": -Infinity}',
        b'{"prompt": "x", "temperature": 1e999}',
        b'{"prompt": "x", "temperature": 2.5}',
        b'{"prompt": "x", "temperature": -0.5}',
        b'{"prompt": "x", "top_p": 1.5}',
        b'{"prompt": "x", "top_k": -1}',
        b'{"prompt": "x", "top_k": 1e3}',
        b'{"prompt": "x", "max_tokens": 0}',
        b'{"prompt": "x", "max_tokens": 1e999}',
        b'{"prompt": "x", "max_tokens": 99999999999999999999999}',
        b'{"prompt": "x", "max_tokens": 4.5}',
        b'{"prompt": "x", "seed": 1.5}',
        b'{"prompt": "x", "seed": 999999999999999999999999}',
        b'{"prompt": "x", "seed": NaN}',
        b'{"prompt": "\\ud800"}',
        b'{"prompt": "ok \\udfff then"}',
        b'{"prompt": ["\\ud83d"]}',
        b'{"prompt": "x", "stop": ["\\udc00"]}',
        b'{"prompt": "raw \xed\xa0\x80 surrogate"}',
    ]
    for raw in bad:
        status, body = post(completions, raw=raw)
        assert_error(status, body, 400)
    status, body = post(chat, raw=b'{"messages": [{"role": "user", "content": "\\ud800"}]}')
    assert_error(status, body, 400)
    status, body = post(chat, raw=b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}')
    assert_error(status, body, 400)
    status, body = post(completions, {"prompt": "x", "temperature": 3})
    assert json.loads(body)["error"]["param"] == "temperature"
    # the edges of every range are fine
    edges = {"prompt": "x", "max_tokens": 1, "temperature": 2, "top_p": 0, "top_k": 0, "seed": 2**64 - 1}
    assert post(completions, edges)[0] == 200
    assert post(completions, {**edges, "temperature": 1e-300, "top_p": 1e-9, "seed": -(2**63)})[0] == 200


def test_a_burst_of_malformed_and_valid_requests(served):
    completions, chat = served + "/v1/completions", served + "/v1/chat/completions"
    valid = [
        (completions, {"prompt": p, "max_tokens": 6, "temperature": 0}) for p in PROMPTS[:3]
    ] + [(chat, {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6, "stream": True})]
    malformed = [
        (completions, b"{not json", 400),
        (completions, b"", 400),
        (completions, b"[1, 2]", 400),
        (completions, b'{"prompt": {"a": 1}}', 400),
        (completions, b'{"max_tokens": 3}', 400),  # no prompt
        (completions, b'{"prompt": [1, -2]}', 400),
        (completions, b'{"prompt": [1, 100000]}', 400),
        (completions, b'{"prompt": "x", "max_tokens": "4"}', 400),
        (completions, b'{"prompt": "x", "stream": "yes"}', 400),
        (completions, b'{"prompt": "x", "stop": 5}', 400),
        (completions, b'{"prompt": "x", "stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", '
                      b'"n", "o", "p", "q"]}', 400),
        (completions, b'{"prompt": "x", "n": 2}', 400),
        (completions, b'{"prompt": "x", "logprobs": 2}', 400),
        (completions, b'{"prompt": "x", "echo": true}', 400),
        (completions, b'{"prompt": "x", "stream_options": []}', 400),
        (chat, b'{"messages": []}', 400),
        (chat, b'{"messages": "hi"}', 400),
        (chat, b'{"messages": [{"role": "tool", "content": "x"}]}', 400),
        (chat, b'{"messages": [{"role": "system", "content": "x"}]}', 400),
        (chat, b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400),
        (chat, b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}', 400),
        (chat, b'{"messages": [{"role": "user", "content": "x"}], "temperature": true}', 400),
    ]

    def send(item):
        if len(item) == 2:
            return "valid", item, post(item[0], item[1])
        return "malformed", item, post(item[0], raw=item[1])

    work = valid + malformed
    work = [work[i] for i in sorted(range(len(work)), key=lambda i: (i * 7) % len(work))]  # interleaved
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, work))
    for kind, item, (status, body) in results:
        if kind == "malformed":
            assert_error(status, body, item[2])
        elif item[1].get("stream"):
            assert status == 200 and stream_events(body)[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        else:
            assert status == 200, body
            assert json.loads(body)["choices"][0]["finish_reason"] in ("stop", "length")
    # a body over 8 MiB is refused from its Content-Length, before it is read (the client sees 413, not a reset)
    host, port = served.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 9000000\r\n\r\n" + b"x" * 1000)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
        reply = reply.decode()
    status, body = int(reply.split(" ", 2)[1]), reply.split("\r\n\r\n", 1)[1]
    assert_error(status, body, 413)
    status, body = get(served + "/v1/nope")
    assert status == 404 and body["error"]["type"] == "not_found_error"
    status, body = get(completions)
    assert status == 405 and set(body["error"]) == {"message", "type", "param", "code"}
    status, health = get(served + "/health")
    assert status == 200 and health["status"] == "ok"


def test_a_client_that_hangs_up_mid_stream_blocks_no_one(served):
    host, port = served.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", "/v1/completions", json.dumps(
        {"prompt": "The", "max_tokens": 120, "temperature": 0, "stream": True}), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    first = response.readline()
    assert first.startswith(b"data: ")
    response.close()
    connection.close()  # gone, mid-stream
    status, body = post(served + "/v1/completions", {"prompt": "Hello", "max_tokens": 5, "temperature": 0},
                        timeout=30)
    assert status == 200, body
    wait_for(served, lambda s: s["running"] == 0 and s["queued"] == 0)


def test_serve_with_a_bad_model_folder_is_one_clear_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "serve", "--model", str(tmp_path / "missing"), "--port", "0"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model" in lines[0] and "does not exist" in lines[0], result.stderr

"""Prompt formats, the streaming/stop helpers, ``chat``, ``serve`` and ``judge``.

One tiny model is trained once for the module (a few dozen steps on a repeated transcript, so that greedy decoding
reproduces "Bot: hi\\nUser: hello ..."), saved as a base folder and as an instruct folder (same weights, tokenizer
with the Alpaca chat template).  Servers bind 127.0.0.1 only; every wait is bounded; subprocesses are killed in
``finally``.
"""

from __future__ import annotations

import io
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.decoding.engine import cut_at_stop_strings, decode_incrementally, trim_whitespace
from pipelines.evals.judge import parse_score
from pipelines.data.instructions import ALPACA_CHAT_TEMPLATE, format_alpaca
from pipelines.decoding.prompts import render_transcript

REPO = Path(__file__).resolve().parents[2]
SYSTEM = "Chat."
TRANSCRIPT = SYSTEM + "\n\n" + "User: hello\nBot: hi\n" * 3
API_KEY = "sekret"
RECORD_WITH_INPUT = {
    "instruction": "Rewrite the sentence in passive voice.",
    "input": "The cat chased the mouse.",
    "output": "The mouse was chased by the cat.",
}
RECORD_WITHOUT_INPUT = {"instruction": "Name a primary color.", "input": "", "output": "Red."}


def _env():
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args, stdin=None, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(),
        timeout=timeout,
    )


# ----------------------------------------------------------------------------------------------------------------
# fixtures: a tiny trained model, as a base and as an instruct folder
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    import torch
    from modeling_gpt_scratch import GPTScratchConfig, GPTScratchForCausalLM
    from pipelines.runs.tokenizers import train_bpe_tokenizer

    eos = "<|endoftext|>"
    sentences = [TRANSCRIPT, format_alpaca(RECORD_WITH_INPUT, with_response=True), "The quick brown fox jumps."] * 4
    tokenizer = train_bpe_tokenizer(sentences, vocab_size=400)
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    config = GPTScratchConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        eos_token_id=eos_id,
        bos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    prompt = tokenizer.encode(SYSTEM + "\n\nUser: hello\nBot:")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than two threads for a model this small, on a busy machine
    try:
        torch.manual_seed(0)
        model = GPTScratchForCausalLM(config)
        ids = torch.tensor([tokenizer.encode(TRANSCRIPT)])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        continuation = ""
        for _ in range(10):  # bounded: until greedy decoding reproduces the transcript
            model.train()
            for _ in range(20):
                loss = model(input_ids=ids, labels=ids).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
            continuation = tokenizer.decode(out[0, len(prompt):])
            if continuation.startswith(" hi\nUser: hello"):
                break
    finally:
        torch.set_num_threads(threads)
    assert continuation.startswith(" hi\nUser: hello"), f"the tiny model did not learn the transcript: {continuation!r}"

    root = tmp_path_factory.mktemp("models")
    base, instruct = root / "base", root / "instruct"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    model.save_pretrained(instruct)
    tokenizer.chat_template = ALPACA_CHAT_TEMPLATE
    tokenizer.save_pretrained(instruct)
    tokenizer.chat_template = None
    return {"base": base, "instruct": instruct}


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_models["instruct"]), trust_remote_code=True)


# ----------------------------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------------------------


def test_format_alpaca_is_the_books_template_character_for_character():
    assert format_alpaca(RECORD_WITH_INPUT) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nRewrite the sentence in passive voice."
        "\n\n### Input:\nThe cat chased the mouse."
        "\n\n### Response:\n"
    )
    assert format_alpaca(RECORD_WITH_INPUT, with_response=True) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nRewrite the sentence in passive voice."
        "\n\n### Input:\nThe cat chased the mouse."
        "\n\n### Response:\nThe mouse was chased by the cat."
    )
    expected_without_input = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nName a primary color."
        "\n\n### Response:\n"
    )
    assert format_alpaca(RECORD_WITHOUT_INPUT) == expected_without_input
    assert format_alpaca({"instruction": "Name a primary color."}) == expected_without_input  # input absent
    assert format_alpaca(RECORD_WITHOUT_INPUT, with_response=True) == expected_without_input + "Red."


def test_chat_template_renders_exactly_format_alpaca(tokenizer):
    def render(messages, **kwargs):
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)

    with_input = [{"role": "user", "content": RECORD_WITH_INPUT["instruction"], "input": RECORD_WITH_INPUT["input"]}]
    without_input = [{"role": "user", "content": RECORD_WITHOUT_INPUT["instruction"]}]
    for messages, record in ((with_input, RECORD_WITH_INPUT), (without_input, RECORD_WITHOUT_INPUT)):
        assert render(messages, add_generation_prompt=True) == format_alpaca(record)
        assert render(messages) == format_alpaca(record)
        reply = messages + [{"role": "assistant", "content": record["output"]}]
        assert render(reply) == format_alpaca(record, with_response=True)
    # literal, once more, through the template
    tail = "### Instruction:\nName a primary color.\n\n### Response:\n"
    assert render(without_input, add_generation_prompt=True).endswith(tail)
    # a system message replaces the preamble; earlier turns are not rendered (single-turn model)
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "old question"},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "Name a primary color."},
    ]
    assert render(convo, add_generation_prompt=True) == "Be brief.\n\n" + tail
    # the response tokens are marked for loss masking
    encoded = tokenizer.apply_chat_template(
        with_input + [{"role": "assistant", "content": RECORD_WITH_INPUT["output"]}],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    marked = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert tokenizer.decode(marked) == RECORD_WITH_INPUT["output"]


def test_render_transcript_frame():
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "two\nlines"},
    ]
    assert render_transcript(messages, system="A chat.") == "A chat.\n\nUser: hello\nBot: hi\nUser: two lines\nBot:"
    assert render_transcript([{"role": "user", "content": "x"}], system="").startswith("User: x\nBot:")
    assert "helpful assistant bot" in render_transcript([{"role": "user", "content": "x"}])


# ----------------------------------------------------------------------------------------------------------------
# streaming helpers
# ----------------------------------------------------------------------------------------------------------------


def test_stop_strings_cut_the_stream_and_end_the_generator():
    closed = []

    def pieces(items):
        try:
            yield from items
        finally:
            closed.append(True)

    state = {}
    out = list(cut_at_stop_strings(pieces(["Sure", ", hi", "\nUs", "er: next", " never seen"]), ["\nUser:"], state))
    assert "".join(out) == "Sure, hi"
    assert all("\n" not in piece for piece in out)  # the "\nUs" prefix was held back, never released
    assert state["stop"] == "\nUser:" and closed == [True]
    # a held-back prefix that does not become a stop string is released as it was
    assert "".join(cut_at_stop_strings(iter(["a\nU", "nder", " b"]), ["\nUser:"])) == "a\nUnder b"
    assert "".join(cut_at_stop_strings(iter(["x\nU"]), ["\nUser:"])) == "x\nU"
    assert "".join(cut_at_stop_strings(iter(["\nUser: at once"]), ["\nUser:"])) == ""
    # leading whitespace dropped, trailing whitespace held back until text follows
    assert list(trim_whitespace(iter([" ", " hi", " ", "\n", "there", " \n"]))) == ["hi", " \nthere"]


def test_incremental_decoding_never_splits_a_character(tokenizer):
    text = "héllo wörld 😀 naïve – ok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # the accented letters and the emoji span several byte tokens
    pieces = list(decode_incrementally(tokenizer, iter(ids)))
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_parse_score():
    assert parse_score("85") == 85
    assert parse_score("Score: 85/100") == 85
    assert parse_score("85.") == 85
    assert parse_score("I'd give it 85 out of 100") == 85
    assert parse_score("On a scale from 0 to 100, I would give it 72.") == 72
    assert parse_score("eighty") is None
    assert parse_score("150") is None
    assert parse_score("-5") is None
    assert parse_score("") is None


# ----------------------------------------------------------------------------------------------------------------
# chat
# ----------------------------------------------------------------------------------------------------------------


def test_chat_base_model_stops_at_the_next_user_turn(tiny_models):
    result = _cli(
        "chat", "--model", str(tiny_models["base"]), "--temperature", "0", "--system", SYSTEM,
        "--max-new-tokens", "20", stdin="hello\nhello\n",
    )
    assert result.returncode == 0, result.stderr
    replies = [line for line in result.stdout.splitlines() if line.strip()]
    # greedy decoding continues " hi\nUser: hello\nBot: hi ...": the reply is cut before the user's turn
    assert replies == ["Bot: hi", "Bot: hi"], result.stdout
    assert "User:" not in result.stdout


def test_chat_instruct_model_in_process_ends_on_exit(tiny_models, monkeypatch, capsys):
    import argparse

    from pipelines.commands import chat

    parser = argparse.ArgumentParser()
    chat.add_arguments(parser)
    args = parser.parse_args(["--model", str(tiny_models["instruct"]), "--temperature", "0", "--max-new-tokens", "6"])
    monkeypatch.setattr(sys, "stdin", io.StringIO("Name a primary color.\n\n/exit\nnot read\n"))
    assert chat.run(args) == 0
    out = capsys.readouterr()
    assert out.out.count("Bot: ") == 1
    assert "instruct model" in out.err


# ----------------------------------------------------------------------------------------------------------------
# serve (a real subprocess) and judge against it
# ----------------------------------------------------------------------------------------------------------------


def _request(url, payload=None, key=API_KEY, method=None, raw=None, timeout=60):
    data = raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _sse_events(text):
    events = [block[len("data: "):] for block in text.split("\n\n") if block.strip()]
    assert all(not block.startswith("data: ") for block in events)
    return events


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "serve", "--model", str(tiny_models["base"]), "--port", "0",
             "--api-key", API_KEY, "--max-new-tokens", "8"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
            env=_env(),
        )
    lines: queue.Queue = queue.Queue()

    def read_stdout():
        for line in process.stdout:
            lines.put(line)
        lines.put(None)  # the server exited

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        try:
            ready = lines.get(timeout=180)
        except queue.Empty:
            ready = None
        assert ready and ready.startswith("serving ") and " on http://127.0.0.1:" in ready, (
            f"gpt-scratch serve did not get ready: {ready!r}; stderr: {log.read_text()[-2000:]}"
        )
        yield ready.split(" on ", 1)[1].strip()
    finally:
        process.kill()
        process.wait(timeout=30)


def test_serve_models_and_auth(served):
    status, body = _request(served + "/v1/models")
    assert status == 200
    assert json.loads(body)["data"][0]["id"] == "base"
    for key in (None, "wrong"):
        status, body = _request(served + "/v1/models", key=key)
        assert status == 401 and "API key" in json.loads(body)["error"]["message"]
    status, body = _request(served + "/v1/chat/completions", raw=b"{not json")
    assert status == 400 and "JSON" in json.loads(body)["error"]["message"]
    status, body = _request(served + "/v1/completions", {"prompt": "x", "temperature": 9})
    assert status == 400 and json.loads(body)["error"]["param"] == "temperature"


def test_serve_completions(served):
    status, body = _request(served + "/v1/completions", {"prompt": TRANSCRIPT[:-1], "max_tokens": 4, "temperature": 0})
    assert status == 200, body
    reply = json.loads(body)
    assert reply["object"] == "text_completion" and reply["choices"][0]["finish_reason"] in ("stop", "length")
    usage = reply["usage"]
    assert usage["completion_tokens"] <= 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    text = reply["choices"][0]["text"]
    status, body = _request(served + "/v1/completions",
                            {"prompt": TRANSCRIPT[:-1], "max_tokens": 4, "temperature": 0, "stream": True})
    assert status == 200
    events = _sse_events(body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    # a stop string given by the client
    status, body = _request(served + "/v1/completions",
                            {"prompt": SYSTEM + "\n\nUser: hello\nBot:", "stop": "\n", "temperature": 0})
    assert json.loads(body)["choices"][0]["text"] == " hi"


def test_serve_chat_completions_plain_and_streaming(served):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}]
    request = {"model": "base", "messages": messages, "temperature": 0, "max_tokens": 8}
    status, body = _request(served + "/v1/chat/completions", request)
    assert status == 200, body
    reply = json.loads(body)
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": "hi"}  # cut at the user's turn
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"]["prompt_tokens"] > 0

    status, body = _request(served + "/v1/chat/completions",
                            {**request, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200
    events = _sse_events(body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == "hi"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] >= 1


def test_judge_against_the_served_model(served, tmp_path):
    responses = tmp_path / "instruction-data-with-response.json"
    responses.write_text(json.dumps([
        {**RECORD_WITH_INPUT, "model_response": "The mouse was chased."},
        {**RECORD_WITHOUT_INPUT, "model_response": "Blue."},
    ]))
    result = _cli("judge", "--responses", str(responses), "--judge-url", served, "--judge-model", "base",
                  "--api", "openai", "--api-key", API_KEY, "--retries", "1", "--max-tokens", "4", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    scored = json.loads((tmp_path / "instruction-data-with-response-scored.json").read_text())
    assert len(scored) == 2
    for record in scored:
        assert record["score"] is None or 0 <= record["score"] <= 100
        assert record["model_response"] and record["instruction"]
    count = sum(r["score"] is not None for r in scored)
    assert f"scored {count}/2, mean" in result.stdout


def test_serve_instruct_model_uses_the_chat_template(tiny_models, tokenizer):
    from pipelines.serving.app import make_server, server_url

    server = make_server(tiny_models["instruct"], "127.0.0.1", 0, max_new_tokens=3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        messages = [{"role": "user", "content": RECORD_WITH_INPUT["instruction"], "input": RECORD_WITH_INPUT["input"]}]
        status, body = _request(server_url(server) + "/v1/chat/completions", {"messages": messages, "temperature": 0},
                                key=None)
        assert status == 200, body
        expected = len(tokenizer.encode(format_alpaca(RECORD_WITH_INPUT), add_special_tokens=False))
        assert json.loads(body)["usage"]["prompt_tokens"] == expected
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_serve_port_in_use_is_one_clear_line(tiny_models):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = _cli("serve", "--model", str(tiny_models["base"]), "--port", str(port), timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "--port" in lines[0], result.stderr


# ----------------------------------------------------------------------------------------------------------------
# judge against fake servers
# ----------------------------------------------------------------------------------------------------------------


class FakeJudge:
    """A loopback OpenAI-compatible (or Ollama) server: "Score: 85/100" for prompts naming apples, "eighty" else."""

    def __init__(self, api="openai", fail_first=0):
        self.requests = []
        self.fail_first = fail_first
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                if api == "ollama" and self.path == "/api/tags":
                    self._json(200, {"models": [{"name": "llama3:latest", "model": "llama3:latest"}]})
                elif api == "openai" and self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "judge", "object": "model"}]})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, body))
                if fake.fail_first > 0:
                    fake.fail_first -= 1
                    self._json(503, {"error": {"message": "busy"}})
                    return
                prompt = body["messages"][0]["content"]
                text = "Score: 85/100" if "apple" in prompt else "eighty"
                if api == "ollama" and self.path == "/api/chat":
                    self._json(200, {"message": {"role": "assistant", "content": text}, "done": True})
                elif api == "openai" and self.path == "/v1/chat/completions":
                    self._json(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
                else:
                    self._json(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _responses(tmp_path, answers):
    path = tmp_path / "responses.json"
    path.write_text(json.dumps([
        {"instruction": "Name a fruit.", "input": "", "output": "An apple.", "model_response": answer}
        for answer in answers
    ]))
    return path


def test_judge_mean_and_count_against_a_fake_openai_server(tmp_path):
    responses = _responses(tmp_path, ["an apple", "a pear", "apple pie"])
    # "apple" is in every prompt through the output; make the pear record's prompt apple-free
    records = json.loads(responses.read_text())
    records[1]["output"] = "A pear."
    responses.write_text(json.dumps(records))
    out = tmp_path / "report.json"
    with FakeJudge("openai") as fake:
        result = _cli("judge", "--responses", str(responses), "--judge-url", fake.url, "--judge-model", "judge",
                      "--out", str(out), "--retries", "1", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "scored 2/3, mean 85.0" in result.stdout
    assert [r["score"] for r in json.loads(out.read_text())] == [85, None, 85]
    paths = [path for path, _ in fake.requests]
    assert paths == ["/v1/chat/completions"] * 4  # the unparsable reply was asked once more
    first = fake.requests[0][1]
    assert first["temperature"] == 0 and first["stream"] is False and first["model"] == "judge"
    prompt = first["messages"][0]["content"]
    assert prompt.startswith("Given the input `Below is an instruction")
    assert "score the model response `an apple`" in prompt and prompt.endswith("Respond with the integer number only.")


def test_judge_talks_ollama_and_retries_server_errors(tmp_path):
    responses = _responses(tmp_path, ["an apple"])
    with FakeJudge("ollama", fail_first=1) as fake:
        result = _cli("judge", "--responses", str(responses), "--judge-url", fake.url, "--judge-model", "llama3",
                      "--retries", "2", timeout=60)
        missing = _cli("judge", "--responses", str(responses), "--judge-url", fake.url, "--judge-model", "mistral",
                       timeout=60)
    assert result.returncode == 0, result.stderr
    assert "scored 1/1, mean 85.0" in result.stdout
    assert (tmp_path / "responses-scored.json").is_file()
    path, body = fake.requests[-1]
    assert path == "/api/chat" and len(fake.requests) == 2  # the 503 was retried
    assert body["stream"] is False and body["options"] == {"seed": 123, "temperature": 0, "num_ctx": 2048}
    assert missing.returncode != 0 and "ollama pull mistral" in missing.stderr


def test_judge_unreachable_url_is_one_line(tmp_path):
    responses = _responses(tmp_path, ["an apple"])
    result = _cli("judge", "--responses", str(responses), "--judge-url", "http://127.0.0.1:9", "--judge-model",
                  "llama3", timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "http://127.0.0.1:9" in lines[0] and "ollama serve" in lines[0], result.stderr


def test_judge_malformed_responses_name_the_record(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b", "model_response": "c"}, {"instruction": "a"}]))
    result = _cli("judge", "--responses", str(path), "--judge-url", "http://127.0.0.1:9", "--judge-model", "x",
                  timeout=60)
    assert result.returncode == 2
    assert "record 1" in result.stderr and "output" in result.stderr and "Traceback" not in result.stderr

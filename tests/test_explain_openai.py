"""The OpenAI-compatible client against an in-process server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from anomalens.errors import ExplainerError
from anomalens.explain import build_explainer
from anomalens.methods.base import Prediction

KEY = "sk-test-secret-123"
REPLY = "Region 1: a dark scratch\nOverall: defective"


class Server:
    """Speaks /v1/chat/completions; ``plan`` is a list of behaviours, one per request (the last
    repeats): "ok", "slow", "500", "404", "malformed"."""

    def __init__(self, plan):
        self.plan, self.requests = list(plan), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                what = outer.plan[min(len(outer.requests), len(outer.plan)) - 1]
                if what == "slow":
                    time.sleep(0.6)
                    return self.reply(200, {"choices": [{"message": {"content": REPLY}}]})
                if what == "500":
                    return self.reply(500, {"error": {"message": "overloaded"}})
                if what == "404":
                    return self.reply(404, {"error": {"message": "model 'llava' not found"}})
                if what == "malformed":
                    return self.reply(200, b"{not json")
                return self.reply(200, {"choices": [{"message": {"content": REPLY}}]})

            def reply(self, code, payload):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(*plan):
        servers.append(Server(plan or ("ok",)))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def one_defect():
    img = np.full((64, 64, 3), 40, np.uint8)
    img[16:48, 16:48] = 200
    m = np.zeros((64, 64), np.float32)
    m[20:28, 30:36] = 2.0
    return img, Prediction(np.array([2.0], np.float32), [m], 1.0, 1.0)


def explainer(url, **kw):
    return build_explainer(f"openai:{url}#llava", backoff=0.01, **kw)


def test_answer_fills_the_explanation_and_key_is_sent_not_logged(
    serve, one_defect, monkeypatch, caplog
):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = serve("ok")
    img, pred = one_defect
    with caplog.at_level(logging.DEBUG):
        e = explainer(server.url).explain([img], pred)[0]
    assert e.findings[0].vlm_text == "a dark scratch"
    assert e.agreement == "agrees"
    assert e.explainer == "openai"
    assert e.model == "llava"
    ((path, headers, body),) = server.requests
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert body["model"] == "llava"
    assert body["max_tokens"] == 64
    content = body["messages"][0]["content"]
    assert content[0]["type"] == "text"
    assert "Region 1:" in content[0]["text"]
    urls = [c["image_url"]["url"] for c in content[1:]]
    assert len(urls) == 2  # image with boxes + one crop
    assert all(u.startswith("data:image/jpeg;base64,/9j/") for u in urls)
    assert KEY not in json.dumps(e.to_dict())
    assert KEY not in caplog.text


def test_retries_after_500_then_succeeds(serve, one_defect, caplog):
    server = serve("500", "500", "ok")
    img, pred = one_defect
    with caplog.at_level(logging.WARNING):
        e = explainer(server.url, retries=2).explain([img], pred)[0]
    assert e.vlm_text.startswith("Region 1")
    assert len(server.requests) == 3
    assert caplog.text.count("HTTP 500: overloaded; retrying") == 2


def test_slow_server_times_out_with_a_clear_error(serve, one_defect, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = serve("slow")
    img, pred = one_defect
    with pytest.raises(ExplainerError) as info:
        explainer(server.url, timeout=0.2, retries=1).explain([img], pred)
    msg = str(info.value)
    assert msg == (
        f"{server.url}/chat/completions (model 'llava'): no reply within 0.2 s after 2 attempts;"
        " is the server running?"
    )
    assert KEY not in msg


def test_malformed_reply_and_missing_model(serve, one_defect):
    img, pred = one_defect
    server = serve("malformed")
    with pytest.raises(ExplainerError, match=r"malformed reply \(expected JSON with choices"):
        explainer(server.url).explain([img], pred)
    server = serve("404")
    with pytest.raises(ExplainerError, match=r"HTTP 404: model 'llava' not found \(is the model"):
        explainer(server.url).explain([img], pred)
    assert len(server.requests) == 1  # 404 is not retried


def test_refused_connection(one_defect):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    img, pred = one_defect
    with pytest.raises(ExplainerError, match=r"cannot connect \(.*refused.*\) after 2 attempts"):
        explainer(f"http://127.0.0.1:{port}/v1", retries=1).explain([img], pred)


def test_good_images_are_not_sent(serve, one_defect):
    server = serve("ok")
    img, pred = one_defect
    good = Prediction(np.array([0.5], np.float32), [pred.maps[0] * 0.1], 1.0, 1.0)
    e = explainer(server.url).explain([img], good)[0]
    assert server.requests == []
    assert e.verdict == "good"
    assert e.vlm_text is None

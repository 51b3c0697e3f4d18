"""REST service: predictions, auth, every bad input, limits, batching, reload, explanations,
access log, timeouts and graceful shutdown. A fake model keeps it fast and exact."""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from anomalens.cli import main
from anomalens.errors import CheckpointError, ServiceError
from anomalens.postprocess import hotspots
from anomalens.prediction import Prediction
from anomalens.service import ServiceConfig, create_app, serve
from anomalens.service import app as app_module
from anomalens.service.auth import load_token
from anomalens.service.uploads import Limits

TOKEN = "tok-3f9a-secret"


class BrightModel:
    """Map = gray / 255, score = map maximum; thresholds 0.5 / 0.6. ``delay`` seconds per call."""

    method = "bright"

    def __init__(self, delay: float = 0.0, name: str = "A") -> None:
        self.delay, self.name, self.calls = delay, name, []

    def describe(self) -> dict:
        return {"method": self.method, "backbone": self.name, "runtime": "fake", "threshold": 0.5}

    def predict(self, images):
        self.calls.append(len(images))
        time.sleep(self.delay)
        maps = [img.astype(np.float32).mean(axis=2) / 255.0 for img in images]
        scores = np.asarray([m.max() for m in maps], dtype=np.float32)
        return Prediction(scores, maps, 0.5, 0.6)


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def spot_image(h: int = 48, w: int = 64) -> np.ndarray:
    """Dark image with one bright 10x8 square (rows 20:28, cols 30:40)."""
    img = np.full((h, w, 3), 40, np.uint8)
    img[20:28, 30:40] = 250
    return img


DARK = np.full((32, 32, 3), 30, np.uint8)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def files(*named: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in named]


def test_predict_multipart_and_json_give_exact_results():
    model = BrightModel()
    with TestClient(create_app(model)) as c:
        r = c.post(
            "/v1/predict", files=files(("spot.png", png(spot_image())), ("dark.png", png(DARK)))
        )
        assert r.status_code == 200, r.text
        spot, dark = r.json()["results"]
        assert (spot["name"], spot["width"], spot["height"]) == ("spot.png", 64, 48)
        assert spot["score"] == pytest.approx(250 / 255, rel=1e-6)
        assert spot["verdict"] == "defective"
        assert dark["verdict"] == "ok"
        expected = hotspots(spot_image().mean(axis=2).astype(np.float32) / 255, 0.6, top_k=5)
        assert spot["boxes"] == [b.as_dict() for b in expected]
        assert spot["boxes"][0] | {"score": 0} == {
            "x0": 30,
            "y0": 20,
            "x1": 40,
            "y1": 28,
            "score": 0,
            "area": 80,
        }
        assert spot["findings"][0].startswith("10x8 px at (30, 20), 2.6% of the image")
        assert dark["boxes"] == []
        assert dark["explanation"] is None
        assert spot["timings"]["batch_size"] == 2
        assert model.calls == [2]
        assert "overlay" not in spot
        body = {"images": [{"name": "d.png", "data": base64.b64encode(png(DARK)).decode()}]}
        r = c.post("/v1/predict?overlay=1", json=body)
        assert r.status_code == 200
        item = r.json()["results"][0]
        assert item["score"] == pytest.approx(30 / 255, rel=1e-6)
        head, data = item["overlay"].split(",", 1)
        assert head == "data:image/png;base64"
        assert Image.open(io.BytesIO(base64.b64decode(data))).size == (32, 32)
        assert c.get("/v1/model").json()["method"] == "bright"
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"ready": True, "method": "bright"}
        assert "anomalens inspection" in c.get("/").text
        assert c.get("/static/app.js").status_code == 200
        assert "/v1/predict" in c.get("/openapi.json").json()["paths"]


def test_auth_is_required_with_a_token_and_never_logged(caplog):
    caplog.set_level(logging.INFO, logger="anomalens.service.access")
    with TestClient(create_app(BrightModel(), token=TOKEN)) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = c.post("/v1/predict", files=files(("a.png", png(DARK))), headers=headers)
            assert r.status_code == 401
            assert r.json() == {"error": "missing or wrong bearer token"}
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/v1/model").status_code == 401
        assert c.get("/healthz").status_code == 200  # probes stay open
        r = c.post("/v1/predict", files=files(("a.png", png(DARK))), headers=AUTH)
        assert r.status_code == 200
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name.endswith("access")]
    seen = [(x["method"], x["route"], x["status"], x["images"]) for x in lines]
    assert seen == [("POST", "/v1/predict", 401, 0)] * 3 + [
        ("GET", "/v1/model", 401, 0),
        ("GET", "/healthz", 200, 0),
        ("POST", "/v1/predict", 200, 1),
    ]
    assert set(lines[0]) == {"time", "method", "route", "status", "latency_ms", "images"}
    assert TOKEN not in caplog.text
    assert "wrong" not in caplog.text


def _truncated_png() -> bytes:
    data = png(spot_image())
    return data[: len(data) // 2]


def _bomb_png() -> bytes:
    return png(np.zeros((2000, 1500, 3), np.uint8))  # 3 Mpx of zeros: a few KB


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"files": files(("x.png", _truncated_png()))}, 400, "x.png: cannot decode the PNG data"),
        ({"files": files(("x.png", b"GIF89a not allowed"))}, 415, "x.png: not an image"),
        ({"files": files(("e.png", b""))}, 400, "e.png: empty upload"),
        ({"files": files(("big.png", _bomb_png()))}, 413, "3000000 pixels exceeds the limit"),
        ({"files": files(*[(f"{i}.png", png(DARK)) for i in range(4)])}, 413, "the limit is 3"),
        (
            {"content": b"\x89PNG" * 30000, "headers": {"content-type": "image/png"}},
            413,
            "upload limit of 100000 bytes",
        ),
        (
            {"content": b"hello", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported content type 'text/plain'",
        ),
        (
            {"content": b"{nope", "headers": {"content-type": "application/json"}},
            400,
            "not valid JSON",
        ),
        (
            {"json": {"images": [{"name": "b", "data": "%%%"}]}},
            400,
            "b: 'data' is not valid base64",
        ),
        ({"json": {"pictures": []}}, 400, '"images": a list'),
        ({"json": {"images": []}}, 400, "no images in the request"),
        ({"files": {"note": (None, "text only")}}, 400, "no images in the request"),
    ],
    ids=[
        "corrupt",
        "format",
        "empty",
        "pixels",
        "count",
        "bytes",
        "ctype",
        "json",
        "base64",
        "key",
        "none",
        "no-file",
    ],
)
def test_bad_requests_get_a_4xx_json_error(kwargs, status, message):
    config = ServiceConfig(limits=Limits(max_bytes=100_000, max_pixels=1_000_000, max_images=3))
    with TestClient(create_app(BrightModel(), config=config)) as c:
        r = c.post("/v1/predict", **kwargs)
        assert r.status_code == status
        assert list(r.json()) == ["error"]
        assert message in r.json()["error"]
        assert "Traceback" not in r.text


def test_explanations_come_from_the_injected_explainer():
    class Expl:
        def __init__(self, text):
            self.text = text

        def to_dict(self):
            return {"text": self.text}

    class FakeExplainer:
        def __init__(self):
            self.seen = []

        def explain(self, images, prediction, names=None):
            self.seen.append((len(images), prediction.scores.tolist(), names))
            return [Expl(f"{n}: {s:.2f}") for n, s in zip(names, prediction.scores, strict=True)]

    exp = FakeExplainer()
    with TestClient(create_app(BrightModel(), explainer=exp)) as c:
        r = c.post("/v1/predict", files=files(("s.png", png(spot_image()))))
    assert r.json()["results"][0]["explanation"] == {"text": "s.png: 0.98"}
    assert exp.seen == [(1, [pytest.approx(250 / 255)], ["s.png"])]


def test_the_explainer_gets_the_features_the_model_kept():
    """Defect types pool regions on the model's own patch features: the service hands them
    from the batch's prediction to the explainer (no second pass)."""

    class KeepsFeatures(BrightModel):
        def predict(self, images):
            pred = super().predict(images)
            pred.features = [f"features of {img.shape[:2]}" for img in images]
            return pred

    class Seen:
        def to_dict(self):
            return {}

    seen = []

    class Explainer:
        def explain(self, images, prediction, names=None):
            seen.append(prediction.features)
            return [Seen() for _ in images]

    with TestClient(create_app(KeepsFeatures(), explainer=Explainer())) as c:
        c.post("/v1/predict", files=files(("s.png", png(spot_image())), ("d.png", png(DARK))))
    assert seen == [["features of (48, 64)", "features of (32, 32)"]]


def test_grounded_explanations_through_the_service():
    from anomalens.explain import build_explainer

    with TestClient(create_app(BrightModel(), explainer=build_explainer("grounded"))) as c:
        r = c.post("/v1/predict", files=files(("s.png", png(spot_image())), ("d.png", png(DARK))))
    spot, dark = r.json()["results"]
    assert spot["explanation"]["verdict"] == "defective"
    assert spot["explanation"]["explainer"] == "grounded"
    (finding,) = spot["explanation"]["findings"]
    # the map is above the pixel threshold 0.6 exactly on the bright square (rows 20:28, 30:40)
    assert finding["box"] == [30, 20, 40, 28]
    assert finding["area_px"] == 80
    assert finding["peak"] == pytest.approx(250 / 255, rel=1e-6)
    assert dark["explanation"]["verdict"] == "good"
    assert dark["explanation"]["findings"] == []
    assert dark["explanation"]["summary"] == "No anomaly found: highest score 0.118, threshold 0.5."


def test_reload_swaps_atomically_and_a_failed_reload_keeps_serving(monkeypatch):
    new = BrightModel(name="B")

    def fake_load(folder):
        if folder == "models/good":
            return new
        raise CheckpointError(f"{folder}/config.json: not found")

    class Explainer:
        def __init__(self):
            self.adopted = []

        def explain(self, images, prediction, names=None):
            return [type("E", (), {"to_dict": lambda self: {}})() for _ in images]

        def use_detector(self, detector):
            self.adopted.append(detector)

    explainer = Explainer()
    monkeypatch.setattr(app_module, "load_model", fake_load)
    with TestClient(create_app(BrightModel(name="A"), token=TOKEN, explainer=explainer)) as c:
        r = c.post("/v1/model/reload", json={"model": "models/bad"}, headers=AUTH)
        assert r.status_code == 400
        assert r.json()["error"].startswith("reload failed, still serving bright: models/bad/")
        assert c.get("/v1/model", headers=AUTH).json()["backbone"] == "A"
        ok = c.post("/v1/predict", files=files(("a.png", png(DARK))), headers=AUTH)
        assert ok.status_code == 200
        assert ok.json()["model"]["backbone"] == "A"
        assert c.post("/v1/model/reload", json={"model": "models/good"}).status_code == 401
        r = c.post("/v1/model/reload", json={"model": "models/good"}, headers=AUTH)
        assert r.status_code == 200
        assert r.json()["model"]["folder"] == "models/good"
        assert explainer.adopted == [new]  # defect types may follow the new model
        c.post("/v1/predict", files=files(("a.png", png(DARK))), headers=AUTH)
        assert new.calls == [1]
        assert c.post("/v1/model/reload", content=b"[]", headers=AUTH).status_code == 400
    with TestClient(create_app(BrightModel())) as c:
        r = c.post("/v1/model/reload", json={"model": "models/good"})
        assert r.status_code == 403
        assert "start the service with a token" in r.json()["error"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app, graceful: float = 10.0):
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields (url, server)."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="error", timeout_graceful_shutdown=graceful
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def _post(url: str, name: str = "a.png") -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", files=files((name, png(DARK))), timeout=20)


def test_micro_batching_collects_concurrent_requests():
    model = BrightModel(delay=0.2)
    config = ServiceConfig(max_batch=4, max_wait_ms=100)
    with running(create_app(model, config=config)) as (url, _), ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda i: _post(url, f"{i}.png"), range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert sum(model.calls) == 4
    assert len(model.calls) < 4
    sizes = [r.json()["results"][0]["timings"]["batch_size"] for r in responses]
    assert max(sizes) > 1


def test_full_queue_and_timeouts_answer_503_with_retry_after():
    config = ServiceConfig(max_batch=1, max_queue=1, max_wait_ms=0)
    with running(create_app(BrightModel(delay=0.5), config=config)) as (url, _):
        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(lambda i: _post(url), range(3)))
        codes = sorted(r.status_code for r in responses)
        assert codes[0] == 200
        assert 503 in codes
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "1"
        assert "busy" in busy.json()["error"]
    config = ServiceConfig(timeout_s=0.1)
    with running(create_app(BrightModel(delay=0.5), config=config)) as (url, _):
        r = _post(url)
        assert r.status_code == 503
        assert "no result within 0.1 s" in r.json()["error"]


def test_graceful_shutdown_lets_in_flight_requests_finish():
    with (
        running(create_app(BrightModel(delay=1.0))) as (url, server),
        ThreadPoolExecutor(1) as pool,
    ):
        pending = pool.submit(_post, url)
        time.sleep(0.3)  # the request is inside predict
        server.should_exit = True
        response = pending.result(timeout=20)
    assert response.status_code == 200
    assert response.json()["results"][0]["verdict"] == "ok"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_public_address_needs_a_token(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ANOMALENS_TOKEN", raising=False)
    with pytest.raises(ServiceError, match=r"refusing to listen on 0\.0\.0\.0 without a token"):
        serve(tmp_path / "no-model", host="0.0.0.0")  # refused before the model is read
    assert main(["serve", "--model", str(tmp_path), "--host", "10.1.2.3"]) == 2
    assert "refusing to listen on 10.1.2.3 without a token" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ServiceError, match="the token file is empty"):
        load_token(tmp_path / "empty")
    (tmp_path / "tok").write_text(f"{TOKEN}\n")
    assert load_token(tmp_path / "tok") == TOKEN
    monkeypatch.setenv("ANOMALENS_TOKEN", "from-env")
    assert load_token() == "from-env"


def test_serve_names_defect_types_from_a_folder(tmp_path, monkeypatch, capsys):
    """``serve --explain grounded --defect-types DIR`` builds the explainer with the model and
    the folder; without --explain it is a one-line error."""
    serve_module = importlib.import_module("anomalens.service.serve")

    model, built, served = BrightModel(), [], []
    monkeypatch.setattr(serve_module, "load_model", lambda folder: model)
    monkeypatch.setattr(
        serve_module, "build_explainer", lambda spec, **kw: built.append((spec, kw)) or "E"
    )
    monkeypatch.setattr(serve_module, "create_app", lambda *a, **kw: served.append(kw) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    argv = ["serve", "--model", str(tmp_path), "--explain", "grounded"]
    assert main([*argv, "--defect-types", str(tmp_path / "defects")]) == 0
    assert built == [("grounded", {"detector": model, "defect_types": tmp_path / "defects"})]
    assert served[0]["explainer"] == "E"
    assert main(["serve", "--model", str(tmp_path), "--defect-types", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "anomalens: error: --defect-types, --explain-all and --trust-remote-code need --explain"
    )

"""anomalens.diagnose over anomalens.explain: defect types for the detector-as-answerer, the VLM
adapter, and tiny random VLMs (LLaVA-OneVision, Idefics3) running the whole command.

Skipped when :mod:`anomalens.explain` (the explainers of issue 11) is not installed."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip(
    "anomalens.explain",
    reason="needs anomalens.explain (the explainers: defect types and VLM backends)",
)

from anomalens.cli import main
from anomalens.diagnose.adapters import ExplainerGenerator, GroundedTypeNamer
from anomalens.methods.base import Prediction


def test_type_namer_leave_one_image_out(demo_root):
    from anomalens.data.datasets import build_dataset

    bad = [s for s in build_dataset("mvtec", demo_root, "brick", "test") if s.label == 1]
    namer = GroundedTypeNamer(
        [s.image for s in bad], [s.mask for s in bad], [s.defect_type for s in bad],
        [s.path for s in bad],
    )  # fmt: skip
    s = bad[0]
    pred = Prediction(np.array([1.0]), [s.mask.astype(np.float32)], 0.5, 0.5)
    # its own labelled region is the nearest: the right type
    assert namer.name_type(s.image, pred, exclude=None) == s.defect_type
    # one example per type here: without its own region the type cannot be found
    assert namer.name_type(s.image, pred, exclude=s.path) != s.defect_type


class FakeExplainer:
    def __init__(self, family):
        self.family, self.requests, self.max_new_tokens = family, [], 64

    def ask(self, request):
        from anomalens.explain.prompts import Answer

        self.requests.append((request, self.max_new_tokens))
        return Answer(" B. ")


def test_explainer_generator_sends_one_request():
    images = [np.zeros((8, 8, 3), np.uint8), np.ones((8, 8, 3), np.uint8)]
    fake = FakeExplainer("llava_onevision")
    assert ExplainerGenerator(fake, "hf:x").generate(images, "prompt", 16) == " B. "
    request, tokens = fake.requests[0]
    assert (len(request.images), request.prompt, request.n_regions, tokens) == (2, "prompt", 0, 16)
    single = FakeExplainer("moondream")  # one image only: the query
    ExplainerGenerator(single, "hf:m").generate(images, "p", 8)
    assert len(single.requests[0][0].images) == 1
    assert single.requests[0][0].images[0].max() == 1


@pytest.mark.slow
def test_tiny_vlms_run_the_command(demo_root, tmp_path, capsys):
    from anomalens import testing as tm

    if not hasattr(tm, "make_vlm"):
        pytest.skip("anomalens.testing.make_vlm (tiny VLM builders of the explain work) missing")
    specs = [f"hf:{tm.make_vlm(f, tmp_path / f)}" for f in ("llava_onevision", "idefics3")]
    out = tmp_path / "out"
    argv = ["diagnose", "--dataset", "mvtec", "--root", demo_root, "--max-images", 4]
    argv += [x for s in specs for x in ("--vlm", s)] + ["--output", out, "--no-figures"]
    code = main([str(a) for a in argv])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads((out / "diagnostic_results.json").read_text())
    assert list(doc["questions"]) == specs
    n = doc["data"]["n_questions"]
    assert n == 2 + 4 * 2  # 2 good images, 2 defective: AD, type, location, description
    for spec in specs:
        q = doc["questions"][spec]
        assert len(q["records"]) == n
        assert all(isinstance(r["reply"], str) for r in q["records"])
        assert q["decision"]["total"] == 5
        assert f"{spec}: {q['decision']['passed']}/5 tests passed" in stdout


def test_openai_vlm_through_a_local_server(demo_root, tmp_path, capsys):
    """``--vlm openai:URL#model`` against a local OpenAI-compatible stub: every question is one
    chat request with the template and the query image; "Yes" to every defect question."""
    import http.server
    import threading

    pytest.importorskip("anomalens.explain.vlm_openai", reason="needs the OpenAI explainer")
    bodies = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            reply = json.dumps({"choices": [{"message": {"content": "A."}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = f"openai:http://127.0.0.1:{server.server_port}/v1#stub"
        out = tmp_path / "o"
        argv = ["diagnose", "--dataset", "mvtec", "--root", demo_root, "--vlm", spec]
        code = main([str(a) for a in [*argv, "--output", out, "--no-figures"]])
    finally:
        server.shutdown()
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "diagnostic_results.json").read_text())
    q = doc["questions"][spec]
    assert len(bodies) == doc["data"]["n_questions"] == len(q["records"])
    parts = bodies[0]["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url"]
    assert bodies[0]["max_tokens"] == 16
    assert q["tests"]["hallucination_rate"]["value"] == 1.0  # "A" = Yes on every good image
    assert q["tests"]["miss_rate"]["value"] == 0.0

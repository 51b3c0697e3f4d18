"""The Ray engine of batch inference on a local Ray with 2 CPUs (one Ray session per module):
one model load per actor, the local engine's rows, bad files recorded, resume after an
interrupted run."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = pytest.mark.slow  # Ray start-up and actor start-up: about 35 s on 2 cores
pytest.importorskip("ray.data")

from test_batch import build_inputs, build_model, rows_by_path  # noqa: E402

from anomalens.batch import ShardWriter, run_batch  # noqa: E402
from anomalens.batch.results import read_results  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A local Ray with 2 CPUs and a 200 MB object store for this module."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(demo_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("batch_ray")
    model = build_model(demo_root, base / "model")
    inputs = build_inputs(demo_root, base / "images")
    local = run_batch(model, [inputs], base / "local", batch_size=2, progress=False)
    return model, inputs, base / "local", local


def _without_worker(rows: dict[str, dict]) -> dict[str, dict]:
    return {p: {k: v for k, v in r.items() if k != "worker"} for p, r in rows.items()}


def test_ray_engine_rows_loads_bad_files_and_resume(setup, tmp_path, monkeypatch):
    """An interrupted Ray run (Ctrl-C in the driver after the first rows), then the rerun:
    together they give the local engine's rows, each actor loaded the model once."""
    model, inputs, local_out, local = setup
    out = tmp_path / "ray"
    real_add = ShardWriter.add
    seen = {"n": 0}

    def interrupted(self, rows):
        seen["n"] += 1
        if seen["n"] == 2:
            raise KeyboardInterrupt
        real_add(self, rows)

    monkeypatch.setattr(ShardWriter, "add", interrupted)
    options = {"engine": "ray", "workers": 2, "batch_size": 2, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        run_batch(model, [inputs], out, **options)
    first = read_results(out).to_pylist()
    assert 1 <= len(first) <= 4  # the first block of rows (Ray's blocks here: 2 or 3 rows)
    monkeypatch.setattr(ShardWriter, "add", real_add)
    result = run_batch(model, [inputs], out, **options)
    scored_first = sum(r["error"] is None for r in first)
    assert (result.n_skipped, result.n_new) == (scored_first, 9 - scored_first)
    assert result.n_errors == 1
    rows = rows_by_path(out)
    assert _without_worker(rows) == _without_worker(rows_by_path(local_out))
    broken = rows[str(inputs / "bad" / "broken.png")]
    assert broken["score"] is None
    assert broken["error"].endswith("broken.png: image file is truncated (Truncated File Read)")
    # the rerun's batches went to 2 actors; every row names the model load that scored it
    loads = {r["worker"] for r in read_results(out).to_pylist()[len(first) :]}
    assert 1 <= len(loads) <= 2 < -(-result.n_new // 2)  # more batches than loads
    assert len({w.split(":")[1] for w in loads}) == len(loads)  # one load per actor process
    for key in ("n_images", "n_scored", "n_errors", "n_defective", "score_quantiles"):
        assert result.summary[key] == local.summary[key]
    assert result.summary["last_run"]["engine"] == "ray"

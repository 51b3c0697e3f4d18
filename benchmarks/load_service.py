"""Load and fault test of ``anomalens serve`` on loopback: 50 concurrent clients, good and bad
requests mixed, bounded in requests and time.

    python benchmarks/load_service.py --model runs/export_accuracy/screw/fp32 \
        --images ../shared/data/mvtec_ad/screw/test/good \
        --json benchmarks/results/service-load/screw_onnx.json

Starts the service in a subprocess on 127.0.0.1 with a token, waits for ``/readyz``, then
``--clients`` clients send ``--requests`` requests in all (or stop after ``--seconds``), each
drawn from the mix: good images (expect 200), corrupt PNG data (400), an upload over the 20 MB
limit (413), a wrong content type (415) and a missing token (401). Prints throughput, latency
percentiles, counts by status and by kind, connection errors, and the server's RSS before and
after (from /proc: idle after warm-up, after the first half of the requests at full
concurrency, after the second half; "flat" compares the last two). Target: no 5xx, no dropped
connection, every bad request a 4xx, flat RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from anomalens.evaluate import environment
from anomalens.export.quantize import int8_instruction_sets
from anomalens.runtime import cpu_isa

MIX = (
    ("good", 0.6, 200),
    ("corrupt", 0.1, 400),
    ("oversized", 0.1, 413),
    ("content_type", 0.1, 415),
    ("no_token", 0.1, 401),
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def good_payloads(folder: Path | None, n: int = 8) -> list[tuple[str, bytes]]:
    if folder is not None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg"))[:n]
        return [(p.name, p.read_bytes()) for p in files]
    from PIL import Image

    from anomalens import testing as tm

    out = []
    for i, img in enumerate(tm.object_images(n, size=256)):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append((f"synthetic{i}.png", buf.getvalue()))
    return out


async def one(client: httpx.AsyncClient, kind: str, goods, token: str) -> tuple[int, float]:
    auth = {"Authorization": f"Bearer {token}"}
    name, data = random.choice(goods)
    start = time.perf_counter()
    if kind == "good":
        r = await client.post("/v1/predict", files={"files": (name, data)}, headers=auth)
    elif kind == "corrupt":
        r = await client.post(
            "/v1/predict", files={"files": ("bad.png", data[: len(data) // 3])}, headers=auth
        )
    elif kind == "oversized":
        big = b"\x89PNG\r\n\x1a\n" + os.urandom(21 * 1024 * 1024)
        r = await client.post("/v1/predict", files={"files": ("big.png", big)}, headers=auth)
    elif kind == "content_type":
        r = await client.post(
            "/v1/predict", content=data, headers=auth | {"content-type": "image/png"}
        )
    else:
        r = await client.post("/v1/predict", files={"files": (name, data)})
    return r.status_code, (time.perf_counter() - start) * 1000


async def run_load(url: str, token: str, goods, clients: int, requests: int, seconds: float):
    kinds = [k for k, _, _ in MIX]
    weights = [w for _, w, _ in MIX]
    queue: asyncio.Queue = asyncio.Queue()
    for _ in range(requests):
        queue.put_nowait(random.choices(kinds, weights)[0])
    results: list[tuple[str, int | str, float]] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            try:
                kind = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                status, ms = await one(client, kind, goods, token)
                results.append((kind, status, ms))
            except httpx.HTTPError as exc:
                results.append((kind, f"connection error: {type(exc).__name__}", float("nan")))

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return results, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="model folder (torch or ONNX)")
    ap.add_argument("--images", type=Path, help="folder of good images (default: synthetic)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    random.seed(args.seed)
    token = "load-test-token"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(token)
        cmd = [
            sys.executable,
            "-m",
            "anomalens",
            "serve",
            "--model",
            str(args.model),
            "--port",
            str(port),
            "--token-file",
            str(token_file),
        ]
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {(Path(tmp) / 'server.log').read_text()}")
                time.sleep(0.2)
            goods = good_payloads(args.images)
            # warm-up (first predict, overlay imports), then the baseline RSS
            for name, data in goods[:2]:
                httpx.post(
                    f"{url}/v1/predict",
                    files={"files": (name, data)},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=60,
                )
            rss_idle = rss_mb(server.pid)
            # two halves: RSS after the first (warm, at full concurrency) vs after the second
            half = args.requests // 2
            first, wall1 = asyncio.run(
                run_load(url, token, goods, args.clients, half, args.seconds / 2)
            )
            rss_before = rss_mb(server.pid)
            second, wall2 = asyncio.run(
                run_load(url, token, goods, args.clients, args.requests - half, args.seconds / 2)
            )
            rss_after = rss_mb(server.pid)
            results, wall = first + second, wall1 + wall2
        finally:
            server.terminate()
            server.wait(timeout=60)
            log.close()
        access_lines = sum(
            1
            for line in (Path(tmp) / "server.log").read_text().splitlines()
            if line.startswith('{"time"')
        )
    expected = {k: s for k, _, s in MIX}
    by_status = Counter(str(s) for _, s, _ in results)
    by_kind = {k: dict(Counter(str(s) for kind, s, _ in results if kind == k)) for k in expected}
    wrong = sum(1 for k, s, _ in results if s != expected[k])
    lat = np.array([ms for _, s, ms in results if isinstance(s, int)])
    good_lat = np.array([ms for k, s, ms in results if k == "good" and s == 200])

    def pct(a: np.ndarray) -> dict[str, float]:
        if a.size == 0:
            return {}
        return {f"p{q}": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)}

    out = {
        "model": str(args.model),
        "clients": args.clients,
        "requests_sent": len(results),
        "requests_planned": args.requests,
        "wall_seconds": round(wall, 1),
        "throughput_rps": round(len(results) / wall, 2),
        "good_images_per_s": round(int((good_lat > 0).sum()) / wall, 2),
        "latency_ms_all": pct(lat),
        "latency_ms_good": pct(good_lat),
        "by_status": dict(by_status),
        "by_kind": by_kind,
        "unexpected_status": wrong,
        "server_5xx": sum(n for s, n in by_status.items() if s.startswith("5")),
        "connection_errors": sum(n for s, n in by_status.items() if s.startswith("connection")),
        "rss_mb_idle": round(rss_idle, 1),
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
        "access_log_lines": access_lines,
        "cpu_flags": int8_instruction_sets(),
        "environment": environment() | {"cpu_isa": cpu_isa()},
    }
    print(
        json.dumps(
            {k: v for k, v in out.items() if k not in ("environment", "cpu_flags")}, indent=1
        )
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

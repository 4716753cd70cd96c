"""`bearrec serve` over real HTTP on loopback with a tiny saved model: every endpoint, every error
class, batching, equality with `bearrec recommend`, 503 on a full queue, a disconnecting client,
graceful shutdown, and the command itself (a subprocess, SIGTERM)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bearrec.cli import main
from bearrec.runs import load_run
from bearrec.serve.app import Service, create_app
from bearrec.serve.model import served_model
from bearrec.serve.server import ServerThread
from bearrec.serve.settings import ServeSettings
from tests.conftest import TITLES, write_tiny_run

BEAMS = 4  # 5 distinct titles; "Red Pen" is items 1 and 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("serve"), {"num_beams": BEAMS, "batch_size": 2, "ks": [1, 3]})


@pytest.fixture(scope="module")
def served(run_dir):
    """The model as `bearrec serve --model RUN --batch-size 8` loads it (`bearrec.runs.load_run`)."""
    loaded = load_run(run_dir, overrides=["decode.batch_size=8"])
    return served_model(str(run_dir), loaded.cfg, loaded.dataset, loaded.recommender)


@contextmanager
def serving(served, hook=None, **settings):
    service = Service(ServeSettings(**settings), decode_hook=hook)
    service.attach(served)
    with ServerThread(create_app(service.settings, service), service.settings) as srv:
        srv.service = service
        yield srv


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", line)
        if m and m.group(1) == name and all(f'{k}="{v}"' in (m.group(2) or "") for k, v in labels.items()):
            total += float(m.group(3))
    return total


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Gate:
    """A decode hook that holds every batch until `release()`; records batch sizes."""

    def __init__(self, hold=True):
        self.open, self.sizes = threading.Event(), []
        if not hold:
            self.open.set()

    def __call__(self, decode):
        def gated(histories):
            self.sizes.append(len(histories))
            assert self.open.wait(30), "the gate was never released"
            return decode(histories)
        return gated


def test_endpoints(served, run_dir):
    with serving(served) as srv, httpx.Client(base_url=srv.url) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").json() == {"ready": True}
        info = client.get("/info").json()
        assert info["run_dir"] == str(run_dir.resolve()) and info["dataset"] == "Shop"
        assert info["catalogue"] == {"items": 6, "titles": 5, "duplicate_titles": 1}
        assert info["decode"]["num_beams"] == BEAMS and info["k"] == {"min": 1, "max": BEAMS}
        assert len(info["config_hash"]) == 12 and info["serve"]["max_batch_size"] == 8
        r = client.post("/v1/recommend", json={"history": [1, "Stapler"], "k": 3})
        body = r.json()
        assert r.status_code == 200 and body["history"] == [1, 3] and len(body["recommendations"]) == 3
        assert body["model"] == {k: info[k] for k in ("model", "run_dir", "config_hash", "dataset")}
        assert [row["rank"] for row in body["recommendations"]] == [0, 1, 2]
        for row in body["recommendations"]:
            assert row["item_id"] == row["items"][0] and row["title"] in TITLES.values()
        assert client.post("/v1/recommend", json={"history": [2]}).json()["recommendations"].__len__() == BEAMS
        # a title shared by items 1 and 4 stands for both; exclude_history drops both
        full = client.post("/v1/recommend", json={"history": ["Red Pen"]}).json()["recommendations"]
        red = next((row for row in full if row["title"] == "Red Pen"), None)
        assert red is None or red["items"] == [1, 4]
        kept = client.post("/v1/recommend", json={"history": ["Red Pen"], "exclude_history": True}).json()
        assert all(row["title"] != "Red Pen" for row in kept["recommendations"])
        assert [row["rank"] for row in kept["recommendations"]] == list(range(len(kept["recommendations"])))
        batch = client.post("/v1/recommend/batch", json={"users": [{"history": [1, 2], "k": 2},
                                                                   {"history": ["Paper Clips"], "k": 1}]}).json()
        assert [len(u["recommendations"]) for u in batch["results"]] == [2, 1]
        assert batch["results"][1]["history"] == [5]
        schema = client.get("/openapi.json").json()
        assert {"/v1/recommend", "/v1/recommend/batch", "/health", "/ready", "/info"} <= set(schema["paths"])
        assert "RecommendRequest" in schema["components"]["schemas"]
        assert client.get("/docs").status_code == 200
        m = client.get("/metrics")
        assert m.headers["content-type"].startswith("text/plain")
        text = m.text
        assert metric(text, "bearrec_http_requests_total", endpoint="/v1/recommend", status="200") == 4
        for name in ("bearrec_queue_depth", "bearrec_http_request_duration_seconds_bucket", "bearrec_batch_size_count",
                     "bearrec_model_ready"):
            assert name in text


def test_before_the_model_is_loaded(served):
    """Alive at once; not ready, and recommendations refused with 503 + Retry-After, until attached."""
    service = Service(ServeSettings())
    with ServerThread(create_app(service.settings, service), service.settings) as srv, \
            httpx.Client(base_url=srv.url) as client:
        assert client.get("/health").status_code == 200
        for r in (client.get("/ready"), client.get("/info"), client.post("/v1/recommend", json={"history": [1]})):
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "bearrec_model_ready 0.0" in client.get("/metrics").text
        service.attach(served)
        assert client.get("/ready").json() == {"ready": True}
        assert client.post("/v1/recommend", json={"history": [1]}).status_code == 200


def test_same_answers_as_recommend_cli(served, run_dir, capsys):
    """Histories decoded together in one server batch give `bearrec recommend --json`'s lists."""
    histories = [[1, 2, 3], [5, 6, 1], [4, 4, 6], [2], [6, 5, 2, 1]]
    expected = []
    for h in histories:
        assert main(["recommend", "--model", str(run_dir), "--history", ",".join(map(str, h)), "--k", str(BEAMS),
                     "--json"]) == 0
        expected.append(json.loads(capsys.readouterr().out))

    async def fire(url):
        async with httpx.AsyncClient(base_url=url) as client:
            return await asyncio.gather(*(client.post("/v1/recommend", json={"history": h, "k": BEAMS})
                                          for h in histories))

    with serving(served, max_batch_delay_ms=300) as srv:
        answers = asyncio.run(fire(srv.url))
        batched = metric(httpx.get(srv.url + "/metrics").text, "bearrec_batch_size_sum")
    assert batched == len(histories)
    for answer, rows in zip(answers, expected):
        got = answer.json()["recommendations"]
        assert [(g["rank"], g["items"], g["title"]) for g in got] == [(r["rank"], r["items"], r["title"]) for r in rows]
        assert [g["score"] for g in got] == pytest.approx([r["score"] for r in rows], abs=1e-5)


BAD = [  # (body or raw bytes, status, field)
    ({"history": [1, 99]}, 422, "history.1"),
    ({"history": ["No Such Title"]}, 422, "history.0"),
    ({"history": []}, 422, "history"),
    ({"history": [1], "k": 0}, 422, "k"),
    ({"history": [1], "k": BEAMS + 1}, 422, "k"),
    ({"history": [1], "k": "2"}, 422, "k"),
    ({"history": [1.5]}, 422, "history.0"),
    ({"history": [True]}, 422, "history.0"),
    ({"history": "1,2"}, 422, "history"),
    ({"history": [1], "exclude_history": "yes"}, 422, "exclude_history"),
    ({"history": [1], "extra": 1}, 422, "extra"),
    ({"k": 2}, 422, "history"),
    ({"history": list(range(1, 7)) * 2}, 422, "history"),  # over max_history (10)
    ([1, 2], 422, "body"),
    (b'{"history": [1,', 400, "body"),
    (b"", 422, "body"),
    (b'{"history": [1], "pad": "' + b"x" * 5000 + b'"}', 413, "body"),
]


def test_bad_input_gives_4xx_naming_the_field(served):
    with serving(served, max_history=10, max_body_bytes=4096, max_request_users=3) as srv, \
            httpx.Client(base_url=srv.url) as client:
        for body, status, field in BAD:
            if isinstance(body, bytes):
                r = client.post("/v1/recommend", content=body, headers={"content-type": "application/json"})
            else:
                r = client.post("/v1/recommend", json=body)
            assert r.status_code == status, (body, r.text)
            assert r.json()["error"]["field"] == field and r.json()["error"]["status"] == status, (body, r.text)
        # a chunked body (no Content-Length) is cut off at the limit as well
        r = client.post("/v1/recommend", content=iter([b'{"history": [1], "pad": "', b"x" * 8000, b'"}']),
                        headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = client.post("/v1/recommend", content=b'{"history": [1]}', headers={"content-type": "text/plain"})
        assert r.status_code == 422
        for users, field in (([], "users"), ([{"history": [1]}] * 4, "users"),
                             ([{"history": [1]}, {"history": [77]}], "users.1.history.0"),
                             ([{"history": [1], "k": 9}], "users.0.k")):
            r = client.post("/v1/recommend/batch", json={"users": users})
            assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
        assert client.get("/nope").status_code == 404 and client.get("/v1/recommend").status_code == 405
        assert client.post("/v1/recommend", json={"history": [1, 2]}).status_code == 200  # still serving
        text = client.get("/metrics").text
    assert sum(metric(text, "bearrec_http_requests_total", status=str(s)) for s in range(500, 600)) == 0
    assert metric(text, "bearrec_http_requests_total", status="413") == 2


def test_concurrent_requests_are_batched(served):
    gate = Gate(hold=False)

    async def fire(url):
        async with httpx.AsyncClient(base_url=url) as client:
            return await asyncio.gather(*(client.post("/v1/recommend", json={"history": [i % 6 + 1], "k": 2})
                                          for i in range(6)))

    with serving(served, gate, max_batch_delay_ms=300, max_batch_size=8) as srv:
        answers = asyncio.run(fire(srv.url))
        text = httpx.get(srv.url + "/metrics").text
    assert all(a.status_code == 200 for a in answers)
    assert max(gate.sizes) > 1 and sum(gate.sizes) == 6
    assert metric(text, "bearrec_batch_size_count") < 6  # fewer batches than requests
    assert metric(text, "bearrec_batch_size_bucket", le="1.0") < metric(text, "bearrec_batch_size_count")


def test_full_queue_gives_503_with_retry_after(served):
    gate = Gate()

    async def scenario(srv):
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            first = asyncio.create_task(client.post("/v1/recommend", json={"history": [1]}))
            await asyncio.to_thread(wait_until, lambda: srv.service.batcher.in_flight == 1)
            second = asyncio.create_task(client.post("/v1/recommend", json={"history": [2]}))
            await asyncio.to_thread(wait_until, lambda: srv.service.batcher.depth == 1)
            refused = await client.post("/v1/recommend", json={"history": [3]})
            refused_batch = await client.post("/v1/recommend/batch", json={"users": [{"history": [3]}]})
            gate.open.set()
            return refused, refused_batch, await first, await second

    with serving(served, gate, max_queue=1, max_batch_size=1, max_batch_delay_ms=0) as srv:
        refused, refused_batch, first, second = asyncio.run(scenario(srv))
        text = httpx.get(srv.url + "/metrics").text
    for r in (refused, refused_batch):
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]["message"]
    assert first.status_code == 200 and second.status_code == 200
    assert metric(text, "bearrec_queue_rejections_total") == 2


def test_a_disconnecting_client_does_not_break_its_batch(served):
    gate = Gate(hold=False)
    payload = json.dumps({"history": [1, 2]}).encode()

    async def scenario(srv):
        with socket.create_connection(("127.0.0.1", srv.port)) as raw:  # sends a request and hangs up at once
            raw.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        async with httpx.AsyncClient(base_url=srv.url) as client:
            try:  # gives up while its request waits for the batch to fill
                impatient = await client.post("/v1/recommend", json={"history": [3]}, timeout=0.3)
            except httpx.TimeoutException as exc:
                impatient = exc
            queued = srv.service.batcher.depth
            others = await asyncio.gather(*(client.post("/v1/recommend", json={"history": [h]}) for h in (4, 5, 6)))
            return impatient, queued, others

    # the batch starts when it holds 5 users (the delay is far longer): only with both departed clients in it
    with serving(served, gate, max_batch_delay_ms=30_000, max_batch_size=5) as srv:
        impatient, queued, others = asyncio.run(scenario(srv))
        wait_until(lambda: sum(gate.sizes) >= 5 and srv.service.batcher.in_flight == 0)
        assert httpx.get(srv.url + "/ready").status_code == 200
        again = httpx.post(srv.url + "/v1/recommend/batch", json={"users": [{"history": [h]} for h in range(1, 6)]})
        assert again.status_code == 200  # five users: a full batch, decoded at once
    assert isinstance(impatient, httpx.TimeoutException) and queued == 2
    assert [a.status_code for a in others] == [200, 200, 200]
    assert gate.sizes[0] == 5  # the two departed clients were decoded in the others' batch


def test_shutdown_finishes_in_flight_requests(served):
    gate, result = Gate(), {}
    with serving(served, gate) as srv:
        client = threading.Thread(target=lambda: result.update(r=httpx.post(srv.url + "/v1/recommend",
                                                                            json={"history": [1]}, timeout=30)))
        client.start()
        wait_until(lambda: srv.service.batcher.in_flight == 1)
        stopper = threading.Thread(target=srv.stop)
        stopper.start()  # stops accepting, waits for the in-flight request
        time.sleep(0.2)
        assert stopper.is_alive() and "r" not in result
        gate.open.set()
        stopper.join(30)
        client.join(30)
        assert not srv.thread.is_alive()
    assert result["r"].status_code == 200 and len(result["r"].json()["recommendations"]) == BEAMS


@pytest.mark.parametrize("flags, fragment", [(["--port", "70000"], "--port must be between 0 and 65535"),
                                             (["--max-batch-size", "0"], "--max-batch-size must be >= 1"),
                                             (["--max-queue", "-3"], "--max-queue must be >= 1"),
                                             (["--max-batch-delay-ms", "-1"], "--max-batch-delay-ms must be between"),
                                             (["--max-history", "0"], "--max-history must be >= 1")])
def test_bad_serve_flags_are_one_line_errors(run_dir, capsys, flags, fragment):
    assert main(["serve", "--model", str(run_dir), *flags]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_bad_data_fails_before_listening(run_dir, tmp_path, capsys):
    assert main(["serve", "--model", str(run_dir), "--data", str(tmp_path / "none"), "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert "not a dataset name" in captured.err and "listening" not in captured.out
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", "--model", str(run_dir), "--port", str(busy.getsockname()[1])]) == 2
    captured = capsys.readouterr()
    assert "cannot listen on 127.0.0.1:" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_a_model_that_fails_to_load_stops_the_server():
    """Config and data fine (checked() called), then the model fails: the server stops, the error is raised."""
    from bearrec.errors import BearrecError
    from bearrec.serve.server import run_server

    def load(checked):
        checked()
        time.sleep(0.3)
        raise BearrecError("cannot load model 'x': no such folder")

    with pytest.raises(BearrecError, match="cannot load model"):
        run_server(ServeSettings(port=0), load, out=io.StringIO())


def test_serve_command_answers_and_stops_on_sigterm(run_dir, served):
    """`python -m bearrec serve` on port 0: ready, the same answer as in-process, SIGTERM ends it with 0;
    the CLI imports FastAPI only for `serve`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    lazy = subprocess.run([sys.executable, "-c", "import sys, bearrec.cli; assert 'fastapi' not in sys.modules"],
                          env=env, capture_output=True, text=True)
    assert lazy.returncode == 0, lazy.stderr
    argv = [sys.executable, "-m", "bearrec", "serve", "--model", str(run_dir), "--port", "0", "--max-batch-delay-ms", "1"]
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            line = ""
            while "listening on" not in line:
                line = proc.stdout.readline()
                assert line or proc.poll() is None, "the server exited before listening"
            url = re.search(r"http://\S+", line).group(0)
            wait_until(lambda: httpx.get(url + "/ready").status_code == 200, timeout=60)
            got = httpx.post(url + "/v1/recommend", json={"history": [1, 2, 3], "k": 2}).json()
            (rec,) = served.recommender.recommend([(1, 2, 3)])
            assert [r["items"] for r in got["recommendations"]] == [list(i) for i in rec.items[:2]]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert "stopped" in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()

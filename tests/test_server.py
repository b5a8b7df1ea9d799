"""The HTTP API with the real app: predictions, OOD flags, generation, limits, docs, batching."""
import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import gencls
from gencls.server import Batcher, ServerLimits, create_app, is_loopback


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(gan_run):
    limits = ServerLimits(max_upload_bytes=200_000, max_images=8, max_pixels=1_000_000, max_generate=16)
    with TestClient(create_app(str(gan_run), limits)) as c:
        yield c


def test_health_and_model(client, gan_run):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/model").json()
    assert info["method"] == "improved-gan" and info["dataset"] == "mnist"
    assert info["classes"] == [str(i) for i in range(10)] and info["image_shape"] == [1, 28, 28]
    assert info["can_generate"] is True and info["ood"]["percentile"] == 1.0
    assert info["limits"]["max_images"] == 8


def test_predict_matches_the_python_api(client, gan_run, mnist_test, tmp_path):
    images = mnist_test.images[:5, 0].numpy()
    files = [("files", (f"d{i}.png", png(a), "image/png")) for i, a in enumerate(images)]
    r = client.post("/predict?top_k=4", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    preds = body["predictions"]
    assert [p["filename"] for p in preds] == [f"d{i}.png" for i in range(5)]
    for i, a in enumerate(images):
        Image.fromarray(a).save(tmp_path / f"d{i}.png")
    api = gencls.predict(gan_run, [tmp_path / f"d{i}.png" for i in range(5)], top_k=4)
    for p, q in zip(preds, api):
        assert p["class"] == q.label and len(p["top_k"]) == 4
        assert p["probability"] == pytest.approx(q.probability, abs=1e-5)
        assert p["ood_score"] == pytest.approx(q.ood_score, abs=1e-5) and p["ood_flag"] == q.ood_flag
    assert sum(p["class"] == str(int(y)) for p, y in zip(preds, mnist_test.labels[:5])) >= 4


def test_noise_is_flagged_as_unlike_the_training_data(client):
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    p = client.post("/predict", files=[("files", ("noise.png", png(noise), "image/png"))]).json()["predictions"][0]
    assert p["ood_flag"] is True


@pytest.mark.parametrize("case", ["not-image", "empty", "too-many", "too-many-bytes", "chunked", "bomb", "missing"])
def test_limits_give_clear_4xx_json(client, case, mnist_test):
    ok = png(mnist_test.images[0, 0].numpy())
    if case == "not-image":
        r = client.post("/predict", files=[("files", ("a.png", ok, "image/png")), ("files", ("notes.txt", b"hello", "text/plain"))])
        assert r.status_code == 415 and "notes.txt" in r.json()["detail"]
    elif case == "empty":
        r = client.post("/predict", files=[("files", ("e.png", b"", "image/png"))])
        assert r.status_code == 415 and "empty" in r.json()["detail"]
    elif case == "too-many":
        r = client.post("/predict", files=[("files", (f"{i}.png", ok, "image/png")) for i in range(9)])
        assert r.status_code == 413 and "limit is 8" in r.json()["detail"]
    elif case == "too-many-bytes":
        big = np.random.default_rng(0).integers(0, 256, (400, 400), dtype=np.uint8)  # ~160 kB of PNG, twice
        r = client.post("/predict", files=[("files", ("a.png", png(big), "image/png")), ("files", ("b.png", png(big), "image/png"))])
        assert r.status_code == 413 and "200000 bytes" in r.json()["detail"]
    elif case == "chunked":  # no Content-Length: counted while reading
        r = client.post("/predict", content=iter([b"x" * 100_000] * 3), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
        assert r.json()["detail"] == "request body is over the limit of 200000 bytes"
    elif case == "bomb":  # 2000x2000 of black compresses to a few kB; refused from the header, before decoding
        r = client.post("/predict", files=[("files", ("bomb.png", png(np.zeros((2000, 2000), np.uint8)), "image/png"))])
        assert r.status_code == 413 and "pixels" in r.json()["detail"]
    else:
        r = client.post("/predict")
        assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/json")


def test_generate_png_grid_of_a_class(client, gan_run):
    run = gencls.load_run(gan_run)
    assigned = run.predict_classes(gencls.generate(run, n=256, seed=0))
    common = max(set(assigned), key=assigned.count)  # a class the small run's generator does produce
    r = client.post("/generate", json={"class": common, "n": 4, "seed": 0})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    kept = int(r.headers["x-gencls-kept"])
    assert r.headers["x-gencls-how"] == "filtered by the classifier" and 1 <= kept <= 4
    im = Image.open(io.BytesIO(r.content))
    assert im.size == (2 + kept * 30, 32)
    again = client.post("/generate", json={"class": common, "n": 4, "seed": 0})
    assert again.content == r.content  # same seed, same images
    anyclass = client.post("/generate", json={"n": 6, "nrow": 3})
    assert anyclass.status_code == 200 and Image.open(io.BytesIO(anyclass.content)).size == (92, 62)
    assert client.post("/generate", json={"class": "dog"}).status_code == 422
    assert client.post("/generate", json={"n": 1000}).status_code == 422


def test_generate_for_a_method_without_generator_is_a_4xx(sup_run):
    with TestClient(create_app(str(sup_run))) as c:
        r = c.post("/generate", json={"class": "3", "n": 2})
        assert r.status_code == 400 and "cannot generate" in r.json()["detail"]
        assert c.get("/model").json()["can_generate"] is False


def test_docs_and_page_work_offline(client):
    for path in ("/docs", "/redoc", "/"):
        html = client.get(path).text
        assert "cdn" not in html.lower() and "https://" not in html and "http://" not in html, path
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/generate", "/health", "/model"} <= set(spec["paths"])
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    page = client.get("/").text
    assert '<canvas id="canvas"' in page and 'type="file"' in page


def test_batcher_batches_waiting_requests_off_the_event_loop():
    calls = []

    def slow(batch):
        calls.append(len(batch))
        time.sleep(0.2)
        return (batch * 2,)

    async def main():
        b = Batcher(slow, max_batch=64)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        xs = [np.full((1, 1, 2, 2), i, np.float32) for i in range(8)]
        first = asyncio.create_task(b.submit(xs[0]))
        await asyncio.sleep(0.05)  # the model is now busy with the first request
        outs = await asyncio.gather(first, *(b.submit(x) for x in xs[1:]))
        t.cancel()
        b.close()
        return outs, ticks

    outs, ticks = asyncio.run(main())
    assert [float(o[0][0, 0, 0, 0]) for o in outs] == [2.0 * i for i in range(8)]
    assert calls == [1, 7]  # the first alone, the seven that waited meanwhile in one call
    assert ticks >= 20  # the event loop kept running while the model worked


def test_concurrent_clients_on_a_real_server(live_server, gan_run, mnist_test):
    images = [png(a) for a in mnist_test.images[:32, 0].numpy()]

    def one(i):
        r = httpx.post(live_server + "/predict", files=[("files", (f"{i}.png", images[i], "image/png"))], timeout=30)
        return r.status_code, r.json()["predictions"][0]["class"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(32)))
    assert all(code == 200 for code, _ in results)
    assert [c for _, c in results] == gencls.load_run(gan_run).predict_classes(mnist_test.images[:32].float() / 255)
    stats = httpx.get(live_server + "/health").json()["inference"]
    assert stats["requests"] >= 32 and stats["batches"] <= stats["requests"]


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_connections_beyond_the_limit_get_503(gan_run):
    """--max-connections bounds the uploads held in memory at once: a connection beyond it is
    answered 503 at once, while the slow uploads that hold the slots keep them (all of them: with
    --max-connections 2 the second was refused too, and with 1 every request); afterwards all is well."""
    import socket
    import time

    import httpx

    from conftest import start_server
    from gencls.server import server_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limits = ServerLimits(max_connections=2)
    url, server, thread = start_server(None, server_config(create_app(str(gan_run), limits), "127.0.0.1", port,
                                                           limits, "error"))
    try:
        slow = []
        for _ in range(3):  # uploads that never finish
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                      b"Content-Length: 100000\r\n\r\n--b")
            slow.append(c)
            time.sleep(0.2)
        answers = []
        for c in slow:
            c.settimeout(2)
            try:
                answers.append(c.recv(64))
            except socket.timeout:
                answers.append(b"(still uploading)")
        assert answers[:2] == [b"(still uploading)"] * 2 and answers[2].startswith(b"HTTP/1.1 503"), answers
        for c in slow:
            c.close()
        time.sleep(0.3)
        assert httpx.get(url + "/health", timeout=5).status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    one = ServerLimits(max_connections=1)  # one connection at a time: that one is answered
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, server, thread = start_server(None, server_config(create_app(str(gan_run), one), "127.0.0.1", port, one,
                                                           "error"))
    try:
        assert [httpx.get(url + "/health", timeout=5).status_code for _ in range(3)] == [200] * 3
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert server_config(None, "127.0.0.1", port, ServerLimits(max_connections=None)).limit_concurrency is None

"""The server under hostile clients: malformed multipart, aborted and slow uploads, repeated load."""
import io
import socket
import time
from urllib.parse import urlparse

import httpx
import numpy as np
from PIL import Image


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def raw_request(url: str, head: bytes, body_parts: list[bytes], pause: float = 0.0, read: bool = True) -> bytes:
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(head)
        for part in body_parts:
            s.sendall(part)
            time.sleep(pause)
        if not read:
            return b""
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def healthy(url: str) -> bool:
    return httpx.get(url + "/health", timeout=10).status_code == 200


def test_malformed_multipart_is_a_4xx(live_server):
    for body, ctype in [(b"--nope\r\ngarbage without headers\r\n", "multipart/form-data; boundary=b"),
                        (b"\x00\x01\x02" * 100, "multipart/form-data"),
                        (b"{}", "application/json")]:
        r = httpx.post(live_server + "/predict", content=body, headers={"content-type": ctype}, timeout=30)
        assert 400 <= r.status_code < 500, (ctype, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
    assert healthy(live_server)


def test_aborted_and_slow_uploads(live_server, mnist_test):
    image = png(mnist_test.images[0, 0].numpy())
    boundary = b"gencls-boundary"
    body = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--" + boundary + b"--\r\n")
    host = urlparse(live_server).netloc.encode()
    head = (b"POST /predict HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: multipart/form-data; boundary="
            + boundary + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
    # aborted: the client disappears half-way through its body, several times
    for _ in range(5):
        raw_request(live_server, head, [body[: len(body) // 2]], read=False)
    assert healthy(live_server)
    # slow: the body trickles in over about a second and is still answered
    parts = [body[i : i + 64] for i in range(0, len(body), 64)]
    reply = raw_request(live_server, head, parts, pause=1.0 / len(parts))
    assert status(reply) == 200 and b'"class":"7"' in reply.replace(b" ", b"")
    assert healthy(live_server)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_repeated_requests_do_not_grow_memory_or_fail(live_server, mnist_test):
    images = [png(a) for a in mnist_test.images[:50, 0].numpy()]
    with httpx.Client(timeout=30) as client:
        def burst(n):
            codes = [client.post(live_server + "/predict", files=[("files", ("x.png", images[i % 50], "image/png"))]).status_code
                     for i in range(n)]
            bad = client.post(live_server + "/predict", files=[("files", ("x.png", b"junk", "image/png"))]).status_code
            return codes, bad
        burst(50)  # warm up allocators and caches
        before = _rss_mb()
        codes, bad = burst(300)
        after = _rss_mb()
    assert set(codes) == {200} and bad == 415
    assert after - before < 40, (before, after)  # the server runs in this process: no growth per request

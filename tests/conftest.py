import os
import shutil
from pathlib import Path

import gencls  # noqa: F401 -- before torch: its OpenMP spin count (README, "Speed")
import pytest
import torch

from gencls.data import default_root, fetch_mnist, load_split


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Real MNIST, fetched once (from the data root if present, else through the normal sources)."""
    root = default_root()
    fetch_mnist(root, log=lambda s: None)
    os.environ["GENCLS_DATA"] = str(root)
    return root


@pytest.fixture(scope="session")
def mnist_test(data_root):
    return load_split("mnist", "test", data_root, log=lambda s: None)


@pytest.fixture(autouse=True)
def _threads():
    # `make test` runs the tests in 2 processes (pytest-xdist), one thread each: one core apiece
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"_report_{report.when}", report)


@pytest.fixture(autouse=True)
def _free_disk_after_passing(request):
    """A passed test's ``tmp_path`` (its small runs: often 100 MB) goes at once: a whole test run kept
    them all, several GB, and a nearly full disk failed later tests. A failed test's stays to look at."""
    yield
    tmp = request.node.funcargs.get("tmp_path")
    report = getattr(request.node, "_report_call", None)
    if tmp is not None and report is not None and report.passed:
        shutil.rmtree(tmp, ignore_errors=True)


def _tiny_run(tmp_path_factory, name, **kw):
    import gencls
    from gencls.training import train

    out = tmp_path_factory.mktemp("runs") / name
    base = dict(labels=100, val_size=500, subset=3000, epochs=3, out=str(out), progress=False, tensorboard=False,
                sample_every=0, device="cpu", seed=1, data_seed=1)
    base.update(kw)
    train(gencls.TrainConfig(**base), log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def gan_run(tmp_path_factory, data_root):
    """A small improved-gan run on real MNIST (a few seconds), shared by the OOD, export and server tests."""
    return _tiny_run(tmp_path_factory, "gan", method="improved-gan")


@pytest.fixture(scope="session")
def sup_run(tmp_path_factory, data_root):
    """A small supervised run (no generator)."""
    return _tiny_run(tmp_path_factory, "sup", method="supervised", labels=1000, epochs=2)


def start_server(app, config=None):
    """``app`` on a real uvicorn server at 127.0.0.1 (a free port, or ``config``'s), in a background
    thread, once it answers /health; returns (url, server, thread)."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    if config is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{config.port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    else:
        raise RuntimeError("server did not start")
    return url, server, thread


@pytest.fixture(scope="session")
def live_server(gan_run):
    """The real app on a real uvicorn server at 127.0.0.1 (a free port), in a background thread."""
    from gencls.server import create_app

    url, server, thread = start_server(create_app(str(gan_run)))
    yield url
    server.should_exit = True
    thread.join(timeout=10)


FEATURE_NET_SUBSET, FEATURE_NET_EPOCHS = 5000, 2  # the full network (60000 images, 4 epochs) is benchmarks' job


@pytest.fixture(scope="session")
def small_feature_net(tmp_path_factory, data_root):
    """A feature network trained on 5000 MNIST training images (the real recipe, fewer images and epochs)."""
    from gencls.evaluation import featurenet

    cache = tmp_path_factory.mktemp("feature_nets")
    info = featurenet.prepare("mnist", data_root, cache_dir=cache, log=lambda s: None,
                              subset=FEATURE_NET_SUBSET, epochs=FEATURE_NET_EPOCHS, min_steps=0)
    return featurenet.load_path(info["path"])

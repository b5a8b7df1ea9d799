"""`report`: a self-contained report.html for a run and for a compare folder, opened in headless
Chromium (Debian's /usr/bin/chromium through playwright; `make setup` installs both), where every
image must load."""
import json
import re
from pathlib import Path

import pytest

import gencls
from gencls.training.trainer import train

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def quiet(*a):
    pass


def open_in_chromium(html_path: Path, screenshot: Path | None = None) -> list[dict]:
    """Load the page in headless Chromium; returns every <img> with whether it loaded."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run `make setup` (it installs Debian's chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            failed_requests = []
            page.on("requestfailed", lambda r: failed_requests.append(r.url))
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            images = page.evaluate("""Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,
                                       width: i.naturalWidth, height: i.naturalHeight}))""")
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert not failed_requests, failed_requests
    return images


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("rep") / "vae"
    cfg = gencls.TrainConfig(method="vae-m2", labels=100, subset=1200, val_size=200, epochs=3, batch_size=50,
                             out=str(out), progress=False, tensorboard=False, device="cpu", threads=1)
    return train(cfg, log=quiet)


def test_run_report_is_self_contained_and_every_image_loads(vae_run, tmp_path):
    path = gencls.report(vae_run, log=quiet)
    assert path == vae_run / "report.html"
    text = path.read_text()
    # self-contained: every image is embedded, nothing is fetched from elsewhere
    srcs = re.findall(r'src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in text and "<script" not in text
    for section in ["Configuration", "Training", "Test result", "Most confidently wrong", "Samples across training"]:
        assert section in text, section
    ev = json.loads((vae_run / "eval.json").read_text())  # the test result was computed and kept
    assert f"{ev['error_percent']:.2f}%" in text
    images = open_in_chromium(path, tmp_path / "shot.png")
    alts = [i["alt"] for i in images]
    assert {"loss curves per loss term", "validation error per epoch", "confusion matrix",
            "most confidently wrong test images"} <= set(alts)
    assert [a for a in alts if a.startswith("samples")] == ["samples, first epoch", "samples, middle epoch",
                                                            "samples, last epoch"]
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in images), images
    assert (tmp_path / "shot.png").stat().st_size > 10_000


def test_run_report_shows_generation_table(vae_run, tmp_path):
    ev_path = vae_run / "eval.json"
    ev = json.loads(ev_path.read_text())
    ev["generation"] = {"n": 1000, "seed": 0, "fid": 12.5, "kid": 0.01, "label_consistency": 0.93,
                        "label_consistency_per_class": {str(c): 0.9 for c in range(10)}, "cas": None,
                        "not_applicable": {"cas": "too few images"}}
    ev_path.write_text(json.dumps(ev))
    text = gencls.report(vae_run, out=tmp_path / "r.html", log=quiet).read_text()
    assert "<h2>Generation</h2>" in text and "fid" in text and "not applicable (too few images)" in text
    assert "label_consistency_per_class" in text


def test_compare_report_shows_table_and_plot(tmp_path, data_root):
    out = tmp_path / "cmp"
    gencls.compare(methods=["supervised"], seeds=2, epochs=1, subset=1200, val_size=200, batch_size=50, threads=1,
                   device="cpu", out=str(out), log=quiet)
    path = gencls.report(out)
    text = path.read_text()
    assert "supervised" in text and "test error % (mean ± std)" in text and "supervised-seed2" in text
    assert "gencls comparison: mnist, 100 labels</h1>" in text  # --labels left to the default: not "None labels"
    images = open_in_chromium(path)
    assert [i["alt"] for i in images] == ["test error per method"]
    assert all(i["complete"] and i["width"] > 0 for i in images)


def test_report_on_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(gencls.InputError, match="no such run"):
        gencls.report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(gencls.InputError, match="not a finished run"):
        gencls.report(tmp_path / "empty")


def test_report_of_a_run_with_sparse_validation_and_one_without(tmp_path, data_root):
    """--eval-every 2 logs no validation error for odd epochs, --val-size 0 none at all: both report."""
    for name, extra in [("sparse", dict(eval_every=2, val_size=200)), ("noval", dict(val_size=0))]:
        cfg = gencls.TrainConfig(method="supervised", labels=100, subset=1200, epochs=3, batch_size=50,
                                 out=str(tmp_path / name), progress=False, tensorboard=False, device="cpu",
                                 threads=1, sample_every=0, **extra)
        run_dir = train(cfg, log=quiet)
        text = gencls.report(run_dir, log=quiet).read_text()
        assert "Test result" in text and "validation error per epoch" in text
    assert "no validation split" in text


def test_report_reevaluates_when_eval_json_is_of_another_checkpoint(vae_run, tmp_path):
    """A resumed run's best checkpoint moved on: an old eval.json must not be shown as its result."""
    ev_path = vae_run / "eval.json"
    gencls.evaluate(vae_run, log=quiet)
    good = json.loads(ev_path.read_text())
    stale = {**good, "checkpoint_epoch": good["checkpoint_epoch"] - 1, "error_percent": 77.77}
    ev_path.write_text(json.dumps(stale))
    text = gencls.report(vae_run, out=tmp_path / "r.html", log=quiet).read_text()
    assert "77.77" not in text and f"{good['error_percent']:.2f}%" in text
    assert json.loads(ev_path.read_text())["checkpoint_epoch"] == good["checkpoint_epoch"]  # written anew


def test_report_helpers_on_awkward_metrics(tmp_path):
    from gencls.reporting import _loss_terms, _sample_grids

    rows = [{"epoch": 1, "loss_lab": None, "skipped_steps": 24, "seed": 1, "val_error": None},
            {"epoch": 2, "loss_lab": 0.5, "loss_unl": 0.7, "skipped_steps": 0, "val_error": 0.3}]
    assert _loss_terms(rows) == ["loss_lab", "loss_unl"]  # counters are not losses; later epochs count
    (tmp_path / "samples").mkdir()
    for e in (1, 500, 999, 1000):
        (tmp_path / "samples" / f"epoch_{e:03d}.png").write_bytes(b"")
    grids = _sample_grids(tmp_path)
    assert [(label, f.name) for label, f in grids] == [("first", "epoch_001.png"), ("middle", "epoch_500.png"),
                                                      ("last", "epoch_1000.png")]


def test_report_of_a_seeds_folder(tmp_path, data_root):
    """`report OUT` of a `train --seeds` folder: every seed's test and validation error and their
    mean ± sample std (evaluated first, and said so, when OUT has no current eval.json)."""
    import json

    out = tmp_path / "s"
    gencls.train(gencls.TrainConfig(method="supervised", dataset="digits", seeds=[1, 2], epochs=1, out=str(out),
                                    progress=False, tensorboard=False, sample_every=0, device="cpu", threads=1),
                 log=lambda s: None)
    lines = []
    page = gencls.report(out, log=lines.append)
    assert page == out / "report.html" and any("evaluating every seed" in s for s in lines)
    ev = json.loads((out / "eval.json").read_text())
    text = page.read_text()
    e = ev["error_percent"]
    assert f"test error {e['mean']:.2f} ± {e['std']:.2f}% over 2 seed(s)" in text
    assert "seed-1" in text and "seed-2" in text and text.count("<img") == 1
    assert f"ensemble of the 2 seeds (mean of their class probabilities): test error " \
           f"{ev['ensemble']['error_percent']:.2f}%" in text
    lines.clear()
    gencls.report(out, log=lines.append)  # current: not evaluated again
    assert not any("evaluating" in s for s in lines)

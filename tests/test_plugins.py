"""Methods from other packages, found through the entry-point group ``gencls.methods``.

Nothing is pip-installed: a test "installs" a distribution by writing a ``*.dist-info`` folder
(METADATA, entry_points.txt) and its module into a folder put on ``sys.path`` (and on PYTHONPATH
for the processes it starts), which is all ``importlib.metadata`` looks at. The registry is put
back as it was after each test, so the registry-wide tests (test_methods.py) never see these.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gencls
from gencls.errors import GenclsError
from gencls.methods import base, get_method_class, list_methods, method_source, plugin_failures, register_method

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "entropy_min"
SRC = Path(gencls.__file__).resolve().parents[1]  # the gencls the processes we start must import
QUIET = dict(progress=False, tensorboard=False, sample_every=0, device="cpu", threads=1)
SMALL = dict(dataset="digits", labels=100, epochs=2, seed=1, data_seed=1, **QUIET)
BUILTIN = ["aae", "acgan", "improved-gan", "supervised", "vae-m2"]

# a complete (small) method: a linear classifier on the labelled images
TOY = '''
import math
import torch
import torch.nn.functional as F
from gencls.methods import Method, register_method

@register_method
class Toy(Method):
    name = "{name}"
    description = "a linear classifier (test plugin)"
    unlabelled_batches = 0
    default_config = {{"lr": 0.05}}

    def __init__(self, config, image_shape, num_classes):
        super().__init__(config, image_shape, num_classes)
        self.net = torch.nn.Linear(math.prod(image_shape), num_classes)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.config["lr"])

    def optimizers(self):
        return {{"net": self.opt}}

    def train_step(self, x_lab, y_lab, x_unl=None):
        logits = self.net(x_lab.flatten(1)).float()
        loss = F.cross_entropy(logits, y_lab)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer_step(self.opt, {{"loss_lab": loss}})
        return {{"loss_lab": loss.detach(), "train_err": (logits.detach().argmax(1) != y_lab).float().mean()}}

    def classify(self, x):
        with self.evaluating():
            return self.net(x.flatten(1))
'''


def install(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str], version: str = "1.0") -> None:
    """What pip would leave in site-packages for a distribution with these entry points and modules."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[gencls.methods]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path for fake installed distributions, the plugins not yet loaded; after the
    test, the registry, the loaded state and sys.modules as they were."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    saved = dict(base._METHODS), dict(base._SOURCES), dict(base._FAILURES)
    monkeypatch.setattr(base, "_plugins", "new")
    yield site
    for store, old in zip((base._METHODS, base._SOURCES, base._FAILURES), saved):
        store.clear()
        store.update(old)
    for name, mod in list(sys.modules.items()):
        if str(getattr(mod, "__file__", None) or "").startswith(str(site)):
            del sys.modules[name]


def env_with(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(SRC), os.environ.get("PYTHONPATH", "")])}


def cli(site: Path, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "gencls", *args], capture_output=True, text=True,
                          timeout=timeout, env=env_with(site))


def test_registry_is_back_to_builtin_and_installed_methods():
    """No test plugin leaks (the fixture restores the registry); what test_methods.py runs."""
    assert set(BUILTIN) <= set(list_methods())
    assert not any("test plugin" in get_method_class(m).description for m in list_methods())


def test_plugin_is_listed_and_trains_through_the_api(site, tmp_path):
    install(site, "toy-dist", {"toy": "toy_mod"}, {"toy_mod": TOY.format(name="toy-plugin")})
    assert "toy-plugin" in list_methods() and set(BUILTIN) <= set(list_methods())
    assert method_source("toy-plugin") == "toy-dist 1.0 (entry point toy = toy_mod)"
    assert method_source("supervised") is None
    out = gencls.train(method="toy-plugin", out=str(tmp_path / "run"), method_config={"lr": 0.03}, **SMALL,
                       log=lambda s: None)
    errors = [json.loads(line)["val_error"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert errors[-1] < 0.5, errors  # chance is 0.9
    run = gencls.load_run(out)
    assert run.method.name == "toy-plugin" and run.method.config["lr"] == 0.03
    assert gencls.evaluate(run, log=lambda s: None)["error"] < 0.5


def test_plugin_through_the_cli_and_a_saved_run_in_fresh_processes(site, tmp_path):
    """train, methods, predict and evaluate each in its own process, which finds the plugin
    itself; the run reloads in this process and in another one with the same predictions."""
    install(site, "toy-dist", {"toy": "toy_mod"}, {"toy_mod": TOY.format(name="toy-plugin")})
    proc = cli(site, "methods")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("toy-plugin "))
    assert "classifies only" in line and "[toy-dist 1.0 (entry point toy = toy_mod)]" in line
    assert all(m in proc.stdout for m in BUILTIN)

    run = tmp_path / "run"
    proc = cli(site, "train", "--method", "toy-plugin", "--dataset", "digits", "--labels", "100", "--epochs", "2",
               "--seed", "1", "--data-seed", "1", "--threads", "1", "--sample-every", "0", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "config.json").read_text())["method"] == "toy-plugin"

    from gencls.data import load_split
    x = load_split("digits", "test", log=lambda s: None).images[:20].float() / 255
    torch.save(x, tmp_path / "x.pt")
    here = gencls.load_run(run).predict_proba(x)
    script = ("import sys, torch, gencls; x = torch.load(sys.argv[2]); "
              "torch.save(gencls.load_run(sys.argv[1]).predict_proba(x), sys.argv[3])")
    proc = subprocess.run([sys.executable, "-c", script, str(run), str(tmp_path / "x.pt"), str(tmp_path / "p.pt")],
                          capture_output=True, text=True, timeout=300, env=env_with(site))
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(torch.load(tmp_path / "p.pt"), here)

    proc = cli(site, "evaluate", str(run))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "eval.json").read_text())["n"] == 359


def test_compare_jobs_workers_find_the_plugin(site, tmp_path):
    """compare --jobs 2 trains in spawned worker processes: each loads the plugin itself."""
    install(site, "toy-dist", {"toy": "toy_mod"}, {"toy_mod": TOY.format(name="toy-plugin")})
    out = tmp_path / "cmp"
    proc = cli(site, "compare", "--methods", "toy-plugin,supervised", "--dataset", "digits", "--labels", "20",
               "--seeds", "1", "--epochs", "1", "--batch-size", "50", "--jobs", "2", "--threads", "1",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    summary = json.loads((out / "compare.json").read_text())
    assert "toy-plugin" in json.dumps(summary) and not summary.get("failed")


def test_entry_point_may_name_the_class(site):
    """``name = module:Class`` registers the class if importing the module did not."""
    source = TOY.format(name="toy-class").replace("@register_method\n", "") + "\nimport gencls.methods as m\nSEEN = m.list_methods()\n"
    install(site, "toy-dist", {"toy": "toy_cls:Toy"}, {"toy_cls": source})
    assert "toy-class" in list_methods()
    assert "supervised" in sys.modules["toy_cls"].SEEN  # a plugin may look methods up while it loads


def test_broken_plugin_is_one_line_and_the_rest_works(site, tmp_path, capsys):
    install(site, "broken-dist", {"broken": "broken_mod"},
            {"broken_mod": TOY.format(name="half-registered") + "\nimport no_such_module_xyz\n"})
    install(site, "toy-dist", {"toy": "toy_mod"}, {"toy_mod": TOY.format(name="toy-plugin")})
    methods = list_methods()
    assert set(BUILTIN) | {"toy-plugin"} <= set(methods)
    assert "half-registered" not in methods  # a plugin that failed adds nothing
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("gencls: warning: plugin broken-dist 1.0 (entry point broken = broken_mod) failed to load: "
                          "ModuleNotFoundError: No module named 'no_such_module_xyz'")
    list_methods(), get_method_class("supervised")
    assert capsys.readouterr().err == ""  # said once
    assert list(plugin_failures()) == ["broken-dist 1.0 (entry point broken = broken_mod)"]
    with pytest.raises(GenclsError, match="unknown method 'half-registered'.*plugin broken-dist 1.0 .*failed to load"):
        get_method_class("half-registered")

    proc = cli(site, "methods")
    assert proc.returncode == 0
    assert all(m in proc.stdout for m in BUILTIN) and "toy-plugin" in proc.stdout
    assert proc.stderr.count("\n") == 1 and "plugin broken-dist 1.0 (entry point broken = broken_mod)" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli(site, "train", "--method", "half-registered", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("gencls: error: unknown method 'half-registered'"), proc.stderr
    # commands that use no method neither import the plugins nor warn (nor import PyTorch)
    for args in (["--version"], ["data", "fetch", "--help"]):
        proc = cli(site, *args)
        assert proc.returncode == 0 and proc.stderr == "", (args, proc.stderr)
    proc = subprocess.run([sys.executable, "-c", "import sys; from gencls.cli import main\n"
                           "try: main(['--version'])\nexcept SystemExit: pass\n"
                           "print('torch' in sys.modules, 'broken_mod' in sys.modules)"],
                          capture_output=True, text=True, timeout=60, env=env_with(site))
    assert proc.stdout.split()[-2:] == ["False", "False"], proc.stdout + proc.stderr
    proc = cli(site, "train", "--help")  # the help lists the methods: the plugins load there
    assert proc.returncode == 0 and "toy-plugin" in "".join(proc.stdout.split()) and proc.stderr.count("\n") == 1


def test_a_name_that_exists_is_refused(site, capsys):
    from gencls.methods.supervised import Supervised

    class Impostor(Supervised):  # inherits the name "supervised"
        pass

    with pytest.raises(GenclsError, match=r"method name 'supervised' is already registered \(by "
                                          r"gencls.methods.supervised.Supervised\); .*Impostor needs another name"):
        register_method(Impostor)
    with pytest.raises(GenclsError, match="letters, digits"):
        register_method(type("Bad", (Supervised,), {"name": "a,b"}))
    assert register_method(Supervised) is Supervised  # the same class again: nothing changes

    # through plugins: one takes a built-in's name, two take the same new name
    install(site, "clash-dist", {"clash": "clash_mod"}, {"clash_mod": TOY.format(name="supervised")})
    install(site, "first-dist", {"first": "first_mod"}, {"first_mod": TOY.format(name="twice")})
    install(site, "second-dist", {"second": "second_mod"}, {"second_mod": TOY.format(name="twice")})
    assert get_method_class("supervised") is Supervised
    failures = plugin_failures()
    assert failures["clash-dist 1.0 (entry point clash = clash_mod)"] == (
        "GenclsError: method name 'supervised' is already registered (by gencls.methods.supervised.Supervised); "
        "clash_mod.Toy needs another name")
    (loser,) = [k for k, v in failures.items() if "'twice'" in v]  # one of the two (path order) wins
    winner = "first" if loser.startswith("second-dist") else "second"
    assert get_method_class("twice").__module__ == f"{winner}_mod"
    assert f"(by {winner}_mod.Toy, from {winner}-dist 1.0 (entry point {winner} = {winner}_mod))" in failures[loser]
    assert len(capsys.readouterr().err.splitlines()) == 2


# --- the worked example: examples/entropy_min ----------------------------------------------

@pytest.fixture
def example(site, monkeypatch):
    """examples/entropy_min as pip installs it: its pyproject's entry points, its module on the path."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    install(site, project["name"], project["entry-points"]["gencls.methods"], {}, project["version"])
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield
    sys.modules.pop("entropy_min", None)


def test_example_follows_the_method_contract(example, tmp_path):
    import test_methods as contract  # the registry-wide tests, on this one method

    assert method_source("entropy-min") == "gencls-entropy-min 0.1.0 (entry point entropy-min = entropy_min)"
    contract.test_method_contract("entropy-min")
    contract.test_state_round_trip_continues_identically("entropy-min", tmp_path)


def test_example_learns_from_unlabelled_digits(example, tmp_path):
    """Trained on digits with 100 labels: the validation error falls, predictions on the unlabelled
    images grow confident (the entropy term falls), the test error is low; a few seconds."""
    out = gencls.train(method="entropy-min", out=str(tmp_path / "run"),
                       **{**SMALL, "epochs": 8}, log=lambda s: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    errors, entropies = [r["val_error"] for r in rows], [r["loss_ent"] for r in rows]
    assert min(errors[1:]) < errors[0] and min(errors) < 0.15, errors  # chance is 0.9
    assert entropies[-1] < 0.5 * entropies[0], entropies
    assert gencls.evaluate(out, log=lambda s: None)["error"] < 0.15


def test_a_plugin_with_its_own_stack_trains_with_stack_seeds_on(site, tmp_path):
    """README: a method's optional ``stack`` gives --stack-seeds; one that defines ``stack`` (and
    not ``can_stack``) is not refused before its ``stack`` is asked."""
    ns = {}
    exec(TOY.format(name="toy-stack"), ns)
    toy = ns["Toy"]
    calls = []

    class Looped:  # a "batched" step: each copy's step in turn, the losses stacked (S,)
        def __init__(self, methods):
            self.methods = methods

        def train_step(self, x_lab, y_lab, x_unl=None):
            calls.append(len(self.methods))
            out = [m.train_step(x_lab[s], y_lab[s]) for s, m in enumerate(self.methods)]
            return {k: torch.stack([o[k] for o in out]) for k in out[0]}

    @register_method
    class ToyStack(toy):
        name = "toy-stacked"

        @classmethod
        def stack(cls, methods, guard):
            return Looped(methods)

    out = gencls.train(method="toy-stacked", out=str(tmp_path / "run"), seeds=[1, 2], stack_seeds="on",
                       **{k: v for k, v in SMALL.items() if k != "seed"}, log=lambda s: None)
    assert calls and set(calls) == {2}
    assert (out / "seed-1" / "checkpoints" / "best.safetensors").exists()

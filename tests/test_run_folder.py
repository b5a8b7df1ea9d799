"""A run folder belongs to one trainer at a time; what a kill leaves behind in it (temporary
files, a .json copy behind its checkpoint, a seeds commit cut short) is tidied or settled
without losing newer work; checkpoint names are what they seem."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gencls
from gencls.training import trainer
from gencls.training.checkpoint import read_checkpoint_meta
from gencls.training.runlog import read_metrics
from gencls.utils import FolderLock

DIGITS = ["--method", "supervised", "--dataset", "digits", "--threads", "1", "--no-progress", "--no-tensorboard",
          "--sample-every", "0"]
TIMING = ("epoch_seconds", "images_per_second")


def cfg(tmp_path, name, **kw):
    base = dict(method="supervised", dataset="digits", epochs=1, out=str(tmp_path / name), progress=False,
                tensorboard=False, sample_every=0, device="cpu", threads=1)
    base.update(kw)
    return gencls.TrainConfig(**base)


def quiet(*a):
    pass


def rows(run):
    return [{k: v for k, v in r.items() if k not in (*TIMING, "seed")} for r in read_metrics(run)]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "gencls", *args], capture_output=True, text=True, timeout=300)


def _wait_for(path: Path, proc, timeout=120):
    t = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t < timeout
        time.sleep(0.05)


def _refused(r, folder: Path, pid: int | None = None):
    assert r.returncode == 2, (r.returncode, r.stderr)
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert str(folder) in line and "another gencls process" in line, line
    if pid is not None:
        assert f"pid {pid}" in line, line


def test_a_second_trainer_of_a_live_run_folder_is_refused(tmp_path, data_root):
    """Two real `gencls train` processes: while the first trains, --resume and --overwrite of its
    folder are refused in one line naming the folder and the first one's pid (exit 2), and the
    folder is left alone; killed with SIGKILL, its lock file stays but blocks nobody."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "gencls", "train", *DIGITS, "--epochs", "100000", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "checkpoints" / "last.safetensors", first)
        config = (out / "config.json").stat().st_ino
        _refused(cli("train", "--resume", "--out", str(out), "--epochs", "1"), out, first.pid)
        _refused(cli("train", *DIGITS, "--epochs", "1", "--overwrite", "--out", str(out)), out, first.pid)
        assert first.poll() is None  # still training, its folder as it was
        assert (out / "config.json").stat().st_ino == config and (out / "checkpoints" / "last.safetensors").exists()
        first.kill()  # SIGKILL: no clean-up at all
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert (out / ".gencls.lock").read_text().strip() == str(first.pid)  # stale: the kernel released the lock
    r = cli("train", "--resume", "--out", str(out), "--epochs", "1")  # "nothing to train": finishes at once
    assert r.returncode == 0, r.stderr
    assert not (out / ".gencls.lock").exists()  # released and removed by the process that took it
    r = cli("train", *DIGITS, "--epochs", "1", "--overwrite", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert [m["epoch"] for m in read_metrics(out)] == [1]


def test_seed_folders_and_their_parent_lock_each_other(tmp_path, data_root):
    """With --seeds the trainer locks OUT; a seed folder trained alone holds OUT's lock shared:
    seed folders may train alone side by side, never beside a trainer of OUT."""
    out = gencls.train(cfg(tmp_path, "m", seeds=[1, 2]), log=quiet)
    with FolderLock(out):  # a trainer of OUT is running
        with pytest.raises(gencls.GenclsError, match="another gencls process"):
            gencls.train({"out": str(out / "seed-1"), "epochs": 2}, resume=True, log=quiet)
        with pytest.raises(gencls.GenclsError, match="another gencls process"):
            gencls.train({"out": str(out), "epochs": 2}, resume=True, log=quiet)
    with FolderLock(out / "seed-2"), FolderLock(out, shared=True):  # seed 2 trains alone
        gencls.train({"out": str(out / "seed-1"), "epochs": 2}, resume=True, log=quiet)  # seed 1 alone: fine
        with pytest.raises(gencls.GenclsError, match="another gencls process"):
            gencls.train({"out": str(out), "epochs": 2}, resume=True, log=quiet)
        with pytest.raises(gencls.GenclsError, match="another gencls process"):
            gencls.train(cfg(tmp_path, "m", seeds=[1, 2]), overwrite=True, log=quiet)
    assert [r["epoch"] for r in read_metrics(out / "seed-1")] == [1, 2]
    assert [r["epoch"] for r in read_metrics(out / "seed-2")] == [1]
    assert not (out / ".gencls.lock").exists() and not (out / "seed-1" / ".gencls.lock").exists()


def test_a_refused_training_leaves_no_folder_for_its_lock(tmp_path, data_root):
    out = tmp_path / "a" / "b"
    with pytest.raises(gencls.GenclsError, match="--labels"):
        gencls.train(cfg(tmp_path, "a/b", labels=100000), log=quiet)
    assert not (tmp_path / "a").exists()


def test_compare_with_jobs_locks_each_run_not_itself(tmp_path, data_root):
    """compare trains each run folder in a worker process (--jobs) or in turn: every training
    locks its own run folder, and compare's own writes (trained.json, result.json) need none."""
    from gencls.comparison import compare

    summary = compare(methods=["supervised"], dataset="digits", labels=100, seeds=2, epochs=1, jobs=2, threads=1,
                      device="cpu", out=str(tmp_path / "cmp"), log=quiet)
    assert not summary["failed"] and len(summary["runs"]) == 2
    assert not list((tmp_path / "cmp").rglob(".gencls.lock"))


def test_stale_temporary_files_are_removed_when_a_run_resumes(tmp_path, data_root):
    out = gencls.train(cfg(tmp_path, "r"), log=quiet)
    ck = out / "checkpoints"
    stale = [ck / ".last.safetensors.k3j_9xq2.tmp", ck / ".best.json.abcdefgh.tmp",
             out / ".metrics.jsonl.0a1b2c3d.tmp", out / ".ood.json.old12345.tmp"]
    fresh_other = out / ".ood.json.new12345.tmp"  # another command's write, maybe in progress: kept
    not_ours = [out / "notes.tmp", out / ".notes.tmp", ck / "my.last.safetensors.k3j_9xq2.tmp"]
    for p in stale + [fresh_other] + not_ours:
        p.write_bytes(b"x" * 1000)
    old = time.time() - 3600
    os.utime(out / ".ood.json.old12345.tmp", (old, old))
    gencls.train({"out": str(out), "epochs": 2}, resume=True, log=quiet)
    assert [p for p in stale if p.exists()] == []
    assert fresh_other.exists() and all(p.exists() for p in not_ours)


def test_a_kill_between_a_checkpoint_and_its_json_copy(tmp_path, data_root, monkeypatch):
    """best.safetensors (its header holds the metadata) is the truth: compare reads it, not a
    best.json a kill left describing the previous best; the next training rewrites that copy."""
    from gencls.comparison import _result_is_current

    out = gencls.train(cfg(tmp_path, "r", val_size=0), log=quiet)  # no validation: every epoch is the best
    import gencls.training.checkpoint as checkpoint

    real = checkpoint.atomic_write_json

    def killed(path, obj):
        if Path(path).name == "best.json":
            raise KeyboardInterrupt  # the process dies between best.safetensors and best.json
        return real(path, obj)

    monkeypatch.setattr(checkpoint, "atomic_write_json", killed)
    with pytest.raises(gencls.GenclsError):
        gencls.train({"out": str(out), "epochs": 2}, resume=True, log=quiet)
    monkeypatch.setattr(checkpoint, "atomic_write_json", real)
    best = out / "checkpoints" / "best"
    assert read_checkpoint_meta(best.with_suffix(".safetensors"))["epoch"] == 2
    assert json.loads(best.with_suffix(".json").read_text())["meta"]["epoch"] == 1  # the stale copy
    assert not _result_is_current(out, {"best_epoch": 1})  # compare evaluates the new best
    assert _result_is_current(out, {"best_epoch": 2})
    gencls.train({"out": str(out), "epochs": 1}, resume=True, log=quiet)  # nothing to train; the copy is rewritten
    assert json.loads(best.with_suffix(".json").read_text())["meta"]["epoch"] == 2
    ck = read_checkpoint_meta(best.with_suffix(".safetensors"))
    assert json.loads(best.with_suffix(".json").read_text())["meta"] == ck


def test_kept_epochs_are_pruned_by_number(tmp_path, data_root):
    """--keep sorts epoch_NNNN by number: past epoch 9999 (epoch_10000) the oldest still goes."""
    out = gencls.train(cfg(tmp_path, "k", keep=1), log=quiet)
    ck = out / "checkpoints"
    for n in (9999, 10000):
        for suffix in (".safetensors", ".json"):
            shutil.copy(ck / f"epoch_0001{suffix}", ck / f"epoch_{n}{suffix}")
    gencls.train({"out": str(out), "epochs": 2, "keep": 1}, resume=True, log=quiet)
    assert sorted(p.name for p in ck.glob("epoch_*")) == ["epoch_10000.json", "epoch_10000.safetensors"]


def test_a_pending_seeds_commit_is_no_checkpoint_name(tmp_path, data_root):
    out = gencls.train(cfg(tmp_path, "n"), log=quiet)
    ck = out / "checkpoints"
    for suffix in (".safetensors", ".json"):
        shutil.copy(ck / f"last{suffix}", ck / f"last.next{suffix}")
    with pytest.raises(gencls.GenclsError, match="a checkpoint name such as"):
        gencls.load_run(out, which="last.next")
    with pytest.raises(gencls.GenclsError, match=r"it has best, last\)"):
        gencls.load_run(out, which="epoch_0001")


def test_a_seed_folder_resumed_alone_settles_its_pending_commit(tmp_path, data_root, monkeypatch):
    """Killed after the seeds' commit mark was written: seed 1 resumed alone goes on from its
    committed (newest) checkpoint, and a later resume of OUT never puts the stale last.next over
    the newer work (nor does it where an older gencls left last.next beside a newer last)."""
    full = gencls.train(cfg(tmp_path, "full", seeds=[1, 2], epochs=3), log=quiet)
    real = trainer.atomic_write_json
    commits = []

    def killed(path, obj):
        real(path, obj)
        if Path(path).name == trainer.COMMIT:
            commits.append(path)
            if len(commits) == 2:
                raise KeyboardInterrupt  # dies after the mark of epoch 2, before the files are renamed

    monkeypatch.setattr(trainer, "atomic_write_json", killed)
    with pytest.raises(gencls.GenclsError):
        gencls.train(cfg(tmp_path, "part", seeds=[1, 2], epochs=3), log=quiet)
    monkeypatch.setattr(trainer, "atomic_write_json", real)
    part = tmp_path / "part"
    ck1 = part / "seed-1" / "checkpoints"
    assert (part / trainer.COMMIT).exists() and (ck1 / "last.next.safetensors").exists()
    pending = {s: (ck1 / f"last.next{s}").read_bytes() for s in (".safetensors", ".json")}

    gencls.train({"out": str(part / "seed-1"), "epochs": 3}, resume=True, log=quiet)
    assert not (ck1 / "last.next.safetensors").exists()
    assert read_checkpoint_meta(ck1 / "last.safetensors")["epoch"] == 3
    assert rows(part / "seed-1") == rows(full / "seed-1")
    newer = (ck1 / "last.safetensors").read_bytes()

    # OUT's resume: seed 2 commits its epoch-2 checkpoint; seed 1 keeps its epoch-3 one
    with pytest.raises(gencls.GenclsError, match="different points"):
        gencls.train({"out": str(part)}, resume=True, log=quiet)
    assert (ck1 / "last.safetensors").read_bytes() == newer
    assert read_checkpoint_meta(part / "seed-2" / "checkpoints" / "last.safetensors")["epoch"] == 2

    # a folder an older gencls left so: the stale last.next beside the newer last, and the mark
    for suffix, blob in pending.items():
        (ck1 / f"last.next{suffix}").write_bytes(blob)
    real(part / trainer.COMMIT, {"seeds": [1, 2]})
    gencls.train({"out": str(part / "seed-2"), "epochs": 3}, resume=True, log=quiet)
    gencls.train({"out": str(part)}, resume=True, log=quiet)  # both at epoch 3: nothing to train
    assert (ck1 / "last.safetensors").read_bytes() == newer and not (ck1 / "last.next.safetensors").exists()
    for s in (1, 2):
        assert rows(part / f"seed-{s}") == rows(full / f"seed-{s}")


def test_a_refused_out_folder_keeps_its_temporary_files(tmp_path, data_root):
    """--out a folder that is no run (a home folder, say): refused as not empty, and the
    temporary files of other programs in it and below it are left alone."""
    home = tmp_path / "home"
    theirs = [home / "proj" / "checkpoints" / ".model.safetensors.abcd1234.tmp",
              home / "other" / ".config.json.Xyz12345.tmp"]
    for p in theirs:
        p.parent.mkdir(parents=True)
        p.write_text("in progress")
    (home / "notes.txt").write_text("notes")
    with pytest.raises(gencls.GenclsError, match="holds other files \\(not a gencls run folder\\); give another"):
        gencls.train(cfg(tmp_path, "home"), log=quiet)
    assert all(p.exists() for p in theirs)
    assert not (home / ".gencls.lock").exists()


def test_a_run_folder_without_a_checkpoint_is_not_offered_to_resume(tmp_path, data_root):
    """A run stopped before its first checkpoint: training into it again suggests --overwrite, not
    --resume (which then failed: no checkpoint); one with a checkpoint suggests both."""
    run = tmp_path / "run"
    gencls.train(cfg(tmp_path, "run"), log=quiet)
    with pytest.raises(gencls.GenclsError, match="use --resume to continue it or --overwrite"):
        gencls.train(cfg(tmp_path, "run"), log=quiet)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(gencls.GenclsError, match="no checkpoint to continue from: use --overwrite") as e:
        gencls.train(cfg(tmp_path, "run"), log=quiet)
    assert "--resume" not in str(e.value)
    seeds = tmp_path / "seeds"  # several seeds: seeds.json is written before any checkpoint
    gencls.train(cfg(tmp_path, "seeds", seeds=[1, 2]), log=quiet)
    with pytest.raises(gencls.GenclsError, match="use --resume to continue it or --overwrite"):
        gencls.train(cfg(tmp_path, "seeds", seeds=[1, 2]), log=quiet)
    for s in (1, 2):
        shutil.rmtree(seeds / f"seed-{s}" / "checkpoints")
    with pytest.raises(gencls.GenclsError, match="no checkpoint to continue from: use --overwrite"):
        gencls.train(cfg(tmp_path, "seeds", seeds=[1, 2]), log=quiet)


def test_a_filesystem_without_flock_trains_unlocked(tmp_path, data_root, monkeypatch):
    """flock unsupported by the filesystem (ENOLCK on NFS without a lock daemon, EOPNOTSUPP on
    some FUSE mounts) is no "another gencls process": the folder trains, unlocked."""
    import errno

    import gencls.utils as utils

    def unsupported(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(utils.fcntl, "flock", unsupported)
    out = gencls.train(cfg(tmp_path, "nfs"), log=quiet)
    assert [r["epoch"] for r in read_metrics(out)] == [1]
    assert not (out / ".gencls.lock").exists()
    lock = FolderLock(tmp_path / "new" / "folder").acquire()
    assert lock.fd is None and not (tmp_path / "new").exists()


def test_gencls_imports_and_trains_without_fcntl(tmp_path, data_root):
    """No fcntl (Windows): gencls imports, and a run folder trains without a lock."""
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import gencls\n"
            "from gencls.utils import FolderLock\n"
            "assert FolderLock(sys.argv[1]).acquire().fd is None\n"
            "from gencls.cli import main\n"
            "sys.exit(main(['train', *sys.argv[2:]]))\n")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(gencls.__file__).resolve().parents[1]), "GENCLS_DATA": str(data_root)}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x"), *DIGITS, "--epochs", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert [m["epoch"] for m in read_metrics(out)] == [1]


def test_a_lock_held_for_an_instant_is_waited_for_not_refused(tmp_path):
    """A shared holder releasing its lock holds it exclusively for an instant (to tell whether it may
    remove the lock file): a process asking at that moment used to be told "another gencls process"
    while none was running. A lock held that briefly is looked at again; one held on is refused."""
    import fcntl
    import threading

    FolderLock(tmp_path).acquire().release()
    fd = os.open(tmp_path / ".gencls.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    timer = threading.Timer(0.05, lambda: fcntl.flock(fd, fcntl.LOCK_UN))
    timer.start()
    lock = FolderLock(tmp_path).acquire()  # not refused
    assert lock.fd is not None
    lock.release()
    timer.join()
    held = FolderLock(tmp_path, shared=True).acquire()  # a holder that stays: refused, in about half a second
    t = time.time()
    with pytest.raises(gencls.GenclsError, match="another gencls process"):
        FolderLock(tmp_path).acquire()
    assert time.time() - t < 3
    lines = []
    waiter = threading.Thread(target=lambda: FolderLock(tmp_path, wait=lines.append).acquire().release())
    waiter.start()  # wait= waits for the holder instead
    time.sleep(0.8)
    assert waiter.is_alive() and len(lines) == 1 and "waiting for another gencls process" in lines[0]
    held.release()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    os.close(fd)


def test_a_folder_that_cannot_be_written_is_named_not_a_temporary_file(tmp_path, data_root, monkeypatch, capsys):
    """`--resume` of a run in a read-only folder said "Permission denied: .../.config.json.x1y2.tmp"
    (atomic writes' temporary name); it names the file it meant to write."""
    import tempfile

    from gencls.cli import main
    from gencls.utils import atomic_write_bytes

    run = tmp_path / "run"
    gencls.train(cfg(tmp_path, "run"), log=quiet)

    def refused(*a, dir=None, prefix="", suffix="", **k):
        raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "x1y2" + suffix))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError) as e:
        atomic_write_bytes(run / "a.json", b"{}")
    assert e.value.filename == str(run / "a.json") and e.value.errno == 13
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gencls: error: Permission denied: " + str(run)) and ".tmp" not in err, err


def test_every_waiter_waits_when_another_waiter_takes_the_lock_first(tmp_path):
    """Two processes waiting (wait=) for one holder: the one not served first waited again for the
    other (it used to be refused, "another gencls process ... try again", after half a second)."""
    import threading

    held = FolderLock(tmp_path, name=".x.lock").acquire()
    spans, errors = [], []

    def waiter():
        try:
            with FolderLock(tmp_path, name=".x.lock", wait=lambda s: None):
                t = time.time()
                time.sleep(1.0)
                spans.append((t, time.time()))
        except gencls.GenclsError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=waiter) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    held.release()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and len(spans) == 2
    (a0, a1), (b0, b1) = sorted(spans)
    assert a1 <= b0  # one after the other


def test_a_waiter_whose_folder_went_with_its_holder_still_locks(tmp_path):
    """A holder that made the folder and failed removes it empty on release: the waiter made the
    folder again and locked (it went on unlocked)."""
    import threading

    folder = tmp_path / "new" / "cache"
    held = FolderLock(folder, name=".x.lock").acquire()
    got = []
    waiter = threading.Thread(target=lambda: got.append(FolderLock(folder, name=".x.lock", wait=lambda s: None)
                                                        .acquire()))
    waiter.start()
    time.sleep(0.3)
    held.release()  # removes the lock file and the folders it made
    waiter.join(timeout=10)
    (lock,) = got
    assert lock.fd is not None and (folder / ".x.lock").exists()
    lock.release()

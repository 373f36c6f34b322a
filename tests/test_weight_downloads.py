"""Weights fetched on first use (torchvision's VGG16 with torch's download machinery, the
reference port's released models with gdown), checked, cached, shared by the processes of one
machine, and recorded with the run; all against a server on the loopback address."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import pytest
import torch
import yaml

from fcn.errors import DataError
from fcn.models import downloads
from fcn.models.downloads import WeightFile, fetch
from tests.conftest import EVAL, TINY, run_train
from tests.loopback import Server


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache of this test's own."""
    folder = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(folder))
    return folder / "hub" / "checkpoints"


def _served(tmp_path: Path, data: bytes, name: str, delay: float = 0.0) -> tuple[Server, str]:
    served = tmp_path / "served"
    served.mkdir(exist_ok=True)
    (served / name).write_bytes(data)
    server = Server(served, delay)
    return server, f"{server.url}/{name}"


def test_a_torchvision_style_file_is_fetched_checked_and_then_used_from_the_cache(
    hub: Path, tmp_path: Path
) -> None:
    data = b"weights" * 1000
    prefix = hashlib.sha256(data).hexdigest()[:8]
    server, url = _served(tmp_path, data, f"vgg16-{prefix}.pth")
    entry = WeightFile(f"vgg16-{prefix}.pth", url, f"sha256-prefix:{prefix}", "torchvision")
    server.truncate_next = True  # an interrupted transfer is never used, not even in part
    with pytest.raises(DataError, match="cannot download"):
        fetch(entry, progress=False)
    assert sorted(p.name for p in hub.iterdir()) == [entry.filename + ".lock"]
    path = fetch(entry, progress=False)  # the next run starts the download again, whole
    assert path == hub / entry.filename and path.read_bytes() == data and server.requests == 2
    path.write_bytes(b"damaged")  # a cached file that no longer checks out is fetched again
    assert fetch(entry).read_bytes() == data and server.requests == 3
    server.httpd.shutdown()
    server.httpd.server_close()
    assert fetch(entry) == path  # cached: used with the server down
    assert sorted(p.name for p in hub.iterdir()) == [entry.filename, entry.filename + ".lock"]


@pytest.mark.parametrize("kind", ["md5", "sha256-prefix"])
def test_a_cut_transfer_of_a_drive_file_is_never_used(kind: str, hub: Path, tmp_path: Path) -> None:
    data = b"released" * 5000
    checksum = ("md5:" + hashlib.md5(data).hexdigest() if kind == "md5"
                else "sha256-prefix:" + hashlib.sha256(data).hexdigest()[:8])  # fmt: skip
    server, url = _served(tmp_path, data, "w.pth")
    entry = WeightFile("w.pth", url, checksum, "caffe", "fcn8")
    server.truncate_next = True
    with pytest.raises(DataError, match=f"cannot download {url}"):
        fetch(entry, progress=False)
    assert not (hub / "w.pth").exists()
    assert fetch(entry, progress=False).read_bytes() == data


def test_an_unwritable_cache_is_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "torch_home"
    (home / "hub").mkdir(parents=True)
    (home / "hub" / "checkpoints").write_text("a file where the cache folder must be")
    monkeypatch.setenv("TORCH_HOME", str(home))
    entry = WeightFile("w.pth", "http://127.0.0.1:9/w.pth", "md5:" + "0" * 32, "caffe")
    with pytest.raises(DataError, match=r"cannot write to the weights cache .*set TORCH_HOME"):
        fetch(entry, progress=False)


def test_a_file_that_does_not_check_out_is_never_kept(hub: Path, tmp_path: Path) -> None:
    server, url = _served(tmp_path, b"not the file", "fcn8s_from_caffe.pth")
    entry = WeightFile("fcn8s_from_caffe.pth", url, "md5:" + "0" * 32, "caffe", "fcn8")
    with pytest.raises(DataError) as err:
        fetch(entry, progress=False)
    assert url in str(err.value) and str(hub / entry.filename) in str(err.value)
    assert not (hub / entry.filename).exists()
    torch_entry = WeightFile("vgg16-00000000.pth", url, "sha256-prefix:00000000", "torchvision")
    with pytest.raises(DataError, match="cannot download"):
        fetch(torch_entry, progress=False)
    assert [p.name for p in hub.iterdir() if not p.name.endswith(".lock")] == []


def test_without_a_network_the_error_names_the_url_and_the_exact_path(hub: Path) -> None:
    entry = WeightFile("vgg16-397923af.pth", "http://127.0.0.1:9/vgg16-397923af.pth",
                       "sha256-prefix:397923af", "torchvision")  # fmt: skip
    with pytest.raises(DataError) as err:
        fetch(entry, progress=False)
    message = str(err.value)
    assert "http://127.0.0.1:9/vgg16-397923af.pth" in message
    assert f"put the file at {hub / 'vgg16-397923af.pth'}" in message


def _fetch_in_process(entry: WeightFile, torch_home: str, queue) -> None:
    import os

    os.environ["TORCH_HOME"] = torch_home
    queue.put(str(fetch(entry, progress=False)))


def test_processes_of_one_machine_download_once_and_read_only_a_whole_file(
    hub: Path, tmp_path: Path
) -> None:
    """As DDP ranks launched together (torchrun, srun) do: all ask at once, one downloads."""
    data = b"x" * 200_000
    md5 = hashlib.md5(data).hexdigest()
    server, url = _served(tmp_path, data, "fcn32s_from_caffe.pth", delay=1.0)
    entry = WeightFile("fcn32s_from_caffe.pth", url, f"md5:{md5}", "caffe", "fcn32")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    args = (entry, str(hub.parents[1]), queue)
    workers = [context.Process(target=_fetch_in_process, args=args) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    paths = {queue.get(timeout=5) for _ in workers}
    assert paths == {str(hub / entry.filename)} and server.requests == 1
    assert (hub / entry.filename).read_bytes() == data


def _small_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Server, bytes]:
    """A released-model entry ``fcn8s`` served from the loopback address: the weights of the
    tests' tiny FCN-8s (what TINY builds), under the name and MD5 check the real one has."""
    from hydra.utils import instantiate

    from tests.conftest import compose_train

    net = instantiate(compose_train(TINY).model)
    path = tmp_path / "fcn8s_from_caffe.pth"
    torch.save(net.state_dict(), path)
    data = path.read_bytes()
    server, url = _served(tmp_path, data, "fcn8s_from_caffe.pth")
    entry = WeightFile("fcn8s_from_caffe.pth", url, "md5:" + hashlib.md5(data).hexdigest(),
                       "caffe", "fcn8")  # fmt: skip
    monkeypatch.setitem(downloads.RELEASED, "fcn8s", entry)
    return server, data


def test_training_from_a_released_model_fetches_it_and_records_it(
    workdir: Path, hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, data = _small_released(workdir, monkeypatch)
    run = workdir / "run"
    args = [*TINY, "weights=released", "weights.name=fcn8s", "logger=none",
            f"hydra.run.dir={run}"]  # fmt: skip
    proc = run_train(args, workdir, env={"TORCH_HOME": str(hub.parents[1])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sha256 = hashlib.sha256(data).hexdigest()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["weights"]["name"] == "fcn8s" and config["weights"]["sha256"] == sha256
    assert config["weights"]["file"] == str(hub / "fcn8s_from_caffe.pth")
    assert config["data"]["normalization"] == "caffe"
    initial = json.loads((run / "metrics.json").read_text())["initial_weights"]
    assert initial["option"] == "released" and initial["sha256"] == sha256
    proc = run_train([*args[:-1], f"hydra.run.dir={workdir / 'again'}"], workdir,
                     env={"TORCH_HOME": str(hub.parents[1])})  # fmt: skip
    assert proc.returncode == 0 and server.requests == 1  # the second run used the cache

    bad = run_train([*TINY, "weights=released", "weights.name=fcn9s", "hydra.run.dir=x"], workdir)
    assert bad.returncode == 1 and "error: weights.name must be one of" in bad.stderr


def test_one_command_evaluates_a_released_model(
    workdir: Path, hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = _small_released(workdir, monkeypatch)
    out = workdir / "evaluation.json"
    args = [*EVAL, "ckpt_path=released:fcn8s", "model=fcn8", "model.alignment=same",
            f"output_file={out}", f"hydra.run.dir={workdir / 'e'}"]  # fmt: skip
    env = {"TORCH_HOME": str(hub.parents[1])}
    proc = run_train(args, workdir, entry="evaluate", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/mIoU" in json.loads(out.read_text())["metrics"]
    assert "released:fcn8s: fcn8s_from_caffe.pth (data.normalization=caffe)" in proc.stdout
    wrong = [
        a.replace("model=fcn8", "model=fcn32").replace("evaluation.json", "w.json") for a in args
    ]
    proc = run_train([*wrong[:-1], "hydra.run.dir=y"], workdir, entry="evaluate", env=env)
    assert proc.returncode == 1 and "add model=fcn8" in proc.stderr
    # cheap refusals come before any download: an existing output, no data to score on
    (hub / "fcn8s_from_caffe.pth").unlink()
    proc = run_train([*args[:-1], "hydra.run.dir=z"], workdir, entry="evaluate", env=env)
    assert proc.returncode == 1 and "already exists" in proc.stderr
    no_data = ["ckpt_path=released:fcn8s", "model=fcn8", f"output_file={workdir / 'n.json'}"]
    proc = run_train([*no_data, "hydra.run.dir=w"], workdir, entry="evaluate", env=env)
    assert proc.returncode == 1 and "choose the data" in proc.stderr
    assert server.requests == 1 and not (hub / "fcn8s_from_caffe.pth").exists()


def test_a_released_model_of_another_network_is_refused_before_downloading(
    workdir: Path, hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = _small_released(workdir, monkeypatch)
    args = [*TINY, "model=fcn32", "weights=released", "weights.name=fcn8s", "hydra.run.dir=x"]
    proc = run_train(args, workdir)
    assert proc.returncode == 1 and server.requests == 0
    assert "error: weights.name=fcn8s is the network model=fcn8: add model=fcn8" in proc.stderr


def test_a_resumed_run_keeps_the_record_of_its_initial_weights(
    workdir: Path, hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data = _small_released(workdir, monkeypatch)
    run = workdir / "run"
    args = [*TINY, "weights=released", "weights.name=fcn8s", "logger=none"]
    assert run_train([*args, f"hydra.run.dir={run}"], workdir).returncode == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    resumed = workdir / "resumed"
    proc = run_train([*args, "trainer.max_epochs=2", f"ckpt_path={ckpt}",
                      f"hydra.run.dir={resumed}"], workdir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    initial = json.loads((resumed / "metrics.json").read_text())["initial_weights"]
    assert initial["option"] == "released"
    assert initial["sha256"] == hashlib.sha256(data).hexdigest()

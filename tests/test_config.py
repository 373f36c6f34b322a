"""Every config option composes and builds; bad values are refused naming their key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate

from fcn.config_checks import check_config
from fcn.errors import ConfigError
from fcn.models import FCN
from tests.conftest import CONF, compose_train

GROUPS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in (
        "model",
        "data",
        "transforms",
        "optimizer",
        "scheduler",
        "trainer",
        "logger",
        "callbacks",
        "debug",
    )
}
GROUPS["experiment"] = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SMALL = ["model.trunk_width=2", "model.fc_width=4"]


def test_groups_offer_what_the_docs_promise() -> None:
    assert GROUPS["model"] == ["fcn16", "fcn32", "fcn8", "fcn8_atonce"]
    assert {"shapes", "voc_seed"} <= set(GROUPS["data"])
    assert {"adam", "sgd"} <= set(GROUPS["optimizer"])
    assert {"csv", "none", "wandb"} <= set(GROUPS["logger"])
    assert {"resize_pad", "original", "augment"} <= set(GROUPS["transforms"])
    assert "quickstart" in GROUPS["experiment"]


def test_default_builds_the_paper_sized_fcn8_with_the_keras_seeds_recipe(tmp_path: Path) -> None:
    """What the default config builds (docs/paper.md#size-and-compute, docs/seed.md#recipe):
    the network on the meta device, its optimiser and its input pipeline."""
    cfg = compose_train([], tmp_path)
    check_config(cfg)
    with torch.device("meta"):
        net = instantiate(cfg.model)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert (net.variant, net.num_classes, trainable) == ("FCN-8s", 21, 134_362_751)
    assert net.fc6.padding == (0, 0) and net.conv1_1.padding == (100, 100)  # the reference's
    dropouts = {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout2d | torch.nn.Dropout)}
    assert dropouts == {0.2}
    optimizer = instantiate(cfg.optimizer)(net)
    assert isinstance(optimizer, torch.optim.Adam)
    assert {(g["lr"], g["weight_decay"]) for g in optimizer.param_groups} <= {
        (1e-4, 2e-6),
        (1e-4, 0),
    }
    image, label = np.zeros((375, 500, 3), np.uint8), np.zeros((375, 500), np.uint8)
    out = instantiate(cfg.transforms.train)(image=image, mask=label)
    assert out["image"].shape == (512, 512, 3) and (out["mask"] == 255).any()  # void pad
    assert cfg.data.train_set._target_.endswith("SeedVOC") and cfg.data.batch_size == 16
    assert cfg.trainer.max_epochs == 25 and not cfg.scheduler


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g, options in GROUPS.items() for o in options]
)
def test_every_option_composes_and_builds(group: str, option: str, tmp_path: Path) -> None:
    data = [] if group == "data" else ["data=shapes"]
    if (group, option) == ("data", "folder"):  # the user's own: the class count must be given
        data = ["data.num_classes=3"]
    cfg = compose_train([f"{group}={option}", *data, *SMALL], tmp_path)
    check_config(cfg)
    net = instantiate(cfg.model)
    assert isinstance(net, FCN) and net.num_classes == cfg.data.num_classes
    optimizer = instantiate(cfg.optimizer)(net)
    if cfg.scheduler:
        instantiate(cfg.scheduler)(optimizer)
    if cfg.data.train_set._target_.endswith("ShapesDataset"):
        dm = instantiate(cfg.data)
        assert dm.class_names == list(dm.val_set.dataset.class_names)  # the dataset's own
    for logger_cfg in (cfg.logger or {}).values():
        assert logger_cfg._target_
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values()]
    assert callbacks
    instantiate(cfg.trainer, logger=False, callbacks=callbacks)


@pytest.mark.parametrize(
    ("model", "skips", "scaling"),
    [("fcn32", [], False), ("fcn16", ["pool4"], False), ("fcn8", ["pool4", "pool3"], False),
     ("fcn8_atonce", ["pool4", "pool3"], True)],
)  # fmt: skip
def test_variants_are_their_skips(model: str, skips: list, scaling: bool, tmp_path: Path) -> None:
    cfg = compose_train([f"model={model}", *SMALL], tmp_path)
    net = instantiate(cfg.model)
    assert list(net.skips) == skips and net.skip_scaling is scaling


def test_paper_recipe_composes(tmp_path: Path) -> None:
    cfg = compose_train(["optimizer=sgd", "module.loss_reduction=sum", "data=shapes", *SMALL])
    net = instantiate(cfg.model)
    opt = instantiate(cfg.optimizer)(net)
    assert isinstance(opt, torch.optim.SGD)
    assert [g["lr"] for g in opt.param_groups] == [1e-10, 2e-10]
    assert opt.param_groups[0]["momentum"] == 0.99


def test_unknown_variant_and_misspelled_key_get_hydras_errors() -> None:
    with pytest.raises(MissingConfigException, match="fcn4"):
        compose_train(["model=fcn4"])
    with pytest.raises(ConfigCompositionException, match="trunk_widht"):
        compose_train(["model.trunk_widht=8"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optimizer.lr=-0.1", "optimizer.lr"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("data.num_classes=1", "data.num_classes"),
        ("model.trunk_width=0", "model.trunk_width"),
        ("model.fc_width=-8", "model.fc_width"),
        ("model.alignment=valid", "model.alignment"),
        ("model.dropout=1.5", "model.dropout"),
        ("model.skips=[pool3]", "model.skips"),
        ("module.loss_reduction=avg", "module.loss_reduction"),
        ("data.batch_size=0", "data.batch_size"),
        ("transforms.size=0", "transforms.size"),
        ("data.on_bad_file=ignore", "data.on_bad_file"),
        ("trainer.max_epochs=0", "trainer.max_epochs"),
        ("seed=-1", "seed"),
    ],
)
def test_values_that_cannot_work_name_their_key(override: str, key: str) -> None:
    cfg = compose_train(["data=shapes", override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_config(cfg)


def test_loggers_combine_and_none_means_none() -> None:
    assert list(compose_train(["logger=[wandb,csv]"]).logger) == ["wandb", "csv"]
    assert not compose_train(["logger=none"]).logger


@pytest.mark.parametrize(
    ("option", "normalization"),
    [("none", "torchvision"), ("imagenet", "torchvision"), ("imagenet_caffe", "caffe"),
     ("fcn", "torchvision"), ("released", "caffe")],
)  # fmt: skip
def test_weights_options_compose_with_their_normalisation(option: str, normalization: str) -> None:
    cfg = compose_train([f"weights={option}", "data=voc2012"])
    assert cfg.data.normalization == normalization
    needs = {"fcn": "weights.path=w.pth", "released": "weights.name=fcn8s"}.get(option)
    if needs:
        with pytest.raises(ConfigError, match=needs.split("=")[0]):
            check_config(cfg)
        cfg = compose_train([f"weights={option}", "data=voc2012", needs])
    check_config(cfg)
    if option == "imagenet_caffe":  # fetched on first use: nothing to give
        assert cfg.weights.name == "vgg16_caffe" and cfg.weights.path is None

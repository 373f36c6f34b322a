"""Loss reductions, parameter groups and the LightningModule's logged metrics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fcn.data.transforms import pad_collate
from fcn.models import FCN
from fcn.training.module import FCNModule, segmentation_loss
from fcn.training.optim import build_optimizer, parameter_groups


def test_mean_loss_averages_over_non_void_pixels_and_sum_adds_them() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 5, 6, generator=g)
    labels = torch.randint(0, 4, (2, 5, 6), generator=g)
    labels[0, :3] = 255
    valid = labels != 255
    per_pixel = F.cross_entropy(scores, labels.clamp(max=3), reduction="none")[valid]
    mean, n = segmentation_loss(scores, labels, "mean")
    total, n2 = segmentation_loss(scores, labels, "sum")
    assert n == n2 == valid.sum()
    torch.testing.assert_close(mean, per_pixel.mean())
    torch.testing.assert_close(total, per_pixel.sum())


def test_all_void_batch_gives_zero_loss_not_nan() -> None:
    scores = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss, valid = segmentation_loss(scores, torch.full((1, 4, 4), 255), "mean")
    assert valid == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(scores.grad).all()


def test_paper_parameter_groups_biases_twice_the_lr_without_decay() -> None:
    net = FCN(skips=("pool4", "pool3"), num_classes=3, trunk_width=2, fc_width=4)
    opt = build_optimizer(
        net, "torch.optim.SGD", lr=1e-10, weight_decay=5e-4, bias_lr_mult=2.0,
        bias_weight_decay=0.0, momentum=0.99,
    )  # fmt: skip
    weights, biases = opt.param_groups
    assert (weights["lr"], weights["weight_decay"], weights["momentum"]) == (1e-10, 5e-4, 0.99)
    assert (biases["lr"], biases["weight_decay"]) == (2e-10, 0.0)
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)
    assert all(p.ndim == 1 for p in biases["params"]) and all(
        p.ndim == 4 for p in weights["params"]
    )


def test_seed_l2_on_kernels_only() -> None:
    net = FCN(skips=(), num_classes=3, trunk_width=2, fc_width=4)
    groups = parameter_groups(net, lr=1e-4, weight_decay=2e-6, bias_weight_decay=0.0)
    assert [g["weight_decay"] for g in groups] == [2e-6, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": 1e-3, "weight_decay": -1}, "weight_decay"),
        ({"algorithm": "torch.optim.Adamm"}, "optimizer.algorithm"),
    ],
)
def test_bad_optimizer_settings_name_the_key(kwargs: dict, key: str) -> None:
    net = FCN(skips=(), num_classes=3, trunk_width=2, fc_width=4)
    with pytest.raises(ValueError, match=key):
        build_optimizer(net, **kwargs)


def test_validation_epoch_logs_every_metric() -> None:
    net = FCN(skips=("pool4",), num_classes=3, trunk_width=2, fc_width=4, alignment="same")
    module = FCNModule(net, optimizer=lambda n: build_optimizer(n), class_names=["bg", "a", "b"])
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    module.log_dict = lambda d, **kw: logged.update({k: float(v) for k, v in d.items()})  # type: ignore[method-assign]
    images = torch.randn(2, 3, 20, 20)
    labels = torch.randint(0, 3, (2, 20, 20))
    module.validation_step((images, labels, torch.tensor([[20, 20], [20, 20]])), 0)
    module.on_validation_epoch_end()
    expected = {"val/loss", "val/mIoU", "val/pixel_acc", "val/mean_acc", "val/fwIoU"}
    assert expected | {"val/IoU/bg", "val/IoU/a", "val/IoU/b"} == set(logged)
    assert logged["val/loss"] == pytest.approx(torch.log(torch.tensor(3.0)).item(), rel=1e-5)


def test_class_names_must_match_the_classes() -> None:
    net = FCN(skips=(), num_classes=3, trunk_width=2, fc_width=4)
    with pytest.raises(ValueError, match="class_names"):
        FCNModule(net, optimizer=build_optimizer, class_names=["a", "b"])
    with pytest.raises(ValueError, match="loss_reduction"):
        FCNModule(net, optimizer=build_optimizer, loss_reduction="avg")


def test_padded_batches_of_mixed_sizes_score_as_batch_one() -> None:
    torch.manual_seed(0)
    net = FCN(skips=("pool4", "pool3"), num_classes=3, trunk_width=4, fc_width=8, alignment="same")
    for layer in net.score_layers:
        torch.nn.init.normal_(layer.weight)
    module = FCNModule(net.eval(), optimizer=build_optimizer)
    items = [(torch.randn(3, 37, 50), torch.randint(0, 3, (37, 50))),
             (torch.randn(3, 100, 29), torch.randint(0, 3, (100, 29)))]  # fmt: skip
    with torch.no_grad():
        for item in items:
            module.validation_step(pad_collate([item]), 0)
        one_by_one = (module.val_metrics.confmat.clone(), module.val_loss.compute())
        module.val_metrics.reset()
        module.val_loss.reset()
        images, labels, sizes = pad_collate(items)
        module.validation_step((images, labels, sizes), 0)
        assert torch.equal(module.val_metrics.confmat, one_by_one[0])
        assert module.val_loss.compute().item() == pytest.approx(one_by_one[1].item(), rel=1e-6)
        # Scoring the padded tensor as a whole differs near the pads: the reason for the above.
        alone = net(items[0][0][None])
        padded = net(images)[:1, :, :37, :50]
        assert (alone - padded).abs().max() > 1e-3

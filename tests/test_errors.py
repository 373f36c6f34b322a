"""User errors end with one line; a bug inside a constructor Hydra calls keeps its traceback."""

from __future__ import annotations

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from fcn.errors import DataError, exit_on_user_error


class Broken:
    """A component with a bug in its constructor."""

    def __init__(self, size: int = 1) -> None:
        self.ratio = size / 0


def _task(config: dict):
    return exit_on_user_error(lambda cfg: instantiate(cfg))(config)


def test_a_bug_inside_a_constructor_keeps_its_traceback() -> None:
    with pytest.raises(InstantiationException) as info:
        _task({"_target_": f"{__name__}.Broken"})
    assert isinstance(info.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"_target_": f"{__name__}.Broken", "colour": 1}, "unexpected keyword argument 'colour'"),
        ({"_target_": "fcn.data.shapes.ShapesDataset", "num_images": 0}, "num_images must be"),
        ({"_target_": "fcn.models.fcn.FCN", "trunk_width": 0}, "trunk_width"),
    ],
)
def test_config_mistakes_end_with_one_line(
    config: dict, expected: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        _task(config)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err


def test_our_own_errors_end_with_their_message(capsys: pytest.CaptureFixture) -> None:
    def fail(cfg):
        raise DataError("label x.png is 3x4 but its image y.jpg is 4x3")

    with pytest.raises(SystemExit):
        exit_on_user_error(fail)({})
    assert capsys.readouterr().err == "error: label x.png is 3x4 but its image y.jpg is 4x3\n"

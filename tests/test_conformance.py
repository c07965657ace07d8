"""Every registered backbone, built-in or plugin, passes the conformance suite of ``ftkit models check``.

Parametrized from the registry itself, so a backbone is tested the moment it is registered.
"""

import pytest

import ftkit
from ftkit.backbones._check import CHECKS, check_backbone

DEEP = {"resnet101", "resnet152"}  # several hundred layers: seconds per build on a 2-core CPU


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in DEEP else n for n in ftkit.list_backbones()]
)
def test_backbone_conforms(name):
    results = check_backbone(name)
    assert [r.check for r in results] == [label for label, _ in CHECKS]
    failed = {r.check: r.detail for r in results if not r.passed}
    assert failed == {}

"""Real-data checks on the shared CIFAR-10 ResNets (run with -m slow)."""
import pytest

import datafree as df
from datafree.models.record import record_of

from .conftest import shared_or_skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def r20():
    w = shared_or_skip("models/resnet20-12fca82f.th")
    m = df.load_model("resnet20", str(w))
    return m, df.load_dataset("cifar10:test-exact", record_of(m).input_spec, str(w.parents[1]))


def test_resnet20_fp32_exact(r20):
    m, test = r20
    assert df.evaluate(m, test)["top1"] == pytest.approx(91.5, abs=0.05)


def test_resnet20_w8a8_bn_stats_close_to_fp32(r20):
    m, test = r20
    syn = df.synthesize(m, "bn-stats", df.make_config("bn-stats", num=128, iterations=50), progress=False)
    q = df.quantize(m, syn, df.QuantConfig(w_bits=8, a_bits=8))
    assert df.evaluate(q, test)["top1"] >= 91.5 - 0.5

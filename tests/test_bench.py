import argparse

from datafree.bench.common import cached_set_dir, command_line


def test_command_line_reproduces_the_given_options_only():
    a = argparse.Namespace(methods=["a", "b"], budget=900.0, bn_weight=None, bf16=True, flip=False, out="x.json")
    assert command_line("datafree.bench.x", a) == "python -m datafree.bench.x --methods a b --budget 900.0 --bf16"


def test_cached_set_dir_names_non_default_overrides():
    assert cached_set_dir("r56", "deepinversion", 256, 400, 1, "c").as_posix() == "c/r56_deepinversion_n256_it400_s1"
    d = cached_set_dir("r56", "deepinversion", 64, 200, 0, "c", bn_weight=10.0, bf16=True, lr=None)
    assert d.name == "r56_deepinversion_n64_it200_s0_bf16_bn_weight10.0"

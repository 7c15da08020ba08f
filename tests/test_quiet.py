"""A run prints what concerns the user: dependency noise is silenced, other warnings still come through."""

from __future__ import annotations

import warnings

from nfl.run.quiet import silence_dependency_noise, silence_evaluation_noise
from tests.conftest import version_dir

NOISE = (
    "💡 Tip", "LeafSpec", "weights_only", "The dirpath has changed", "is an instance of `nn.Module`",
    "exists and is not empty",
)


def test_fit_then_test_from_a_checkpoint_print_no_dependency_noise(run_cli, tiny_config, tmp_path, capfd, recwarn):
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps", "4")
    last = version_dir(tmp_path) / "checkpoints" / "last.ckpt"
    run_cli("fit", "--config", str(tiny_config), "--trainer.max_steps", "6", "--ckpt_path", str(last))  # resumes in place
    run_cli("test", "--config", str(tiny_config), "--ckpt_path", str(last))
    printed = capfd.readouterr()
    text = printed.out + printed.err + "\n".join(str(w.message) for w in recwarn)
    assert "test/exact_match" in text  # the run itself did report
    for noise in NOISE:
        assert noise not in text, noise


def test_filters_match_only_their_own_messages():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_dependency_noise()
        silence_evaluation_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use something else", DeprecationWarning)
        warnings.warn("The dirpath has changed from 'a' to 'b'", UserWarning)
        warnings.warn("LeafSpec is fine but this other warning is the user's business", UserWarning)
    assert [str(w.message) for w in seen] == ["LeafSpec is fine but this other warning is the user's business"]

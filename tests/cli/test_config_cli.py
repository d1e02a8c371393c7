"""`int-engine --version`, `config show`, -v / --log-level / INT_ENGINE_LOG_LEVEL, suggestions for
misspelt keys and presets, and the exit codes of usage errors."""

from __future__ import annotations

import io
import logging
import re

import pytest

from int_engine import __version__
from int_engine.cli import FATAL, main
from int_engine.config import EngineConfig, apply_overrides, preset_config
from int_engine.errors import ConfigError
from int_engine.log import ENV_LEVEL, cli_logging, get_logger, resolve_level


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"int-engine {__version__}"


def test_config_show_prints_yaml_that_reads_back_to_the_same_config(capsys, tmp_path):
    assert main(["config", "show", "--preset", "polyp", "--set", "mask_weighting=softmax", "--iterations", "3"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "c.yaml").write_text(text, encoding="utf-8")
    shown = EngineConfig.from_file(tmp_path / "c.yaml")
    want = apply_overrides(preset_config("polyp"), ["mask_weighting=softmax", "iterations=3"])
    assert shown == want and shown.task == "polyp" and shown.iterations == 3
    # and the default config is not what was shown (the flags took effect)
    assert shown != EngineConfig()


def test_config_show_resolves_role_paths_against_models(capsys, tmp_path):
    assert main(["config", "show", "--models", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert f"path: {(tmp_path / 'vlm').resolve()}" in shown


@pytest.mark.parametrize(
    "args, suggestion",
    [
        (["--set", "iteratons=3"], "did you mean 'iterations'?"),
        (["--set", "models.vlm.dtpye=float16"], "did you mean 'models.vlm.dtype'?"),
        (["--preset", "polip"], "did you mean 'polyp'?"),
    ],
)
def test_a_misspelt_key_or_preset_suggests_the_right_one(capsys, args, suggestion):
    assert main(["config", "show", *args]) == FATAL
    err = capsys.readouterr().err
    assert suggestion in err and err.count("\n") == 1


def test_no_suggestion_for_a_name_like_nothing():
    with pytest.raises(ConfigError) as err:
        apply_overrides(EngineConfig(), ["zzzzqqq=1"])
    assert "did you mean" not in str(err.value)


def test_usage_errors_exit_2(capsys):
    for argv in (["nosuch"], ["segment"], ["config", "show", "--iterations", "four"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv
    assert "invalid int value" in capsys.readouterr().err


def test_log_level_from_flags_then_environment(monkeypatch):
    monkeypatch.delenv(ENV_LEVEL, raising=False)
    assert resolve_level(None, 0) == logging.WARNING
    assert resolve_level(None, 1) == logging.INFO
    assert resolve_level(None, 2) == logging.DEBUG
    monkeypatch.setenv(ENV_LEVEL, "debug")
    assert resolve_level(None, 0) == logging.DEBUG
    assert resolve_level("error", 2) == logging.ERROR  # --log-level wins over -v and the environment
    monkeypatch.setenv(ENV_LEVEL, "loud")
    with pytest.raises(ValueError, match="loud"):
        resolve_level(None, 0)
    assert main(["config", "show"]) == FATAL  # a bad INT_ENGINE_LOG_LEVEL stops the run before it starts


def test_log_lines_and_the_progress_bar_do_not_garble(monkeypatch):
    """A log line written while a tqdm bar is drawn comes out whole, on its own line."""
    from tqdm import tqdm

    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    with cli_logging(logging.INFO):
        bar = tqdm(total=10, file=stream, ascii=True, mininterval=0)
        bar.update(3)
        get_logger("test").info("loaded vlm (hf, float32, cpu) in 1.25 s")
        bar.update(3)
        bar.close()
    assert get_logger().propagate and not get_logger().handlers  # the host's logging is as it was
    pieces = re.split(r"[\r\n]", stream.getvalue())
    assert any(p.endswith("INFO int_engine.test: loaded vlm (hf, float32, cpu) in 1.25 s") for p in pieces)
    assert not any("loaded vlm" in p and "it/s" in p for p in pieces)  # never on the bar's line


def test_config_show_names_the_preset_its_views_and_its_boxes(capsys):
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "# preset paper: " in out and "\npreset: paper\n" in out
    assert "(9)" in out and "GroundingDINO on every view" in out
    assert main(["config", "show", "--preset", "promac"]) == 0
    out = capsys.readouterr().out
    assert "# preset promac: ProMaC" in out and "What differs" in out
    assert "# views per iteration: whole, top, bottom, left, right (5)" in out
    assert "# boxes for SAM: the VLM's own P_B box, no GroundingDINO" in out and "box_source: vlm" in out
    concept = ["--preset", "modern", "--set", "models.concept.backend=sam3", "--set", "sam3_negatives=mined"]
    assert main(["config", "show", *concept]) == 0
    out = capsys.readouterr().out
    assert "# steps 7-8 by sam3 (concept role): positive exemplars: GroundingDINO on every view" in out
    assert "# negative exemplars: the boxes of the names mining rejected" in out and "boxes for SAM" not in out


def test_early_stop_flag_and_the_fast_preset(capsys):
    from int_engine.config import EngineConfig

    assert main(["config", "show", "--early-stop", "--iterations", "5"]) == 0
    shown = capsys.readouterr().out
    assert "early_stop: true" in shown and "stop_iou: 0.95" in shown and "min_iterations: 1" in shown
    assert main(["config", "show", "--preset", "fast"]) == 0
    assert "early_stop: true" in capsys.readouterr().out
    assert main(["config", "show"]) == 0
    assert "early_stop: false" in capsys.readouterr().out and EngineConfig().early_stop is False

from __future__ import annotations

from pathlib import Path

import pytest

from telediag.engine.config import default_config, load_config, parse_config
from telediag.engine.stages.ecg import EcgFilter, EcgFilterParams
from telediag.errors import ConfigError


def test_default_config_has_ecg_filter() -> None:
    cfg = default_config()
    assert cfg.engine.ingest == "tcp://127.0.0.1:5555"
    assert cfg.engine.publish == "tcp://127.0.0.1:5556"
    (stage,) = [s for s in cfg.pipelines["ecg"] if s.stage_type is EcgFilter]
    assert isinstance(stage.params, EcgFilterParams)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_user_file_overrides_engine_keys_and_keeps_pipelines(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "[engine]\nworkers = 3\nstats_interval_s = 2\n"))
    assert cfg.engine.workers == 3
    assert cfg.engine.stats_interval_s == 2.0
    assert cfg.engine.ingest == "tcp://127.0.0.1:5555"
    assert "ecg" in cfg.pipelines


def test_pipeline_section_merges_into_the_default(tmp_path: Path) -> None:
    """A named stage changes only its keys; a new name adds a stage after the built-in ones."""
    cfg = load_config(_write(tmp_path, '[pipeline.ecg.filter]\nnotch_hz = 60.0\n'
                                       '[pipeline.ecg.bp]\nstage = "ecg_filter"\nlow_hz = 1\nhigh_hz = 30.0\n'))
    names = [s.name for s in cfg.pipelines["ecg"]]
    assert names == [s.name for s in default_config().pipelines["ecg"]] + ["bp"]
    flt = next(s for s in cfg.pipelines["ecg"] if s.name == "filter")
    assert flt.params.notch_hz == 60.0 and flt.params.high_hz == 40.0  # type: ignore[attr-defined]
    bp = cfg.pipelines["ecg"][-1]
    assert bp.params.low_hz == 1.0 and bp.params.high_hz == 30.0  # type: ignore[attr-defined]


def test_pipeline_replace_true_makes_the_file_the_whole_pipeline(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, '[pipeline.ecg]\nreplace = true\n'
                                       '[pipeline.ecg.bp]\nstage = "ecg_filter"\nlow_hz = 1\nhigh_hz = 30.0\nnotch_hz = 60.0\n'))
    (stage,) = cfg.pipelines["ecg"]
    assert stage.name == "bp"
    assert stage.params.low_hz == 1.0 and stage.params.notch_hz == 60.0  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="replace must be true or false"):
        load_config(_write(tmp_path, '[pipeline.ecg]\nreplace = "yes"\n'))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[engine]\nworkerz = 2\n", r"unknown key\(s\) \['workerz'\]"),
        ("[engine]\nworkers = 'two'\n", r"\[engine\].workers must be int, got str"),
        ("[engine]\nworkers = 0\n", r"workers must be in 1..64, got 0"),
        ("[engine]\ningest = 'http://x'\n", r"ingest must be a tcp://"),
        ("[enigne]\n", r"unknown top-level section"),
        ('[pipeline.ecg.f]\nstage = "nope"\n', r"stage = 'nope' is unknown"),
        ('[pipeline.ecg.f]\nlow_hz = 1.0\n', r"needs a 'stage' key"),
        ('[pipeline.ecg.f]\nstage = "ecg_filter"\ncutoff = 3\n', r"unknown key\(s\) \['cutoff'\]"),
        ('[pipeline.ecg.f]\nstage = "ecg_filter"\nlow_hz = "x"\n', r"low_hz must be float, got str"),
        ('[pipeline.ecg.f]\nstage = "ecg_filter"\nlow_hz = 50.0\nhigh_hz = 40.0\n', r"need 0 < low_hz < high_hz"),
        ('[pipeline.ecg.f]\nstage = "ecg_filter"\nnotch_hz = 55.0\n', r"notch_hz must be 0 \(off\), 50 or 60"),
        ('[pipeline.xyz.f]\nstage = "ecg_filter"\n', r"unknown stream kind 'xyz'"),
        ('[pipeline.pcg.f]\nstage = "ecg_filter"\n', r"handles \['ecg'\], not 'pcg'"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text))


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[engine\n"))


def test_parse_config_from_dict() -> None:
    cfg = parse_config({"engine": {"workers": 2}}, "<test>")
    assert cfg.engine.workers == 2 and cfg.pipelines == {}

"""The imagesim command: every subcommand has help, and errors say what to do."""

from __future__ import annotations

import pytest

from imagesim_pipeline.cli import build_parser, main

SUBCOMMANDS = ["ingest", "discover", "materialize", "chip", "samples", "grid", "dataset", "model", "search", "changes",
               "serve", "demo", "ui", "daemon", "check", "backfill", "engine"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: imagesim " + command in capsys.readouterr().out


def test_parser_knows_every_subcommand():
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert set(choices) == set(SUBCOMMANDS)


def test_grid_describes_a_cell(capsys):
    assert main(["grid", "Z33-120020223133"]) == 0
    out = capsys.readouterr().out
    assert '"epsg": 32633' in out and '"size_m": 5000.0' in out


def test_grid_rejects_a_bad_id(capsys):
    assert main(["grid", "Z77-1200"]) == 2
    assert "outside 1..60" in capsys.readouterr().err


def test_discover_on_an_empty_bucket_says_what_to_do(tmp_path, capsys):
    assert main(["discover", "--bucket", str(tmp_path), "--no-register"]) == 1
    assert "imagesim ingest" in capsys.readouterr().err


def test_discover_one_zone_uses_the_padded_folder(bucket_copy, capsys):
    assert main(["discover", "--bucket", str(bucket_copy), "--zone", "16", "--no-register"]) == 0
    out = capsys.readouterr().out
    assert "Z16-" in out and "Z31-" not in out
    with pytest.raises(SystemExit):
        main(["discover", "--zone", "61"])


def test_ingest_reports_bad_files_and_goes_on(tmp_path, samples, capsys):
    bad = tmp_path / "bad.tif"
    bad.write_text("nope")
    code = main(["ingest", str(bad), str(samples["sample_geotiff.tif"]), "--bucket", str(tmp_path / "b"),
                 "--catalog-id", "S1", "--date", "2020-02-02"])
    captured = capsys.readouterr()
    assert code == 1
    assert "bad.tif: cannot be opened as a raster" in captured.err
    assert "wrote 2 cell(s)" in captured.out


def test_model_report_without_a_model_says_what_to_run(tmp_path, capsys):
    assert main(["model", "report", "--bucket", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no latest model" in err and "trainer_job" in err


def test_serve_on_a_port_in_use_says_so(tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--bucket", str(tmp_path), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_bucket_option_reaches_the_dagster_jobs(kotka_bucket, tmp_path, dagster_home, monkeypatch, capsys):
    from imagesim_pipeline.labels import label_cell, load_vocabulary
    from imagesim_pipeline.storage import open_bucket
    from imagesim_pipeline_tests.conftest import KOTKA_CELLS

    bucket = open_bucket(kotka_bucket)
    for cell in KOTKA_CELLS:
        label_cell(bucket, cell, load_vocabulary())
    elsewhere = tmp_path / "configured-bucket"
    monkeypatch.setenv("IMAGESIM_BUCKET", str(elsewhere))  # the configured bucket is not the one asked for
    assert main(["dataset", "build", "--bucket", str(kotka_bucket)]) == 0, capsys.readouterr()
    assert bucket.exists("datasets/latest.json")
    assert not (elsewhere / "datasets").exists()


def test_an_unknown_dataset_version_exits_2_like_an_unknown_model_version(tmp_path, capsys):
    code = main(["dataset", "stats", "ds-nope", "--bucket", str(tmp_path)])
    assert code == 2 and "error:" in capsys.readouterr().err


def test_model_train_whose_checks_published_nothing_exits_1(tmp_path, monkeypatch, capsys):
    """The exit-code convention: trainer_job ran, but onnx_model's checks published no model: 1, not 2."""
    import imagesim_pipeline.orchestration.instance as instance

    monkeypatch.setattr(instance, "run_job", lambda *args, **kwargs: True)  # a run that succeeded, publishing nothing
    assert main(["model", "train", "--bucket", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: trainer_job published no model:") and err.count("\n") == 1

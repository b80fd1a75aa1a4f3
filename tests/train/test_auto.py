"""``auto`` clustering settings end to end: tiny ICE and IICS runs, and option checking."""
import json

import pytest

from timm_reid.train import main, parse_args
from timm_reid.train.config import check_args
from timm_reid.train.errors import ConfigError

from .tiny import TINY_DATA, tiny_argv

SYNTHETIC = ["--synthetic-identities", str(TINY_DATA["num_identities"]), "--synthetic-test-identities",
             str(TINY_DATA["num_test_identities"]), "--synthetic-cameras", str(TINY_DATA["num_cameras"])]


def _rounds(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_demo_presets_default_to_auto_and_paper_presets_keep_fixed_values():
    assert parse_args(["--method", "ice"]).eps == "auto"
    demo = parse_args([])
    assert (demo.intra_clusters, demo.inter_clusters) == ("auto", "auto")
    assert parse_args(["--preset", "ice", "--method", "ice"]).eps == 0.55
    iics = parse_args(["--preset", "iics"])
    assert (iics.intra_clusters, iics.inter_clusters) == (600, 800)
    assert parse_args(["--method", "ice", "--eps", "0.4"]).eps == 0.4


def test_tiny_ice_run_with_auto_eps_records_the_chosen_eps(market_dir, tmp_path):
    run = tmp_path / "run"
    main(parse_args(["--method", "ice", "--preset", "ice-demo", "--output", str(run), "--model", "test_convnext",
                     "--epochs", "2", "--iters", "2", "--batch-size", "16", "--num-instances", "4", "--k1", "6",
                     "--test-batch-size", "64", "--threads", "1", "--no-progress", "--no-plots",
                     "--dataset", "market1501", "--root", str(market_dir)]))
    rounds = _rounds(run)
    assert len(rounds) == 2
    for r in rounds:
        assert 0 < r["ice_eps"] < 1 and r["ice_eps_reason"]
        assert r["ice_clusters"] >= 4  # enough clusters for P = 16 / 4 identities per batch
    assert "auto" in (run / "log.txt").read_text()
    assert (run / "final_metrics.json").is_file()


def test_tiny_iics_run_with_auto_counts_records_the_counts(tmp_path):
    run = tmp_path / "run"
    main(parse_args(tiny_argv(run, *SYNTHETIC, "--intra-clusters", "auto", "--inter-clusters", "auto")))
    (r,) = _rounds(run)
    assert len(r["intra_clusters"]) == TINY_DATA["num_cameras"] and min(r["intra_clusters"]) >= 1
    assert 4 <= r["inter_target_clusters"] <= 12 * 3 * 4  # at least P = 16 / 4; at most the images
    assert r["inter_clusters"] == r["inter_target_clusters"]
    log = (run / "log.txt").read_text()
    assert "intra clustering: auto counts per camera" in log and "inter clustering: auto count" in log


@pytest.mark.parametrize("argv, message", [
    (["--method", "ice", "--eps", "often"], "expected 'auto' or a number"),
    (["--method", "ice", "--eps", "-1"], "--eps must be auto or a finite number > 0"),
    (["--intra-clusters", "0"], "--intra-clusters must be auto or an integer >= 1"),
    (["--inter-clusters", "many"], "expected 'auto' or an integer"),
])
def test_bad_auto_options_are_clear_errors(argv, message, capsys):
    with pytest.raises((ConfigError, SystemExit)) as info:
        check_args(parse_args(argv))
    shown = str(info.value) if info.type is ConfigError else capsys.readouterr().err
    assert message in shown


def test_auto_in_a_config_file_is_checked(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("eps: auto\nintra_clusters: auto\ninter_clusters: 50\n")
    bad.write_text("eps: sometimes\n")
    args = parse_args(["--method", "ice", "--config", str(good)])  # the IICS options: checked, not ICE's
    assert args.eps == "auto" and not hasattr(args, "intra_clusters")
    args = parse_args(["--method", "iics", "--config", str(good)])
    assert (args.intra_clusters, args.inter_clusters) == ("auto", 50)
    with pytest.raises(ConfigError, match="eps.*expected 'auto' or a number"):
        parse_args(["--method", "ice", "--config", str(bad)])

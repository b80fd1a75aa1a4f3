"""The final summary table: percentages where a metric applies, "-" where it does not (the
visible-infrared protocols have no same-camera top-1), never "nan%"."""
from timm_reid.train.pipeline import format_table


def _result(initial, final):
    return {"initial": initial, "final": final, "rounds": 3, "wall_time_s": 12.0}


def test_reid_rows_are_percentages():
    text = format_table(_result({"mAP": 0.125, "rank1": 0.25, "same_camera_top1": 0.5},
                                {"mAP": 0.5, "rank1": 0.75, "same_camera_top1": 0.0625}))
    initial, final = text.splitlines()[1:3]
    assert initial.split() == ["initial", "12.5%", "25.0%", "50.0%"]
    assert final.split() == ["final", "50.0%", "75.0%", "6.2%"]  # 6.25 rounds to even


def test_a_metric_the_protocol_lacks_is_a_dash():
    vi = {"mAP": 0.3, "rank1": 0.4, "protocol": "sysumm01"}  # what evaluate_split returns for sysumm01
    text = format_table(_result(vi, {**vi, "same_camera_top1": float("nan")}))
    assert "nan" not in text
    lines = text.splitlines()
    assert lines[1].split() == ["initial", "30.0%", "40.0%", "-"] and lines[2].split()[-1] == "-"
    assert len(lines[1]) == len(lines[0]) == len(lines[2])  # the columns stay aligned

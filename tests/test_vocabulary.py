import pytest

from annotation_tools.vocabulary import (
    DREAM_TOTAL_COLUMNS,
    LIMBS,
    Limb,
    ScoreType,
    all_joints,
    dream_column,
    dream_columns,
    get_joint,
    joints_for_limb,
    parse_dream_column,
    patient_totals,
    site_names,
)


def _count(limb, score_type):
    return sum(j.carries(score_type) for j in joints_for_limb(limb))


@pytest.mark.parametrize("limb", ["LH", "RH"])
def test_hand_counts_follow_sharp_van_der_heijde(limb):
    assert _count(limb, ScoreType.NARROWING) == 15
    assert _count(limb, ScoreType.EROSION) == 16


@pytest.mark.parametrize("limb", ["LF", "RF"])
def test_foot_counts(limb):
    assert _count(limb, ScoreType.NARROWING) == 6
    assert _count(limb, ScoreType.EROSION) == 6


def test_score_ranges():
    assert get_joint("LH_mcp_2").max_score("narrowing") == 4
    assert get_joint("LH_mcp_2").max_score("erosion") == 5
    assert get_joint("RF_mtp_5").max_score("erosion") == 10
    assert get_joint("RF_ip").max_score("narrowing") == 4
    with pytest.raises(ValueError, match="not scored for narrowing"):
        get_joint("LH_ip").max_score("narrowing")
    with pytest.raises(ValueError, match="outside 0-5"):
        get_joint("LH_mcp_2").validate_score("erosion", 6)


def test_ids_are_unique_and_stable():
    ids = [j.id for j in all_joints()]
    assert len(ids) == len(set(ids)) == 2 * 22 + 2 * 6
    assert [j.index for j in joints_for_limb("LH")] == list(range(22))
    assert get_joint("RH_wrist_radcar").region == "wrist"
    assert get_joint("LH_mcp_1").region == "thumb"
    assert get_joint("LF_mtp_3").region == "toe"
    assert site_names("hand") == tuple(j.site for j in joints_for_limb("RH"))


def test_unknown_joint_lists_the_limb_joints():
    with pytest.raises(KeyError, match="LH_mcp_2"):
        get_joint("LH_mcp_9")
    with pytest.raises(KeyError, match="unknown joint id"):
        get_joint("knee")


def test_limb_parsing_and_relations():
    assert Limb.parse("left hand") is Limb.LH
    assert Limb.parse("rf") is Limb.RF
    assert Limb.LH.opposite is Limb.RH
    assert Limb.RF.kind == "foot" and Limb.RF.side == "right"
    with pytest.raises(ValueError, match="expected one of LH, RH, LF, RF"):
        Limb.parse("knee")


def test_dream_columns_match_the_challenge():
    cols = dream_columns()
    assert cols[:4] == DREAM_TOTAL_COLUMNS
    assert len(cols) == 4 + 2 * (16 + 15) + 2 * (6 + 6)
    assert len(set(cols)) == len(cols)
    for name in [
        "LH_mcp_E__ip",
        "LH_pip_E__2",
        "LH_mcp_E__5",
        "LH_wrist_E__mc1",
        "LH_wrist_E__lunate",
        "RH_wrist_J__capnlun",
        "RH_wrist_J__radcar",
        "LF_mtp_E__ip",
        "RF_mtp_J__1",
    ]:
        assert name in cols
    # challenge order: hand erosion starts with the thumb IP, wrist narrowing with cmc3
    assert cols[4] == "LH_mcp_E__ip"
    lh_j = [c for c in cols if c.startswith("LH_") and "_J__" in c]
    assert lh_j[:4] == ["LH_pip_J__2", "LH_pip_J__3", "LH_pip_J__4", "LH_pip_J__5"]
    assert lh_j[9:] == [
        f"LH_wrist_J__{s}" for s in ("cmc3", "cmc4", "cmc5", "mna", "capnlun", "radcar")
    ]


def test_dream_column_round_trip():
    for limb in LIMBS:
        for joint in joints_for_limb(limb):
            for score_type in joint.score_types:
                assert parse_dream_column(dream_column(joint, score_type)) == (joint, score_type)
    with pytest.raises(KeyError):
        parse_dream_column("LH_mcp_E__9")


def test_patient_totals():
    full = {(j.id, t): 1 for j in all_joints() for t in j.score_types}
    totals = patient_totals(full)
    assert totals["Overall_erosion"] == 2 * 16 + 2 * 6
    assert totals["Overall_narrowing"] == 2 * 15 + 2 * 6
    assert totals["Overall_Tol"] == totals["Overall_erosion"] + totals["Overall_narrowing"]
    assert totals["n_missing"] == 0
    partial = patient_totals([("LH_mcp_2", "erosion", 3)])
    assert partial["Overall_Tol"] == 3 and partial["n_missing"] == 85
    with pytest.raises(ValueError):
        patient_totals({("LH_mcp_2", "narrowing"): 5})


def test_maximum_total_is_448():
    top = {(j.id, t): j.max_score(t) for j in all_joints() for t in j.score_types}
    assert patient_totals(top)["Overall_Tol"] == 448

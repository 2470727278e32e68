"""The simulated annotator: perfect proposals leave two accept actions per film, proposals
that are all off cost more than scoring from scratch, and the savings CI is over patients."""

import pytest

from annotation_tools.benchmark_hitl import film_actions, savings


def _film(patient, centre_shift=0.0, grade_shift=0, missing=()):
    truth = {f"LH_mcp_{k}": (100.0 * k, 200.0) for k in range(2, 6)}
    proposed = {j: (None if j in missing else (x + centre_shift, y)) for j, (x, y) in truth.items()}
    grades = {(j, "narrowing"): 2.0 for j in truth}
    proposed_grades = {k: v + grade_shift for k, v in grades.items()}
    return film_actions(patient, truth, proposed, grades, proposed_grades, (1000, 800))


def test_perfect_proposals_cost_two_accepts_and_wrong_ones_cost_more_than_scratch():
    perfect = _film("P1", centre_shift=2.0, grade_shift=0.4)  # 2 px and 2.4 -> 2: fine
    assert (perfect.drags, perfect.clicks, perfect.retyped) == (0, 0, 0)
    assert perfect.assisted_actions == 2 and perfect.scratch_actions == 8
    wrong = _film("P1", centre_shift=30.0, grade_shift=1, missing=("LH_mcp_2",))
    assert (wrong.drags, wrong.clicks, wrong.retyped) == (3, 1, 4)
    assert wrong.assisted_actions > wrong.scratch_actions
    assert wrong.seconds(True) > wrong.seconds(False) > perfect.seconds(True)
    assert _film("P1", grade_shift=0.5).retyped == 4  # 2.5 rounds half up to 3: retyped


def test_savings_are_per_patient_with_a_ci():
    films = [_film(f"P{i}") for i in range(6)] + [_film("P9", centre_shift=30.0, grade_shift=1)]
    result = savings(films, n_resamples=200)
    assert result["patients"] == 7 and result["films"] == 7
    low, high = result["actions_saved"]["ci"]
    assert low < result["actions_saved"]["value"] < high or low == high
    assert 0 < result["actions_saved"]["value"] < 1
    assert savings([_film("P1")])["actions_saved"]["value"] == pytest.approx(1 - 2 / 8)
    with pytest.raises(ValueError, match="no films"):
        savings([])

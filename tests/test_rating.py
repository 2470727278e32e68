"""RATING building blocks: grade rules, ECOC decoding, MULTITUDE, jigsaw, networks."""

import numpy as np
import pytest
import torch

from annotation_tools.rating import (
    JigsawNet,
    build_backbone,
    codewords,
    combined_grade,
    ecoc_decode,
    is_valid_pair,
    jigsaw_permutations,
    jigsaw_puzzle,
    majority_vote,
    multitude,
    valid_pairs,
)


def test_grade_rules_follow_eular_omeract():
    assert not is_valid_pair(0, 2) and is_valid_pair(2, 0) and is_valid_pair(0, 0)
    assert combined_grade(1, 3) == 3 and combined_grade(2, 0) == 2
    with pytest.raises(ValueError, match="not a valid EOSS pair"):
        combined_grade(0, 1)
    assert len(valid_pairs()) == 13 and valid_pairs()[0] == (0, 0)


def test_ecoc_decodes_code_words_and_nearest_words():
    words = codewords(repeats=2)
    grades, _ = ecoc_decode(words, repeats=2)
    assert grades.tolist() == [0, 1, 2, 3]
    # "> 2 but not > 1" is inconsistent; it still decodes to a valid, nearest grade
    grades, distances = ecoc_decode([[0.9, 0.1, 0.9]])
    assert grades[0] in (1, 3) and distances.shape == (1, 4)
    # a tie between grades 0 and 1 goes to the lower grade
    assert ecoc_decode([[0.5, 0.0, 0.0]])[0][0] == 0
    # a per-network threshold moves the operating point
    assert ecoc_decode([[0.4, 0.0, 0.0]], thresholds=[0.2, 0.5, 0.5])[0][0] == 1
    with pytest.raises(ValueError, match="expected 6 binary outputs"):
        ecoc_decode([[0.1, 0.2, 0.3]], repeats=2)


def test_multitude_is_always_valid_where_majority_vote_is_not(rng):
    result = multitude([0, 0, 0, 1, 1], [1, 1, 1, 0, 0])
    assert (majority_vote([0, 0, 0, 1, 1]), majority_vote([1, 1, 1, 0, 0])) == (0, 1)  # invalid
    assert is_valid_pair(result.sh, result.vascularity)
    assert result.weights[(1, 1)] == 2 * 3 and (0, 1) not in result.weights
    for _ in range(200):
        sh, vasc = rng.integers(0, 4, 5), rng.integers(0, 4, 5)
        out = multitude(sh, vasc)
        assert is_valid_pair(out.sh, out.vascularity)
        assert out.combined == max(out.sh, out.vascularity)
        assert out.weights[(out.sh, out.vascularity)] == max(out.weights.values())
    unanimous = multitude([2] * 5, [3] * 5)
    assert (unanimous.sh, unanimous.vascularity, unanimous.combined) == (2, 3, 3)


def test_jigsaw_permutations_are_distinct_and_far_apart():
    perms = jigsaw_permutations(30, seed=3)
    assert perms.shape == (30, 9) and len({tuple(p) for p in perms}) == 30
    assert all(sorted(p) == list(range(9)) for p in perms)
    hamming = (perms[:, None] != perms[None]).sum(-1)
    np.fill_diagonal(hamming, 9)
    assert hamming.min() >= 6  # random permutations of 9 are often only 2 apart
    np.testing.assert_array_equal(perms, jigsaw_permutations(30, seed=3))


def test_jigsaw_puzzle_tiles_come_from_their_cells(rng):
    image = torch.arange(225 * 225, dtype=torch.float32).reshape(1, 225, 225)
    perms = jigsaw_permutations(10)
    tiles, label = jigsaw_puzzle(image, perms, rng)
    assert tiles.shape == (9, 1, 64, 64) and 0 <= label < 10
    for position, cell in enumerate(perms[label]):
        top_left = int(tiles[position, 0, 0, 0])
        y, x = divmod(top_left, 225)
        assert (y // 75, x // 75) == divmod(int(cell), 3)  # the tile lies inside its cell
    with pytest.raises(ValueError, match="225x225"):
        jigsaw_puzzle(torch.zeros(1, 224, 224), perms, rng)


def test_backbones_have_the_rating_shapes():
    with torch.no_grad():
        assert build_backbone(1)(torch.rand(2, 1, 64, 64)).shape == (2, 512)
        assert build_backbone(3, widen_factor=0.25)(torch.rand(2, 3, 64, 64)).shape == (2, 128)
    jigsaw = JigsawNet(build_backbone(1), n_permutations=10).eval()
    with torch.no_grad():
        assert jigsaw(torch.rand(2, 9, 1, 64, 64)).shape == (2, 10)


def test_integrated_gradients_point_at_the_pixels_the_model_uses():
    from annotation_tools.rating import heatmap_overlay, integrated_gradients_heatmap

    class Corner(torch.nn.Module):
        """A 'model' whose score only depends on the top-left corner of the image."""

        def forward(self, x):
            return x[:, :, :8, :8].sum((1, 2, 3))[:, None] * torch.ones(1, 2)

    x = torch.rand(1, 3, 32, 32) + 0.5
    heat = integrated_gradients_heatmap(
        Corner(), x, target=1, steps=8, noisy_copies=2, noise_sd=0.1, baseline="zero"
    )
    assert heat.shape == (32, 32) and heat.max() == pytest.approx(1.0)
    assert heat[:8, :8].min() > 0 and heat[8:, :].max() == 0 and heat[:, 8:].max() == 0
    overlay = heatmap_overlay(np.full((32, 32), 128, np.uint8), heat)
    assert overlay.shape == (32, 32, 3)
    assert overlay[0, 0, 2] < overlay[0, 0, 0]  # yellow where the model looked
    assert tuple(overlay[20, 20]) == (128, 128, 128)  # untouched elsewhere

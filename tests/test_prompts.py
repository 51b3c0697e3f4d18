"""Prompt ensembles and text anchors."""

from __future__ import annotations

import re

import pytest
import torch

from anomalens.prompts import (
    AACLIP,
    ENSEMBLES,
    WINCLIP,
    build_prompts,
    object_name,
    state_pattern,
    text_anchors,
)

MVTEC = [
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal",
    "nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
]
DEFECT_WORDS = ("scratch", "crack", "hole", "bent", "thread", "contamination", "print", "cut")


def test_ensemble_sizes_and_order():
    normal, anomalous = build_prompts("screw")
    assert len(WINCLIP.templates) == 22
    assert len(set(WINCLIP.templates)) == 22
    assert len(normal) == 7 * 22
    assert len(anomalous) == 4 * 22
    # state-major order, template-minor
    assert normal[0] == "a cropped photo of the screw."
    assert normal[22] == "a cropped photo of the flawless screw."
    assert anomalous[-1] == "a photo of a screw with damage for anomaly detection."
    both_n, both_a = build_prompts("screw", ("winclip", "aaclip"))
    templates = set(WINCLIP.templates) | set(AACLIP.templates)
    states_a = set(WINCLIP.anomalous_states) | set(AACLIP.anomalous_states)
    assert len(both_n) == 7 * len(templates)
    assert len(both_a) == len(states_a) * len(templates)
    assert len(set(both_n)) == len(both_n)
    assert "a bad photo of a broken screw." in both_a


def test_object_name():
    assert object_name("metal_nut") == "metal nut"
    assert object_name("  pipe-fryum ") == "pipe fryum"
    assert object_name(None) == object_name("") == object_name("_") == "object"
    normal, _ = build_prompts("metal_nut")
    assert "a photo of a flawless metal nut." in normal


def test_extra_state_words():
    normal, anomalous = build_prompts(
        "screw", extra_normal=["shiny"], extra_anomalous=["scratched", "{} with a bent tip"]
    )
    assert len(normal) == 8 * 22
    assert len(anomalous) == 6 * 22
    assert "a photo of a scratched screw." in anomalous
    assert "a close-up photo of the screw with a bent tip." in anomalous
    assert "a dark photo of a shiny screw." in normal
    assert state_pattern(" bent ") == "bent {}"
    with pytest.raises(ValueError, match="at most one"):
        state_pattern("{} and {}")
    with pytest.raises(ValueError, match="empty"):
        state_pattern("  ")
    # a duplicate of a built-in state adds nothing
    assert build_prompts("screw", extra_anomalous=["damaged"])[1] == build_prompts("screw")[1]


@pytest.mark.parametrize("ensemble", sorted(ENSEMBLES))
def test_no_class_specific_knowledge(ensemble):
    """Prompts differ between classes only by the object name: nothing describes a category's
    defects, and no category name or defect word is built in."""
    a_n, a_a = build_prompts("widget", ensemble)
    b_n, b_a = build_prompts("gizmo", ensemble)
    assert [p.replace("widget", "gizmo") for p in a_n + a_a] == b_n + b_a
    words = {w for p in a_n + a_a for w in re.findall(r"[a-z]+", p)}
    assert not words & set(MVTEC)
    assert not [w for w in words if w.startswith(DEFECT_WORDS)]


def test_unknown_ensemble():
    with pytest.raises(ValueError, match="unknown prompt ensemble"):
        build_prompts("screw", ("winclip", "mine"))


def test_text_anchors_by_hand():
    calls = []
    table = {
        "n1": [3.0, 4.0, 0.0],  # -> (0.6, 0.8, 0)
        "n2": [2.0, 0.0, 0.0],  # -> (1, 0, 0)
        "a1": [0.0, 0.0, 5.0],  # -> (0, 0, 1)
    }

    def encode(prompts):
        calls.append(list(prompts))
        return torch.tensor([table[p] for p in prompts])

    anchors = text_anchors(encode, ["n1", "n2"], ["a1"])
    assert calls == [["n1", "n2", "a1"]]  # one call with every prompt
    mean = torch.tensor([0.8, 0.4, 0.0])
    expected = torch.stack([mean / mean.norm(), torch.tensor([0.0, 0.0, 1.0])])
    torch.testing.assert_close(anchors, expected)
    assert anchors.dtype == torch.float32
    with pytest.raises(ValueError, match="at least one"):
        text_anchors(encode, [], ["a1"])

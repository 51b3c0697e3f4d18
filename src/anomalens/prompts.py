"""Prompt ensembles (state words x templates) and the normal / anomalous text anchors.

A prompt is ``template.format(state.format(object_name))``, e.g. ``"a cropped photo of the
" + "flawless screw"``. The normal anchor is the L2-normalised mean of the (normalised) text
embeddings of every normal prompt; the anomalous anchor likewise (WinCLIP's compositional prompt
ensemble). Only generic state words are used: no per-class description of what a defect looks
like, which would leak knowledge of the test set into a "zero-shot" method.

Ensembles:

* ``winclip``: WinCLIP's state words (7 normal, 4 anomalous) and the 22 templates of the
  common re-implementations;
* ``aaclip``: the APRIL-GAN-style ensemble AA-CLIP builds on (the same 7 normal states,
  5 anomalous states with ``broken {}``, 35 CLIP-style templates), without AA-CLIP's
  hand-written class descriptions. AA-CLIP's own prompt file was not available to check the
  lists word for word.

Users can add their own state words: a bare word such as ``"scratched"`` becomes
``"scratched {}"``; a pattern holding ``{}`` (``"{} with a bent thread"``) is used as given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

DEFAULT_OBJECT = "object"


@dataclass(frozen=True)
class PromptEnsemble:
    """State patterns (each with one ``{}`` for the object) and templates (one ``{}``)."""

    normal_states: tuple[str, ...]
    anomalous_states: tuple[str, ...]
    templates: tuple[str, ...]


WINCLIP = PromptEnsemble(
    normal_states=(
        "{}",
        "flawless {}",
        "perfect {}",
        "unblemished {}",
        "{} without flaw",
        "{} without defect",
        "{} without damage",
    ),
    anomalous_states=("damaged {}", "{} with flaw", "{} with defect", "{} with damage"),
    templates=(
        "a cropped photo of the {}.",
        "a cropped photo of a {}.",
        "a close-up photo of a {}.",
        "a close-up photo of the {}.",
        "a bright photo of a {}.",
        "a bright photo of the {}.",
        "a dark photo of the {}.",
        "a dark photo of a {}.",
        "a jpeg corrupted photo of a {}.",
        "a jpeg corrupted photo of the {}.",
        "a blurry photo of the {}.",
        "a blurry photo of a {}.",
        "a photo of a {}.",
        "a photo of the {}.",
        "a photo of a small {}.",
        "a photo of the small {}.",
        "a photo of a large {}.",
        "a photo of the large {}.",
        "a photo of the {} for visual inspection.",
        "a photo of a {} for visual inspection.",
        "a photo of the {} for anomaly detection.",
        "a photo of a {} for anomaly detection.",
    ),
)

AACLIP = PromptEnsemble(
    normal_states=WINCLIP.normal_states,
    anomalous_states=(
        "damaged {}",
        "broken {}",
        "{} with flaw",
        "{} with defect",
        "{} with damage",
    ),
    templates=(
        "a bad photo of a {}.",
        "a low resolution photo of the {}.",
        "a bad photo of the {}.",
        "a cropped photo of the {}.",
        "a bright photo of a {}.",
        "a dark photo of the {}.",
        "a photo of my {}.",
        "a photo of the cool {}.",
        "a close-up photo of a {}.",
        "a black and white photo of the {}.",
        "a bright photo of the {}.",
        "a cropped photo of a {}.",
        "a jpeg corrupted photo of a {}.",
        "a blurry photo of the {}.",
        "a photo of the {}.",
        "a good photo of the {}.",
        "a photo of one {}.",
        "a close-up photo of the {}.",
        "a photo of a {}.",
        "a low resolution photo of a {}.",
        "a photo of a large {}.",
        "a blurry photo of a {}.",
        "a jpeg corrupted photo of the {}.",
        "a good photo of a {}.",
        "a photo of the small {}.",
        "a photo of the large {}.",
        "a black and white photo of a {}.",
        "a dark photo of a {}.",
        "a photo of a cool {}.",
        "a photo of a small {}.",
        "there is a {} in the scene.",
        "there is the {} in the scene.",
        "this is a {} in the scene.",
        "this is the {} in the scene.",
        "this is one {} in the scene.",
    ),
)

ENSEMBLES: dict[str, PromptEnsemble] = {"winclip": WINCLIP, "aaclip": AACLIP}


def check_ensembles(names: Sequence[str] | str) -> tuple[str, ...]:
    """Ensemble names as a tuple, each a key of :data:`ENSEMBLES` (ValueError otherwise)."""
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = sorted(set(names) - set(ENSEMBLES))
    if unknown or not names:
        raise ValueError(f"unknown prompt ensembles {unknown}; choose from {list(ENSEMBLES)}")
    return names


def object_name(class_name: str | None) -> str:
    """The object word used in prompts: underscores/dashes become spaces (``metal_nut`` ->
    ``metal nut``); an empty or missing name becomes ``"object"``."""
    if class_name is None:
        return DEFAULT_OBJECT
    words = str(class_name).replace("_", " ").replace("-", " ").split()
    return " ".join(words) if words else DEFAULT_OBJECT


def state_pattern(word: str) -> str:
    """A user state word as a pattern: ``"scratched"`` -> ``"scratched {}"``; patterns that
    already hold ``{}`` are kept."""
    w = " ".join(str(word).split())
    if not w:
        raise ValueError("state words must not be empty")
    if w.count("{}") > 1:
        raise ValueError(f"state pattern {word!r} must contain at most one '{{}}'")
    return w if "{}" in w else f"{w} {{}}"


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def build_prompts(
    class_name: str | None = None,
    ensembles: Sequence[str] = ("winclip",),
    extra_normal: Sequence[str] = (),
    extra_anomalous: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """``(normal_prompts, anomalous_prompts)`` for an object, duplicates removed, order kept.

    Every state (of every chosen ensemble, plus the user's extra states) is combined with every
    template of the chosen ensembles.
    """
    if isinstance(ensembles, str):
        ensembles = (ensembles,)
    unknown = [e for e in ensembles if e not in ENSEMBLES]
    if unknown or not ensembles:
        raise ValueError(
            f"unknown prompt ensemble(s) {unknown or list(ensembles)}; "
            f"choose from {', '.join(ENSEMBLES)}"
        )
    name = object_name(class_name)
    chosen = [ENSEMBLES[e] for e in ensembles]
    templates = _unique([t for e in chosen for t in e.templates])
    normal = _unique(
        [s for e in chosen for s in e.normal_states] + [state_pattern(w) for w in extra_normal]
    )
    anomalous = _unique(
        [s for e in chosen for s in e.anomalous_states]
        + [state_pattern(w) for w in extra_anomalous]
    )

    def expand(states: list[str]) -> list[str]:
        return _unique([t.format(s.format(name)) for s in states for t in templates])

    return expand(normal), expand(anomalous)


def text_anchors(
    encode_text: Callable[[list[str]], torch.Tensor],
    normal_prompts: Sequence[str],
    anomalous_prompts: Sequence[str],
) -> torch.Tensor:
    """``[2, D]`` float32 anchors: row 0 normal, row 1 anomalous.

    Each row is the L2-normalised mean of the L2-normalised embeddings of its prompts.
    ``encode_text`` is called once with all prompts.
    """
    normal, anomalous = list(normal_prompts), list(anomalous_prompts)
    if not normal or not anomalous:
        raise ValueError("need at least one normal and one anomalous prompt")
    emb = torch.nn.functional.normalize(encode_text(normal + anomalous).float(), dim=-1)
    if emb.shape[0] != len(normal) + len(anomalous):
        raise ValueError(f"encode_text returned {emb.shape[0]} rows for {len(normal + anomalous)}")
    means = torch.stack([emb[: len(normal)].mean(0), emb[len(normal) :].mean(0)])
    return torch.nn.functional.normalize(means, dim=-1)

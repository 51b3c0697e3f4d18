"""anomalens.data.transforms: square resizing, augmented views and evenly spread indices, checked
against values computed by hand or by cv2 / numpy directly."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anomalens.data.transforms import (
    AUGMENTATIONS,
    Frame,
    augmented_shapes,
    augmented_views,
    resize_square,
    spread_indices,
)


def test_augmentations_are_the_five_flips_and_turns() -> None:
    assert AUGMENTATIONS == ("hflip", "vflip", "rot90", "rot180", "rot270")


def test_augmented_views_are_the_hand_made_flips_and_rotations() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)  # not square: turns swap h and w
    before = image.copy()
    views = augmented_views(image, AUGMENTATIONS)
    expected = [
        image,
        np.fliplr(image),
        np.flipud(image),
        np.rot90(image, 1),
        np.rot90(image, 2),
        np.rot90(image, 3),
    ]
    assert len(views) == 6
    assert views[0] is image
    for name, view, want in zip(("identity", *AUGMENTATIONS), views, expected, strict=True):
        assert np.array_equal(view, want), name
        assert view.flags.c_contiguous, name
        assert view.dtype == np.uint8, name
    assert [v.shape for v in views] == [(6, 9, 3)] * 3 + [(9, 6, 3), (6, 9, 3), (9, 6, 3)]
    np.testing.assert_array_equal(image, before)  # input untouched


def test_rot90_turns_counter_clockwise_by_hand() -> None:
    a = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    hflip, vflip, rot90, rot180, rot270 = augmented_views(a, AUGMENTATIONS)[1:]
    assert hflip.tolist() == [[3, 2, 1], [6, 5, 4]]
    assert vflip.tolist() == [[4, 5, 6], [1, 2, 3]]
    assert rot90.tolist() == [[3, 6], [2, 5], [1, 4]]
    assert rot180.tolist() == [[6, 5, 4], [3, 2, 1]]
    assert rot270.tolist() == [[4, 1], [5, 2], [6, 3]]


def test_augmented_shapes_are_the_shapes_of_the_views() -> None:
    img = np.zeros((5, 9, 3), dtype=np.uint8)
    names = ("hflip", "rot90", "rot180", "rot270", "vflip")
    views = augmented_views(img, names)
    assert augmented_shapes(img.shape, names) == [v.shape for v in views]


def test_augmented_views_keep_the_requested_order_and_reject_unknown_names() -> None:
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert len(augmented_views(a, ())) == 1
    rot, flip = augmented_views(a, ("rot90", "hflip"))[1:]
    assert np.array_equal(rot, np.rot90(a))
    assert np.array_equal(flip, a[:, ::-1])
    with pytest.raises(ValueError, match="unknown augmentations"):
        augmented_views(a, ("hflip", "twirl"))


@pytest.mark.parametrize(
    ("shape", "size", "interpolation"),
    [
        ((40, 52), 32, cv2.INTER_AREA),  # both sides larger: area averaging
        ((40, 52), 40, cv2.INTER_LINEAR),  # the short side is not larger: bilinear
        ((40, 52), 64, cv2.INTER_LINEAR),  # enlarging
        ((30, 30), 16, cv2.INTER_AREA),
    ],
)
def test_resize_square_matches_cv2_with_the_interpolation_rule(shape, size, interpolation):
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = resize_square(image, size)
    assert out.shape == (size, size, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, cv2.resize(image, (size, size), interpolation=interpolation))
    other = cv2.INTER_LINEAR if interpolation == cv2.INTER_AREA else cv2.INTER_AREA
    assert not np.array_equal(out, cv2.resize(image, (size, size), interpolation=other))


def test_resize_square_of_the_same_size_is_the_image() -> None:
    image = np.random.default_rng(2).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_square(image, 24), image)
    gray = image[..., 0]
    assert resize_square(gray, 12).shape == (12, 12)


@pytest.mark.parametrize(
    ("n", "count", "expected"),
    [
        (10, 3, [0, 4, 9]),  # linspace 0, 4.5, 9: round(4.5) == 4 (half to even)
        (6, 3, [0, 2, 5]),  # 0, 2.5, 5: round(2.5) == 2, not 3
        (4, 3, [0, 2, 3]),  # 0, 1.5, 3: round(1.5) == 2
        (12, 4, [0, 4, 7, 11]),  # 0, 3.67, 7.33, 11
        (7, 4, [0, 2, 4, 6]),
        (5, 10, [0, 1, 2, 3, 4]),  # more wanted than there are: all
        (5, 5, [0, 1, 2, 3, 4]),
        (5, 2, [0, 4]),  # first and last
        (5, 1, [0]),
        (1, 3, [0]),
        (0, 3, []),
        (5, 0, []),
        (-1, 2, []),
    ],
)
def test_spread_indices_by_hand(n: int, count: int, expected: list[int]) -> None:
    assert spread_indices(n, count) == expected
    assert all(type(i) is int for i in spread_indices(n, count))


# --- Frame: where an image sits in the square model input -----------------------------------


def test_letterbox_frame_keeps_the_aspect_ratio_and_centres_the_content() -> None:
    f = Frame.fit((100, 300, 3), 320, "letterbox", border=20)
    # the longer side fills the inner square (320 - 2 * 20), the shorter one scales with it
    assert (f.height, f.width) == (93, 280)
    assert (f.top, f.left) == ((320 - 93) // 2, 20)
    assert not f.is_full


def test_square_frame_without_border_is_the_old_stretch() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (90, 170, 3), dtype=np.uint8)
    f = Frame.fit(img.shape, 64, "square")
    assert f.is_full
    np.testing.assert_array_equal(f.place(img), resize_square(img, 64))


def test_place_reflects_the_content_into_the_padding() -> None:
    img = np.arange(4 * 8, dtype=np.uint8).reshape(4, 8)
    f = Frame.fit(img.shape, 8, "letterbox")  # 4 x 8 content, 2 rows above and below
    placed = f.place(img)
    assert placed.shape == (8, 8)
    np.testing.assert_array_equal(placed[2:6], img)
    np.testing.assert_array_equal(placed[1], img[0])  # symmetric: the edge row repeats
    np.testing.assert_array_equal(placed[0], img[1])
    np.testing.assert_array_equal(placed[6], img[3])
    np.testing.assert_array_equal(placed[7], img[2])


def test_content_grid_marks_the_cells_whose_centre_is_in_the_content() -> None:
    f = Frame.fit((50, 100), 80, "letterbox")  # content rows 20..60 of 80
    grid = f.content_grid((8, 8))  # cell centres at 5, 15, ..., 75
    np.testing.assert_array_equal(grid[:, 0], [0, 0, 1, 1, 1, 1, 0, 0])
    assert grid[2:6].all()
    sliver = Frame.fit((1, 400), 80, "letterbox")  # 1 row of content: its centre cell stays
    assert sliver.content_grid((8, 8)).sum() == 8


def test_to_image_cuts_the_content_out_of_an_input_map() -> None:
    f = Frame.fit((40, 80), 80, "letterbox")  # content rows 20..60
    full = np.zeros((80, 80), dtype=np.float32)
    full[20:60, :40] = 1.0  # left half of the content
    back = f.to_image(full, (40, 80))
    assert back.shape == (40, 80)
    np.testing.assert_allclose(back[:, :38], 1.0)
    np.testing.assert_allclose(back[:, 42:], 0.0)
    # and into the input frame again: the content box holds it, the padding is 0
    again = f.to_input(back, (80, 80))
    np.testing.assert_allclose(again[:18], 0.0)
    np.testing.assert_allclose(again[22:58, :38], 1.0)


def test_frame_rejects_unknown_resize_modes() -> None:
    with pytest.raises(ValueError, match="resize must be one of square, letterbox"):
        Frame.fit((10, 10), 32, "crop")
